"""Full-range BT.601 YCbCr conversion and colourising a fused gray image.

This is the transform of OpenCV's ``COLOR_RGB2YCrCb`` for float data in [0, 1]
(``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = (B - Y) / 1.772 + 0.5``,
``Cr = (R - Y) / 1.402 + 0.5``), written with the exact BT.601 constants so that
:func:`ycbcr_to_rgb` inverts :func:`rgb_to_ycbcr` to float precision (OpenCV rounds the
constants to 3 digits, a difference below 1e-3). Note the channel order here is
``Y, Cb, Cr``; OpenCV's YCrCb stores Cr before Cb.
"""

from __future__ import annotations

import numpy as np

from moefusion.errors import MoEFusionError

__all__ = ["colorize", "colorize_u8", "rgb_to_ycbcr", "ycbcr_to_rgb"]

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_CB_SCALE = 2.0 * (1.0 - _KB)  # 1.772
_CR_SCALE = 2.0 * (1.0 - _KR)  # 1.402

_RGB_TO_YCC = np.array(
    [
        [_KR, _KG, _KB],
        [-_KR / _CB_SCALE, -_KG / _CB_SCALE, (1.0 - _KB) / _CB_SCALE],
        [(1.0 - _KR) / _CR_SCALE, -_KG / _CR_SCALE, -_KB / _CR_SCALE],
    ],
    dtype=np.float64,
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)
_OFFSET = np.array([0.0, 0.5, 0.5], dtype=np.float64)


def _check_three_channels(arr: np.ndarray, what: str) -> None:
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MoEFusionError(f"{what} must be HxWx3, got shape {arr.shape}")


def rgb_to_ycbcr(rgb01: np.ndarray) -> np.ndarray:
    """``HxWx3`` RGB in [0, 1] -> ``HxWx3`` float32 (Y, Cb, Cr), each in [0, 1]."""
    rgb = np.asarray(rgb01, dtype=np.float64)
    _check_three_channels(rgb, "RGB image")
    return (rgb @ _RGB_TO_YCC.T + _OFFSET).astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """``HxWx3`` (Y, Cb, Cr) -> ``HxWx3`` float32 RGB, not clipped (out-of-gamut stays)."""
    arr = np.asarray(ycc, dtype=np.float64)
    _check_three_channels(arr, "YCbCr image")
    return ((arr - _OFFSET) @ _YCC_TO_RGB.T).astype(np.float32)


def colorize(fused_gray01: np.ndarray, vi_rgb01: np.ndarray) -> np.ndarray:
    """Give a fused gray image the visible image's colour (paper, section 4.2).

    Args:
        fused_gray01: ``HxW`` fused image in [0, 1].
        vi_rgb01: ``HxWx3`` visible RGB in [0, 1], same ``HxW``.

    Returns:
        ``HxWx3`` float32 RGB in [0, 1]: the visible image's YCbCr with Y replaced by
        the fused image, converted back and clipped.
    """
    fused = np.asarray(fused_gray01, dtype=np.float32)
    if fused.ndim == 3 and fused.shape[2] == 1:
        fused = fused[..., 0]
    vi = np.asarray(vi_rgb01)
    _check_three_channels(vi, "visible RGB image")
    if fused.shape != vi.shape[:2]:
        raise MoEFusionError(
            f"fused image shape {fused.shape} does not match visible image shape {vi.shape[:2]}"
        )
    ycc = rgb_to_ycbcr(vi)
    ycc[..., 0] = fused
    return np.clip(ycbcr_to_rgb(ycc), 0.0, 1.0).astype(np.float32)


def colorize_u8(fused_gray01: np.ndarray, vi_rgb01: np.ndarray, rows: int = 512) -> np.ndarray:
    """:func:`colorize` then 8-bit rounding as ``save_rgb_u8`` (``floor(x*255 + 0.5)``),
    strip by strip: whole-image float64 temporaries of an 8000x6000 pair take ~5 GB.

    Shapes:
        ``fused [H, W]``, ``vi_rgb [H, W, 3]`` in [0, 1] -> ``[H, W, 3]`` uint8.
    """
    vi = np.asarray(vi_rgb01)
    _check_three_channels(vi, "visible RGB image")
    out = np.empty(vi.shape, dtype=np.uint8)
    for top in range(0, vi.shape[0], rows):
        rgb = colorize(fused_gray01[top : top + rows], vi[top : top + rows])
        out[top : top + rows] = np.clip(np.floor(rgb * 255.0 + 0.5), 0, 255)
    return out
