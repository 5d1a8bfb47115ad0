"""Plot a training run's logged losses (CSV logger) to a PNG for the model card.

python scripts/plot_losses.py runs/cpu-v1 docs/report/loss_curves.png --mark 1276:lr=1e-3

A resumed run logs into a new ``version_N`` folder; where versions overlap (steps logged
before an interruption and trained again after it) the latest version's value is kept.
``--mark STEP:LABEL`` draws a labelled vertical line (e.g. learning-rate changes).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KEYS = ("loss/fusion", "loss/pixel", "loss/grad", "loss/load", "loss/det")


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """Logged rows, one per step, from every version folder (later versions win)."""
    paths = sorted(
        (run_dir / "logs" / "csv").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    by_step: dict[int, dict[str, str]] = {}
    for path in paths:
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("step"):
                    by_step.setdefault(int(row["step"]), {}).update(
                        {k: v for k, v in row.items() if v}
                    )
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: np.ndarray, width: int = 5) -> np.ndarray:
    if len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mark", action="append", default=[], metavar="STEP:LABEL")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average width (points)")
    args = parser.parse_args()
    marks = [(int(m.split(":", 1)[0]), m.split(":", 1)[1]) for m in args.mark]
    rows = read_rows(args.run)
    fig, axes = plt.subplots(1, len(KEYS), figsize=(3.2 * len(KEYS), 2.8))
    for ax, key in zip(axes, KEYS, strict=True):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        steps, vals = (np.array(v) for v in zip(*pts, strict=True))
        ax.plot(steps, vals, color="#bbbbbb", lw=0.8)
        s = smooth(vals, args.smooth)
        ax.plot(steps[len(steps) - len(s) :], s, color="#1f5fa8", lw=1.5)
        for step, label in marks:
            ax.axvline(step, color="#c0392b", lw=0.8, ls="--")
            ax.text(step, ax.get_ylim()[1], f" {label}", color="#c0392b", fontsize=7, va="top")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out} ({len(rows)} logged steps)")


if __name__ == "__main__":
    main()
