"""Qabf: Xydeas & Petrovic (2000) edge preservation, as in every reference toolbox."""

from __future__ import annotations

import math

import numpy as np

from moefusion.metrics._filters import padded_rows, sobel_padded

# Sigmoid constants of the original code (L = 1, so the weights are the gradient strengths).
_TG, _KG, _DG = 0.9994, -15, 0.5
_TA, _KA, _DA = 0.9879, -22, 0.8
#: Rows per strip: small temporaries stay in cache and are reused by the allocator.
BLOCK_ROWS = 32


def _strength_angle(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-framed image -> gradient strength g and angle atan(Sy/Sx) (pi/2 where Sx == 0)."""
    sx, sy = sobel_padded(p)
    g = sx * sx
    g += sy * sy
    np.sqrt(g, out=g)
    a = np.divide(sy, sx, out=sy)  # inf/NaN where Sx == 0, replaced below
    np.arctan(a, out=a)
    np.copyto(a, math.pi / 2, where=sx == 0)
    return g, a


def _preservation(ga: np.ndarray, aa: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
    """Per-pixel Q^{AF} = Q_g * Q_a, same shape as the inputs."""
    # Relative strength: smaller over larger, except the original rule G = gF where the
    # strengths are equal (so 0 on flat areas, and not scale-invariant on [0, 1] data).
    rel = np.minimum(ga, gf)
    rel /= np.maximum(ga, gf)  # 0/0 only where equal, replaced below
    np.copyto(rel, gf, where=ga == gf)
    rel -= _DG
    rel *= _KG
    np.exp(rel, out=rel)
    rel += 1
    qg = np.divide(_TG, rel, out=rel)
    orient = np.subtract(aa, af)
    np.abs(orient, out=orient)
    orient /= math.pi / 2
    np.subtract(1, orient, out=orient)
    orient -= _DA
    orient *= _KA
    np.exp(orient, out=orient)
    orient += 1
    qa = np.divide(_TA, orient, out=orient)
    qg *= qa
    return qg


def qabf(
    ir: np.ndarray,
    vi: np.ndarray,
    fused: np.ndarray,
    *,
    dtype: type = np.float64,
    scale: float | None = None,
    block_rows: int | None = BLOCK_ROWS,
) -> float:
    """Qabf of (H, W) uint8 images = sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB).

    Computed on ``x / scale`` in ``dtype``: TANG-2022 uses float64 [0, 1] (``scale=255``),
    where the result is not scale-invariant; the others [0, 255]. ``block_rows=None``
    evaluates whole arrays with single numpy sums, which is what reproduces CDDFuse's
    float32 rounding; strips give the same per-pixel values with float64 sums.
    """
    h = fused.shape[0]
    step = h if block_rows is None else block_rows
    num = den = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            ga, aa = _strength_angle(padded_rows(ir, r0, r1, dtype, scale))
            gb, ab = _strength_angle(padded_rows(vi, r0, r1, dtype, scale))
            gf, af = _strength_angle(padded_rows(fused, r0, r1, dtype, scale))
            q = _preservation(ga, aa, gf, af) * ga + _preservation(gb, ab, gf, af) * gb
            if block_rows is None:
                return float(np.sum(q) / np.sum(ga + gb))
            num += float(np.sum(q))
            den += float(np.sum(ga + gb))
    return num / den if den > 0 else math.nan
