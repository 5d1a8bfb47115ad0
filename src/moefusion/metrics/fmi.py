"""FMI: Haghighat & Razian's fast feature mutual information (``analysis_fmi.m`` of the
TANG toolbox), with every quirk of that file.

``analysis_fmi(ir, vi, fused, feature)`` extracts a feature image from each input
(``edge``: MATLAB ``edge`` (Sobel), the file's default, hence ``FMI_pixel``; ``dct``:
orthonormal 2-D DCT-II of the whole image; ``wavelet``: one-level ``dwt2(.,'dmey')``
mosaic ``[cA cH; cV cD]`` re-ranged to [0, 1]). For every interior 3x3 window it reads the
min-max-normalised window values (column-major) of a source and of the fused image as
9-bin pdfs, builds their joint pdf with a Frechet-bound copula mixed by the pdfs'
correlation, and scores 2 MI / (H_a + H_f) (1 for identical windows). The result is the
mean over windows of (fmi_af + fmi_bf) / 2.

Exactness: decisions inside a window (identical windows, flat windows, ``c == 0``, the
sign of ``c``, ``sd == 0``, ``mi == 0``) depend on rounding, so every sum that feeds them
is accumulated strictly left to right like the original loops (numpy's pairwise sums
change FMI_pixel by up to 0.02, see the reference README). The a-branch's overwrite of
``fSub`` with its normalised copy, which the b-branch then compares with ``bSub``, is kept.

The loops over windows are replaced by array operations over all windows (in chunks);
binary edge maps have few distinct windows, so ``edge`` evaluates each distinct
(ir, vi, fused) window triple once.
"""

from __future__ import annotations

import math

import numpy as np
import pywt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from moefusion.metrics._dmey import DMEY_MATLAB

#: Windows per chunk: (chunk, 10, 10) float64 temporaries stay around 10 MB.
CHUNK = 12_288
_I = np.arange(1, 10, dtype=np.float64)
_I2 = _I * _I


# ----------------------------------------------------------------------------- features


def matlab_edge(x: np.ndarray) -> np.ndarray:
    """MATLAB's default ``edge(I)`` (Sobel, automatic threshold, thinning) of a float image:
    (H, W) float64 0/1.

    bx = imfilter(I, op', 'replicate'), by = imfilter(I, op, 'replicate'), op = fspecial('sobel')
    / 8; the products are added in the order of the reference's ``conv2`` (kernel taps in
    reverse column-major order). On [0, 255] integers every term is exact; on [0, 1]
    (TANG-2022) this order decides a few edge pixels.
    """
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape

    def filt(k: np.ndarray) -> np.ndarray:
        acc = np.zeros((h, w))
        for v in (2, 1, 0):
            for u in (2, 1, 0):
                if k[u, v] != 0:
                    acc = acc + k[u, v] * p[u : u + h, v : v + w]
        return acc

    op = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]) / 8.0
    bx, by = filt(op.T), filt(op)
    b = bx * bx + by * by
    cutoff = 4 * float(np.sum(b)) / b.size
    tol = 100 * np.finfo(np.float64).eps
    ax, ay = np.abs(bx), np.abs(by)
    # Neighbour tests, a missing neighbour (image border) counting as satisfied.
    left = np.ones_like(b, dtype=bool)
    right = np.ones_like(left)
    up = np.ones_like(left)
    down = np.ones_like(left)
    left[:, 1:] = b[:, :-1] <= b[:, 1:]
    right[:, :-1] = b[:, :-1] > b[:, 1:]
    up[1:, :] = b[:-1, :] <= b[1:, :]
    down[:-1, :] = b[:-1, :] > b[1:, :]
    horizontal = (ax >= ay - tol) & left & right
    vertical = (ay >= ax - tol) & up & down
    return ((b > cutoff) & (horizontal | vertical)).astype(np.float64)


def _dmey_wavelet() -> pywt.Wavelet:
    """MATLAB's ``dmey`` filter bank: orthfilt(W): Lo_R = sqrt(2) W / sum(W), Hi_R = qmf(Lo_R),
    decomposition filters reversed."""
    w = np.asarray(DMEY_MATLAB)
    lo_r = math.sqrt(2) * (w / w.sum())
    hi_r = lo_r[::-1].copy()
    hi_r[1::2] = -hi_r[1::2]
    return pywt.Wavelet("dmey_matlab", filter_bank=(lo_r[::-1], hi_r[::-1], lo_r, hi_r))


_DMEY = _dmey_wavelet()


def _rerange(x: np.ndarray) -> np.ndarray:
    hi, lo = x.max(), x.min()
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def wavelet_mosaic(x: np.ndarray) -> np.ndarray:
    """``rerange([cA, cH; cV, cD])`` of ``dwt2(x, 'dmey')`` (symmetric extension)."""
    ca, (ch, cv, cd) = pywt.dwt2(x, _DMEY, mode="symmetric")
    return _rerange(np.block([[ca, ch], [cv, cd]]))


def dct_feature(x: np.ndarray) -> np.ndarray:
    """MATLAB ``dct2``: orthonormal 2-D DCT-II."""
    return scipy.fft.dctn(x, norm="ortho")


# ----------------------------------------------------------------------------- windows


def _seq(x: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis (MATLAB's loop order)."""
    acc = x[..., 0].copy()
    for k in range(1, x.shape[-1]):
        acc += x[..., k]
    return acc


def _normalise(x: np.ndarray) -> np.ndarray:
    """Per-row (x - min) / (max - min); ones(3) for a flat window."""
    mx, mn = x.max(1), x.min(1)
    flat = mx == mn
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - mn[:, None]) / (mx - mn)[:, None]
    out[flat] = 1.0
    return out


def _pdf(x: np.ndarray) -> np.ndarray:
    """x(:) ./ sum(sum(x)): column sums first, then across the three columns."""
    c = [(x[:, 3 * j] + x[:, 3 * j + 1]) + x[:, 3 * j + 2] for j in range(3)]
    return x / ((c[0] + c[1]) + c[2])[:, None]


def _xlog2x(p: np.ndarray) -> np.ndarray:
    """-p log2|p| where p != 0, else 0 (real part of MATLAB's complex log of p < 0)."""
    out = np.zeros_like(p)
    nz = p != 0
    out[nz] = -p[nz] * np.log2(np.abs(p[nz]))
    return out


def _fmi_pairs(s: np.ndarray, f: np.ndarray) -> np.ndarray:
    """fmi of (n, 9) normalised source / fused windows (the branch after ``aSub ~= fSub``)."""
    ps, pf = _pdf(s), _pdf(f)
    cs, cf = np.cumsum(ps, 1), np.cumsum(pf, 1)  # sequential, like the CDF loop
    ts = ps - (cs[:, 8] / 9)[:, None]  # mean = sum / 9, sum sequential = cdf(9)
    tf = pf - (cf[:, 8] / 9)[:, None]
    num = _seq(ts * tf)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt(_seq(ts * ts) * _seq(tf * tf)))
    e_s, e_f = _seq(_I * ps), _seq(_I * pf)
    sd_s = np.sqrt(_seq(_I2 * ps) - e_s * e_s)
    sd_f = np.sqrt(_seq(_I2 * pf) - e_f * e_f)
    n = len(s)
    # Copula bound on the CDF grid, with a leading 0 row/column: cell (i, j) = (fused,
    # source). Frechet upper bound min(F, S) where c >= 0, lower max(F + S - 1, 0) where c < 0.
    up = c >= 0
    grid = np.zeros((n, 10, 10))
    np.minimum(cf[:, :, None], cs[:, None, :], out=grid[:, 1:, 1:])
    down = ~up
    if np.any(down):
        lo = cf[down][:, :, None] + cs[down][:, None, :] - 1
        np.maximum(lo, 0, out=lo)
        grid[down, 1:, 1:] = lo
    inner = grid[:, 1:, 1:]
    cov = inner.sum(axis=(1, 2)) - cf.sum(1) * cs.sum(1)
    degenerate = (sd_s == 0) | (sd_f == 0) | (up & (c == 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        mix = np.where(degenerate, 0.0, c / (cov / (sd_f * sd_s)))
    # Rectangle masses of the bound: non-zero on at most 17 cells per window (a staircase).
    bound = inner - grid[:, :-1, 1:]
    bound -= grid[:, 1:, :-1]
    bound += grid[:, :-1, :-1]
    # jpdf = mix * bound + (1 - mix) pf_i ps_j. Off the staircase it is the product term,
    # whose entropy sums in closed form; the staircase cells are corrected one by one.
    d = 1 - mix
    lf = np.log2(np.where(pf > 0, pf, 1.0))
    ls = np.log2(np.where(ps > 0, ps, 1.0))
    sf_, ss_ = pf.sum(1), ps.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ld = np.where(d != 0, np.log2(np.abs(d)), 0.0)
    h_joint = -d * (sf_ * ss_ * ld + ss_ * (pf * lf).sum(1) + sf_ * (ps * ls).sum(1))
    w, i, j = np.nonzero(bound)
    prod = (d[w] * pf[w, i]) * ps[w, j]
    t = mix[w] * bound[w, i, j] + prod
    corr = _xlog2x(t) - _xlog2x(prod)
    h_joint += np.bincount(w, weights=corr, minlength=n)
    h_s = _seq(_xlog2x(ps))
    h_f = _seq(_xlog2x(pf))
    mi = h_s + h_f - h_joint
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mi == 0, 0.0, 2 * mi / (h_s + h_f))


def _fmi_side(s: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One source's fmi per window, and fSub as the original leaves it (normalised where
    the windows differed)."""
    same = np.all(s == f, axis=1)
    out = np.ones(len(s))
    f_after = f.copy()
    todo = ~same
    if np.any(todo):
        fn = _normalise(f[todo])
        out[todo] = _fmi_pairs(_normalise(s[todo]), fn)
        f_after[todo] = fn
    return out, f_after


def _window_values(feat: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """(n, 9) column-major 3x3 windows whose top rows are r0..r1-1."""
    v = sliding_window_view(feat[r0 : r1 + 2], (3, 3))
    return v.transpose(0, 1, 3, 2).reshape(-1, 9)


def _fmi_windows(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(fmi_af + fmi_bf) / 2 of (n, 9) windows of the IR, VI and fused features."""
    fmi_a, f_after = _fmi_side(a, f)
    fmi_b, _ = _fmi_side(b, f_after)
    return (fmi_a + fmi_b) / 2


def fmi_maps(a: np.ndarray, b: np.ndarray, f: np.ndarray, binary: bool = False) -> float:
    """Mean over the interior 3x3 windows of the feature images (same shape) a, b, f."""
    m, n = f.shape
    rows = max(1, CHUNK // max(n - 2, 1))
    total = 0.0
    if binary:
        # 0/1 maps: each window is a 9-bit code; evaluate each distinct triple once.
        bits = 1 << np.arange(9)
        codes = []
        for r0 in range(0, m - 2, rows):
            r1 = min(m - 2, r0 + rows)
            ca, cb, cf = ((_window_values(x, r0, r1) @ bits).astype(np.int64) for x in (a, b, f))
            codes.append((ca << 18) | (cb << 9) | cf)
        uniq, counts = np.unique(np.concatenate(codes), return_counts=True)
        unpack = ((uniq[:, None] >> np.arange(27)) & 1).astype(np.float64)
        vals = np.empty(len(uniq))
        for k in range(0, len(uniq), CHUNK):
            u = unpack[k : k + CHUNK]
            vals[k : k + CHUNK] = _fmi_windows(u[:, 18:27], u[:, 9:18], u[:, 0:9])
        total = float(np.dot(vals, counts))
    else:
        for r0 in range(0, m - 2, rows):
            r1 = min(m - 2, r0 + rows)
            vals = _fmi_windows(*(_window_values(x, r0, r1) for x in (a, b, f)))
            total += float(vals.sum())
    return total / ((m - 2) * (n - 2))


def fmi(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray, feature: str, scale: float) -> float:
    """``analysis_fmi(ir, vi, fused, feature)`` on uint8 images divided by ``scale``
    (1: TANG-2023's [0, 255]; 255: TANG-2022's ``im2double``)."""
    imgs = [x.astype(np.float64) / scale if scale != 1 else x.astype(np.float64) for x in
            (ir, vi, fused)]  # fmt: skip
    if feature == "edge":
        return fmi_maps(*(matlab_edge(x) for x in imgs), binary=True)
    if feature == "dct":
        return fmi_maps(*(dct_feature(x) for x in imgs))
    if feature == "wavelet":
        return fmi_maps(*(wavelet_mosaic(x) for x in imgs))
    raise ValueError(f"unknown FMI feature {feature!r}")
