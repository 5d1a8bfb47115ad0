"""VIF: LIVE pixel-domain multiscale VIF (``vifp_mscale``), summed over the two sources.

Work is done in horizontal strips (outputs of ``BLOCK_ROWS`` rows plus the filter's
halo): results equal whole-image filtering, while the temporaries stay small enough to
be reused from cache instead of being freshly mapped for every product and moment.
"""

from __future__ import annotations

import math

import numpy as np

from moefusion.metrics._filters import gaussian_valid, matlab_gaussian_1d

_SIGMA_NSQ = 2.0
_EPS = 1e-10
_LN10 = math.log(10.0)
_WINDOWS = tuple(matlab_gaussian_1d(2 ** (5 - s) + 1) for s in range(1, 5))  # 17, 9, 5, 3
#: Output rows per strip.
BLOCK_ROWS = 48
#: Smallest image side the 4-scale pyramid supports.
MIN_SIDE = 41


def _variance(e2: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Local variance e2 - mu^2 (new array)."""
    v = mu * mu
    np.subtract(e2, v, out=v)
    return v


def _scale_terms(
    s1: np.ndarray, s2_ok: np.ndarray, s2: np.ndarray, s12: np.ndarray
) -> tuple[float, float]:
    """(numerator, denominator) sums of one scale from local (co)variances.

    Equivalent to the LIVE code's guards: the numerator term is 0 unless s1 >= eps,
    s2 >= eps (``s2_ok``) and g > 0, because every other branch sets g to 0, so it is
    evaluated only there. In the denominator s1 < eps counts as 0. ``s1`` is modified in
    place.
    """
    keep = s1 >= _EPS
    s1 *= keep  # LIVE sets s1 < eps (negatives included) to 0
    den = np.log1p(s1 * (1 / _SIGMA_NSQ)).sum()
    keep &= s2_ok
    keep &= s12 > 0
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return 0.0, float(den) / _LN10
    a = s1.ravel()[idx]
    c = s12.ravel()[idx]
    g = c / (a + _EPS)
    sv = s2.ravel()[idx] - g * c
    np.maximum(sv, _EPS, out=sv)
    sv += _SIGMA_NSQ
    g *= g
    g *= a
    g /= sv
    num = np.log1p(g).sum()
    # log10(1 + x) = log1p(x) / ln 10; the base cancels in num/den anyway.
    return float(num) / _LN10, float(den) / _LN10


def _next_level(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """filter2(win, x, 'valid')(1:2:end, 1:2:end) of (H, W) x, in strips of even rows."""
    n = len(w)
    h = x.shape[0] - n + 1
    parts = []
    step = 2 * BLOCK_ROWS
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        parts.append(gaussian_valid(x[r0 : r1 + n - 1], w)[::2, ::2])
    return np.concatenate(parts)


def _products(r: np.ndarray, d: np.ndarray, saturate: bool) -> tuple[np.ndarray, np.ndarray]:
    """(r*r, r*d), clipped at 255 where MATLAB multiplies uint8 arrays."""
    rr, rd = r * r, r * d
    if saturate:
        np.minimum(rr, 255.0, out=rr)
        np.minimum(rd, 255.0, out=rd)
    return rr, rd


def vif_pairs(
    sources: tuple[np.ndarray, ...],
    fused: np.ndarray,
    *,
    saturate_u8: bool,
    nan_as_one: bool = False,
) -> float:
    """Sum over sources of vifp_mscale(source, fused); all (H, W) uint8, H, W >= 41.

    ``saturate_u8=True`` is TANG-2022: at scale 1 the products ``ref.*ref``,
    ``dist.*dist`` and ``ref.*dist`` are taken in MATLAB uint8, i.e. clipped at 255.
    A source that is flat everywhere gives 0/0 = NaN, which CDDFuse replaces by 1
    (``nan_as_one``) and MATLAB keeps. The fused image's terms are shared by the sources.
    """
    # Level 0 stays uint8 and is converted strip by strip (no full-size float copies).
    dist: np.ndarray = fused
    refs: list[np.ndarray] = list(sources)
    num = [0.0] * len(refs)
    den = [0.0] * len(refs)
    for scale, w in enumerate(_WINDOWS):
        if scale > 0:
            dist = _next_level(dist, w)
            refs = [_next_level(r, w) for r in refs]
        n = len(w)
        sat = saturate_u8 and scale == 0
        h = dist.shape[0] - n + 1
        for r0 in range(0, h, BLOCK_ROWS):
            r1 = min(h, r0 + BLOCK_ROWS)
            d = np.asarray(dist[r0 : r1 + n - 1], dtype=np.float64)
            dd = d * d
            if sat:
                np.minimum(dd, 255.0, out=dd)
            mu2 = gaussian_valid(d, w)
            s2 = _variance(gaussian_valid(dd, w), mu2)
            np.maximum(s2, 0, out=s2)
            s2_ok = s2 >= _EPS
            for i, ref in enumerate(refs):
                r = np.asarray(ref[r0 : r1 + n - 1], dtype=np.float64)
                rr, rd = _products(r, d, sat)
                mu1 = gaussian_valid(r, w)
                s12 = gaussian_valid(rd, w)
                s12 -= mu1 * mu2
                a, b = _scale_terms(_variance(gaussian_valid(rr, w), mu1), s2_ok, s2, s12)
                num[i] += a
                den[i] += b
    total = 0.0
    for a, b in zip(num, den, strict=True):
        if b > 0:
            total += a / b
        elif a > 0:
            total += math.inf
        else:
            total += 1.0 if nan_as_one else math.nan
    return total
