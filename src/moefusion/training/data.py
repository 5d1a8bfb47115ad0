"""Training data from a run config: datasets, split, augmentation and loaders."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from moefusion.data import (
    Compose,
    PairedFusionDataset,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    check_trainable,
    collate_pairs,
    resolve_split,
)
from moefusion.data.layouts import resolve_layout
from moefusion.errors import ConfigError
from moefusion.training.config import DataConfig
from moefusion.training.sampling import EpochSampler, EpochSeededDataset

#: ``data`` as these functions take it: typed, or the plain dict of a run config.
Data = DataConfig | Mapping[str, Any]


def build_transform(data: Data) -> Compose:
    """``data.resize`` / ``max_side``, then the random crop and flip."""
    data = DataConfig.coerce(data)
    steps: list[Any] = []
    if data.resize:
        steps.append(Resize(data.resize))
    if data.max_side:
        steps.append(Resize(max_side=data.max_side))
    if data.crop:
        steps.append(RandomCrop(data.crop, pad_if_needed=True))
    if data.hflip:
        steps.append(RandomHorizontalFlip(p=data.hflip))
    return Compose(steps)


def build_random_transform(data: Data) -> Compose:
    """Only the random part of :func:`build_transform` (crop, flip): for cached whole pairs."""
    return build_transform(dataclasses.replace(DataConfig.coerce(data), resize=None, max_side=None))


#: Layouts whose one label folder covers both parts (the other part's labels match no
#: pair by design: no warning about them).
SHARED_LABELS = ("llvip",)


def layout_options(root: Path, options: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A ``data.datasets`` entry's options for :class:`PairedFusionDataset`, with the
    folders of the data set's layout (``layout``, ``part``; detected unless ``ir_dir``
    or ``vi_dir`` name the folders; :func:`moefusion.data.layouts.resolve_layout`), and
    the layout's name (None when the entry names its folders)."""
    out = dict(options)
    layout, part = out.pop("layout", None) or "auto", out.pop("part", None)
    if "ir_dir" in out or "vi_dir" in out:
        return out, None
    found = resolve_layout(root, layout, part)
    if found.name == "moefusion":
        return out, found.name  # root/ir, root/vi, root/labels: the dataset's defaults
    for key, value in found.dataset_options().items():
        out.setdefault(key, value)
    return out, found.name


def _open_dataset(root: Path, options: Mapping[str, Any], **kwargs: Any) -> PairedFusionDataset:
    resolved, layout = layout_options(root, options)
    with warnings.catch_warnings():
        if layout in SHARED_LABELS and "labels" not in options:
            warnings.filterwarnings("ignore", message=r".* match no image pair")
        return PairedFusionDataset(root, **kwargs, **resolved)


def build_train_dataset(data: Data) -> ConcatDataset:
    """All training datasets of ``data`` (each one's ``data.split_part`` of the split)."""
    data = DataConfig.coerce(data)
    if not data.datasets:
        raise ConfigError("data.datasets is empty: list at least one folder with ir/ and vi/")
    split = resolve_split(data.split)
    check_trainable(
        [n for e in data.datasets for n in (e.dataset_name, Path(e.root).resolve().name)], split
    )
    transform = build_transform(data)
    parts = []
    for entry in data.datasets:
        root = Path(entry.root)
        if not root.is_dir():
            raise ConfigError(f"dataset folder not found: {root} (needs ir/ and vi/ inside)")
        name = entry.dataset_name
        stems = None
        if split is not None:
            if name not in split["datasets"]:
                raise ConfigError(f"split has no entry for dataset {name!r}")
            stems = split["datasets"][name][data.split_part]
        parts.append(
            _open_dataset(
                root,
                entry.options,
                classes=data.classes,
                class_map=data.class_map,
                stems=stems,
                transform=transform,
                skip_bad=data.skip_bad,
                name=name,
            )
        )
    return ConcatDataset(parts)


def labelled_subset(dataset: ConcatDataset) -> Subset:
    """The labelled pairs of a :func:`build_train_dataset` result (stage 1 trains on them)."""
    keep: list[int] = []
    offset = 0
    for part in dataset.datasets:
        annotations = part.annotations  # type: ignore[attr-defined]
        keep.extend(offset + i for i, s in enumerate(part.stems) if annotations[s] is not None)  # type: ignore[attr-defined]
        offset += len(part)  # type: ignore[arg-type]
    if not keep:
        raise ConfigError(
            "the detector stage needs labelled pairs (labels/ next to ir/ and vi/); "
            "set stages.detect.trainer.max_epochs=0 and stages.detect.init_weights to skip it"
        )
    return Subset(dataset, keep)


def build_train_loader(data: Data, seed: int) -> DataLoader:
    return loader_for(build_train_dataset(data), data, seed)


def loader_for(inner: Dataset, data: Data, seed: int) -> DataLoader:
    """Resume-exact loader over ``inner`` (epoch-seeded items, shuffled, repeated)."""
    data = DataConfig.coerce(data)
    dataset = EpochSeededDataset(inner, seed)
    sampler = EpochSampler(len(dataset), seed=seed, repeat=data.repeat)
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        collate_fn=collate_pairs,
        drop_last=False,
        persistent_workers=False,
    )


class SetupLoader(L.LightningDataModule):
    """A training loader built in ``setup``: on every rank, once the process group exists.

    ``build`` gets the LightningModule being trained and returns the loader; it is
    called once per ``trainer.fit``, where it may compute collectively (the attention
    cache of the fusion stage: ``build_cache(..., distributed=True)``). Loaders that need
    no such work are passed to ``trainer.fit`` directly (their :class:`EpochSampler`
    reads the rank when iterated).
    """

    def __init__(self, build: Callable[[L.LightningModule], DataLoader]) -> None:
        super().__init__()
        self._build = build
        self._loader: DataLoader | None = None

    def setup(self, stage: str) -> None:
        if self._loader is None:
            self._loader = self._build(self.trainer.lightning_module)  # type: ignore[union-attr]

    def train_dataloader(self) -> DataLoader:
        if self._loader is None:
            raise RuntimeError("SetupLoader.train_dataloader() before setup()")
        return self._loader
