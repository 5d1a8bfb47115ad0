"""A study's table (Markdown, CSV, JSON), its figure and a verdict per paper claim.

Scores are the means over the held-out pairs (``paper`` convention); with several seeds
a variant's score is the mean over seeds and its spread the sample standard deviation
over seeds. Comparing two variants on a metric:

* one seed: the larger mean wins (there is no spread to call a tie);
* several seeds: a difference no larger than ``sqrt(sd_a**2 + sd_b**2)`` (the spread of
  the difference of two single runs) is a tie, otherwise the larger mean wins.

A claim "A beats B on k of 8" agrees with the data when A wins a majority (> 4) of the
8 metrics here exactly when it does in the paper; the counts are printed either way.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moefusion.atomic import atomic_write_text
from moefusion.figures import write_figure
from moefusion.studies.definitions import PAPER_METRICS, Claim, Study
from moefusion.studies.runner import RunResult


@dataclass
class Score:
    """A variant's mean and spread (0 with one seed) per metric, over its seeds."""

    mean: dict[str, float]
    spread: dict[str, float]
    seeds: int
    steps: int
    train_seconds: float


def scores_by_variant(study: Study, results: Sequence[RunResult]) -> dict[str, Score]:
    """Aggregate runs over seeds, in the study's variant order (variants without runs left out)."""
    out: dict[str, Score] = {}
    for variant in study.variants:
        runs = [r for r in results if r.variant == variant.name]
        if not runs:
            continue
        mean = {m: statistics.fmean(r.means[m] for r in runs) for m in PAPER_METRICS}
        spread = {
            m: statistics.stdev([r.means[m] for r in runs]) if len(runs) > 1 else 0.0
            for m in PAPER_METRICS
        }
        out[variant.name] = Score(
            mean,
            spread,
            len(runs),
            round(statistics.fmean(r.steps for r in runs)),
            statistics.fmean(r.train_seconds for r in runs),
        )
    return out


def compare(a: Score, b: Score, metric: str) -> int:
    """+1 if ``a`` beats ``b`` on ``metric``, -1 if ``b`` beats ``a``, 0 for a tie."""
    diff = a.mean[metric] - b.mean[metric]
    both_spread = a.seeds > 1 and b.seeds > 1
    tolerance = math.hypot(a.spread[metric], b.spread[metric]) if both_spread else 0.0
    if abs(diff) <= tolerance:
        return 0
    return 1 if diff > 0 else -1


def best_per_metric(scores: Mapping[str, Score]) -> dict[str, str]:
    """{metric: the variant with the highest mean} (the first one on equal means)."""
    return {m: max(scores, key=lambda v: scores[v].mean[m]) for m in PAPER_METRICS}


@dataclass
class Verdict:
    claim: Claim
    wins: int
    ties: int
    agrees: bool | None  # None: a variant of the claim was not run

    def sentence(self) -> str:
        c = self.claim
        paper = ", ".join(str(n) for n in c.paper_count)
        if self.agrees is None:
            return f"{c.better} vs {c.worse}: not run."
        tie = f" ({self.ties} tied within the seed spread)" if self.ties else ""
        said = f"the paper says {paper}" + (f" in {c.source}" if c.source else "")
        verdict = "agrees" if self.agrees else "does not agree"
        return f"{c.better} beats {c.worse} on {self.wins} of 8 metrics{tie}; {said}: {verdict}."


def check_claims(study: Study, scores: Mapping[str, Score]) -> list[Verdict]:
    verdicts = []
    for claim in study.claims:
        if claim.better not in scores or claim.worse not in scores:
            verdicts.append(Verdict(claim, 0, 0, None))
            continue
        outcome = [compare(scores[claim.better], scores[claim.worse], m) for m in PAPER_METRICS]
        wins, ties = outcome.count(1), outcome.count(0)
        paper_majority = all(n > len(PAPER_METRICS) / 2 for n in claim.paper_count)
        agrees = (wins > len(PAPER_METRICS) / 2) == paper_majority
        verdicts.append(Verdict(claim, wins, ties, agrees))
    return verdicts


def _cell(score: Score, metric: str, bold: bool) -> str:
    text = f"{score.mean[metric]:.4f}"
    if score.seeds > 1:
        text += f" ± {score.spread[metric]:.4f}"
    return f"**{text}**" if bold else text


def markdown_table(study: Study, scores: Mapping[str, Score]) -> str:
    best = best_per_metric(scores)
    lines = [
        "| variant | " + " | ".join(PAPER_METRICS) + " | steps | train min |",
        "|---|" + "---|" * (len(PAPER_METRICS) + 2),
    ]
    for name, score in scores.items():
        cells = [_cell(score, m, best[m] == name) for m in PAPER_METRICS]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {score.steps} | {score.train_seconds / 60:.1f} |"
        )
    return "\n".join(lines)


def paper_tables(study: Study) -> str:
    """The paper's own numbers for the study (Table 2), one Markdown table per dataset."""
    parts = []
    for dataset, rows in study.paper_table.items():
        lines = [
            f"| paper, {dataset} | " + " | ".join(PAPER_METRICS) + " |",
            "|---|" + "---|" * len(PAPER_METRICS),
        ]
        best = {m: max(rows, key=lambda v: rows[v][m]) for m in PAPER_METRICS}
        for name in (v.name for v in study.variants):
            if name in rows:
                cells = [
                    f"**{rows[name][m]:.4f}**" if best[m] == name else f"{rows[name][m]:.4f}"
                    for m in PAPER_METRICS
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def csv_text(scores: Mapping[str, Score]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["variant", "seeds", "steps", "train_seconds"]
        + [f"{m}_{k}" for m in PAPER_METRICS for k in ("mean", "sd")]
    )
    for name, s in scores.items():
        writer.writerow(
            [name, s.seeds, s.steps, f"{s.train_seconds:.1f}"]
            + [f"{v:.6f}" for m in PAPER_METRICS for v in (s.mean[m], s.spread[m])]
        )
    return buffer.getvalue()


def save_figure(study: Study, scores: Mapping[str, Score], path: Path) -> Path | None:
    """Fig. 7-like bars or Fig. 8-like lines, one panel per metric; None for table studies."""
    if study.plot is None or not scores:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    names = list(scores)
    for ax, metric in zip(axes.flat, PAPER_METRICS, strict=True):
        means = [scores[n].mean[metric] for n in names]
        errs = [scores[n].spread[metric] for n in names]
        if study.plot == "bars":
            colors = ["tab:red" if n == study.reference else "tab:blue" for n in names]
            ax.bar(range(len(names)), means, yerr=errs, color=colors, capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
            low, high = min(means), max(means)
            pad = (high - low) * 0.5 or abs(high) * 0.05 or 1.0
            ax.set_ylim(low - pad, high + pad)
        else:
            xs = [study.variant(n).x for n in names]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3)
            if study.reference in names:
                i = names.index(study.reference)
                ax.plot([xs[i]], [means[i]], "o", color="tab:red", zorder=3)
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel(study.x_label, fontsize=8)
        ax.set_title(metric)
    fig.suptitle(f"{study.title}: held-out mean per metric (red: the paper's choice)")
    return write_figure(fig, path, dpi=90)


def write_report(
    study: Study, results: Sequence[RunResult], out: Path, header: Sequence[str] = ()
) -> dict[str, Path]:
    """Write ``<out>/<study>.{md,csv,json}`` and the figure; returns the written paths."""
    scores = scores_by_variant(study, results)
    verdicts = check_claims(study, scores)
    figure = save_figure(study, scores, out / f"{study.name}.png")
    lines = [f"# {study.title}", "", *header, "", markdown_table(study, scores), ""]
    lines += ["Best per metric in bold. Claims of the paper:", ""]
    lines += [f"- {v.sentence()}" for v in verdicts]
    if study.paper_table:
        lines += ["", "The paper's numbers:", "", paper_tables(study)]
    if figure is not None:
        lines += ["", f"![{study.name}]({figure.name})"]
    paths = {
        "md": atomic_write_text(out / f"{study.name}.md", "\n".join(lines) + "\n"),
        "csv": atomic_write_text(out / f"{study.name}.csv", csv_text(scores)),
    }
    payload: dict[str, Any] = {
        "study": study.name,
        "reference": study.reference,
        "best": best_per_metric(scores) if scores else {},
        "variants": {
            n: {"mean": s.mean, "spread": s.spread, "seeds": s.seeds, "steps": s.steps}
            for n, s in scores.items()
        },
        "runs": [
            {
                "variant": r.variant,
                "seed": r.seed,
                "folder": str(r.folder),
                "means": r.means,
                "per_dataset": r.per_dataset,
                "pairs": r.pairs,
                "steps": r.steps,
                "train_seconds": r.train_seconds,
            }
            for r in results
        ],
        "claims": [
            {
                "better": v.claim.better,
                "worse": v.claim.worse,
                "wins": v.wins,
                "ties": v.ties,
                "paper": list(v.claim.paper_count),
                "agrees": v.agrees,
                "sentence": v.sentence(),
            }
            for v in verdicts
        ],
    }
    paths["json"] = atomic_write_text(
        out / f"{study.name}.json", json.dumps(payload, indent=1) + "\n"
    )
    if figure is not None:
        paths["figure"] = figure
    return paths
