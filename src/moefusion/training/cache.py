"""Attention-map cache of staged training (stage 2 trains the fusion branch on it).

With the detectors frozen, the attention map of a training image never changes, so it
is computed once per pair (on the whole image, after the deterministic resize) and kept
in memory with the images. Random crops and flips are then applied to the map exactly
as to the images (``"attention"`` is one of :data:`moefusion.data.transforms.IMAGE_KEYS`),
so a stage-2 step costs only the fusion branch: no image decoding, no detector.

Memory: three float16 maps per pair (ir, vi, attention), about 1.8 MB per 640x480 pair.

Under DDP (``distributed=True``, called by every rank once the process group exists,
e.g. in a ``setup`` hook) each rank computes the maps of every ``world``-th pair only and
the ranks exchange their shares, so every rank ends with the same, whole cache in the
single-process order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion
from moefusion.training.sampling import distributed_rank_world

Sample = dict[str, Any]


class CachedPairs(Dataset):
    """Pre-resized pairs with their attention maps, augmented on access.

    Args:
        items: one dict per pair with ``"ir"``, ``"vi"``, ``"attention"`` (``[1, H, W]``
            float16), ``"boxes"``/``"labels"`` (or None), ``"stem"``, ``"dataset"``.
        transform: random crop / flip, applied to the float16 sample dict before the
            images are converted to float32.
    """

    def __init__(
        self, items: Sequence[Sample], transform: Callable[[Sample], Sample] | None = None
    ) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.items[index])
        for key in ("boxes", "labels"):
            if sample.get(key) is not None:
                sample[key] = sample[key].clone()
        # crop and flip first, in float16 (they only move pixels): only the crop is
        # converted to float32, not the whole cached image
        if self.transform is not None:
            sample = self.transform(sample)
        return {
            k: (v.float() if isinstance(v, Tensor) and v.dtype == torch.float16 else v)
            for k, v in sample.items()
        }


@torch.no_grad()
def attention_map(model: MoEFusion, ir: Tensor, vi: Tensor) -> Tensor:
    """The frozen attention branch's map of one pair: ``[1, H, W]`` in [0, 1]."""
    attention, _ = model.attention(ir[None], vi[None], None)
    return attention[0]


#: Pairs each rank sends per exchange round (bounds the memory of one all-gather).
GATHER_CHUNK = 32


def build_cache(
    model: MoEFusion,
    dataset: Dataset,
    *,
    progress: bool = True,
    desc: str = "attention cache",
    distributed: bool = False,
) -> list[Sample]:
    """Read every pair of ``dataset`` once (its deterministic transform only) and compute
    its attention map with ``model``'s attention branch in eval mode.

    ``dataset`` yields sample dicts (``ir``, ``vi`` ``[1, H, W]``, ``boxes``, ``labels``,
    ``stem``, ``dataset``); ``vi_rgb`` is dropped (stage 2 does not use colour).

    ``distributed=True``: every rank of the initialised process group must call this
    with the same model weights and dataset; each computes pairs ``rank, rank + world,
    ...`` and receives the others' (same result as one process, in the same order). Only
    rank 0 shows a progress bar. A failure on any rank raises :class:`MoEFusionError`
    on every rank (none is left waiting). Without a process group (or in a world of 1)
    it is the single-process computation.
    """
    rank, world = distributed_rank_world() if distributed else (0, 1)
    n = len(dataset)  # type: ignore[arg-type]
    indices = range(rank, n, world)
    if world == 1:
        return _compute_items(model, dataset, indices, progress=progress, desc=desc)
    mine: list[Sample] = []
    error: Exception | None = None
    try:
        mine = _compute_items(model, dataset, indices, progress=progress and rank == 0, desc=desc)
    except Exception as exc:  # every rank must learn of it, or the others would wait forever
        error = exc
    failures: list[Any] = [None] * world
    dist.all_gather_object(failures, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, message) for r, message in enumerate(failures) if message is not None]
    if failed:
        r, message = failed[0]
        raise MoEFusionError(f"{desc}: rank {r} failed: {message}") from error
    return _gather_shards(mine, n, rank, world)


def _compute_items(
    model: MoEFusion, dataset: Dataset, indices: range, *, progress: bool, desc: str
) -> list[Sample]:
    was_training = model.attention.training
    model.attention.eval()
    device = next(model.parameters()).device
    items: list[Sample] = []
    try:
        for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
            s = dataset[i]
            ir, vi = s["ir"].to(device), s["vi"].to(device)
            att = attention_map(model, ir, vi).cpu()
            items.append(
                {
                    "ir": s["ir"].half(),
                    "vi": s["vi"].half(),
                    "attention": att.half(),
                    "boxes": s.get("boxes"),
                    "labels": s.get("labels"),
                    "stem": s["stem"],
                    "dataset": s.get("dataset", ""),
                }
            )
    finally:
        model.attention.train(was_training)
    return items


def _gather_shards(mine: list[Sample], n: int, rank: int, world: int) -> list[Sample]:
    """Every rank's share (pairs ``r::world`` of rank ``r``) on every rank, in pair order.

    Exchanged in rounds of :data:`GATHER_CHUNK` pairs per rank, so one all-gather never
    holds more than ``world * GATHER_CHUNK`` pickled pairs; all ranks run the same number
    of rounds (derived from ``n`` and ``world`` alone).
    """
    per_rank = -(-n // world)  # rank 0 holds the most pairs
    shares: list[list[Sample]] = [[] for _ in range(world)]
    for start in range(0, per_rank, GATHER_CHUNK):
        received: list[Any] = [None] * world
        dist.all_gather_object(received, mine[start : start + GATHER_CHUNK])
        for r, part in enumerate(received):
            shares[r].extend(part)
    items = [shares[i % world][i // world] for i in range(n)]
    assert len(items) == n and len(shares[rank]) == len(mine)
    return items
