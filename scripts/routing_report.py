"""Does the bundled model route by scene? Permutation tests on the experts its gates select.

    python scripts/routing_report.py --data ../shared/data [--weights W] [--permutations 10000]

Fuses every MSRS pair (its stems end in D for day, N for night) and the held-out pairs
of every dataset of split shared-data-v2, records which experts each gate selected, and
tests per mixture (MoLE foreground, MoLE background, MoGE) whether the selections differ
between day and night, and between datasets (:mod:`moefusion.studies.routing`). Only
gates are read: nothing is tuned. Writes ``docs/report/routing.md`` and ``routing.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from moefusion import Fuser
from moefusion.data import (
    SHARED_DATASETS,
    dataset_pairs,
    msrs_day_night,
    resolve_split,
    split_part_pairs,
)
from moefusion.studies.routing import RoutingTest, gates_of, permutation_test
from moefusion.weights import bundled_weights_path

ROOT = Path(__file__).resolve().parents[1]
SPLIT_NAME = "shared-data-v2"
MIXTURES = {"mole_fg": "MoLE foreground", "mole_bg": "MoLE background", "moge": "MoGE"}


def describe(test: RoutingTest) -> str:
    freq = "; ".join(
        f"{g} (n={n}): " + " ".join(f"{x:.2f}" for x in row)
        for g, n, row in zip(test.groups, test.counts, test.frequencies, strict=True)
    )
    verdict = "**differs significantly**" if test.significant() else "no significant difference"
    return f"T = {test.statistic:.2f}, p = {test.p_value:.4f}: {verdict} (selection share per expert: {freq})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=None, help="default: bundled")
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report")
    args = parser.parse_args()
    weights = args.weights or bundled_weights_path()
    fuser = Fuser.from_file(weights, device="cpu")
    split = resolve_split(SPLIT_NAME)

    msrs = dataset_pairs(args.data / "msrs")
    msrs_gates = gates_of(fuser, msrs)
    light = [{"D": "day", "N": "night"}[msrs_day_night(p.stem)] for p in msrs]
    held: dict[str, np.ndarray] = {}
    labels: list[str] = []
    for name, pairs in split_part_pairs(args.data, split, "test", SHARED_DATASETS).items():
        for mixture, g in gates_of(fuser, pairs).items():
            held[mixture] = g if mixture not in held else np.vstack([held[mixture], g])
        labels += [name] * len(pairs)

    results: dict[str, dict[str, dict]] = {"day_vs_night_msrs": {}, "datasets_heldout": {}}
    lines = [
        "# Dynamic routing: does the choice of experts depend on the scene?",
        "",
        f"`python scripts/routing_report.py --data ../shared/data` (weights `{Path(weights).name}`, "
        f"{args.permutations} label permutations, seed 0). Statistic and test:",
        "`moefusion.studies.routing` (how far each group's expert-selection shares lie from the",
        "pooled ones; p = share of label permutations at least as extreme). 5 % level.",
        "",
        f"## MSRS, day versus night (all {len(msrs)} pairs)",
        "",
        "| mixture | result |",
        "|---|---|",
    ]
    lines += _test_rows(msrs_gates, light, args.permutations, results["day_vs_night_msrs"])
    lines += [
        "",
        f"## Across datasets (the {len(labels)} held-out pairs)",
        "",
        "| mixture | result |",
        "|---|---|",
    ]
    lines += _test_rows(held, labels, args.permutations, results["datasets_heldout"])
    lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing.md").write_text("\n".join(lines))
    (args.out / "routing.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


def _json(t: RoutingTest) -> dict:
    return {
        "statistic": t.statistic,
        "p_value": t.p_value,
        "groups": list(t.groups),
        "counts": list(t.counts),
        "frequencies": t.frequencies.round(4).tolist(),
        "permutations": t.permutations,
        "significant_5pct": t.significant(),
    }


def _test_rows(
    gates: dict[str, np.ndarray], labels: list, permutations: int, results: dict[str, dict]
) -> list[str]:
    """One table row per mixture: the permutation test of ``gates`` against ``labels``."""
    rows = []
    for mixture, title in MIXTURES.items():
        t = permutation_test(gates[mixture], labels, permutations=permutations)
        results[mixture] = _json(t)
        rows.append(f"| {title} | {describe(t)} |")
    return rows


if __name__ == "__main__":
    main()
