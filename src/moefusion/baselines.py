"""Classical infrared-visible fusion baselines (no learning), for comparison tables.

Every method maps two (H, W) float images in [0, 1] to one (H, W) float image in [0, 1]:

* ``average``   - pixel mean;
* ``max``       - max-absolute selection (for non-negative images, the pixel maximum);
* ``laplacian`` - Laplacian pyramid (Burt & Adelson): max-absolute on detail levels,
  average of the coarsest Gaussian level;
* ``dwt``       - 3-level ``db2`` wavelet transform (PyWavelets): max-absolute details,
  averaged approximation;
* ``gff``       - guided-filtering fusion (Li, Kang & Hu, IEEE TIP 2013).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
import pywt

from moefusion.errors import MoEFusionError, PairError

FusionFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

PYRAMID_LEVELS = 4
DWT_WAVELET = "db2"
DWT_LEVELS = 3
# GFF parameters from the paper (Li, Kang & Hu 2013, section III-C).
GFF_MEAN_SIZE = 31
GFF_SALIENCY_RADIUS, GFF_SALIENCY_SIGMA = 5, 5.0
GFF_R1, GFF_EPS1 = 45, 0.3
GFF_R2, GFF_EPS2 = 7, 1e-6


def _max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise choose the value with the larger magnitude (a on ties)."""
    return np.where(np.abs(a) >= np.abs(b), a, b)


def fuse_average(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """(H, W) mean of the two images."""
    return (ir + vi) / 2


def fuse_max(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """(H, W) max-absolute selection."""
    return _max_abs(ir, vi)


def _levels_for(shape: tuple[int, ...], wanted: int) -> int:
    """Pyramid depth such that the coarsest level keeps at least 4 pixels per side."""
    side = min(shape)
    n = 0
    while n < wanted and side >= 8:
        side = (side + 1) // 2
        n += 1
    return n


def _laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """[L_0, ..., L_{levels-1}, G_levels]: detail levels then the coarsest Gaussian."""
    pyr = []
    g = x
    for _ in range(levels):
        down = cv2.pyrDown(g)
        up = cv2.pyrUp(down, dstsize=(g.shape[1], g.shape[0]))
        pyr.append(g - up)
        g = down
    pyr.append(g)
    return pyr


def fuse_laplacian(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """Laplacian-pyramid fusion of (H, W) images, ``PYRAMID_LEVELS`` detail levels."""
    levels = _levels_for(ir.shape, PYRAMID_LEVELS)
    pa = _laplacian_pyramid(ir, levels)
    pb = _laplacian_pyramid(vi, levels)
    out = (pa[-1] + pb[-1]) / 2
    for la, lb in zip(reversed(pa[:-1]), reversed(pb[:-1]), strict=True):
        out = cv2.pyrUp(out, dstsize=(la.shape[1], la.shape[0])) + _max_abs(la, lb)
    return out


def fuse_dwt(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """DWT fusion of (H, W) images: ``DWT_WAVELET``, up to ``DWT_LEVELS`` levels."""
    w = pywt.Wavelet(DWT_WAVELET)
    # pywt's limit keeps every level free of pure boundary coefficients; tiny images get 1.
    levels = max(1, min(DWT_LEVELS, pywt.dwt_max_level(min(ir.shape), w.dec_len)))
    with warnings.catch_warnings():
        # Images under 4 pixels a side still get one (boundary-dominated) level.
        warnings.filterwarnings("ignore", message="Level value of", category=UserWarning)
        ca = pywt.wavedec2(ir, w, mode="symmetric", level=levels)
        cb = pywt.wavedec2(vi, w, mode="symmetric", level=levels)
    fused: list = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:], strict=True):
        fused.append(tuple(_max_abs(x, y) for x, y in zip(da, db, strict=True)))
    out = pywt.waverec2(fused, w, mode="symmetric")
    # waverec2 returns even sizes; odd inputs get one extra row/column.
    return out[: ir.shape[0], : ir.shape[1]]


def _box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window clipped to the image (He et al.'s box filter / N)."""
    k = (2 * r + 1, 2 * r + 1)
    s = cv2.boxFilter(x, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    n = cv2.boxFilter(np.ones_like(x), -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    return s / n


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Gray guided filter (He, Sun & Tang 2010): (H, W) guide and input -> (H, W) output."""
    mean_i = _box_mean(guide, r)
    mean_p = _box_mean(src, r)
    var_i = _box_mean(guide * guide, r) - mean_i * mean_i
    cov_ip = _box_mean(guide * src, r) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box_mean(a, r) * guide + _box_mean(b, r)


def fuse_gff(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """Guided-filtering fusion (Li, Kang & Hu 2013) of two (H, W) images in [0, 1]."""
    srcs = (ir, vi)
    base = [
        cv2.blur(x, (GFF_MEAN_SIZE, GFF_MEAN_SIZE), borderType=cv2.BORDER_REPLICATE) for x in srcs
    ]
    detail = [x - b for x, b in zip(srcs, base, strict=True)]
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    ksize = 2 * GFF_SALIENCY_RADIUS + 1
    sal = [
        cv2.GaussianBlur(
            np.abs(cv2.filter2D(x, -1, lap, borderType=cv2.BORDER_REPLICATE)),
            (ksize, ksize),
            GFF_SALIENCY_SIGMA,
            borderType=cv2.BORDER_REPLICATE,
        )
        for x in srcs
    ]
    smax = np.maximum(sal[0], sal[1])
    # Binary weight maps; pixels where both saliencies are equal count for both.
    masks = [(s == smax).astype(np.float64) for s in sal]
    wb = [guided_filter(x, m, GFF_R1, GFF_EPS1) for x, m in zip(srcs, masks, strict=True)]
    wd = [guided_filter(x, m, GFF_R2, GFF_EPS2) for x, m in zip(srcs, masks, strict=True)]
    out = np.zeros_like(ir)
    for weights, layers in ((wb, base), (wd, detail)):
        total = weights[0] + weights[1]
        # Normalise to sum 1 per pixel; fall back to equal weights where both vanish.
        tiny = np.abs(total) < 1e-8
        w0 = np.where(tiny, 0.5, weights[0] / np.where(tiny, 1.0, total))
        out += w0 * layers[0] + (1 - w0) * layers[1]
    return out


BASELINES: Mapping[str, FusionFn] = MappingProxyType(
    {
        "average": fuse_average,
        "max": fuse_max,
        "laplacian": fuse_laplacian,
        "dwt": fuse_dwt,
        "gff": fuse_gff,
    }
)


def fuse_baseline(ir: np.ndarray, vi: np.ndarray, method: str) -> np.ndarray:
    """Fuse (H, W) float images in [0, 1] with a classical method -> (H, W) float64 in [0, 1].

    Raises:
        MoEFusionError: unknown method, or inputs that are not 2-D arrays in [0, 1].
        PairError: the two images differ in size.
    """
    if method not in BASELINES:
        raise MoEFusionError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    arrays = []
    for name, x in (("ir", ir), ("vi", vi)):
        a = np.asarray(x)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise MoEFusionError(
                f"{name}: expected a 2-D float array in [0, 1], got {a.dtype} {a.shape}"
            )
        if a.size and (a.min() < 0 or a.max() > 1 or not np.all(np.isfinite(a))):
            raise MoEFusionError(f"{name}: values must lie in [0, 1]")
        arrays.append(a.astype(np.float64))
    if arrays[0].shape != arrays[1].shape:
        raise PairError(f"image sizes differ: ir {arrays[0].shape}, vi {arrays[1].shape}")
    if min(arrays[0].shape) < 2:
        raise MoEFusionError(f"images must be at least 2x2 pixels, got {arrays[0].shape}")
    return np.clip(BASELINES[method](arrays[0], arrays[1]), 0.0, 1.0)


def to_unit_gray(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) RGB uint8 -> (H, W) float64 in [0, 1]; colour by cv2 RGB2GRAY
    (0.299 R + 0.587 G + 0.114 B, cv2's rounded 8-bit result)."""
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return img.astype(np.float64) / 255.0


def to_u8(x: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> uint8 as ``floor(x*255 + 0.5)`` (torchvision save_image)."""
    return np.clip(np.floor(x * 255.0 + 0.5), 0, 255).astype(np.uint8)


def output_path(out_dir: Path, stem: str) -> Path:
    """Where the fused image of ``stem`` is written: ``<out>/<stem>.png``."""
    return out_dir / f"{stem}.png"
