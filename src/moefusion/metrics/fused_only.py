"""Metrics of the fused image alone: EN, SF, SD, AG (exact forms for the MATLAB conventions).

The MATLAB toolboxes compute these in float64, where every intermediate sum of 8-bit
data is an exactly representable integer; the versions here compute the same integers
exactly, so they agree with the references to the last few ulps.
"""

from __future__ import annotations

import math

import numpy as np

_LEVELS = np.arange(256, dtype=np.float64)


def entropy_bits(counts: np.ndarray) -> float:
    """EN: Shannon entropy in bits from (256,) grey-level counts (MATLAB ``entropy``)."""
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def _sum_sq_diffs(u8: np.ndarray) -> tuple[int, int]:
    """Exact (sum of squared column differences, sum of squared row differences)."""
    x = u8.astype(np.int16)
    dc = x[:, 1:] - x[:, :-1]
    dr = x[1:, :] - x[:-1, :]
    # einsum with dtype=float64 casts in small buffers: no full-size float temporary, and
    # integer sums below 2**53 are exact in float64.
    sc = np.einsum("ij,ij->", dc, dc, dtype=np.float64)
    sr = np.einsum("ij,ij->", dr, dr, dtype=np.float64)
    return int(sc), int(sr)


def spatial_frequency(u8: np.ndarray, scale: float = 1.0) -> float:
    """SF of (H, W) uint8 = sqrt(mean(dCol^2) + mean(dRow^2)) on ``u8 * scale``.

    TANG-2022 works on ``im2double`` ([0, 1], ``scale=1/255``), the others on [0, 255].
    Means are over the M x (N-1) and (M-1) x N difference arrays.
    """
    m, n = u8.shape
    sc, sr = _sum_sq_diffs(u8)
    return math.sqrt(sc / (m * (n - 1)) + sr / ((m - 1) * n)) * scale


def sd_tang2022(counts: np.ndarray, shape: tuple[int, int]) -> float:
    """TANG-2022 "SD" of a (H, W) uint8 image from its (256,) counts (not a real std).

    MATLAB computes ``u = mean(mean(F))`` in double, then ``F - u`` and ``.^2`` in uint8:
    each deviation is rounded half away from zero and clipped to [0, 255] (negative ones
    become 0) and its square clips at 255, so the value never exceeds sqrt(255). The
    rounded deviation depends only on the grey level, hence the per-level evaluation.
    """
    m, n = shape
    total = m * n
    u = float(np.dot(counts, _LEVELS)) / total
    d = _LEVELS - u
    d = np.clip(np.floor(np.abs(d) + 0.5) * np.sign(d), 0, 255)
    d2 = np.minimum(d * d, 255.0)
    return math.sqrt(float(np.dot(counts, d2)) / total)


def sd_population(counts: np.ndarray) -> float:
    """Population standard deviation (ddof=0) from (256,) grey-level counts, exact."""
    lv = np.arange(256, dtype=np.int64)
    n = int(counts.sum())
    s1 = int(np.dot(counts, lv))
    s2 = int(np.dot(counts, lv * lv))
    return math.sqrt(n * s2 - s1 * s1) / n


def average_gradient(u8: np.ndarray) -> float:
    """AG of (H, W) uint8 on [0, 255]: sum sqrt((Gx^2 + Gy^2) / 2) / ((H-1)(W-1)).

    Gx, Gy are MATLAB ``gradient`` (central differences inside, one-sided at borders).
    With D = 2*G (integers) the summand is sqrt(Dx^2 + Dy^2) / sqrt(8); Dx^2 + Dy^2 < 2**24
    is exact in float32 and its correctly rounded float32 sqrt, summed in float64, stays
    within 1e-7 relative of the float64 reference.
    """
    m, n = u8.shape
    x = u8.astype(np.int16)
    dx = np.empty((m, n), np.int16)
    dy = np.empty((m, n), np.int16)
    dx[:, 1:-1] = x[:, 2:] - x[:, :-2]
    dx[:, 0] = 2 * (x[:, 1] - x[:, 0])
    dx[:, -1] = 2 * (x[:, -1] - x[:, -2])
    dy[1:-1, :] = x[2:, :] - x[:-2, :]
    dy[0, :] = 2 * (x[1, :] - x[0, :])
    dy[-1, :] = 2 * (x[-1, :] - x[-2, :])
    q = dx.astype(np.float32) ** 2
    q += dy.astype(np.float32) ** 2
    s = float(np.sum(np.sqrt(q), dtype=np.float64))
    return s / math.sqrt(8.0) / ((m - 1) * (n - 1))
