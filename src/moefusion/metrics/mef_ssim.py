"""MEF-MS-SSIM (Ma, Zeng & Wang 2015): ``analysis_ms_ssim.m`` + ``mef_ssim.m`` of the TANG
toolbox, the toolbox's "MS-SSIM" (a multi-exposure-fusion quality index, not Wang's
MS-SSIM).

The two sources (IR, VI) form the "exposure stack"; at every 11x11 window the fused
patch is compared (SSIM without the luminance term, C = (0.03*255)^2, Gaussian window
sigma 1.5) with a synthesised patch: the weighted mean structure of the source patches,
scaled to the largest source contrast. Three scales (2x2 box filter with symmetric
borders, then decimation), weights [0.0448 0.2856 0.3001] / sum; 'valid' windows.

The original loops over windows; here every per-window quantity is expanded into sums
over the window: box sums of x, x^2, x*y (exact: the images hold multiples of 1/16 at
most, so every partial sum is an exactly representable float) and Gaussian-weighted sums
of x, x*y. One compiled pass per scale forms them all in a ring of the last 11 image
rows and evaluates the window's quality right away (no full-size temporaries).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from moefusion.metrics._filters import (
    JIT,
    col_sym11,
    matlab_gaussian_1d,
    row_box11,
    row_sym11,
    sym11_taps,
)

_WIN = 11
_K = 0.03
_LEVEL_WEIGHTS = np.array([0.0448, 0.2856, 0.3001])
_EPS = float(np.finfo(np.float64).eps)


_G = matlab_gaussian_1d(_WIN, 1.5)
#: Taps for the row/column kernels, and the 2-D window's sum (1 up to rounding).
_TAPS = sym11_taps(_G)
_GSUM = float(np.outer(_G, _G).sum())
#: Box sums: x0, x1, x0^2, x1^2, x0 x1. Gaussian sums (of X = x - 128, less
#: cancellation): X0, X1, X2, X0^2, X1^2, X0 X1, X0 X2, X1 X2, X2^2 (0, 1: sources, 2: F).
_NBOX, _NQ = 5, 14
_C = (_K * 255) ** 2


@numba.njit(**JIT)
def _row_q(s: np.ndarray, t: np.ndarray) -> float:
    """Sum of the qualities of one row of windows, whose 14 sums are s[:, c] (the
    quantities listed above); ``t`` (8, W) is scratch. The loops without tan / pow are
    kept apart so that they compile to vector instructions."""
    n = float(_WIN * _WIN)
    eps = _EPS
    wv = s.shape[1]
    cssa, cssb, c12, eda, edb, r, wa, wb = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
    for c in range(wv):
        s1a, s1b = s[0, c], s[1, c]
        # Sum over the window of (x - mu)^2, exactly (n S2 - S1^2) / n (>= 0), and the
        # covariance.
        cssa[c] = (n * s[2, c] - s1a * s1a) / n
        cssb[c] = (n * s[3, c] - s1b * s1b) / n
        c12[c] = (n * s[4, c] - s1a * s1b) / n
        # ed = sqrt(n sigma^2) + 0.001 with sigma^2 of the uniform window.
        sa, sb = math.sqrt(cssa[c]), math.sqrt(cssb[c])
        eda[c], edb[c] = sa + 0.001, sb + 0.001
        # R = (||sum_k (x_k - mean)|| + eps) / (sum_k ||x_k - mu_k|| + eps), at most 1 - eps.
        num = math.sqrt(max(cssa[c] + cssb[c] + 2 * c12[c], 0.0))
        rc = (num + eps) / ((sa + sb) + eps)
        r[c] = 1 - eps if rc > 1 else rc
    for c in range(wv):
        p = min(math.tan(math.pi / 2 * r[c]), 10.0)
        wa[c] = (eda[c] / _WIN) ** p + eps
        wb[c] = (edb[c] / _WIN) ** p + eps
    q = r
    for c in range(wv):
        norm = wa[c] + wb[c]
        ea, eb = eda[c], edb[c]
        # rBlock = sum_k a_k (x_k - mu_k), a_k = w_k / ed_k; then scaled to norm max(ed).
        aa, ab = (wa[c] / norm) / ea, (wb[c] / norm) / eb
        ca, cb, cab = cssa[c], cssb[c], c12[c]
        nr = math.sqrt(max(aa * aa * ca + ab * ab * cb + 2 * aa * ab * cab, 0.0))
        scale = max(ea, eb) / nr if nr > 0 else 1.0
        ba, bb = aa * scale, ab * scale
        # Gaussian-weighted sums of X = x - 128: d_k = sum g (X_k - mu_k), mu1 = sum g r,
        # mu2 = sum g F; sum g (X_i - mu_i)(X_j - mu_j) = ((g_ij - mu_j g_i) - mu_i g_j)
        # + (mu_i mu_j) gsum.
        gxa, gxb, gxf = s[5, c], s[6, c], s[7, c]
        msa, msb = s[0, c] / n - 128, s[1, c] / n - 128
        mu1 = ba * (gxa - msa * _GSUM) + bb * (gxb - msb * _GSUM)
        mu2 = gxf
        caa = ((s[8, c] - msa * gxa) - msa * gxa) + (msa * msa) * _GSUM
        cbb = ((s[9, c] - msb * gxb) - msb * gxb) + (msb * msb) * _GSUM
        cab = ((s[10, c] - msb * gxa) - msa * gxb) + (msa * msb) * _GSUM
        srr = ((ba * ba) * caa + cbb * (bb * bb)) + ((2 * ba) * bb) * cab
        sigma1_sq = (srr - (2 * mu1) * mu1) + (mu1 * mu1) * _GSUM
        sigma2_sq = (s[13, c] - (2 * mu2) * mu2) + (mu2 * mu2) * _GSUM
        # sum g r F = b0 (sum g X_0 F - mu_0 sum g F) + b1 (sum g X_1 F - mu_1 sum g F)
        srf = (s[11, c] - msa * gxf) * ba + (s[12, c] - msb * gxf) * bb
        sigma12 = (srf - (2 * mu1) * mu2) + (mu1 * mu2) * _GSUM
        q[c] = (sigma12 * 2 + _C) / ((sigma1_sq + sigma2_sq) + _C)
    total = 0.0
    for c in range(wv):
        total += q[c]
    return total


@numba.njit(**JIT)
def _mef_ssim(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray, taps: tuple[float, ...]) -> float:
    """Mean Q of ``mef_ssim({x0, x1}, x2)`` over the 'valid' 11x11 windows; float64
    images (H, W), H, W >= 11."""
    h, w = x2.shape
    wv = w - _WIN + 1
    prod = np.empty((_NQ, w))
    ring = np.empty((_NQ, _WIN, wv))
    sums = np.zeros((_NQ, wv))
    scratch = np.empty((8, wv))
    total = 0.0
    for i in range(h):
        for c in range(w):
            a, b, f = x0[i, c], x1[i, c], x2[i, c]
            prod[0, c], prod[1, c], prod[2, c], prod[3, c], prod[4, c] = a, b, a * a, b * b, a * b
            a, b, f = a - 128, b - 128, f - 128
            prod[5, c], prod[6, c], prod[7, c], prod[8, c], prod[9, c] = a, b, f, a * a, b * b
            prod[10, c], prod[11, c], prod[12, c], prod[13, c] = a * b, a * f, b * f, f * f
        slot = i % _WIN
        # Box sums run down the columns: the row leaving the window (in the slot being
        # overwritten) is subtracted and the new one added (exact: integer multiples of
        # 1/256 well below 2^53 / 256).
        for q in range(_NBOX):
            s, r = sums[q], ring[q, slot]
            if i >= _WIN:
                for c in range(wv):
                    s[c] -= r[c]
            row_box11(prod[q], r)
            for c in range(wv):
                s[c] += r[c]
        for q in range(_NBOX, _NQ):
            row_sym11(prod[q], ring[q, slot], taps)
        if i < _WIN - 1:
            continue
        top = (i + 1) % _WIN  # slot of the window's first row
        for q in range(_NBOX, _NQ):
            col_sym11(ring[q], top, sums[q], taps)
        total += _row_q(sums, scratch)
    return total / ((h - _WIN + 1) * wv)


@numba.njit(**JIT)
def _downsample(x: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``: only
    the kept samples, ((x00 + x10) + x01) + x11) / 4, the last row / column repeated."""
    h, w = x.shape
    y = np.empty(((h + 1) // 2, (w + 1) // 2))
    for i in range(y.shape[0]):
        top, bottom = x[2 * i], x[min(2 * i + 1, h - 1)]
        for j in range(y.shape[1]):
            c0, c1 = 2 * j, min(2 * j + 1, w - 1)
            y[i, j] = (((top[c0] + bottom[c0]) + top[c1]) + bottom[c1]) / 4
    return y


def mef_ms_ssim_scales(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> tuple[float, ...]:
    """(MEF_MS_SSIM, Q scale 1, Q scale 2, Q scale 3) of (H, W) uint8 images, H, W >= 44."""
    seq = (ir.astype(np.float64), vi.astype(np.float64))
    f = fused.astype(np.float64)
    qs = []
    for level in range(3):
        qs.append(_mef_ssim(seq[0], seq[1], f, _TAPS))
        if level < 2:
            seq = (_downsample(seq[0]), _downsample(seq[1]))
            f = _downsample(f)
    w = _LEVEL_WEIGHTS / _LEVEL_WEIGHTS.sum()
    overall = float(np.prod(np.array(qs) ** w))
    return (overall, *qs)
