"""PASCAL VOC XML labels: 1-based inclusive pixel indices, one file per image."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from moefusion.data.annotations.boxes import (
    Annotation,
    Size,
    check_box,
    make_annotation,
    warn_size_mismatch,
)
from moefusion.data.annotations.classes import ClassResolver, warn_unknown_classes
from moefusion.errors import AnnotationError

__all__ = ["load_voc"]


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def load_voc(
    path: str | Path,
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    image_size: Size | None = None,
) -> Annotation:
    """Read a PASCAL VOC XML file.

    ``image_size`` (width, height) of the real image takes precedence over the file's
    ``<size>`` (a disagreement warns); without either, boxes are only checked for being
    non-empty. ``difficult`` objects and unknown classes are dropped and counted.
    """
    src = Path(path)
    resolve = ClassResolver(classes, class_map)
    real: Size | None = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    try:
        root = ET.parse(src).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"cannot parse VOC annotation {src}: {exc}") from exc
    if root.tag != "annotation":
        raise AnnotationError(f"{src}: root element is <{root.tag}>, expected <annotation>")

    stated: Size | None = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            sw, sh = (
                int(float(_text(size_node, "width") or 0)),
                int(float(_text(size_node, "height") or 0)),
            )
        except ValueError as exc:
            raise AnnotationError(f"{src}: malformed <size>: {exc}") from exc
        # Some tools write width/height 0 when they do not know them.
        stated = (sw, sh) if sw > 0 and sh > 0 else None
    size = real if real is not None else stated
    if real is not None and stated is not None and real != stated:
        warn_size_mismatch(src, stated, real)

    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    ignored = 0
    unknown: dict[str, int] = {}
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name")
        if not name:
            raise AnnotationError(f"{src}: object {k} has no <name>")
        difficult = _text(obj, "difficult") or "0"
        idx = resolve(name)
        if idx is None:
            unknown[name] = unknown.get(name, 0) + 1
        if idx is None or difficult.lower() not in ("0", "0.0", "false"):
            ignored += 1
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            raise AnnotationError(f"{src}: object {k} ({name}) has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(_text(bnd, t) or "") for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as exc:
            raise AnnotationError(f"{src}: object {k} ({name}) has a malformed <bndbox>") from exc
        # VOC pixel indices are 1-based and inclusive: see the module docstring.
        boxes.append(
            check_box((xmin - 1.0, ymin - 1.0, xmax, ymax), size, src, f"object {k} ({name})")
        )
        labels.append(idx)
    warn_unknown_classes(src, unknown, classes)
    return make_annotation(boxes, labels, src, ignored, size)
