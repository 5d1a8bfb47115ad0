"""Plot a training run's logged losses (CSV logger) to a PNG for the model card.

python scripts/plot_losses.py runs/cpu-v1 docs/report/loss_curves.png --mark 1276:lr=1e-3
python scripts/plot_losses.py runs/cpu-v4/stage2-fusion docs/report/loss_curves.png \
    --fit runs/cpu-v4/fit_report.jsonl

``RUN`` is a joint run folder or one stage's folder of a staged run; keys that the run
did not log (e.g. ``loss/det`` in the fusion stage) are left out. ``--fit`` adds the fit
report of the validation part: the model's objective against the training-free
outputs', and the lowest expert usage per gate.

A resumed run logs into a new ``version_N`` folder; where versions overlap (steps logged
before an interruption and trained again after it) the latest version's value is kept.
``--mark STEP:LABEL`` draws a labelled vertical line (e.g. learning-rate changes).
"""

from __future__ import annotations

import argparse
import csv
import json
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


def plot_fit(ax_loss, ax_usage, fit: list[dict]) -> None:
    """Validation objective of the model vs the training-free outputs; lowest expert usage."""
    steps = [r["step"] for r in fit]
    ax_loss.plot(steps, [r["loss"] for r in fit], color="#1f5fa8", lw=1.5, label="model")
    for key, color in (("loss_laplacian", "#2e8b57"), ("loss_max", "#c0392b")):
        ax_loss.axhline(fit[0][key], color=color, lw=1, ls="--", label=key.removeprefix("loss_"))
    ax_loss.set_title("fit/loss (validation pairs)")
    ax_loss.set_xlabel("step")
    ax_loss.legend(fontsize=7)
    for gate, color in (("mole_fg", "#e67e22"), ("mole_bg", "#8e44ad"), ("moge", "#16a085")):
        key = f"min_usage_{gate}"
        if key in fit[0]:
            ax_usage.plot(steps, [r[key] for r in fit], color=color, lw=1.2, label=gate)
    ax_usage.axhline(0.1, color="#999999", lw=1, ls=":")
    ax_usage.set_ylim(0, 1)
    ax_usage.set_title("lowest expert usage (validation)")
    ax_usage.set_xlabel("step")
    ax_usage.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mark", action="append", default=[], metavar="STEP:LABEL")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average width (points)")
    parser.add_argument("--fit", type=Path, default=None, help="fit_report.jsonl of the run")
    args = parser.parse_args()
    marks = [(int(m.split(":", 1)[0]), m.split(":", 1)[1]) for m in args.mark]
    rows = read_rows(args.run)
    keys = [k for k in KEYS if any(r.get(k) for r in rows)]
    fit = []
    if args.fit is not None:
        fit = [json.loads(x) for x in args.fit.read_text().splitlines() if x.strip()]
    panels = len(keys) + (2 if fit else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.8), squeeze=False)
    axes = axes[0]
    if fit:
        plot_fit(axes[len(keys)], axes[len(keys) + 1], fit)
    for ax, key in zip(axes, keys, strict=False):
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
