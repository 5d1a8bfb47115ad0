"""Paired augmentations on sample dicts (see :mod:`moefusion.data.dataset`).

Every transform applies the same geometry to ``ir``, ``vi``, ``vi_rgb`` (``[C, H, W]``
float tensors) and to the optional ``valid`` mask (``[1, H, W]`` bool, added by padding),
and moves ``boxes`` (``[K, 4]`` xyxy pixels) with the image, dropping ``labels`` of
removed boxes. Randomness comes from torch's global generator, so ``torch.manual_seed``
(or Lightning's ``seed_everything``) makes a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from moefusion.errors import MoEFusionError

__all__ = [
    "IMAGE_KEYS",
    "MIN_BOX_SIDE_PX",
    "MIN_KEPT_AREA_FRACTION",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomVerticalFlip",
    "Resize",
]

Sample = dict[str, Any]

# "attention" is the cached attention map of staged training (same geometry as the images)
IMAGE_KEYS: tuple[str, ...] = ("ir", "vi", "vi_rgb", "attention")
MASK_KEY = "valid"
# A crop keeping under 30 % of an object, or a sliver under 2 px, is no longer a
# usable detection target.
MIN_KEPT_AREA_FRACTION = 0.3
MIN_BOX_SIDE_PX = 2.0


def _hw(sample: Sample) -> tuple[int, int]:
    h, w = sample["ir"].shape[-2:]
    return int(h), int(w)


def _map_images(
    sample: Sample,
    fn: Callable[[torch.Tensor], torch.Tensor],
    mask_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Sample:
    out = dict(sample)
    for key in IMAGE_KEYS:
        if out.get(key) is not None:
            out[key] = fn(out[key])
    if out.get(MASK_KEY) is not None:
        out[MASK_KEY] = (mask_fn or fn)(out[MASK_KEY])
    return out


def _pair_size(size: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise MoEFusionError(f"{what} must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``; a box ``x1..x2`` becomes ``W-x2..W-x1``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return sample
        _, w = _hw(sample)
        out = _map_images(sample, lambda t: t.flip(-1))
        if out.get("boxes") is not None:
            b = out["boxes"]
            out["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p`` (default 0: road scenes have a sky)."""

    def __init__(self, p: float = 0.0) -> None:
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return sample
        h, _ = _hw(sample)
        out = _map_images(sample, lambda t: t.flip(-2))
        if out.get("boxes") is not None:
            b = out["boxes"]
            out["boxes"] = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], dim=1)
        return out

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


class RandomCrop:
    """Crop a random ``(h, w)`` window.

    Images smaller than the window are zero-padded at the bottom/right first (when
    ``pad_if_needed``; otherwise that is an error) and a ``valid`` mask marks the real
    pixels. Boxes are shifted and clipped; a box keeping under 30 % of its area or
    narrower/lower than 2 px is dropped with its label.
    """

    def __init__(self, size: int | tuple[int, int], pad_if_needed: bool = True) -> None:
        self.size = _pair_size(size, "RandomCrop size")
        self.pad_if_needed = pad_if_needed

    def __call__(self, sample: Sample) -> Sample:
        ch, cw = self.size
        h, w = _hw(sample)
        out = dict(sample)
        if h < ch or w < cw:
            if not self.pad_if_needed:
                raise MoEFusionError(
                    f"image {sample.get('stem', '?')} is {w}x{h}, smaller than the "
                    f"{cw}x{ch} crop (enable pad_if_needed or resize first)"
                )
            pad = (0, max(cw - w, 0), 0, max(ch - h, 0))
            if out.get(MASK_KEY) is None:
                out[MASK_KEY] = torch.ones((1, h, w), dtype=torch.bool)
            out = _map_images(out, lambda t: F.pad(t, pad, value=0))
            h, w = _hw(out)
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        out = _map_images(out, lambda t: t[..., top : top + ch, left : left + cw].contiguous())
        if out.get("boxes") is not None:
            out["boxes"], keep = _crop_boxes(out["boxes"], top, left, ch, cw)
            if out.get("labels") is not None:
                out["labels"] = out["labels"][keep]
        return out

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, pad_if_needed={self.pad_if_needed})"


def _crop_boxes(
    boxes: torch.Tensor, top: int, left: int, ch: int, cw: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift ``[K, 4]`` boxes into a crop, clip them; return kept boxes and keep mask."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    clipped = torch.stack(
        [
            shifted[:, 0].clamp(0, cw),
            shifted[:, 1].clamp(0, ch),
            shifted[:, 2].clamp(0, cw),
            shifted[:, 3].clamp(0, ch),
        ],
        dim=1,
    )
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (
        (bw >= MIN_BOX_SIDE_PX)
        & (bh >= MIN_BOX_SIDE_PX)
        & (bw * bh >= MIN_KEPT_AREA_FRACTION * area)
    )
    return clipped[keep], keep


def _resize(sample: Sample, new_h: int, new_w: int) -> Sample:
    h, w = _hw(sample)
    if (new_h, new_w) == (h, w):
        return sample

    def resize_image(t: torch.Tensor) -> torch.Tensor:
        # Antialiased bilinear is a non-negative filter; the clamp only guards rounding.
        r = F.interpolate(
            t[None].float(),
            size=(new_h, new_w),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return r[0].clamp_(0.0, 1.0).to(t.dtype)

    def resize_mask(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t[None].float(), size=(new_h, new_w), mode="nearest")[0] > 0.5

    out = _map_images(sample, resize_image, resize_mask)
    if out.get("boxes") is not None:
        scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=out["boxes"].dtype)
        out["boxes"] = out["boxes"] * scale
    return out


class Resize:
    """Resize to ``size=(h, w)``, or shrink so the longer side is at most ``max_side``.

    Bilinear with antialiasing; boxes are scaled. ``max_side`` never enlarges.
    """

    def __init__(self, size: tuple[int, int] | None = None, *, max_side: int | None = None) -> None:
        if (size is None) == (max_side is None):
            raise MoEFusionError("Resize needs exactly one of size=(h, w) or max_side")
        self.size = None if size is None else _pair_size(size, "Resize size")
        if max_side is not None and (not isinstance(max_side, int) or max_side <= 0):
            raise MoEFusionError(f"Resize max_side must be a positive int, got {max_side!r}")
        self.max_side = max_side

    def __call__(self, sample: Sample) -> Sample:
        if self.size is not None:
            return _resize(sample, *self.size)
        h, w = _hw(sample)
        assert self.max_side is not None
        if max(h, w) <= self.max_side:
            return sample
        s = self.max_side / max(h, w)
        return _resize(sample, max(1, round(h * s)), max(1, round(w * s)))

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, max_side={self.max_side})"


class RandomResize:
    """Scale both sides by a factor drawn uniformly from ``scales=(lo, hi)``."""

    def __init__(self, scales: tuple[float, float]) -> None:
        lo, hi = (float(s) for s in scales)
        if not 0 < lo <= hi:
            raise MoEFusionError(f"RandomResize scales must satisfy 0 < lo <= hi, got {scales!r}")
        self.scales = (lo, hi)

    def __call__(self, sample: Sample) -> Sample:
        lo, hi = self.scales
        s = lo + (hi - lo) * torch.rand(()).item()
        h, w = _hw(sample)
        return _resize(sample, max(1, round(h * s)), max(1, round(w * s)))

    def __repr__(self) -> str:
        return f"RandomResize(scales={self.scales})"
