"""How often each expert of each gate is selected, over one part of a split.

    python scripts/expert_usage.py --weights W [W ...] [--part train|val|test]
        [--data ../shared/data] [--split shared-data-v2]

Fuses every pair of the part (all five datasets) with each weights file and prints, per
mixture (MoLE foreground, MoLE background, MoGE), the share of pairs on which each expert
was among the selected top-k (:func:`moefusion.studies.routing.selections`). An expert at
0 is never used: the collapse the training recipe must avoid (docs/training.md).

A second table says how firmly each gate routes (:func:`moefusion.studies.routing.
gate_logits_of`): the spread of its clean logits across pairs (how much routing depends
on the input), the median gap between the K-th and (K+1)-th clean logit (how far a pair
is from another expert set), and per expert the median noise standard deviation the gate
adds to its logit in training. A gap far below the noise means training routed at random
and inference routes on small, nearly input-independent logit differences.

A third table says how much each expert contributes once selected: its mean gate weight
over the pairs and the share of pairs on which it gets at least ``USED_WEIGHT`` (5 %) of
the weight, what the fit report and the quality report count as *used*. A selected
expert whose softmax weight is near 0 on every pair counts in the first table but adds
nothing to the fused image. Reads gates only; nothing is tuned.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moefusion import Fuser
from moefusion.data import SHARED_DATASETS, resolve_split, split_part_pairs
from moefusion.models.gating import USED_WEIGHT
from moefusion.studies.routing import GateLogits, gate_logits_of

ROOT = Path(__file__).resolve().parents[1]


def usage(logits: dict[str, GateLogits]) -> dict[str, np.ndarray]:
    """``{mixture: [N]}`` share of the pairs on which each expert was selected."""
    return {name: g.usage() for name, g in logits.items()}


def firmness(logits: dict[str, GateLogits]) -> dict[str, tuple[float, float, np.ndarray]]:
    """``{mixture: (logit spread, median top-K gap, [N] median training noise std)}``."""
    return {
        name: (g.spread(), float(np.median(g.margins())), np.median(g.noise_std, axis=0))
        for name, g in logits.items()
    }


def weight_share(logits: dict[str, GateLogits]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{mixture: ([N] mean gate weight, [N] share of pairs with weight >= USED_WEIGHT)}``."""
    out = {}
    for name, g in logits.items():
        if g.weights is None:
            raise ValueError("these gate logits were recorded without the gate weights")
        out[name] = (g.weights.mean(axis=0), (g.weights >= USED_WEIGHT).mean(axis=0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="+", required=True)
    parser.add_argument("--part", choices=("train", "val", "test"), default="train")
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--split", default="shared-data-v2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = resolve_split(args.split)
    per_dataset = split_part_pairs(args.data, split, args.part, SHARED_DATASETS)
    pairs = [p for dataset in per_dataset.values() for p in dataset]
    print(f"`python scripts/expert_usage.py --part {args.part}`: {len(pairs)} pairs of the")
    print(f"{args.part} part of {args.split}; share of pairs on which each expert was selected")
    print()
    # one pass per weights file: the gate hooks record the weights and the logits
    logits = {
        w: gate_logits_of(Fuser.from_file(w, device="cpu"), pairs, w.name) for w in args.weights
    }
    results = {w: usage(g) for w, g in logits.items()}
    n = max(len(share) for r in results.values() for share in r.values())
    print("| weights | mixture | " + " | ".join(f"expert {i}" for i in range(n)) + " | lowest |")
    print("|---|---|" + "---|" * (n + 1))
    for w, result in results.items():
        for mixture, share in result.items():
            cells = " | ".join(f"{x:.3f}" for x in share)
            print(f"| {w} | {mixture} | {cells} | {share.min():.3f} |")
    print()
    header = ("weights", "mixture", "logit spread across pairs", "median top-k gap",
              "training noise std per expert (median)")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|")
    for w, gates in logits.items():
        for mixture, (spread, gap, noise) in firmness(gates).items():
            noises = " / ".join(f"{x:.3g}" for x in noise)
            print(f"| {w} | {mixture} | {spread:.4f} | {gap:.4f} | {noises} |")
    print()
    print(f"mean gate weight per expert (share of pairs on which it gets >= {USED_WEIGHT:.0%})")
    print()
    print("| weights | mixture | " + " | ".join(f"expert {i}" for i in range(n)) + " |")
    print("|---|---|" + "---|" * n)
    for w, gates in logits.items():
        for mixture, (mean, share) in weight_share(gates).items():
            cells = " | ".join(f"{m:.3f} ({s:.2f})" for m, s in zip(mean, share, strict=True))
            print(f"| {w} | {mixture} | {cells} |")


if __name__ == "__main__":
    main()
