"""Resume-exact randomness for training.

Every random draw of an epoch (order of the pairs, augmentations) is a pure function of
``(seed, epoch, position)``, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have, whatever the number of data-loader workers. Under DDP every
rank draws the same epoch order and takes its own share of it, so a sample is augmented
the same way whichever rank trains on it.
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


def distributed_rank_world() -> tuple[int, int]:
    """``(global rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Shuffled, optionally repeated and DDP-sharded indices for :class:`EpochSeededDataset`.

    Lightning calls :meth:`set_epoch` before each epoch. Indices are encoded as
    ``epoch * n + i`` so the dataset can seed its augmentations from them.

    The epoch's order is the same on every rank (a function of ``seed`` and the epoch);
    rank ``r`` of ``w`` takes every ``w``-th index from position ``r``, after padding the
    order with its own first indices to a multiple of ``w`` so every rank takes the same
    number of steps. Rank and world size are read from ``torch.distributed`` each time
    they are needed (:meth:`__len__`, :meth:`__iter__`), not at construction: the loader
    is built before ``trainer.fit`` creates the process group. ``rank``/``world_size``
    fix them instead (both or neither).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        repeat: int = 1,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self._fixed: tuple[int, int] | None = None
        if rank is not None and world_size is not None:
            if not 0 <= rank < world_size:
                raise ValueError(f"rank {rank} is not in a world of {world_size}")
            self._fixed = (int(rank), int(world_size))
        elif rank is not None or world_size is not None:
            raise ValueError("give both rank and world_size, or neither")
        self.n = n
        self.seed = seed
        self.repeat = max(1, int(repeat))
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def rank_world(self) -> tuple[int, int]:
        """``(rank, world size)`` now: the fixed ones, else the process group's."""
        return self._fixed if self._fixed is not None else distributed_rank_world()

    @property
    def per_rank(self) -> int:
        return math.ceil(self.n * self.repeat / self.rank_world[1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def epoch_keys(self, world: int = 1) -> list[int]:
        """The epoch's keys in order (all ranks together), padded to a multiple of ``world``."""
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 7))
        order = [
            (torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n))
            for _ in range(self.repeat)
        ]
        flat = torch.cat(order).tolist()
        total = math.ceil(len(flat) / world) * world
        while len(flat) < total:  # pad with the first indices so every rank gets the same count
            flat += flat[: total - len(flat)]
        # Repeats of one epoch share the epoch code, so give each repeat its own key.
        return [
            (self.epoch * self.repeat + pos // self.n) * self.n + i for pos, i in enumerate(flat)
        ]

    def __iter__(self) -> Iterator[int]:
        rank, world = self.rank_world
        return iter(self.epoch_keys(world)[rank::world])


def step_seed(seed: int, global_step: int, rank: int = 0) -> int:
    """Seed for the gate noise of one optimisation step."""
    return _mix(seed, global_step, rank, 13)
