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

import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from moefusion.data.io import image_size as read_image_size
from moefusion.data.pairs import Pair, format_names
from moefusion.errors import AnnotationError, MoEFusionError

__all__ = [
    "BOX_TOLERANCE_PX",
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

# Labelling tools round box edges, so a box may overshoot the border by up to a pixel.
BOX_TOLERANCE_PX = 1.0
# MSRS-style layouts keep one label set per modality in these subfolders.
LABEL_SUBSETS: tuple[str, ...] = ("infrared", "visible", "fusion")
DEFAULT_LABEL_SUBSET = "infrared"
NAMES_FILES: tuple[str, ...] = ("classes.txt", "obj.names", "classes.names")

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


# ------------------------------------------------------------------------------ class names


class _ClassResolver:
    """Maps raw class names to indices: case-insensitive, after ``class_map``."""

    def __init__(self, classes: Sequence[str], class_map: Mapping[str, str] | None) -> None:
        if isinstance(classes, str) or not classes:
            raise MoEFusionError(f"classes must be a non-empty list of names, got {classes!r}")
        self.index: dict[str, int] = {}
        for i, name in enumerate(classes):
            key = str(name).strip().lower()
            if key in self.index:
                raise MoEFusionError(f"class {name!r} appears twice in the class list {classes}")
            self.index[key] = i
        self.map = {
            str(k).strip().lower(): str(v).strip().lower() for k, v in (class_map or {}).items()
        }

    def __call__(self, name: str) -> int | None:
        key = name.strip().lower()
        return self.index.get(self.map.get(key, key))


# ----------------------------------------------------------------------------- box checking


def _check_box(
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


def _make(
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


def _warn_unknown_classes(source: Path, unknown: Mapping[str, int], classes: Sequence[str]) -> None:
    """One warning per file naming each dropped class and how many of its objects."""
    if not unknown:
        return
    total = sum(unknown.values())
    listed = ", ".join(f"{name} x{n}" for name, n in sorted(unknown.items()))
    warnings.warn(
        f"{source}: dropped {total} object(s) of class(es) not in the class list "
        f"{list(classes)}: {listed} (map them with class_map / data.class_map, or add "
        "them to the classes)",
        stacklevel=3,
    )


def _warn_size_mismatch(source: Path, stated: Size, actual: Size) -> None:
    warnings.warn(
        f"{source} states image size {stated[0]}x{stated[1]} but the image is "
        f"{actual[0]}x{actual[1]}; boxes are checked against the image",
        stacklevel=3,
    )


# -------------------------------------------------------------------------------------- VOC


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
    resolve = _ClassResolver(classes, class_map)
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
        _warn_size_mismatch(src, stated, real)

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
            _check_box((xmin - 1.0, ymin - 1.0, xmax, ymax), size, src, f"object {k} ({name})")
        )
        labels.append(idx)
    _warn_unknown_classes(src, unknown, classes)
    return _make(boxes, labels, src, ignored, size)


# ------------------------------------------------------------------------------------- YOLO


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
    resolve = _ClassResolver(classes, class_map)
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
        boxes.append(_check_box(raw, (w, h), src, f"line {lineno} ({names[int(cls_f)]})"))
        labels.append(idx)
    _warn_unknown_classes(src, unknown, classes)
    return _make(boxes, labels, src, ignored, (int(w), int(h)))


# ------------------------------------------------------------------------------------- COCO


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
    resolve = _ClassResolver(classes, class_map)
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
        boxes.append(_check_box((x, y, x + bw, y + bh), size, src, what))
        labels.append(idx)
    _warn_unknown_classes(src, unknown, classes)
    return {
        images[i][0]: _make(b, lab, src, ign[0], images[i][1])
        for i, (b, lab, ign) in per_image.items()
    }


# ------------------------------------------------------------------------ dataset discovery


LabelFormat = Literal["voc", "yolo", "coco", "none"]


@dataclass
class LabelSource:
    """Where a dataset's labels are and how to read them (see :func:`open_labels`).

    Attributes:
        folder: the folder holding the label files (None when there are no labels).
        format: ``"voc"``, ``"yolo"``, ``"coco"`` or ``"none"``.
        files: stem -> label file (VOC/YOLO).
        names: YOLO class names (from ``classes.txt``), else None.
        coco: parsed COCO annotations by stem, else None.
        unmatched: label keys that match no pair.
    """

    folder: Path | None
    format: LabelFormat
    classes: tuple[str, ...]
    class_map: dict[str, str] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    names: list[str] | None = None
    coco: dict[str, Annotation] | None = None
    unmatched: list[str] = field(default_factory=list)

    def has_label(self, stem: str) -> bool:
        """True when ``stem`` has a label file (i.e. the pair is labelled)."""
        if self.format == "coco":
            return self.coco is not None and self._coco_key(stem) is not None
        return stem in self.files

    def _coco_key(self, stem: str) -> str | None:
        assert self.coco is not None
        for key in (stem, Path(stem).name):
            if key in self.coco:
                return key
        return None

    def load(self, pair: Pair, image_size: Size | None = None) -> Annotation | None:
        """The pair's annotation, or None when it has no label file (unlabelled).

        ``image_size`` (width, height) is read from the IR file when not given.
        """
        if not self.has_label(pair.stem):
            return None
        size = image_size if image_size is not None else read_image_size(pair.ir)
        if self.format == "voc":
            return load_voc(
                self.files[pair.stem], self.classes, class_map=self.class_map, image_size=size
            )
        if self.format == "yolo":
            assert self.names is not None
            return load_yolo(
                self.files[pair.stem], size, self.names, self.classes, class_map=self.class_map
            )
        assert self.coco is not None
        key = self._coco_key(pair.stem)
        assert key is not None
        ann = self.coco[key]
        if ann.image_size is not None and tuple(ann.image_size) != tuple(size):
            _warn_size_mismatch(ann.source, ann.image_size, size)
        what = f"image {key}"
        boxes = [_check_box(b, size, ann.source, what) for b in ann.boxes.tolist()]
        return _make(boxes, ann.labels.tolist(), ann.source, ann.n_ignored, size)


def _non_hidden_files(folder: Path, recursive: bool) -> list[Path]:
    """Files of ``folder`` (below it with ``recursive``) outside hidden (``.*``) paths."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in candidates
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _label_files(folder: Path, recursive: bool) -> dict[str, list[Path]]:
    by_kind: dict[str, list[Path]] = {"xml": [], "txt": [], "json": []}
    for p in _non_hidden_files(folder, recursive):
        ext = p.suffix.lower().lstrip(".")
        if ext in by_kind and p.name.lower() not in NAMES_FILES:
            by_kind[ext].append(p)
    return by_kind


def _choose_folder(base: Path, label_set: str | None) -> Path | None:
    subsets = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    has_direct = any(_label_files(base, recursive=False).values())
    if label_set is not None:
        if (base / label_set).is_dir():
            return base / label_set
        if subsets:
            raise AnnotationError(
                f"label set {label_set!r} not found in {base}; available: {', '.join(subsets)}"
            )
        warnings.warn(
            f"label_set={label_set!r} ignored: {base} has no label subfolders", stacklevel=3
        )
        return base
    if has_direct or not subsets:
        return base
    if DEFAULT_LABEL_SUBSET in subsets:
        return base / DEFAULT_LABEL_SUBSET
    raise AnnotationError(
        f"{base} holds label subfolders ({', '.join(subsets)}) but no label files; "
        "choose one with label_set"
    )


def open_labels(
    root: str | Path | None,
    pairs: Sequence[Pair],
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    label_set: str | None = None,
    label_dir: str | Path | None = None,
) -> LabelSource:
    """Locate a dataset's labels and detect their format, without reading VOC/YOLO files.

    Looks in ``label_dir`` or else ``root/labels``; a missing ``root/labels`` means an
    unlabelled dataset, a missing explicit ``label_dir`` is an error. With MSRS-style
    subfolders (``infrared/``, ``visible/``, ``fusion/``), ``label_set`` picks one
    (default ``"infrared"``). Label files matching no pair produce one warning.

    Raises:
        AnnotationError: missing ``label_dir``, unknown ``label_set``, mixed formats,
            several COCO json files, a missing or malformed YOLO class-names file or a
            malformed COCO file.
    """
    resolver_classes = tuple(str(c) for c in classes)
    _ClassResolver(resolver_classes, class_map)  # validate the class list early
    cmap = dict(class_map) if class_map else None
    none = LabelSource(folder=None, format="none", classes=resolver_classes, class_map=cmap)
    if label_dir is not None:
        base = Path(label_dir)
        if not base.is_dir():
            raise AnnotationError(f"label folder not found: {base}")
    elif root is not None:
        base = Path(root) / "labels"
        if not base.is_dir():
            return none
    else:
        return none

    folder = _choose_folder(base, label_set)
    if folder is None:
        return none
    recursive = any("/" in p.stem for p in pairs)
    by_kind = _label_files(folder, recursive)
    kinds = [k for k, v in by_kind.items() if v]
    if not kinds:
        warnings.warn(
            f"no label files (.xml, .txt, .json) in {folder}: all pairs unlabelled", stacklevel=2
        )
        return LabelSource(folder=folder, format="none", classes=resolver_classes, class_map=cmap)
    if len(kinds) > 1:
        counts = ", ".join(f"{len(by_kind[k])} .{k}" for k in kinds)
        raise AnnotationError(
            f"{folder} mixes label formats ({counts}); keep one format per folder"
        )

    stems = {p.stem for p in pairs}
    kind = kinds[0]
    if kind == "json":
        if len(by_kind["json"]) > 1:
            raise AnnotationError(
                f"{folder} holds several json files ({format_names(p.name for p in by_kind['json'])}); "
                "expected one COCO file"
            )
        coco = load_coco(by_kind["json"][0], resolver_classes, class_map=cmap)
        source = LabelSource(
            folder=folder, format="coco", classes=resolver_classes, class_map=cmap, coco=coco
        )
        matched = {k for s in stems if (k := source._coco_key(s)) is not None}
        source.unmatched = sorted(set(coco) - matched)
        missing = sorted(s for s in stems if source._coco_key(s) is None)
        if missing:
            warnings.warn(
                f"{len(missing)} image pair(s) are not in the COCO file {by_kind['json'][0]} "
                f"and are treated as unlabelled: {format_names(missing)}",
                stacklevel=2,
            )
    else:
        files = {
            (p.relative_to(folder).with_suffix("").as_posix() if recursive else p.stem): p
            for p in by_kind[kind]
        }
        names = None
        if kind == "txt":
            names_file = next(
                (d / n for d in (folder, folder.parent) for n in NAMES_FILES if (d / n).is_file()),
                None,
            )
            if names_file is None:
                raise AnnotationError(
                    f"YOLO labels in {folder} need a class-names file ({' or '.join(NAMES_FILES)}) "
                    f"in {folder} or {folder.parent}"
                )
            names = read_class_names(names_file)
        source = LabelSource(
            folder=folder,
            format="voc" if kind == "xml" else "yolo",
            classes=resolver_classes,
            class_map=cmap,
            files={k: v for k, v in files.items() if k in stems},
            names=names,
            unmatched=sorted(set(files) - stems),
        )
    if source.unmatched:
        warnings.warn(
            f"{len(source.unmatched)} label(s) in {folder} match no image pair: "
            f"{format_names(source.unmatched)}",
            stacklevel=2,
        )
    return source


def find_annotations(
    root: str | Path | None,
    pairs: Sequence[Pair],
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    label_set: str | None = None,
    label_dir: str | Path | None = None,
    image_sizes: Mapping[str, Size] | None = None,
) -> dict[str, Annotation | None]:
    """``{pair stem: Annotation}``; pairs without a label file map to None (unlabelled).

    See :func:`open_labels` for where labels are looked for. ``image_sizes``
    (stem -> (width, height)) avoids re-reading image headers.
    """
    source = open_labels(
        root, pairs, classes, class_map=class_map, label_set=label_set, label_dir=label_dir
    )
    sizes = image_sizes or {}
    return {p.stem: source.load(p, sizes.get(p.stem)) for p in pairs}
