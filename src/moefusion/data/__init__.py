"""Data layer: image I/O, pair discovery, annotations, augmentation, datasets and splits.

Names are imported from their submodules on first use, so that importing the light parts
(image I/O, pairs) does not import torch: ``moefusion --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> submodule of moefusion.data that defines it (``moefusion.data.annotations``
#: re-exports its submodules' names as well)
_SOURCES: dict[str, str] = {
    "Annotation": "annotations.boxes",
    "Compose": "transforms",
    "DEFAULT_CLASSES": "dataset",
    "DEFAULT_CLASS_MAP": "dataset",
    "HIGH_BIT_MODES": "io",
    "IMAGE_EXTENSIONS": "io",
    "LabelSource": "annotations.discovery",
    "LoadedPair": "io",
    "PAIR_ERRORS": "pairs",
    "Pair": "pairs",
    "PairResize": "io",
    "PairedFusionDataset": "dataset",
    "RandomCrop": "transforms",
    "RandomHorizontalFlip": "transforms",
    "RandomResize": "transforms",
    "RandomVerticalFlip": "transforms",
    "Resize": "transforms",
    "collate_pairs": "dataset",
    "colorize": "color",
    "colorize_u8": "color",
    "decode_pil": "io",
    "dataset_pairs": "pairs",
    "find_annotations": "annotations.discovery",
    "find_pairs": "pairs",
    "image_size": "io",
    "is_image_file": "io",
    "list_images": "pairs",
    "load_coco": "annotations.coco",
    "load_gray": "io",
    "load_pair": "io",
    "pair_from_arrays": "io",
    "parse_size": "io",
    "load_split": "splits",
    "resolve_split": "splits",
    "split_part_pairs": "splits",
    "SHARED_DATASETS": "splits",
    "EVAL_ONLY_DATASETS": "splits",
    "check_trainable": "splits",
    "load_voc": "annotations.voc",
    "load_yolo": "annotations.yolo",
    "match_pairs": "pairs",
    "msrs_day_night": "splits",
    "open_labels": "annotations.discovery",
    "read_class_names": "annotations.yolo",
    "read_image": "io",
    "read_pair_batches": "pairs",
    "resize_image": "io",
    "rgb_to_ycbcr": "color",
    "same_size_batches": "pairs",
    "save_image_atomic": "io",
    "save_gray_u8": "io",
    "save_rgb_u8": "io",
    "save_split": "splits",
    "split_stems": "splits",
    "to_gray": "io",
    "to_unit_float": "io",
    "ycbcr_to_rgb": "color",
}

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_CLASS_MAP",
    "HIGH_BIT_MODES",
    "IMAGE_EXTENSIONS",
    "Annotation",
    "Compose",
    "LabelSource",
    "LoadedPair",
    "PAIR_ERRORS",
    "Pair",
    "PairResize",
    "PairedFusionDataset",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomVerticalFlip",
    "Resize",
    "SHARED_DATASETS",
    "collate_pairs",
    "colorize",
    "colorize_u8",
    "dataset_pairs",
    "decode_pil",
    "find_annotations",
    "find_pairs",
    "image_size",
    "is_image_file",
    "list_images",
    "load_coco",
    "load_gray",
    "load_pair",
    "load_split",
    "load_voc",
    "load_yolo",
    "match_pairs",
    "msrs_day_night",
    "open_labels",
    "pair_from_arrays",
    "parse_size",
    "read_class_names",
    "read_image",
    "read_pair_batches",
    "resize_image",
    "resolve_split",
    "rgb_to_ycbcr",
    "same_size_batches",
    "save_gray_u8",
    "save_image_atomic",
    "save_rgb_u8",
    "save_split",
    "split_part_pairs",
    "split_stems",
    "check_trainable",
    "EVAL_ONLY_DATASETS",
    "to_gray",
    "to_unit_float",
    "ycbcr_to_rgb",
]


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


if TYPE_CHECKING:
    from moefusion.data.annotations import (
        Annotation,
        LabelSource,
        find_annotations,
        load_coco,
        load_voc,
        load_yolo,
        open_labels,
        read_class_names,
    )
    from moefusion.data.color import colorize, colorize_u8, rgb_to_ycbcr, ycbcr_to_rgb
    from moefusion.data.dataset import (
        DEFAULT_CLASS_MAP,
        DEFAULT_CLASSES,
        PairedFusionDataset,
        collate_pairs,
    )
    from moefusion.data.io import (
        HIGH_BIT_MODES,
        IMAGE_EXTENSIONS,
        LoadedPair,
        PairResize,
        decode_pil,
        image_size,
        is_image_file,
        load_gray,
        load_pair,
        parse_size,
        read_image,
        resize_image,
        save_gray_u8,
        save_image_atomic,
        save_rgb_u8,
        to_gray,
        to_unit_float,
    )
    from moefusion.data.pairs import (
        PAIR_ERRORS,
        Pair,
        dataset_pairs,
        find_pairs,
        list_images,
        match_pairs,
        read_pair_batches,
        same_size_batches,
    )
    from moefusion.data.splits import (
        EVAL_ONLY_DATASETS,
        SHARED_DATASETS,
        check_trainable,
        load_split,
        msrs_day_night,
        resolve_split,
        save_split,
        split_part_pairs,
        split_stems,
    )
    from moefusion.data.transforms import (
        Compose,
        RandomCrop,
        RandomHorizontalFlip,
        RandomResize,
        RandomVerticalFlip,
        Resize,
    )
