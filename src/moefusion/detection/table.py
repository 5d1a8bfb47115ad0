"""The result table (paper Table 3): rows of per-class AP and mAP, as Markdown, CSV, JSON."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INTERPOLATION", "DetectionTable", "DifferenceRow", "TableRow", "percent"]

INTERPOLATION = (
    "COCO 101-point interpolated AP (precision envelope sampled at recall 0, 0.01, ..., 1)"
)


@dataclass
class TableRow:
    """One input of the table: per-class AP and mAP in percent (None: no GT boxes)."""

    name: str
    ap: dict[str, float | None]
    map: float | None
    n_images: int
    #: bootstrap percentile intervals in percent (``--bootstrap``), else None
    map_ci: tuple[float, float] | None = None
    ap_ci: dict[str, tuple[float, float] | None] | None = None


@dataclass
class DifferenceRow:
    """mAP of ``row`` minus mAP of ``reference`` in percent points, with its paired
    bootstrap interval and the share of resamples where ``row`` is above."""

    row: str
    reference: str
    diff: float
    ci: tuple[float, float]
    share_positive: float


@dataclass
class DetectionTable:
    """The result of a detection evaluation, like the paper's Table 3."""

    classes: list[str]
    rows: list[TableRow]
    meta: dict[str, Any] = field(default_factory=dict)
    differences: list[DifferenceRow] = field(default_factory=list)

    @property
    def bootstrapped(self) -> bool:
        return any(r.map_ci is not None for r in self.rows)

    @staticmethod
    def _fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    def footer(self) -> str:
        m = self.meta
        counts = ", ".join(f"{c} {n}" for c, n in m.get("gt_boxes", {}).items())
        return (
            f"AP at IoU {m.get('iou_threshold', 0.5)} in percent, {INTERPOLATION}, "
            f"torchmetrics MeanAveragePrecision ({m.get('backend', '?')}); mAP is the mean "
            f"over classes with ground truth. {m.get('n_test_pairs', '?')} labelled test "
            f"pairs ({m.get('test_pairs_by_dataset', {})}); ground-truth boxes: {counts}."
        )

    @staticmethod
    def _fmt_ci(ci: tuple[float, float] | None) -> str:
        return "n/a" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"

    def bootstrap_footer(self) -> str:
        b = self.meta.get("bootstrap", {})
        return (
            f"{int(100 * b.get('level', 0.95))} % percentile intervals of a paired bootstrap "
            f"over the test images ({b.get('n_resamples', '?')} resamples, seed "
            f"{b.get('seed', '?')}; every row resampled with the same draws)."
        )

    def differences_markdown(self) -> str:
        """The differences as a Markdown table (empty string when there are none)."""
        if not self.differences:
            return ""
        lines = [
            "| Comparison | mAP difference | 95 % CI | resamples above |",
            "|---|---|---|---|",
        ]
        for d in self.differences:
            lines.append(
                f"| {d.row} - {d.reference} | {d.diff:+.2f} | "
                f"[{d.ci[0]:+.2f}, {d.ci[1]:+.2f}] | {100 * d.share_positive:.1f} % |"
            )
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        boot = self.bootstrapped
        head = ["Input", *self.classes, "mAP", *(["mAP 95 % CI"] if boot else [])]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, *(self._fmt(r.ap[c]) for c in self.classes), self._fmt(r.map)]
            if boot:
                cells.append(self._fmt_ci(r.map_ci))
            lines.append("| " + " | ".join(cells) + " |")
        text = "\n".join(lines) + "\n\n" + self.footer() + "\n"
        if boot:
            text += "\n" + self.differences_markdown()
            text += "\nmAP differences in percent points. " + self.bootstrap_footer() + "\n"
        return text

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        boot = self.bootstrapped
        extra = ["mAP_ci_low", "mAP_ci_high"] if boot else []
        writer.writerow(["input", *self.classes, "mAP", "n_images", *extra])
        for r in self.rows:
            ci = [] if not boot else ["", ""] if r.map_ci is None else list(r.map_ci)
            writer.writerow(
                [
                    r.name,
                    *("" if r.ap[c] is None else f"{r.ap[c]:.4f}" for c in self.classes),
                    "" if r.map is None else f"{r.map:.4f}",
                    r.n_images,
                    *(v if v == "" else f"{v:.4f}" for v in ci),
                ]
            )
        return buf.getvalue()

    def differences_csv(self) -> str:
        """``row, reference, diff, ci_low, ci_high, share_positive`` (percent points)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["row", "reference", "diff", "ci_low", "ci_high", "share_positive"])
        for d in self.differences:
            writer.writerow(
                [
                    d.row,
                    d.reference,
                    f"{d.diff:.4f}",
                    f"{d.ci[0]:.4f}",
                    f"{d.ci[1]:.4f}",
                    f"{d.share_positive:.4f}",
                ]
            )
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": "percent",
            "classes": self.classes,
            "rows": [self._row_dict(r) for r in self.rows],
            "differences": [
                {
                    "row": d.row,
                    "reference": d.reference,
                    "diff": d.diff,
                    "ci": list(d.ci),
                    "share_positive": d.share_positive,
                }
                for d in self.differences
            ],
            "meta": self.meta,
        }

    @staticmethod
    def _row_dict(r: TableRow) -> dict[str, Any]:
        out: dict[str, Any] = {"input": r.name, "ap": r.ap, "map": r.map, "n_images": r.n_images}
        if r.map_ci is not None:
            out["map_ci"] = list(r.map_ci)
            out["ap_ci"] = {c: None if v is None else list(v) for c, v in (r.ap_ci or {}).items()}
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out_dir``, and
        ``differences.csv`` when the table was bootstrapped."""
        from moefusion.atomic import atomic_write_text

        out = Path(out_dir)
        paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
        atomic_write_text(paths["md"], self.to_markdown())
        atomic_write_text(paths["csv"], self.to_csv())
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        if self.bootstrapped:
            paths["differences"] = out / "differences.csv"
            atomic_write_text(paths["differences"], self.differences_csv())
        return paths


def percent(v: float | None) -> float | None:
    """A fraction as percent rounded to 4 decimals (None stays None)."""
    return None if v is None else round(100.0 * v, 4)
