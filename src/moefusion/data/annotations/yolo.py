"""YOLO txt labels (``class cx cy w h``, normalised) and their class-names file."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from moefusion.data.annotations.boxes import Annotation, Size, check_box, make_annotation
from moefusion.data.annotations.classes import ClassResolver, warn_unknown_classes
from moefusion.errors import AnnotationError

__all__ = ["NAMES_FILES", "load_yolo", "read_class_names"]

#: Names of a YOLO dataset's class-names file (looked for in the label folder and its parent).
NAMES_FILES: tuple[str, ...] = ("classes.txt", "obj.names", "classes.names")

_INDEXED_NAME = re.compile(r"^(\d+)\s+(\S.*)$")


def read_class_names(path: str | Path) -> list[str]:
    """Read a YOLO class-names file: one name per line, or ``"<index> <name>"`` lines."""
    src = Path(path)
    try:
        lines = [ln.strip() for ln in src.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read class-names file {src}: {exc}") from exc
    lines = [ln for ln in lines if ln]
    if not lines:
        raise AnnotationError(f"class-names file {src} is empty")
    matches = [_INDEXED_NAME.match(ln) for ln in lines]
    if not all(matches):
        return lines
    by_index = {int(m.group(1)): m.group(2).strip() for m in matches if m}
    if len(by_index) != len(lines) or sorted(by_index) != list(range(len(lines))):
        raise AnnotationError(
            f"class-names file {src}: indices must be 0..{len(lines) - 1}, each once"
        )
    return [by_index[i] for i in range(len(lines))]


def load_yolo(
    path: str | Path,
    image_size: Size,
    names: Sequence[str],
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
) -> Annotation:
    """Read a YOLO txt file (``class cx cy w h`` per line, normalised to [0, 1]).

    ``names`` are the dataset's class names indexed by the file's class ids;
    ``image_size`` is (width, height). An empty file means "labelled, no objects".
    """
    src = Path(path)
    resolve = ClassResolver(classes, class_map)
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read YOLO annotation {src}: {exc}") from exc
    w, h = image_size
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    ignored = 0
    unknown: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise AnnotationError(
                f"{src}, line {lineno}: expected 'class cx cy w h', got {line.strip()!r}"
            )
        try:
            cls_f, cx, cy, bw, bh = (float(v) for v in fields)
        except ValueError as exc:
            raise AnnotationError(
                f"{src}, line {lineno}: non-numeric value in {line.strip()!r}"
            ) from exc
        if cls_f != int(cls_f) or not 0 <= int(cls_f) < len(names):
            raise AnnotationError(
                f"{src}, line {lineno}: class id {fields[0]} is not in the {len(names)} class names"
            )
        idx = resolve(names[int(cls_f)])
        if idx is None:
            unknown[names[int(cls_f)]] = unknown.get(names[int(cls_f)], 0) + 1
            ignored += 1
            continue
        raw = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        boxes.append(check_box(raw, (w, h), src, f"line {lineno} ({names[int(cls_f)]})"))
        labels.append(idx)
    warn_unknown_classes(src, unknown, classes)
    return make_annotation(boxes, labels, src, ignored, (int(w), int(h)))
