"""Qabf: Xydeas & Petrovic (2000) edge preservation, as in every reference toolbox."""

from __future__ import annotations

import math

import numba
import numpy as np

from moefusion.metrics._filters import JIT, ZERO, framed_rows

# Sigmoid constants of the original code (L = 1, so the weights are the gradient strengths).
_TG, _KG, _DG = 0.9994, -15, 0.5
_TA, _KA, _DA = 0.9879, -22, 0.8


def grey_levels(dtype: type = np.float64, scale: float | None = None) -> np.ndarray:
    """(256,) the values grey levels 0..255 stand for: converted to ``dtype`` and divided by
    ``scale`` if given (division, not multiplication by 1/scale, to round like MATLAB's
    ``im2double``)."""
    levels = np.arange(256).astype(dtype)
    if scale is not None:
        levels /= scale
    return levels


@numba.njit(**JIT)
def _gradients(p: np.ndarray, g: np.ndarray, ux: np.ndarray, uy: np.ndarray) -> None:
    """From zero-framed rows ``p`` (3, W+2) (see :func:`framed_rows`): the gradient strength
    g = sqrt(Sx^2 + Sy^2), Sx = conv2(x, [-1 0 1; -2 0 2; -1 0 1], 'same'),
    Sy = conv2(x, [1 2 1; 0 0 0; -1 -2 -1], 'same'), and the orientation atan(Sy/Sx)
    (pi/2 where Sx == 0) as the vector (ux, uy) at that angle: +-(Sx, Sy) with ux > 0, or
    (0, 1) where Sx == 0. The dtype is kept.

    The terms are added in the kernel's row-major order starting from 0, the order
    scipy's ``convolve2d`` uses, so the float rounding is identical to the Python
    reference (on [0, 1] data tests such as ``Sx == 0`` depend on it); a + (-b) == a - b
    and 2 v == v + v exactly, so zero taps are skipped."""
    # p[2 - u, j + 2 - v] is the sample that kernel tap (u, v) multiplies.
    top, mid, bot = p[2], p[1], p[0]
    one = p.dtype.type(1)
    for j in range(g.shape[0]):
        tl, tc, tr = top[j + 2], top[j + 1], top[j]
        ml, mr = mid[j + 2], mid[j]
        bl, bc, br = bot[j + 2], bot[j + 1], bot[j]
        x = ((((-tl + tr) - (ml + ml)) + (mr + mr)) - bl) + br
        y = ((((tl + (tc + tc)) + tr) - bl) - (bc + bc)) - br
        g[j] = math.sqrt(x * x + y * y)
        ux[j] = abs(x)
        uy[j] = y if x > 0 else (-y if x < 0 else one)


@numba.njit(**JIT)
def _maps(
    a: np.ndarray, b: np.ndarray, f: np.ndarray, levels: np.ndarray, k: np.ndarray, out: np.ndarray
) -> None:
    """out (4, H, W) = Q^{AF} gA, Q^{BF} gB, gA, gB of the uint8 images a, b, f, computed
    on levels[x]; ``k`` holds the constants in the levels' dtype.

    Row by row, the loops without exp / atan are kept apart so that they compile to
    vector instructions. Q is finite everywhere, so Q g is 0 where g is 0."""
    tg, kg, dg, ta, ka, da, half_pi, one = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    pi = half_pi + half_pi
    h, w = f.shape
    dt = levels.dtype
    p = np.empty((3, 3, w + 2), dt)
    ux, uy, gf = np.empty((3, w), dt), np.empty((3, w), dt), np.empty(w, dt)
    arg_g, ratio, dot = np.empty((2, w), dt), np.empty((2, w), dt), np.empty((2, w), dt)
    angle, arg_a = np.empty((2, w), dt), np.empty((2, w), dt)
    for i in range(h):
        g = (out[2, i], out[3, i], gf)
        framed_rows(a, levels, i, ZERO, p[0])
        framed_rows(b, levels, i, ZERO, p[1])
        framed_rows(f, levels, i, ZERO, p[2])
        for s in range(3):
            _gradients(p[s], g[s], ux[s], uy[s])
        for s in range(2):
            gs = g[s]
            for j in range(w):
                # Relative strength: smaller over larger, except the original rule G = gF
                # where the strengths are equal (so 0 on flat areas, and not
                # scale-invariant on [0, 1] data).
                lo, hi = (gs[j], gf[j]) if gs[j] < gf[j] else (gf[j], gs[j])
                arg_g[s, j] = ((gf[j] if gs[j] == gf[j] else lo / hi) - dg) * kg
                # |alpha_S - alpha_F| = atan2(|cross|, dot) of the orientation vectors:
                # one atan instead of two (the angles lie in (-pi/2, pi/2], the gap in
                # [0, pi)).
                cross = abs(uy[s, j] * ux[2, j] - ux[s, j] * uy[2, j])
                d = ux[s, j] * ux[2, j] + uy[s, j] * uy[2, j]
                dot[s, j] = d
                ratio[s, j] = cross / abs(d)
        for s in range(2):
            for j in range(w):
                angle[s, j] = math.atan(ratio[s, j])
        for s in range(2):
            for j in range(w):
                d = dot[s, j]
                gap = angle[s, j] if d > 0 else (pi - angle[s, j] if d < 0 else half_pi)
                arg_a[s, j] = ((one - gap / half_pi) - da) * ka
        for s in range(2):
            for j in range(w):
                arg_g[s, j] = math.exp(arg_g[s, j])
                arg_a[s, j] = math.exp(arg_a[s, j])
        for s in range(2):
            q, gs = out[s, i], g[s]
            for j in range(w):
                q[j] = ((tg / (arg_g[s, j] + one)) * (ta / (arg_a[s, j] + one))) * gs[j]


def preservation_maps(
    ir: np.ndarray, vi: np.ndarray, fused: np.ndarray, levels: np.ndarray
) -> np.ndarray:
    """(4, H, W) maps Q^{AF} gA, Q^{BF} gB, gA, gB of (H, W) uint8 images (A = ir, B = vi),
    computed on levels[x] in the levels' dtype (see :func:`grey_levels`)."""
    consts = np.array([_TG, _KG, _DG, _TA, _KA, _DA, math.pi / 2, 1.0], levels.dtype)
    out = np.empty((4, *fused.shape), levels.dtype)
    _maps(ir, vi, fused, levels, consts, out)
    return out


def qabf(
    ir: np.ndarray, vi: np.ndarray, fused: np.ndarray, levels: np.ndarray | None = None
) -> float:
    """Qabf of (H, W) uint8 images = sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB).

    Computed on levels[x] (default :func:`grey_levels`: float64 [0, 255]): TANG-2022 uses
    float64 [0, 1] (``grey_levels(scale=255)``), where the result is not scale-invariant;
    CDDFuse float32 [0, 255]; VIFB float64 255 * [0, 255]. The per-pixel terms and the two
    sums (numpy's, over the whole image) are in the levels' dtype, which is what
    reproduces CDDFuse's float32 rounding.
    """
    qa, qb, ga, gb = preservation_maps(ir, vi, fused, grey_levels() if levels is None else levels)
    num, den = np.sum(qa + qb), np.sum(ga + gb)
    return float(num / den) if den > 0 else math.nan
