"""Data layer: image I/O, pair discovery, annotations, augmentation, datasets and splits."""

from __future__ import annotations

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
from moefusion.data.color import colorize, rgb_to_ycbcr, ycbcr_to_rgb
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
    image_size,
    is_image_file,
    load_gray,
    load_pair,
    read_image,
    save_gray_u8,
    save_rgb_u8,
    to_gray,
    to_unit_float,
)
from moefusion.data.pairs import Pair, dataset_pairs, find_pairs, match_pairs
from moefusion.data.splits import load_split, msrs_day_night, save_split, split_stems
from moefusion.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    RandomVerticalFlip,
    Resize,
)

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_CLASS_MAP",
    "HIGH_BIT_MODES",
    "IMAGE_EXTENSIONS",
    "Annotation",
    "Compose",
    "LabelSource",
    "LoadedPair",
    "Pair",
    "PairedFusionDataset",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomVerticalFlip",
    "Resize",
    "collate_pairs",
    "colorize",
    "dataset_pairs",
    "find_annotations",
    "find_pairs",
    "image_size",
    "is_image_file",
    "load_coco",
    "load_gray",
    "load_pair",
    "load_split",
    "load_voc",
    "load_yolo",
    "match_pairs",
    "msrs_day_night",
    "open_labels",
    "read_class_names",
    "read_image",
    "rgb_to_ycbcr",
    "save_gray_u8",
    "save_rgb_u8",
    "save_split",
    "split_stems",
    "to_gray",
    "to_unit_float",
    "ycbcr_to_rgb",
]
