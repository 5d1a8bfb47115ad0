"""Pixel-wise comparisons with the sources, exact from histogram moments: CC, SCD, MSE, PSNR.

The MATLAB conventions compute these in float64; here the underlying integer sums are
exact (see :mod:`moefusion.metrics._histograms`), so only the final division rounds.
"""

from __future__ import annotations

import math

from moefusion.metrics._histograms import Histograms


def _corr(n: int, sx: int, sy: int, sxx: int, syy: int, sxy: int) -> float:
    """Pearson correlation from exact integer sums (NaN for a constant image)."""
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    return cov / math.sqrt(var) if var > 0 else math.nan


def cc(h: Histograms) -> float:
    """CC = (corr(A, F) + corr(B, F)) / 2."""
    s, n = h.sums, h.n
    r_af = _corr(n, s["a"], s["f"], s["aa"], s["ff"], s["af"])
    r_bf = _corr(n, s["b"], s["f"], s["bb"], s["ff"], s["bf"])
    return (r_af + r_bf) / 2


def scd(h: Histograms) -> float:
    """SCD = corr(F - B, A) + corr(F - A, B) (Aslantas & Bendes 2015); scale-invariant."""
    s, n, ab = h.sums, h.n, h.sum_ab
    # Moments of the difference images from the pairwise sums.
    fb, fbfb = s["f"] - s["b"], s["ff"] - 2 * s["bf"] + s["bb"]
    fa, fafa = s["f"] - s["a"], s["ff"] - 2 * s["af"] + s["aa"]
    c1 = _corr(n, fb, s["a"], fbfb, s["aa"], s["af"] - ab)
    c2 = _corr(n, fa, s["b"], fafa, s["bb"], s["bf"] - ab)
    return c1 + c2


def mse(h: Histograms, scale: float = 1.0) -> float:
    """MSE = (mean((F - A)^2) + mean((F - B)^2)) / 2 on images multiplied by ``scale``."""
    s, n = h.sums, h.n
    sq = (s["ff"] - 2 * s["af"] + s["aa"]) + (s["ff"] - 2 * s["bf"] + s["bb"])
    return sq / (2 * n) * scale * scale


def psnr_tang(h: Histograms) -> float:
    """TANG PSNR = 20 log10(255 / sqrt(MSE)), MSE on [0, 1] (a 255 peak on a [0, 1] MSE,
    i.e. +48.13 dB over the textbook value); inf when MSE is 0."""
    m = mse(h, 1 / 255)
    return math.inf if m == 0 else 20 * math.log10(255 / math.sqrt(m))
