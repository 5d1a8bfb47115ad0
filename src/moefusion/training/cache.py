"""Attention-map cache of staged training (stage 2 trains the fusion branch on it).

With the detectors frozen, the attention map of a training image never changes, so it
is computed once per pair (on the whole image, after the deterministic resize) and kept
in memory with the images. Random crops and flips are then applied to the map exactly
as to the images (``"attention"`` is one of :data:`moefusion.data.transforms.IMAGE_KEYS`),
so a stage-2 step costs only the fusion branch: no image decoding, no detector.

Memory: three float16 maps per pair (ir, vi, attention), about 1.8 MB per 640x480 pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from moefusion.models import MoEFusion

Sample = dict[str, Any]


class CachedPairs(Dataset):
    """Pre-resized pairs with their attention maps, augmented on access.

    Args:
        items: one dict per pair with ``"ir"``, ``"vi"``, ``"attention"`` (``[1, H, W]``
            float16), ``"boxes"``/``"labels"`` (or None), ``"stem"``, ``"dataset"``.
        transform: random crop / flip on the float32 sample dict.
    """

    def __init__(
        self, items: Sequence[Sample], transform: Callable[[Sample], Sample] | None = None
    ) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        sample = {
            k: (v.float() if isinstance(v, Tensor) and v.dtype == torch.float16 else v)
            for k, v in item.items()
        }
        for key in ("boxes", "labels"):
            if sample.get(key) is not None:
                sample[key] = sample[key].clone()
        return self.transform(sample) if self.transform is not None else sample


@torch.no_grad()
def attention_map(model: MoEFusion, ir: Tensor, vi: Tensor) -> Tensor:
    """The frozen attention branch's map of one pair: ``[1, H, W]`` in [0, 1]."""
    attention, _ = model.attention(ir[None], vi[None], None)
    return attention[0]


def build_cache(
    model: MoEFusion,
    dataset: Dataset,
    *,
    progress: bool = True,
    desc: str = "attention cache",
) -> list[Sample]:
    """Read every pair of ``dataset`` once (its deterministic transform only) and compute
    its attention map with ``model``'s attention branch in eval mode.

    ``dataset`` yields sample dicts (``ir``, ``vi`` ``[1, H, W]``, ``boxes``, ``labels``,
    ``stem``, ``dataset``); ``vi_rgb`` is dropped (stage 2 does not use colour).
    """
    was_training = model.attention.training
    model.attention.eval()
    device = next(model.parameters()).device
    items: list[Sample] = []
    try:
        for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False):  # type: ignore[arg-type]
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
