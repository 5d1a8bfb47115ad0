"""MEF-MS-SSIM (Ma, Zeng & Wang 2015): ``analysis_ms_ssim.m`` + ``mef_ssim.m`` of the TANG
toolbox, the toolbox's "MS-SSIM" (a multi-exposure-fusion quality index, not Wang's
MS-SSIM).

The two sources (IR, VI) form the "exposure stack"; at every 11x11 window the fused
patch is compared (SSIM without the luminance term, C = (0.03*255)^2, Gaussian window
sigma 1.5) with a synthesised patch: the weighted mean structure of the source patches,
scaled to the largest source contrast. Three scales (2x2 box filter with symmetric
borders, then decimation), weights [0.0448 0.2856 0.3001] / sum; 'valid' windows.

The original loops over windows; here every per-window quantity is expanded into sums
over the window (box sums of x, x^2, x*y and Gaussian-weighted sums of x, x*y), computed
once per image with separable filters. The box sums are exact integer arithmetic (the
scale-2/3 images are multiples of 1/4, 1/16).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_WIN = 11
_K = 0.03
_LEVEL_WEIGHTS = np.array([0.0448, 0.2856, 0.3001])
_EPS = np.finfo(np.float64).eps


def _gauss_1d() -> np.ndarray:
    t = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(t * t) / (2 * 1.5 * 1.5))
    return g / g.sum()


def _box_valid(x: np.ndarray) -> np.ndarray:
    """Exact 'valid' 11x11 box sums of a float64 image of integers.

    OpenCV's running sums add and subtract integers below 2^53 here (at most
    121 * (255 * 16)^2), so every partial sum, and the result, is exact in any order.
    """
    y = cv2.boxFilter(x, cv2.CV_64F, (_WIN, _WIN), normalize=False, borderType=cv2.BORDER_CONSTANT)
    r = _WIN // 2
    return y[r : y.shape[0] - r, r : y.shape[1] - r]


def _gauss_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    y = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    r = _WIN // 2
    return y[r : y.shape[0] - r, r : y.shape[1] - r]


def _mef_ssim(seq: tuple[np.ndarray, np.ndarray], fused: np.ndarray, unit: int) -> float:
    """Q of ``mef_ssim(imgSeq, fI)`` for two sources; images are float64 holding
    multiples of 1/unit (``unit * x`` are exact integers)."""
    n = _WIN * _WIN
    ints = [np.rint(x * unit) for x in (*seq, fused)]
    # Exact box sums (scaled by unit, unit^2): S1_k, S2_k, S12 of the sources; the
    # integers below stay under 2^53, so float64 holds them exactly.
    s1 = [_box_valid(v) for v in ints[:2]]
    s2 = [_box_valid(v * v) for v in ints[:2]]
    s12 = _box_valid(ints[0] * ints[1])
    u2 = float(unit) * unit
    mu = [s / (n * unit) for s in s1]
    # Sum over the window of (x - mu)^2, exactly (n * S2 - S1^2) / n, and the covariance.
    css = [(n * b - a * a) / (n * u2) for a, b in zip(s1, s2, strict=True)]
    c12 = (n * s12 - s1[0] * s1[1]) / (n * u2)
    # ed = sqrt(max(n * sigma^2, 0)) + 0.001 with sigma^2 of the uniform window.
    ed = [np.sqrt(np.maximum(c, 0)) + 0.001 for c in css]
    # R = (||sum_k (x_k - mean)|| + eps) / (sum_k ||x_k - mu_k|| + eps).
    num = np.sqrt(np.maximum(css[0] + css[1] + 2 * c12, 0))
    den = np.sqrt(css[0]) + np.sqrt(css[1])
    r = (num + _EPS) / (den + _EPS)
    r[r > 1] = 1 - _EPS
    r[r < 0] = _EPS
    p = np.tan(math.pi / 2 * r)
    p[p > 10] = 10
    wmap = [(e / _WIN) ** p + _EPS for e in ed]
    norm = wmap[0] + wmap[1]
    wmap = [w / norm for w in wmap]
    max_ed = np.maximum(ed[0], ed[1])
    # rBlock = sum_k a_k (x_k - mu_k), a_k = w_k / ed_k; then scaled to norm max_ed.
    a = [w / e for w, e in zip(wmap, ed, strict=True)]
    nr2 = a[0] * a[0] * css[0] + a[1] * a[1] * css[1] + 2 * a[0] * a[1] * c12
    nr = np.sqrt(np.maximum(nr2, 0))
    scale = np.where(nr > 0, max_ed / np.where(nr > 0, nr, 1), 1.0)
    b = [ak * scale for ak in a]
    # Gaussian-weighted window sums, on images shifted by 128 (less cancellation).
    g = _gauss_1d()
    gsum = float(np.outer(g, g).sum())
    x = [v / unit - 128 for v in ints]
    mu_s = [m - 128 for m in mu]
    gx = [_gauss_valid(v, g) for v in x]
    gxx = [_gauss_valid(x[i] * x[j], g) for i, j in ((0, 0), (1, 1), (0, 1))]
    gxf = [_gauss_valid(x[k] * x[2], g) for k in (0, 1)]
    gff = _gauss_valid(x[2] * x[2], g)
    # d_k = sum g (x_k - mu_k) ; mu1 = sum g r ; mu2 = sum g f.
    d = [gx[k] - mu_s[k] * gsum for k in (0, 1)]
    mu1 = b[0] * d[0]
    d[1] *= b[1]
    mu1 += d[1]
    mu2 = gx[2]
    tmp = np.empty_like(mu1)

    def cross(i: int, j: int, gij: np.ndarray) -> np.ndarray:
        # sum g (x_i - mu_i)(x_j - mu_j) = ((gij - mu_j gx_i) - mu_i gx_j) + (mu_i mu_j) gsum,
        # evaluated in place (gij is not used again).
        np.multiply(mu_s[j], gx[i], out=tmp)
        gij -= tmp
        np.multiply(mu_s[i], gx[j], out=tmp)
        gij -= tmp
        np.multiply(mu_s[i], mu_s[j], out=tmp)
        np.multiply(tmp, gsum, out=tmp)
        gij += tmp
        return gij

    # srr = (b0 b0) c00 + (b1 b1) c11 + ((2 b0) b1) c01
    srr = b[0] * b[0]
    srr *= cross(0, 0, gxx[0])
    c11 = cross(1, 1, gxx[1])
    np.multiply(b[1], b[1], out=tmp)
    c11 *= tmp
    srr += c11
    b01 = 2 * b[0]
    b01 *= b[1]
    b01 *= cross(0, 1, gxx[2])
    srr += b01

    def centred(s2: np.ndarray, m: np.ndarray) -> np.ndarray:
        # sum g (v - m)^2 = (s2 - (2 m) m) + (m m) gsum; s2 is overwritten.
        np.multiply(2, m, out=tmp)
        np.multiply(tmp, m, out=tmp)
        s2 -= tmp
        np.multiply(m, m, out=tmp)
        np.multiply(tmp, gsum, out=tmp)
        s2 += tmp
        return s2

    sigma1_sq = centred(srr, mu1)
    sigma2_sq = centred(gff, mu2)
    # sum g r f = b0 (sum g x_0 f - mu_0 sum g f) + b1 (sum g x_1 f - mu_1 sum g f)
    for k in (0, 1):
        np.multiply(mu_s[k], gx[2], out=tmp)
        gxf[k] -= tmp
        gxf[k] *= b[k]
    srf = gxf[0]
    srf += gxf[1]
    # sigma12 = (srf - (2 mu1) mu2) + (mu1 mu2) gsum
    np.multiply(2, mu1, out=tmp)
    tmp *= mu2
    srf -= tmp
    np.multiply(mu1, mu2, out=tmp)
    tmp *= gsum
    srf += tmp
    c = (_K * 255) ** 2
    # q = (2 sigma12 + c) / ((sigma1_sq + sigma2_sq) + c)
    srf *= 2
    srf += c
    sigma1_sq += sigma2_sq
    sigma1_sq += c
    srf /= sigma1_sq
    return float(srf.mean())


def _downsample(x: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``."""
    p = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    # Only the kept samples, with the same sums: y(i, j) for even i, j.
    h, w = (x.shape[0] + 1) // 2, (x.shape[1] + 1) // 2
    top, bottom = p[0 : 2 * h : 2], p[1 : 2 * h + 1 : 2]
    y = top[:, 0 : 2 * w : 2] + bottom[:, 0 : 2 * w : 2]
    y += top[:, 1 : 2 * w + 1 : 2]
    y += bottom[:, 1 : 2 * w + 1 : 2]
    y /= 4
    return y


def mef_ms_ssim_scales(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> tuple[float, ...]:
    """(MEF_MS_SSIM, Q scale 1, Q scale 2, Q scale 3) of (H, W) uint8 images, H, W >= 44."""
    seq = (ir.astype(np.float64), vi.astype(np.float64))
    f = fused.astype(np.float64)
    qs = []
    for level in range(3):
        qs.append(_mef_ssim(seq, f, 4**level))
        if level < 2:
            seq = (_downsample(seq[0]), _downsample(seq[1]))
            f = _downsample(f)
    w = _LEVEL_WEIGHTS / _LEVEL_WEIGHTS.sum()
    overall = float(np.prod(np.array(qs) ** w))
    return (overall, *qs)
