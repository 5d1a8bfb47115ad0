"""Boxes of one image (:class:`Annotation`) and the checks every label format shares.

Box coordinates: see :mod:`moefusion.data.annotations`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moefusion.errors import AnnotationError

__all__ = [
    "BOX_TOLERANCE_PX",
    "Annotation",
    "Size",
    "check_box",
    "make_annotation",
    "warn_size_mismatch",
]

# Labelling tools round box edges, so a box may overshoot the border by up to a pixel.
BOX_TOLERANCE_PX = 1.0

Size = tuple[int, int]  # (width, height)


@dataclass
class Annotation:
    """Boxes of one image.

    Attributes:
        boxes: ``(K, 4)`` float32 ``x1, y1, x2, y2`` in pixels, inside the image.
        labels: ``(K,)`` int64 indices into the class list.
        source: the annotation file.
        n_ignored: objects dropped (class not in the class list, VOC ``difficult``,
            COCO ``iscrowd``).
        image_size: ``(width, height)`` the boxes were checked against, if known.
    """

    boxes: np.ndarray
    labels: np.ndarray
    source: Path
    n_ignored: int = 0
    image_size: Size | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_box(
    box: Sequence[float], size: Size | None, source: Path, what: str
) -> tuple[float, float, float, float]:
    """Validate one xyxy box; clip it into the image when it overshoots by <= 1 px."""
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise AnnotationError(f"{source}: {what} has a non-finite coordinate {shown}")
    if size is not None:
        w, h = size
        tol = BOX_TOLERANCE_PX
        if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
            raise AnnotationError(
                f"{source}: {what} box {shown} (x1, y1, x2, y2 in pixels) lies outside the "
                f"{w}x{h} image by more than {tol:g} px"
            )
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        where = f" in the {size[0]}x{size[1]} image" if size is not None else ""
        raise AnnotationError(
            f"{source}: {what} box {shown} is empty (x2 <= x1 or y2 <= y1){where}"
        )
    return x1, y1, x2, y2


def make_annotation(
    boxes: list[tuple[float, float, float, float]],
    labels: list[int],
    source: Path,
    n_ignored: int,
    size: Size | None,
) -> Annotation:
    return Annotation(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        source=source,
        n_ignored=n_ignored,
        image_size=size,
    )


def warn_size_mismatch(source: Path, stated: Size, actual: Size) -> None:
    warnings.warn(
        f"{source} states image size {stated[0]}x{stated[1]} but the image is "
        f"{actual[0]}x{actual[1]}; boxes are checked against the image",
        stacklevel=3,
    )
