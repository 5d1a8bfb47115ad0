"""Make the held-out split of ../shared/data recorded in the package (run once).

    python scripts/make_split.py --data ../shared/data --out src/moefusion/configs/splits/shared-data-v1.json

At least 15 % of each dataset's pairs are held out; MSRS is stratified by day (D) and
night (N); the labelled and unlabelled pairs of each dataset are stratified too, so that
the test split keeps boxes for detection evaluation. Nothing is trained or tuned on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moefusion.data import dataset_pairs, save_split, split_stems

SEED = 20231002
TEST_FRACTION = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    datasets = {}
    for name in ("roadscene", "msrs", "llvip"):
        root = args.data / name
        stems = [p.stem for p in dataset_pairs(root)]
        label_dir = root / "labels"
        labelled = {p.stem for p in label_dir.rglob("*") if p.suffix in {".xml", ".txt"}}

        def group(stem: str, labelled: set[str] = labelled, name: str = name) -> str:
            day_night = stem[-1] if name == "msrs" else ""
            return f"{day_night}{'L' if stem in labelled else 'U'}"

        train, test = split_stems(stems, TEST_FRACTION, seed=SEED, group_fn=group)
        datasets[name] = {"train": sorted(train), "test": sorted(test)}
        print(f"{name}: {len(train)} train, {len(test)} test")
    save_split(args.out, {"seed": SEED, "test_fraction": TEST_FRACTION, "datasets": datasets})


if __name__ == "__main__":
    main()
