"""Make the held-out splits of ../shared/data recorded in the package (run once per version).

    python scripts/make_split.py --version v1 --out src/moefusion/configs/splits/shared-data-v1.json
    python scripts/make_split.py --version v2 --out src/moefusion/configs/splits/shared-data-v2.json

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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moefusion.data import dataset_pairs, load_split, save_split, split_stems

SEED = 20231002
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
V1_DATASETS = ("roadscene", "msrs", "llvip")
V1_SPLIT = Path(__file__).resolve().parents[1] / "src/moefusion/configs/splits/shared-data-v1.json"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--version", choices=("v1", "v2"), default="v2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    split = make_v1(args.data) if args.version == "v1" else make_v2(args.data)
    for name, parts in split["datasets"].items():
        print(name + ": " + ", ".join(f"{len(v)} {k}" for k, v in parts.items()))
    save_split(args.out, split)


if __name__ == "__main__":
    main()
