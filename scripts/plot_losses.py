"""Plot a training run's logged losses (CSV logger) to a PNG for the model card.

python scripts/plot_losses.py runs/cpu-v1 docs/report/loss_curves.png
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
    rows: list[dict[str, str]] = []
    for path in sorted((run_dir / "logs" / "csv").glob("version_*/metrics.csv")):
        with path.open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def smooth(values: np.ndarray, width: int = 5) -> np.ndarray:
    if len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    rows = read_rows(args.run)
    fig, axes = plt.subplots(1, len(KEYS), figsize=(3.2 * len(KEYS), 2.8))
    for ax, key in zip(axes, KEYS, strict=True):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        steps, vals = (np.array(v) for v in zip(*pts, strict=True))
        ax.plot(steps, vals, color="#bbbbbb", lw=0.8)
        s = smooth(vals)
        ax.plot(steps[len(steps) - len(s) :], s, color="#1f5fa8", lw=1.5)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out} ({len(rows)} logged steps)")


if __name__ == "__main__":
    main()
