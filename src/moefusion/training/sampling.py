"""Resume-exact randomness for training.

Every random draw of an epoch (order of the pairs, augmentations) is a pure function of
``(seed, epoch, position)``, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have, whatever the number of data-loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from a few integers (splitmix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class EpochSeededDataset(Dataset):
    """Wraps a dataset so that item ``epoch * n + i`` is item ``i`` drawn with its own seed.

    The global torch RNG is re-seeded from ``(seed, epoch, i)`` before the inner dataset's
    transforms run, which makes augmentation independent of worker scheduling.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.n = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.n)
        torch.manual_seed(_mix(self.seed, epoch, index))
        return self.dataset[index]


class EpochSampler(Sampler[int]):
    """Shuffled, optionally repeated and DDP-sharded indices for :class:`EpochSeededDataset`.

    Lightning calls :meth:`set_epoch` before each epoch. Indices are encoded as
    ``epoch * n + i`` so the dataset can seed its augmentations from them.
    """

    def __init__(self, n: int, *, seed: int, repeat: int = 1, shuffle: bool = True) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n = n
        self.seed = seed
        self.repeat = max(1, int(repeat))
        self.shuffle = shuffle
        self.epoch = 0
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.per_rank = math.ceil(self.n * self.repeat / self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 7))
        order = [
            (torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n))
            for _ in range(self.repeat)
        ]
        flat = torch.cat(order).tolist()
        total = self.per_rank * self.world
        flat += flat[: total - len(flat)]  # pad so every rank gets the same count
        # Repeats of one epoch share the epoch code, so give each repeat its own key.
        keys = [
            (self.epoch * self.repeat + pos // self.n) * self.n + i for pos, i in enumerate(flat)
        ]
        return iter(keys[self.rank : total : self.world])


def step_seed(seed: int, global_step: int, rank: int = 0) -> int:
    """Seed for the gate noise of one optimisation step."""
    return _mix(seed, global_step, rank, 13)
