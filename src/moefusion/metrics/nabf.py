"""Nabf: Kumar's modified fusion-artefact measure (``analysis_nabf.m`` of the TANG toolbox,
identical arithmetic to Kumar's ``objective_fusion_perform_fn.m``).

``nabf(f, i1, i2)`` takes the image in the "fused" slot first, like the original. Three
calling conventions exist (see ``docs/metrics.md``): ``Nabf`` = (fused, ir, vi) on
[0, 255] as the author uses it; ``Nabf_tang2023`` = (ir, vi, fused) on [0, 255] (TANG-2023's
argument-order bug: the IR image sits in the fused slot); ``Nabf_tang2022`` = (fused, ir,
vi) on [0, 1] (every gradient is below Td = 2, so every weight is 0.001). Lower is better.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from moefusion.metrics._filters import JIT, MIRROR, framed_rows
from moefusion.metrics.qabf import grey_levels

_TD, _WT_MIN, _LG = 2.0, 0.001, 1.5
_NRG, _KG, _SG = 0.9999, 19.0, 0.5
_NRA, _KA, _SA = 0.9995, 22.0, 0.5


@numba.njit(**JIT)
def _gradients(p: np.ndarray, gv: np.ndarray, gh: np.ndarray, g: np.ndarray, w: np.ndarray) -> None:
    """One row of ``sobel_fn`` (gv, gh) from the rows ``p`` (3, W+2) around it of the
    mirror-extended image (edge not repeated), the strength g = sqrt(gh^2 + gv^2) and
    the weight w = g^1.5 (0.001 below Td).

    gv, gh are correlations with [-1 0 1; -2 0 2; -1 0 1]/8 and its transpose, summed
    column first like the original: gv = ((t1 + t2) + t3) per column, then
    ((c1 + c2) + c3) across columns (the middle column is all zero taps, so
    (c1 + 0) + c3 = c1 + c3); gh per column (top * -k + 0) + bottom * k.
    """
    top, mid, bot = p[0], p[1], p[2]
    for j in range(g.shape[0]):
        c1 = (top[j] * -0.125 + mid[j] * -0.25) + bot[j] * -0.125
        c3 = (top[j + 2] * 0.125 + mid[j + 2] * 0.25) + bot[j + 2] * 0.125
        v = c1 + c3
        h = ((top[j] * -0.125 + bot[j] * 0.125) + (top[j + 1] * -0.25 + bot[j + 1] * 0.25)) + (
            top[j + 2] * -0.125 + bot[j + 2] * 0.125
        )
        gv[j], gh[j] = v, h
        s = math.sqrt(h * h + v * v)
        g[j] = s
        # g^1.5 as sqrt(g) * g (within an ulp of pow).
        w[j] = _WT_MIN if s < _TD else math.sqrt(s) * s


@numba.njit(**JIT)
def _angle(gv: float, gh: float) -> float:
    """atan(gv / gh): +-pi/2 where only gh is 0, 0 where both are."""
    return 0.0 if gv == 0 and gh == 0 else math.atan(gv / gh)


@numba.njit(**JIT)
def _q(ga: float, aa: float, gf: float, af: float) -> float:
    """Q of a source pixel where the fused gradient is larger (gf > ga >= 0): the
    strength ratio is ga / gf."""
    ang = abs(abs(aa - af) - math.pi / 2) * 2 / math.pi
    qg = _NRG / (1 + math.exp(-_KG * (ga / gf - _SG)))
    qa = _NRA / (1 + math.exp(-_KA * (ang - _SA)))
    return math.sqrt(qg * qa)


@numba.njit(**JIT)
def _nabf(f: np.ndarray, a: np.ndarray, b: np.ndarray, levels: np.ndarray) -> float:
    """NABF of the (H, W) uint8 images (fused slot first) taken as levels[x]."""
    h, w = f.shape
    p = np.empty((3, 3, w + 2))
    gv, gh = np.empty((3, w)), np.empty((3, w))
    g, wt = np.empty((3, w)), np.empty((3, w))
    num = den = 0.0
    for i in range(h):
        framed_rows(f, levels, i, MIRROR, p[0])
        framed_rows(a, levels, i, MIRROR, p[1])
        framed_rows(b, levels, i, MIRROR, p[2])
        for k in range(3):
            _gradients(p[k], gv[k], gh[k], g[k], wt[k])
        row_num = row_den = 0.0
        for j in range(w):
            gf, g1, g2 = g[0, j], g[1, j], g[2, j]
            row_den += wt[1, j] + wt[2, j]
            # na = 1 where the "fused" gradient exceeds both sources'; Q only there.
            if gf > g1 and gf > g2:
                af = _angle(gv[0, j], gh[0, j])
                q1 = _q(g1, _angle(gv[1, j], gh[1, j]), gf, af)
                q2 = _q(g2, _angle(gv[2, j], gh[2, j]), gf, af)
                row_num += (1 - q1) * wt[1, j] + (1 - q2) * wt[2, j]
        num += row_num
        den += row_den
    return num / den


def nabf(f: np.ndarray, i1: np.ndarray, i2: np.ndarray, levels: np.ndarray) -> float:
    """NABF = sum(na ((1 - Q_1F) w_1 + (1 - Q_2F) w_2)) / sum(w_1 + w_2) of (H, W) uint8
    images taken as the float64 values levels[x] ((256,)).

    ``na`` = 1 where the "fused" image's gradient exceeds both sources' gradients; Q is
    only evaluated there.
    """
    return _nabf(f, i1, i2, levels)


#: Grey levels as floats: [0, 255] and ``im2double``'s [0, 1].
_LEVELS = grey_levels()
_LEVELS_01 = grey_levels(scale=255.0)


def nabf_kumar(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf``: (fused, ir, vi) on [0, 255], the author's own use."""
    return nabf(fused, ir, vi, _LEVELS)


def nabf_tang2023(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf_tang2023``: TANG-2023's call (ir, vi, fused) on [0, 255]: IR in the fused slot."""
    return nabf(ir, vi, fused, _LEVELS)


def nabf_tang2022(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf_tang2022``: TANG-2022's call (fused, ir, vi) on [0, 1] (``im2double``)."""
    return nabf(fused, ir, vi, _LEVELS_01)
