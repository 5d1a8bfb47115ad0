"""Make the held-out splits of ../shared/data recorded in the package (run once per version).

    python scripts/make_split.py --version v1 --out src/moefusion/configs/splits/shared-data-v1.json
    python scripts/make_split.py --version v2 --out src/moefusion/configs/splits/shared-data-v2.json
    python scripts/make_split.py --version v3 --out src/moefusion/configs/splits/shared-data-v3.json

v1 (RoadScene, MSRS, LLVIP): at least 15 % of each dataset's pairs are held out; MSRS is
stratified by day (D) and night (N); the labelled and unlabelled pairs of each dataset
are stratified too, so that the test split keeps boxes for detection evaluation.

v2 adds TNO-extra and VIFB and a validation part carved out of the training data:
- the stems held out by v1 stay held out, the v1 training stems are split into train
  and val (10 %, same strata);
- TNO-extra: the Tree sequence is held out as a whole (its frames are near-duplicates of
  each other and come from the sequence of the outside TNO benchmark's image 20), 20 %
  of the single scenes too; the Duine sequence stays whole in train; val is 15 % of the
  remaining single scenes (never a sequence frame, which would duplicate train);
- VIFB: 20 % held out, val 15 % of the rest.
Nothing is trained or tuned on the test parts.

v3 keeps every part of v2 as it is and adds
- the three new training folders with train and validation parts only (no test part):
  ``llvip_extra`` and ``m3fd`` 15 % validation; ``m3svd`` by clip (the stem's
  ``<date>_<clip>`` prefix), so that no clip has frames in both parts;
- ``msrs_eval`` (the official MSRS test pairs) as test only, stratified nowhere, and
  listed under ``eval_only``: a run that would train or validate on it is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moefusion.data import dataset_pairs, load_split, save_split, split_stems

SEED = 20231002
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
V1_DATASETS = ("roadscene", "msrs", "llvip")
SPLITS = Path(__file__).resolve().parents[1] / "src/moefusion/configs/splits"
V1_SPLIT = SPLITS / "shared-data-v1.json"
V2_SPLIT = SPLITS / "shared-data-v2.json"
V3_VAL_FRACTION = 0.15


def v1_group_fn(root: Path, name: str):
    label_dir = root / "labels"
    labelled = {p.stem for p in label_dir.rglob("*") if p.suffix in {".xml", ".txt"}}

    def group(stem: str) -> str:
        day_night = stem[-1] if name == "msrs" else ""
        return f"{day_night}{'L' if stem in labelled else 'U'}"

    return group


def make_v1(data: Path) -> dict:
    datasets = {}
    for name in V1_DATASETS:
        root = data / name
        stems = [p.stem for p in dataset_pairs(root)]
        train, test = split_stems(stems, TEST_FRACTION, seed=SEED, group_fn=v1_group_fn(root, name))
        datasets[name] = {"train": train, "test": test}
    return {"seed": SEED, "test_fraction": TEST_FRACTION, "datasets": datasets}


def make_v2(data: Path) -> dict:
    v1 = load_split(V1_SPLIT)
    datasets = {}
    for name in V1_DATASETS:
        group = v1_group_fn(data / name, name)
        train, val = split_stems(
            v1["datasets"][name]["train"], VAL_FRACTION, seed=SEED, group_fn=group
        )
        datasets[name] = {"train": train, "val": val, "test": v1["datasets"][name]["test"]}

    stems = [p.stem for p in dataset_pairs(data / "tno_extra")]
    singles = [s for s in stems if not s.startswith("seq_")]
    rest, test = split_stems(singles, TEST_FRACTION, seed=SEED)
    train, val = split_stems(rest, 0.15, seed=SEED)
    datasets["tno_extra"] = {
        "train": sorted(train + [s for s in stems if s.startswith("seq_duine_")]),
        "val": val,
        "test": sorted(test + [s for s in stems if s.startswith("seq_tree_")]),
    }

    stems = [p.stem for p in dataset_pairs(data / "vifb")]
    rest, test = split_stems(stems, TEST_FRACTION, seed=SEED)
    train, val = split_stems(rest, 0.15, seed=SEED)
    datasets["vifb"] = {"train": train, "val": val, "test": test}
    return {"seed": SEED, "test_fraction": TEST_FRACTION, "datasets": datasets}


def make_v3(data: Path) -> dict:
    split = load_split(V2_SPLIT)
    for name in ("llvip_extra", "m3fd"):
        stems = [p.stem for p in dataset_pairs(data / name)]
        train, val = split_stems(stems, V3_VAL_FRACTION, seed=SEED)
        split["datasets"][name] = {"train": train, "val": val, "test": []}
    stems = [p.stem for p in dataset_pairs(data / "m3svd")]
    clips = sorted({s.rsplit("_", 1)[0] for s in stems})
    train_clips, val_clips = split_stems(clips, V3_VAL_FRACTION, seed=SEED)
    split["datasets"]["m3svd"] = {
        "train": [s for s in stems if s.rsplit("_", 1)[0] in train_clips],
        "val": [s for s in stems if s.rsplit("_", 1)[0] in val_clips],
        "test": [],
    }
    stems = [p.stem for p in dataset_pairs(data / "msrs_eval")]
    split["datasets"]["msrs_eval"] = {"train": [], "val": [], "test": stems}
    split["eval_only"] = ["msrs_eval"]
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--version", choices=("v1", "v2", "v3"), default="v3")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    make = {"v1": make_v1, "v2": make_v2, "v3": make_v3}[args.version]
    split = make(args.data)
    for name, parts in split["datasets"].items():
        print(name + ": " + ", ".join(f"{len(v)} {k}" for k, v in parts.items()))
    save_split(args.out, split)


if __name__ == "__main__":
    main()
