"""Make the detector split of ``msrs_eval`` recorded in the package (run once per version).

    python scripts/make_detect_split.py --out src/moefusion/configs/splits/msrs-eval-detect-v1.json

``msrs_eval`` (the 180 pairs of the official MSRS test split, 90 day ``D`` and 90 night
``N``) is evaluation only for fusion weights. The detector of ``moefusion detect-eval``
scores fused images and is never used to train or select fusion weights, so it may be
trained on a fixed part of it. This split cuts the pairs in two halves, stratified by
day and night (:func:`moefusion.data.msrs_day_night`): ``train`` (the detector's
training pairs: their infrared and visible images) and ``test`` (the pairs every row of
the detection table is scored on), 45 day + 45 night pairs each. It depends only on the
set of stems and the seed (:func:`moefusion.data.split_stems`).

The file is a detection split only: fusion runs keep using ``shared-data-v3``, where
``msrs_eval`` is test only, and a fusion run that names ``msrs_eval`` is refused whatever
split it is given (``moefusion.data.EVAL_ONLY_DATASETS``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moefusion.data import dataset_pairs, msrs_day_night, save_split, split_stems

SEED = 20240336
TEST_FRACTION = 0.5
DATASET = "msrs_eval"
VERSIONS = ("v1",)


def make_v1(data: Path) -> dict[str, Any]:
    """The v1 split: half of each of day and night for the detector's training."""
    stems = [p.stem for p in dataset_pairs(data / DATASET)]
    train, test = split_stems(stems, TEST_FRACTION, seed=SEED, group_fn=msrs_day_night)
    return {
        "seed": SEED,
        "test_fraction": TEST_FRACTION,
        "datasets": {DATASET: {"train": train, "test": test}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--version", choices=VERSIONS, default="v1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    split = make_v1(args.data)
    for name, parts in split["datasets"].items():
        counts = ", ".join(
            f"{len(v)} {k} ({sum(s.endswith('D') for s in v)} D, "
            f"{sum(s.endswith('N') for s in v)} N)"
            for k, v in parts.items()
        )
        print(f"{name}: {counts}")
    save_split(args.out, split)


if __name__ == "__main__":
    main()
