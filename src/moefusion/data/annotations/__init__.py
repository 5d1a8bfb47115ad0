"""Object annotations (PASCAL VOC XML, YOLO txt, COCO json) as pixel boxes.

All boxes are returned as float32 ``(K, 4)`` ``x1, y1, x2, y2`` in continuous pixel
coordinates: the image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` (0-based) covers
``[i, i+1] x [j, j+1]``. In these units

- VOC's 1-based inclusive pixel indices become ``(xmin - 1, ymin - 1, xmax, ymax)``,
- YOLO's normalised centre/size becomes ``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, ...)``,
- COCO's ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``,

so the same object written in the three formats gives the same box.
"""

from __future__ import annotations

from moefusion.data.annotations.boxes import BOX_TOLERANCE_PX, Annotation
from moefusion.data.annotations.coco import load_coco
from moefusion.data.annotations.discovery import (
    DEFAULT_LABEL_SUBSET,
    LABEL_SUBSETS,
    LabelSource,
    find_annotations,
    open_labels,
)
from moefusion.data.annotations.voc import load_voc
from moefusion.data.annotations.yolo import NAMES_FILES, load_yolo, read_class_names

__all__ = [
    "BOX_TOLERANCE_PX",
    "DEFAULT_LABEL_SUBSET",
    "LABEL_SUBSETS",
    "NAMES_FILES",
    "Annotation",
    "LabelSource",
    "find_annotations",
    "load_coco",
    "load_voc",
    "load_yolo",
    "open_labels",
    "read_class_names",
]
