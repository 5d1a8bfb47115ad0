"""Colour -> 8-bit gray exactly as each reference toolbox does it."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from moefusion.metrics._inputs import MetricInputError, _to_numpy

#: MATLAB ``rgb2gray`` weights (R, G, B), as used by the TANG and VIFB toolboxes.
MATLAB_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def _matlab_rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 via MATLAB rgb2gray (round half away from zero)."""
    x = rgb.astype(np.float64)
    y = x[..., 0] * MATLAB_RGB2GRAY[0] + x[..., 1] * MATLAB_RGB2GRAY[1]
    y = y + x[..., 2] * MATLAB_RGB2GRAY[2]
    # y >= 0, so floor(y + 0.5) is MATLAB's round-half-away-from-zero.
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def _cddfuse_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 as CDDFuse: cv2 on float32, then np.round."""
    # CDDFuse converts float32 (not uint8) with cv2, so cv2's float path, not its
    # fixed-point uint8 path, is what the reference values used; np.round is half-to-even.
    g = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.clip(np.round(g), 0, 255).astype(np.uint8)


def to_gray_u8(img: Any, convention: str = "paper") -> np.ndarray:
    """Image (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> (H, W) uint8 gray.

    ``paper`` and ``float`` use MATLAB ``rgb2gray`` (what the TANG toolbox reads),
    ``cddfuse`` uses ``cv2`` BGR2GRAY semantics on float32 followed by ``np.round``.
    Equal-channel images (e.g. LLVIP infrared) come out unchanged in every convention;
    alpha is dropped. Channel order is RGB, as PIL returns it.
    """
    from moefusion.metrics.conventions import check_convention

    check_convention(convention)
    a = _to_numpy(img, "image")
    if a.dtype != np.uint8:
        raise MetricInputError(f"to_gray_u8 expects a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise MetricInputError(
            f"to_gray_u8 expects (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}"
        )
    if a.shape[2] == 1:
        return np.ascontiguousarray(a[..., 0])
    rgb = a[..., :3]
    if convention == "cddfuse":
        return _cddfuse_gray(rgb)
    return _matlab_rgb2gray(rgb)
