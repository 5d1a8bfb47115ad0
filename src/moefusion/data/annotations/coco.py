"""COCO detection json: one file for the whole dataset, ``[x, y, w, h]`` boxes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from moefusion.data.annotations.boxes import Annotation, Size, check_box, make_annotation
from moefusion.data.annotations.classes import ClassResolver, warn_unknown_classes
from moefusion.data.pairs import format_names
from moefusion.errors import AnnotationError

__all__ = ["load_coco"]


def load_coco(
    json_path: str | Path,
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
) -> dict[str, Annotation]:
    """Read a COCO detection json into ``{file stem: Annotation}``.

    Every listed image is labelled (no annotations -> zero boxes). Boxes are checked
    against the image's ``width``/``height`` entries; ``iscrowd`` boxes and unknown
    categories are dropped and counted.
    """
    src = Path(json_path)
    resolve = ClassResolver(classes, class_map)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot parse COCO annotation {src}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise AnnotationError(
            f"{src}: expected a COCO object with images, annotations and categories lists"
        )

    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images: dict[int, tuple[str, Size | None]] = {}
        for im in data["images"]:
            stem = Path(str(im["file_name"])).stem
            size = (
                (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
            )
            images[int(im["id"])] = (stem, size)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{src}: malformed image or category entry ({exc!r})") from exc
    stems = [s for s, _ in images.values()]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise AnnotationError(f"{src}: several images share the stem(s) {format_names(dupes)}")

    per_image: dict[int, tuple[list[tuple[float, float, float, float]], list[int], list[int]]] = {
        i: ([], [], [0]) for i in images
    }
    unknown: dict[str, int] = {}
    for k, ann in enumerate(data["annotations"]):
        try:
            image_id, cat_id = int(ann["image_id"]), int(ann["category_id"])
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"{src}: annotation {k} is malformed ({exc!r})") from exc
        if image_id not in images:
            raise AnnotationError(f"{src}: annotation {k} refers to unknown image id {image_id}")
        if cat_id not in categories:
            raise AnnotationError(f"{src}: annotation {k} refers to unknown category id {cat_id}")
        stem, size = images[image_id]
        boxes, labels, ignored = per_image[image_id]
        idx = resolve(categories[cat_id])
        if idx is None:
            unknown[categories[cat_id]] = unknown.get(categories[cat_id], 0) + 1
        if idx is None or ann.get("iscrowd", 0):
            ignored[0] += 1
            continue
        what = f"annotation {ann.get('id', k)} of image {stem} ({categories[cat_id]})"
        boxes.append(check_box((x, y, x + bw, y + bh), size, src, what))
        labels.append(idx)
    warn_unknown_classes(src, unknown, classes)
    return {
        images[i][0]: make_annotation(b, lab, src, ign[0], images[i][1])
        for i, (b, lab, ign) in per_image.items()
    }
