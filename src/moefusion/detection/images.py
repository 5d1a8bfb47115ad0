"""Reading detection images: gray ``[1, H, W]`` tensors at the detector's working size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moefusion.data import read_image, to_gray, to_unit_float
from moefusion.detection.selection import DetectionImage
from moefusion.errors import PairError

__all__ = ["load_gray_image", "prepare_image", "scale_boxes"]


def load_gray_image(image: DetectionImage) -> Tensor:
    """The image as ``[1, H, W]`` float32 gray in [0, 1]; its size must match the pair's."""
    arr = to_gray(to_unit_float(read_image(image.path)))
    h, w = arr.shape
    if (w, h) != tuple(image.size):
        raise PairError(
            f"{image.path} is {w}x{h} but pair {image.dataset}/{image.stem} is "
            f"{image.size[0]}x{image.size[1]} (width x height); boxes would not line up"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def prepare_image(gray: Tensor, long_side: int) -> tuple[Tensor, tuple[float, float]]:
    """Resize ``[1, H, W]`` so its longer side is ``long_side``.

    Returns the resized image and the ``(sx, sy)`` factors mapping original pixel
    coordinates to it. Antialiased when shrinking (LLVIP's 1280 px frames would alias).
    """
    h, w = gray.shape[-2:]
    scale = long_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return gray, (1.0, 1.0)
    out = F.interpolate(
        gray[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
    )[0]
    return out.clamp_(0.0, 1.0), (nw / w, nh / h)


def scale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    """``x1, y1, x2, y2`` boxes scaled by ``sx`` horizontally and ``sy`` vertically."""
    return boxes * boxes.new_tensor([sx, sy, sx, sy])
