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

import cv2
import numpy as np

_TD, _WT_MIN, _LG = 2.0, 0.001, 1.5
_NRG, _KG, _SG = 0.9999, 19.0, 0.5
_NRA, _KA, _SA = 0.9995, 22.0, 0.5


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sobel_fn``: (gv, gh) of the mirror-extended image (edge row not repeated), as
    correlations with [-1 0 1; -2 0 2; -1 0 1]/8 and its transpose, summed column first."""
    p = np.pad(x, 1, mode="reflect")
    h, w = x.shape
    s = [[p[r : r + h, c : c + w] for c in range(3)] for r in range(3)]  # s[row][col]
    # gv: column sums ((t1 + t2) + t3) then across columns ((c1 + c2) + c3); the middle
    # column is all zero taps, so (c1 + 0) + c3 = c1 + c3.
    c1 = (s[0][0] * -0.125 + s[1][0] * -0.25) + s[2][0] * -0.125
    c3 = (s[0][2] * 0.125 + s[1][2] * 0.25) + s[2][2] * 0.125
    gv = c1 + c3
    # gh: each column is (top * -k + 0) + bottom * k.
    cols = [s[0][c] * -k + s[2][c] * k for c, k in enumerate((0.125, 0.25, 0.125))]
    gh = (cols[0] + cols[1]) + cols[2]
    return gv, gh


_KV = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64) / 8


def _sobel_integer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_sobel` of an image of integers: every product and partial sum is a small
    multiple of 1/8, exact in any order, so OpenCV's filter gives the same values."""
    gv = cv2.filter2D(x, cv2.CV_64F, _KV, borderType=cv2.BORDER_REFLECT_101)
    gh = cv2.filter2D(x, cv2.CV_64F, np.ascontiguousarray(_KV.T), borderType=cv2.BORDER_REFLECT_101)
    return gv, gh


def _strength_angle(x: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    gv, gh = _sobel_integer(x) if integer else _sobel(x)
    g = np.sqrt(gh * gh + gv * gv)
    zero = (gv == 0) & (gh == 0)
    a = np.divide(gv, gh, out=gv)  # +-pi/2 where only gh is 0
    np.arctan(a, out=a)
    a[zero] = 0.0
    return g, a


def _q(ga: np.ndarray, aa: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
    # gf / ga where ga > gf, else ga / gf: the smaller over the larger; 0 where either is 0.
    hi = np.maximum(ga, gf)
    rel = np.minimum(ga, gf)
    rel /= hi
    rel[hi == 0] = 0.0
    ang = np.abs(np.abs(aa - af) - math.pi / 2) * 2 / math.pi
    qg = _NRG / (1 + np.exp(-_KG * (rel - _SG)))
    qa = _NRA / (1 + np.exp(-_KA * (ang - _SA)))
    return np.sqrt(qg * qa)


def _weight(g: np.ndarray) -> np.ndarray:
    # g^1.5 as g * sqrt(g) (within an ulp of pow).
    w = np.sqrt(g)
    w *= g
    w[g < _TD] = _WT_MIN
    return w


def nabf(f: np.ndarray, i1: np.ndarray, i2: np.ndarray, integer: bool = False) -> float:
    """NABF = sum(na ((1 - Q_1F) w_1 + (1 - Q_2F) w_2)) / sum(w_1 + w_2) of float images.

    ``na`` = 1 where the "fused" image's gradient exceeds both sources' gradients; Q is
    only evaluated there. ``integer``: the images hold integers (exact Sobel in any order).
    """
    gf, af = _strength_angle(np.asarray(f, np.float64), integer)
    g1, a1 = _strength_angle(np.asarray(i1, np.float64), integer)
    g2, a2 = _strength_angle(np.asarray(i2, np.float64), integer)
    w1, w2 = _weight(g1), _weight(g2)
    na = (gf > g1) & (gf > g2)
    gf_, af_ = gf[na], af[na]
    num = (1 - _q(g1[na], a1[na], gf_, af_)) * w1[na] + (1 - _q(g2[na], a2[na], gf_, af_)) * w2[na]
    w1 += w2
    return float(np.sum(num) / np.sum(w1))


def nabf_kumar(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf``: (fused, ir, vi) on [0, 255], the author's own use."""
    return nabf(*(x.astype(np.float64) for x in (fused, ir, vi)), integer=True)


def nabf_tang2023(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf_tang2023``: TANG-2023's call (ir, vi, fused) on [0, 255]: IR in the fused slot."""
    return nabf(*(x.astype(np.float64) for x in (ir, vi, fused)), integer=True)


def nabf_tang2022(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """``Nabf_tang2022``: TANG-2022's call (fused, ir, vi) on [0, 1] (``im2double``)."""
    return nabf(*(x.astype(np.float64) / 255.0 for x in (fused, ir, vi)))
