"""The result table (paper Table 3): rows of per-class AP and mAP, as Markdown, CSV, JSON."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INTERPOLATION", "DetectionTable", "TableRow", "percent"]

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


@dataclass
class DetectionTable:
    """The result of a detection evaluation, like the paper's Table 3."""

    classes: list[str]
    rows: list[TableRow]
    meta: dict[str, Any] = field(default_factory=dict)

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

    def to_markdown(self) -> str:
        head = ["Input", *self.classes, "mAP"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, *(self._fmt(r.ap[c]) for c in self.classes), self._fmt(r.map)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + self.footer() + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", *self.classes, "mAP", "n_images"])
        for r in self.rows:
            writer.writerow(
                [
                    r.name,
                    *("" if r.ap[c] is None else f"{r.ap[c]:.4f}" for c in self.classes),
                    "" if r.map is None else f"{r.map:.4f}",
                    r.n_images,
                ]
            )
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": "percent",
            "classes": self.classes,
            "rows": [
                {"input": r.name, "ap": r.ap, "map": r.map, "n_images": r.n_images}
                for r in self.rows
            ],
            "meta": self.meta,
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out_dir``."""
        from moefusion.atomic import atomic_write_text

        out = Path(out_dir)
        paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
        atomic_write_text(paths["md"], self.to_markdown())
        atomic_write_text(paths["csv"], self.to_csv())
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        return paths


def percent(v: float | None) -> float | None:
    """A fraction as percent rounded to 4 decimals (None stays None)."""
    return None if v is None else round(100.0 * v, 4)
