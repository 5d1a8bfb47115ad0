"""Paired infrared/visible dataset with optional boxes, and its batch collation.

A sample is a dict::

    {"ir": Tensor[1, H, W] float32 in [0, 1],
     "vi": Tensor[1, H, W] gray visible,
     "vi_rgb": Tensor[3, H, W] visible colour,
     "boxes": Tensor[K, 4] float32 xyxy pixels or None,
     "labels": Tensor[K] int64 or None,
     "stem": str, "dataset": str}

A sample is labelled iff ``boxes is not None``; ``K == 0`` means labelled, no objects.
Padding transforms may add ``"valid": Tensor[1, H, W] bool``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from moefusion.data.annotations import Annotation, open_labels
from moefusion.data.io import HIGH_BIT_MODES, image_size, load_pair
from moefusion.data.pairs import Pair, format_names, match_pairs, unpaired_message
from moefusion.errors import MoEFusionError, PairError

__all__ = ["DEFAULT_CLASSES", "DEFAULT_CLASS_MAP", "PairedFusionDataset", "collate_pairs"]

DEFAULT_CLASSES: tuple[str, ...] = ("person", "car", "bicycle")

# Only unambiguous synonyms: "People" (M3FD), "pedestrian" and "bike" mean our classes.
# M3FD's Motorcycle/Bus/Truck/Lamp are deliberately not folded into bicycle/car: that
# would change what the detection metrics measure. Pass class_map to opt in.
DEFAULT_CLASS_MAP: dict[str, str] = {
    "people": "person",
    "pedestrian": "person",
    "bike": "bicycle",
}

_MAX_REASONS = 3


class PairedFusionDataset(Dataset):
    """Infrared/visible pairs of one dataset, with boxes where labels exist.

    Args:
        root: dataset folder with ``ir/``, ``vi/`` and optionally ``labels/``.
        ir_dir, vi_dir: image folders (override ``root/ir``, ``root/vi``).
        labels: ``"auto"`` (``root/labels`` if it exists), a label folder, or None
            (treat every pair as unlabelled).
        classes: class names; labels are indices into this list.
        class_map: raw name -> class name synonyms; None means :data:`DEFAULT_CLASS_MAP`,
            ``{}`` disables mapping.
        label_set: label subfolder for MSRS-style layouts (default ``"infrared"``).
        stems: keep only these pairs (unknown stems are an error).
        transform: callable on the sample dict (see :mod:`moefusion.data.transforms`).
        high_bit: 16-bit normalisation, see :func:`moefusion.data.io.to_unit_float`.
        skip_bad: drop pairs that fail validation (warns once; see ``skipped``)
            instead of raising.
        name: dataset name in samples; default the root (or IR folder's parent) name.
        recursive: search image folders recursively (stems become relative paths).
        ir_suffix, vi_suffix: ends of the file stems that mark the two images of a pair
            in one folder (FLIR-aligned; see :func:`~moefusion.data.pairs.match_pairs`).

    Raises at construction (without ``skip_bad``), naming the file:
        ImageReadError (unreadable image), PairError (unpaired or size mismatch),
        AnnotationError (bad label file or box).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        ir_dir: str | Path | None = None,
        vi_dir: str | Path | None = None,
        labels: str | Path | None = "auto",
        classes: Sequence[str] = DEFAULT_CLASSES,
        class_map: Mapping[str, str] | None = None,
        label_set: str | None = None,
        stems: Iterable[str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        high_bit: str = "percentile",
        skip_bad: bool = False,
        name: str | None = None,
        recursive: bool = False,
        ir_suffix: str = "",
        vi_suffix: str = "",
    ) -> None:
        root_p = Path(root) if root is not None else None
        if root_p is None and (ir_dir is None or vi_dir is None):
            raise MoEFusionError("PairedFusionDataset needs root or both ir_dir and vi_dir")
        base = root_p if root_p is not None else Path()  # unused when both dirs are given
        ir_p = Path(ir_dir) if ir_dir is not None else base / "ir"
        vi_p = Path(vi_dir) if vi_dir is not None else base / "vi"
        for role, p in (("infrared", ir_p), ("visible", vi_p)):
            if not p.is_dir():
                raise PairError(f"{role} image folder not found: {p}")
        # Fail on a bad mode now, not in a DataLoader worker later.
        if high_bit not in HIGH_BIT_MODES:
            raise MoEFusionError(
                f"unknown high_bit mode {high_bit!r}; choose one of {', '.join(HIGH_BIT_MODES)}"
            )

        self.root = root_p
        self.name = name or (root_p.name if root_p is not None else ir_p.resolve().parent.name)
        self.classes = tuple(str(c) for c in classes)
        self.class_map = dict(DEFAULT_CLASS_MAP if class_map is None else class_map)
        self.transform = transform
        self.high_bit = high_bit
        # (stem, reason) of every pair or unpaired file dropped by skip_bad.
        self.skipped: list[tuple[str, str]] = []

        all_pairs, ir_only, vi_only = match_pairs(
            ir_p, vi_p, recursive=recursive, ir_suffix=ir_suffix, vi_suffix=vi_suffix
        )
        if ir_only or vi_only:
            message = unpaired_message(ir_p, vi_p, ir_only, vi_only)
            if not skip_bad:
                raise PairError(message)
            self.skipped.extend(
                (_stem(f, ir_p, recursive), f"{f} has no visible partner in {vi_p}")
                for f in ir_only
            )
            self.skipped.extend(
                (_stem(f, vi_p, recursive), f"{f} has no infrared partner in {ir_p}")
                for f in vi_only
            )
        pairs = all_pairs if stems is None else _select(all_pairs, stems, ir_p)

        if labels is None:
            label_root, label_dir = None, None
        elif isinstance(labels, str) and labels == "auto":
            label_root, label_dir = root_p, None
        else:
            label_root, label_dir = None, Path(labels)
        # All pairs, not only the selected stems: other stems' labels are not "orphans".
        source = open_labels(
            label_root,
            all_pairs,
            self.classes,
            class_map=self.class_map,
            label_set=label_set,
            label_dir=label_dir,
        )
        self.label_source = source

        self._pairs: list[Pair] = []
        self._annotations: dict[str, Annotation | None] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        for pair in pairs:
            try:
                size = _checked_size(pair)
                ann = source.load(pair, size)
            except MoEFusionError as exc:
                if not skip_bad:
                    raise
                self.skipped.append((pair.stem, str(exc)))
                continue
            self._pairs.append(pair)
            self._annotations[pair.stem] = ann
            self._sizes[pair.stem] = size
        if self.skipped:
            reasons = "; ".join(f"{s}: {r}" for s, r in self.skipped[:_MAX_REASONS])
            more = (
                f" (+{len(self.skipped) - _MAX_REASONS} more)"
                if len(self.skipped) > _MAX_REASONS
                else ""
            )
            warnings.warn(
                f"dataset {self.name}: skipped {len(self.skipped)} pair(s) or unpaired file(s): "
                f"{reasons}{more}",
                stacklevel=2,
            )
        if not self._pairs:
            raise PairError(f"dataset {self.name}: no usable pairs in {ir_p} and {vi_p}")

    # ------------------------------------------------------------------ properties

    @property
    def pairs(self) -> list[Pair]:
        """The kept pairs, sorted by stem."""
        return list(self._pairs)

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self._pairs]

    @property
    def annotations(self) -> dict[str, Annotation | None]:
        """stem -> Annotation, or None for an unlabelled pair."""
        return dict(self._annotations)

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """stem -> (width, height)."""
        return dict(self._sizes)

    @property
    def n_labelled(self) -> int:
        return sum(a is not None for a in self._annotations.values())

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self._pairs[index]
        loaded = load_pair(pair.ir, pair.vi, high_bit=self.high_bit)
        ann = self._annotations[pair.stem]
        sample: dict[str, Any] = {
            "ir": torch.from_numpy(loaded.ir)[None],
            "vi": torch.from_numpy(loaded.vi)[None],
            "vi_rgb": torch.from_numpy(loaded.vi_rgb).permute(2, 0, 1).contiguous(),
            "boxes": None if ann is None else torch.from_numpy(ann.boxes.copy()),
            "labels": None if ann is None else torch.from_numpy(ann.labels.copy()),
            "stem": pair.stem,
            "dataset": self.name,
        }
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return (
            f"PairedFusionDataset(name={self.name!r}, pairs={len(self)}, "
            f"labelled={self.n_labelled}, skipped={len(self.skipped)})"
        )


def _select(pairs: list[Pair], stems: Iterable[str], ir_dir: Path) -> list[Pair]:
    wanted = list(dict.fromkeys(str(s) for s in stems))
    known = {p.stem for p in pairs}
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise PairError(
            f"{len(unknown)} requested stem(s) have no pair in {ir_dir}: {format_names(unknown)}"
        )
    keep = set(wanted)
    return [p for p in pairs if p.stem in keep]


def _stem(path: Path, folder: Path, recursive: bool) -> str:
    return path.relative_to(folder).with_suffix("").as_posix() if recursive else path.stem


def _checked_size(pair: Pair) -> tuple[int, int]:
    """(width, height) of a pair from the file headers; PairError if they differ."""
    ir_size, vi_size = image_size(pair.ir), image_size(pair.vi)
    if ir_size != vi_size:
        raise PairError(
            f"infrared and visible images differ in size: {pair.ir} is {ir_size[0]}x{ir_size[1]}, "
            f"{pair.vi} is {vi_size[0]}x{vi_size[1]} (width x height)"
        )
    return ir_size


def collate_pairs(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of different sizes by zero-padding at the bottom/right.

    Returns ``{"ir": [B,1,H,W], "vi": [B,1,H,W], "vi_rgb": [B,3,H,W],
    "valid": [B,1,H,W] bool (True on real pixels), "sizes": [(h, w)], "boxes": [Tensor | None],
    "labels": [Tensor | None], "stems": [str], "datasets": [str]}`` with ``H, W`` the
    largest in the batch, plus ``"attention": [B,1,H,W]`` when every sample has one.
    """
    if not samples:
        raise MoEFusionError("collate_pairs got an empty batch")
    sizes = [tuple(int(v) for v in s["ir"].shape[-2:]) for s in samples]
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    b = len(samples)
    dtype = samples[0]["ir"].dtype
    batch: dict[str, Any] = {
        "ir": torch.zeros((b, 1, hmax, wmax), dtype=dtype),
        "vi": torch.zeros((b, 1, hmax, wmax), dtype=dtype),
        "valid": torch.zeros((b, 1, hmax, wmax), dtype=torch.bool),
    }
    keys = ["ir", "vi"]
    if all(s.get("vi_rgb") is not None for s in samples):  # cached training pairs have none
        batch["vi_rgb"] = torch.zeros((b, 3, hmax, wmax), dtype=dtype)
        keys.append("vi_rgb")
    if all(s.get("attention") is not None for s in samples):
        batch["attention"] = torch.zeros((b, 1, hmax, wmax), dtype=dtype)
        keys.append("attention")
    for i, (s, (h, w)) in enumerate(zip(samples, sizes, strict=True)):
        for key in keys:
            batch[key][i, :, :h, :w] = s[key]
        mask = s.get("valid")
        batch["valid"][i, :, :h, :w] = True if mask is None else mask
    batch["sizes"] = sizes
    batch["boxes"] = [s.get("boxes") for s in samples]
    batch["labels"] = [s.get("labels") for s in samples]
    batch["stems"] = [s["stem"] for s in samples]
    batch["datasets"] = [s.get("dataset", "") for s in samples]
    return batch
