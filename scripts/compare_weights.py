"""Compare weights files on the split's **validation** part (never the held-out test part).

    python scripts/compare_weights.py --weights A.safetensors B.safetensors [--names a b]

For choosing which weights to ship: fuses the validation pairs of the report's split
(``shared-data-v3``: carved out of the training data; every dataset with a validation
part) with each weights file and the five classical baselines, evaluates the eight paper
metrics in the ``paper`` convention, and prints per dataset and over all validation pairs
the means, each method's **mean rank over the eight metrics among all methods there**
(ties share the best rank; the release is chosen by it, per dataset), and for each
weights file on how many of the eight metrics it is the best of all methods (each weights
file ranked against the baselines alone, so the files do not take wins from each
other), and the fusion objective of the
`cpu` config (pixel with the max target + 10 x gradient, at the sources' resolution) of
every method, which stays comparable when the weights were trained with another alpha or
pixel target. Nothing here trains anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from moefusion import Fuser
from moefusion.baselines import BASELINES, fuse_baseline, to_u8
from moefusion.data import load_pair, resolve_split, save_gray_u8, split_part_pairs
from moefusion.evaluation import EvaluationResults, evaluate_folders, mean_ranks, summarise
from moefusion.training.fit_report import objective

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    """scripts/make_report.py, for its source linking, merging and best counts."""
    spec = importlib.util.spec_from_file_location(
        "make_report", ROOT / "scripts" / "make_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _only(res: EvaluationResults, keep: list[str]) -> EvaluationResults:
    """``res`` restricted to the methods ``keep`` (same stems and conventions)."""
    values = {c: {m: res.values[c][m] for m in keep} for c in res.conventions}
    return EvaluationResults(res.conventions, tuple(keep), res.stems, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="+", required=True)
    parser.add_argument("--names", nargs="+", default=None, help="one label per weights file")
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--part", default="val", choices=("val",), help="split part (val only)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/moefusion-compare"))
    args = parser.parse_args()
    names = args.names or [w.stem for w in args.weights]
    if len(names) != len(args.weights):
        sys.exit("compare_weights: give one --names label per --weights file")
    report = _report_module()
    split = resolve_split(report.SPLIT_NAME)
    fusers = {n: Fuser.from_file(w, device="cpu") for n, w in zip(names, args.weights, strict=True)}
    shutil.rmtree(args.work, ignore_errors=True)

    per_dataset: list[EvaluationResults] = []
    objectives: dict[str, dict[str, list[float]]] = {}
    parts = split_part_pairs(args.data, split, args.part)
    datasets = [name for name, pairs in parts.items() if pairs]
    for name in datasets:
        pairs = parts[name]
        stems = {p.stem for p in pairs}
        work = args.work / name
        ir_dir, vi_dir = report.link_sources(pairs, stems, work)
        methods = {n: work / "fused" / n for n in names}
        methods.update({m: work / "fused" / m for m in BASELINES})
        for p in pairs:
            loaded = load_pair(p.ir, p.vi)
            fused = {n: fuser.fuse(loaded.ir, loaded.vi) for n, fuser in fusers.items()}
            fused.update({m: fuse_baseline(loaded.ir, loaded.vi, m) for m in BASELINES})
            for m, image in fused.items():
                save_gray_u8(methods[m] / f"{p.stem}.png", image)
                objectives.setdefault(m, {}).setdefault(name, []).append(
                    _objective(image, loaded.ir, loaded.vi)
                )
        per_dataset.append(evaluate_folders(ir_dir, vi_dir, methods, ("paper",), progress=False))

    overall = report.merge(per_dataset, datasets)
    header = "| part | pairs | method | " + " | ".join(report.TABLE1) + " | mean rank | best on |"
    print(f"`python scripts/compare_weights.py --weights ... --names {' '.join(names)}`, "
          f"`{args.part}` part of {report.SPLIT_NAME}, paper convention\n")  # fmt: skip
    print(header)
    print("|" + "---|" * (len(report.TABLE1) + 5))
    rank_of: dict[str, dict[str, float]] = {}
    for label, res in [*zip(datasets, per_dataset, strict=True), ("all", overall)]:
        means = summarise(res)["paper"].means
        ranks = mean_ranks(means)
        rank_of[label] = ranks
        for method in [*names, *BASELINES]:
            wins = ""
            if method in names:
                alone = summarise(_only(res, [method, *BASELINES]))["paper"]
                count, _ = report.best_count(alone, method)
                wins = f"{count} of 8"
            cells = " | ".join(f"{means[method][k]:.3f}" for k in report.TABLE1)
            print(
                f"| {label} | {len(res.stems)} | {method} | {cells} "
                f"| {ranks[method]:.2f} | {wins} |"
            )

    print("\nMean rank over the 8 paper metrics among all methods (lower is better):\n")
    print("| method | " + " | ".join([*datasets, "all", "mean over datasets"]) + " |")
    print("|" + "---|" * (len(datasets) + 3))
    for method in [*names, *BASELINES]:
        cells = [f"{rank_of[d][method]:.2f}" for d in [*datasets, "all"]]
        cells.append(f"{np.mean([rank_of[d][method] for d in datasets]):.2f}")
        print(f"| {method} | " + " | ".join(cells) + " |")

    print("\nFusion objective (max target, alpha 10; lower is better), mean per pair:\n")
    print("| method | " + " | ".join([*datasets, "all"]) + " |")
    print("|" + "---|" * (len(datasets) + 2))
    for method in [*names, *BASELINES]:
        per = objectives[method]
        cells = [f"{np.mean(per[d]):.4f}" for d in datasets]
        cells.append(f"{np.mean([v for d in datasets for v in per[d]]):.4f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


def _objective(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """The `cpu` config's objective of one fused image, quantised to uint8 as it is saved."""
    f = torch.from_numpy(to_u8(fused) / 255.0).float()[None]
    a, b = (torch.from_numpy(x).float()[None] for x in (ir, vi))
    return objective(f, a, b, None, pixel_target="max", alpha=10.0)


if __name__ == "__main__":
    main()
