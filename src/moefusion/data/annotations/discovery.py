"""Where a dataset's labels are and in which format: :func:`open_labels` finds the label
folder (``root/labels``, MSRS-style ``label_set`` subfolders) and detects VOC / YOLO / COCO;
:class:`LabelSource` reads a pair's boxes; :func:`find_annotations` does both."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from moefusion.data.annotations.boxes import (
    Annotation,
    Size,
    check_box,
    make_annotation,
    warn_size_mismatch,
)
from moefusion.data.annotations.classes import ClassResolver
from moefusion.data.annotations.coco import load_coco
from moefusion.data.annotations.voc import load_voc
from moefusion.data.annotations.yolo import NAMES_FILES, load_yolo, read_class_names
from moefusion.data.io import image_size as read_image_size
from moefusion.data.pairs import Pair, format_names
from moefusion.errors import AnnotationError

__all__ = [
    "DEFAULT_LABEL_SUBSET",
    "LABEL_SUBSETS",
    "LabelFormat",
    "LabelSource",
    "find_annotations",
    "open_labels",
]

# MSRS-style layouts keep one label set per modality in these subfolders.
LABEL_SUBSETS: tuple[str, ...] = ("infrared", "visible", "fusion")
DEFAULT_LABEL_SUBSET = "infrared"

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
            warn_size_mismatch(ann.source, ann.image_size, size)
        what = f"image {key}"
        boxes = [check_box(b, size, ann.source, what) for b in ann.boxes.tolist()]
        return make_annotation(boxes, ann.labels.tolist(), ann.source, ann.n_ignored, size)


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
    ClassResolver(resolver_classes, class_map)  # validate the class list early
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
