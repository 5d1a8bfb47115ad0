"""Which images the detector trains and is tested on: visible, infrared and fused rows.

Training uses the infrared and the visible image of every labelled training pair;
testing uses the labelled test pairs' visible images, infrared images and every fusion
method's images, all with the pair's boxes. :func:`select_datasets` keeps a pair file
out of training and testing at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moefusion.data import IMAGE_EXTENSIONS, Annotation, Pair, PairedFusionDataset
from moefusion.data.pairs import format_names
from moefusion.errors import ConfigError, ImageReadError, MoEFusionError, PairError

__all__ = [
    "INFRARED",
    "VISIBLE",
    "DatasetSelection",
    "DetectionImage",
    "evaluation_inputs",
    "pair_keys",
    "resolve_fused_images",
    "select_datasets",
    "training_images",
]

#: Row names of the two single-modality inputs.
VISIBLE = "Visible"
INFRARED = "Infrared"


@dataclass(frozen=True)
class DetectionImage:
    """One image to train on or evaluate, with its ground truth.

    Attributes:
        path: the image file.
        boxes: ``(K, 4)`` float32 ``x1, y1, x2, y2`` pixels of the original image.
        labels: ``(K,)`` int64 indices into the class list.
        size: ``(width, height)`` of the pair the boxes belong to.
        dataset, stem: which pair it comes from.
    """

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]
    dataset: str
    stem: str


@dataclass
class DatasetSelection:
    """The pairs of one dataset folder chosen for training or testing.

    Attributes:
        name: dataset name (the folder name; the key into a split file).
        root: the folder.
        pairs: selected pairs, sorted by stem.
        annotations: stem -> Annotation, or None for an unlabelled pair.
        sizes: stem -> ``(width, height)``.
    """

    name: str
    root: Path
    pairs: list[Pair]
    annotations: dict[str, Annotation | None]
    sizes: dict[str, tuple[int, int]]

    @property
    def labelled(self) -> list[Pair]:
        return [p for p in self.pairs if self.annotations.get(p.stem) is not None]


def _dataset_name(folder: Path) -> str:
    return folder.resolve().name


def _open_selection(
    folder: Path,
    stems: Sequence[str] | None,
    classes: Sequence[str],
    class_map: Mapping[str, str] | None,
    label_set: str | None,
) -> DatasetSelection:
    if not folder.is_dir():
        raise PairError(f"dataset folder not found: {folder} (needs ir/ and vi/ inside)")
    extra: dict[str, Any] = {} if label_set is None else {"label_set": label_set}
    ds = PairedFusionDataset(
        folder,
        classes=classes,
        class_map=class_map,
        stems=stems,
        name=_dataset_name(folder),
        **extra,
    )
    return DatasetSelection(
        name=ds.name,
        root=folder,
        pairs=ds.pairs,
        annotations=ds.annotations,
        sizes=ds.image_sizes,
    )


def _unique_names(folders: Sequence[Path], option: str) -> None:
    names = [_dataset_name(f) for f in folders]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MoEFusionError(
            f"{option} folders must have different names (the name selects the split entry "
            f"and the fused subfolder); repeated: {', '.join(dupes)}"
        )


def select_datasets(
    train_dirs: Sequence[str | Path],
    test_dirs: Sequence[str | Path],
    *,
    classes: Sequence[str],
    split: Mapping[str, Any] | None = None,
    class_map: Mapping[str, str] | None = None,
    label_set: str | None = None,
) -> tuple[list[DatasetSelection], list[DatasetSelection]]:
    """Choose the training and test pairs; never lets a pair file be in both.

    With ``split`` (a loaded split dict), a ``--train`` folder keeps the ``train`` stems
    and a ``--test`` folder the ``test`` stems of ``split["datasets"][folder name]``.
    Without it every pair of a folder is used. Either way a pair whose infrared or visible
    file (resolved path) is selected for both training and testing raises
    :class:`MoEFusionError`.
    """
    train_p, test_p = [Path(d) for d in train_dirs], [Path(d) for d in test_dirs]
    _unique_names(train_p, "--train")
    _unique_names(test_p, "--test")

    def stems_for(folder: Path, part: str) -> list[str] | None:
        if split is None:
            return None
        name = _dataset_name(folder)
        entries = split.get("datasets", {})
        if name not in entries:
            raise ConfigError(
                f"the split has no entry for dataset {name!r} ({folder}); it has: "
                f"{', '.join(sorted(entries)) or 'none'}"
            )
        return list(entries[name][part])

    train = [
        _open_selection(f, stems_for(f, "train"), classes, class_map, label_set) for f in train_p
    ]
    test = [_open_selection(f, stems_for(f, "test"), classes, class_map, label_set) for f in test_p]

    train_files = {
        path.resolve(): f"{sel.name}/{p.stem}"
        for sel in train
        for p in sel.pairs
        for path in (p.ir, p.vi)
    }
    shared = sorted(
        {
            f"{sel.name}/{p.stem}"
            for sel in test
            for p in sel.pairs
            if p.ir.resolve() in train_files or p.vi.resolve() in train_files
        }
    )
    if shared:
        hint = "" if split is not None else "; pass --split to separate train and test stems"
        raise MoEFusionError(
            f"{len(shared)} pair(s) are selected for both training and testing: "
            f"{format_names(shared)}{hint}"
        )
    return train, test


def training_images(selections: Iterable[DatasetSelection]) -> list[DetectionImage]:
    """Two training images (infrared, visible) per labelled pair, sharing its boxes."""
    images = []
    for sel in selections:
        for pair in sel.labelled:
            ann = sel.annotations[pair.stem]
            assert ann is not None
            for path in (pair.ir, pair.vi):
                images.append(
                    DetectionImage(
                        path, ann.boxes, ann.labels, sel.sizes[pair.stem], sel.name, pair.stem
                    )
                )
    return images


def _image_index(folder: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(p.stem, []).append(p)
    return index


def resolve_fused_images(
    folder: str | Path, selections: Sequence[DatasetSelection]
) -> dict[tuple[str, str], Path]:
    """``{(dataset, stem): fused image}`` for every labelled test pair.

    For each test dataset the images are looked up in ``folder/<dataset name>/`` when that
    subfolder exists, else in ``folder`` itself (flat). Flat lookup for two datasets that
    share a stem is ambiguous and refused. Missing images, or two files with one stem,
    raise :class:`MoEFusionError` naming them.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"fused image folder not found: {root}")
    found: dict[tuple[str, str], Path] = {}
    missing: list[str] = []
    flat_owner: dict[str, str] = {}
    indexes: dict[Path, dict[str, list[Path]]] = {}
    for sel in selections:
        sub = root / sel.name
        where = sub if sub.is_dir() else root
        index = indexes.setdefault(where, _image_index(where))
        for pair in sel.labelled:
            if where == root:
                other = flat_owner.setdefault(pair.stem, sel.name)
                if other != sel.name:
                    raise MoEFusionError(
                        f"fused folder {root}: stem {pair.stem!r} is a test pair of both "
                        f"{other!r} and {sel.name!r}; put each dataset's images in a "
                        f"subfolder named after it ({root}/{other}/, {root}/{sel.name}/)"
                    )
            files = index.get(pair.stem, [])
            if not files:
                missing.append(f"{where / pair.stem}.*")
            elif len(files) > 1:
                raise MoEFusionError(
                    f"fused folder {where} has several images for stem {pair.stem!r}: "
                    f"{', '.join(f.name for f in files)}"
                )
            else:
                found[(sel.name, pair.stem)] = files[0]
    if missing:
        raise MoEFusionError(
            f"fused folder {root} lacks {len(missing)} image(s) of labelled test pairs: "
            f"{format_names(missing)}"
        )
    return found


def evaluation_inputs(
    selections: Sequence[DatasetSelection], fused: Mapping[str, str | Path]
) -> dict[str, list[DetectionImage]]:
    """Rows of the table -> their images: ``Visible``, ``Infrared``, then each method.

    Only labelled test pairs are evaluated; every row uses the same pairs and boxes.
    """
    reserved = {VISIBLE.lower(), INFRARED.lower()}
    for name in fused:
        if not name or name.lower() in reserved:
            raise MoEFusionError(
                f"fused method name {name!r} is empty or clashes with the {VISIBLE}/{INFRARED} rows"
            )
    lowered = [n.lower() for n in fused]
    if len(set(lowered)) != len(lowered):
        raise MoEFusionError(f"fused method names must be unique: {', '.join(fused)}")
    pairs = [(sel, p) for sel in selections for p in sel.labelled]
    if not pairs:
        raise MoEFusionError("no labelled test pairs: nothing to evaluate")

    def row(pick: Callable[[DatasetSelection, Pair], Path]) -> list[DetectionImage]:
        out = []
        for sel, p in pairs:
            ann = sel.annotations[p.stem]
            assert ann is not None
            out.append(
                DetectionImage(
                    pick(sel, p), ann.boxes, ann.labels, sel.sizes[p.stem], sel.name, p.stem
                )
            )
        return out

    rows = {VISIBLE: row(lambda s, p: p.vi), INFRARED: row(lambda s, p: p.ir)}
    for name, folder in fused.items():
        files = resolve_fused_images(folder, selections)
        rows[name] = row(lambda s, p, f=files: f[(s.name, p.stem)])  # type: ignore[misc]
    return rows


def pair_keys(images: Iterable[DetectionImage]) -> set[str]:
    """``dataset/stem`` of every image's pair (how a saved detector records its pairs)."""
    return {f"{im.dataset}/{im.stem}" for im in images}
