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

from moefusion.metrics._dmey import DMEY_MATLAB

#: Windows per chunk (whole rows, at least one): the (9, n) float64 temporaries (about
#: 200 kB each) stay in the core's cache; measured fastest between 2500 and 3200 windows.
CHUNK = 3072
_TINY = np.finfo(np.float64).tiny
#: 9 - i for the rows i = 0..8 of a (9, n) array.
_W = (9 - np.arange(9, dtype=np.int8))[:, None]


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
#
# Windows are held as (9, n) arrays: row k is the k-th value (column-major) of n windows,
# so every per-value step is a contiguous 1-D operation and sums over the 9 values are
# accumulated row by row, strictly left to right like the MATLAB loops.


def _seq(x: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the first axis (MATLAB's loop order)."""
    acc = x[0].copy()
    for k in range(1, x.shape[0]):
        acc += x[k]
    return acc


def _normalise(x: np.ndarray) -> np.ndarray:
    """Per-window (x - min) / (max - min); ones(3) for a flat window."""
    mx, mn = x.max(0), x.min(0)
    rng = mx - mn
    out = x - mn
    out /= rng
    flat = rng == 0
    if flat.any():
        out[:, flat] = 1.0
    return out


def _log2_abs(p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """log2 |p|, with a finite value (-1022) where p == 0, so that p * log2|p| is 0 there."""
    a = np.abs(p, out=out)
    np.maximum(a, _TINY, out=a)
    return np.log2(a, out=a)


class _Side:
    """The pdfs (9, n) of normalised windows and what the fmi of a pair needs of them.

    The gather tables are (10, n): ``tp`` row r = p_r and ``tl`` row r = log2 p_r (row 9:
    0 for both), ``tc`` row r = cdf_{r-1} (row 0: 0), so that ``cdf = tc[1:]`` and
    ``tc[:9]`` is the previous breakpoint of each interval.
    """

    tp: np.ndarray
    tl: np.ndarray
    tc: np.ndarray
    p: np.ndarray
    lg: np.ndarray
    cdf: np.ndarray

    def __init__(self, x: np.ndarray | None = None) -> None:
        if x is None:
            return
        n = x.shape[1]
        # x(:) ./ sum(sum(x)): column sums first, then across the three columns.
        tot = (x[0] + x[1]) + x[2]
        tot += (x[3] + x[4]) + x[5]
        tot += (x[6] + x[7]) + x[8]
        self.tp = np.empty((10, n))
        self.tp[9] = 0.0
        p = self.p = np.divide(x, tot, out=self.tp[:9])
        self.tc = np.empty((10, n))
        self.tc[0] = 0.0
        cdf = self.cdf = self.tc[1:]
        cdf[0] = p[0]
        for k in range(1, 9):  # sequential, like the CDF loop
            np.add(cdf[k - 1], p[k], out=cdf[k])
        self.t = p - cdf[8] / 9  # mean = sum / 9, the sum sequential = cdf(9)
        self.tt = _seq(self.t * self.t)
        e = p[0].copy()
        m2 = p[0].copy()
        for k in range(1, 9):
            e += (k + 1) * p[k]
            m2 += (k + 1) ** 2 * p[k]
        e *= e
        m2 -= e
        self.sd = np.sqrt(m2, out=m2)
        self.tl = np.empty((10, n))
        self.tl[9] = 0.0
        lg = self.lg = _log2_abs(p, out=self.tl[:9])
        plg = p * lg
        self.h = -_seq(plg)  # marginal entropy, sequential
        self.spl = plg.sum(0)
        self.sum = p.sum(0)
        self.cdf_sum = cdf.sum(0)

    def lower(self, down: np.ndarray) -> _Side:
        """Where ``down``, the source read backwards, which turns the lower Frechet bound
        max(F + S - 1, 0) into the upper one: pdf reversed, breakpoints 1 - cdf_7, ...,
        1 - cdf_0, 1 (cell j of the original is cell 8 - j here)."""
        o = _Side()
        o.tp = self.tp.copy()
        o.p = o.tp[:9]
        np.copyto(o.p, self.p[::-1], where=down)
        o.tl = self.tl.copy()
        o.lg = o.tl[:9]
        np.copyto(o.lg, self.lg[::-1], where=down)
        o.tc = self.tc.copy()
        o.cdf = o.tc[1:]
        u = 1 - self.cdf[7::-1]
        np.maximum(u, 0.0, out=u)
        np.copyto(o.tc[1:9], u, where=down)
        np.copyto(o.tc[9], 1.0, where=down)
        return o


def _fmi_pairs(s: _Side, f: _Side) -> np.ndarray:
    """fmi of n (source, fused) window pairs whose normalised windows differ."""
    n = s.p.shape[1]
    num = _seq(s.t * f.t)
    c = num / np.sqrt(s.tt * f.tt)
    c[num == 0] = 0.0
    up = c >= 0
    degenerate = (s.sd == 0) | (f.sd == 0) | (up & (c == 0))
    down = ~up
    # The joint pdf is mix * bound + (1 - mix) pf_i ps_j, with bound the cell masses of the
    # Frechet upper bound min(F_i, S_j) (c >= 0) or lower bound max(F_i + S_j - 1, 0)
    # (c < 0; read as an upper bound against the reversed source, see _Side.lower). The
    # bound's mass lies on a staircase: merging the two sorted CDFs, each interval between
    # consecutive breakpoints is one cell. A breakpoint cdf_f(i) closes the interval in cell
    # (i, r_i), r_i = #{j: cdf_s(j) < cdf_f(i)}; cdf_s(j) closes the one in cell (q_j, j),
    # q_j = #{i: cdf_f(i) <= cdf_s(j)} (ties: the fused breakpoint first).
    g = s.lower(down) if down.any() else s
    sc, fc = g.cdf, f.cdf
    below = sc[None, :, :] < fc[:, None, :]  # below[i, j]: cdf_s(j) < cdf_f(i)
    r = below.sum(1, dtype=np.int8)
    nq = below.sum(0, dtype=np.int8)  # 9 - q_j
    col = np.arange(n)
    ir = r.astype(np.intp)
    ir *= n
    ir += col  # flat index of row r_i in the (10, n) tables
    iq = (9 - nq).astype(np.intp)
    iq *= n
    iq += col
    stp, stl, stc = g.tp.ravel(), g.tl.ravel(), g.tc.ravel()
    ftp, ftl, ftc = f.tp.ravel(), f.tl.ravel(), f.tc.ravel()
    len_f = fc - np.maximum(f.tc[:9], stc[ir])  # interval closed by cdf_f(i)
    len_s = sc - np.maximum(g.tc[:9], ftc[iq])  # interval closed by cdf_s(j)
    # Covariance of the bound: sum_ij bound_cdf(i, j) - sum F sum S, and sum_ij bound_cdf =
    # sum over cells of mass (9 - i)(9 - j) (j counted in the source's own order).
    wr = 9 - r
    wr = np.where(up, wr, 10 - wr)
    wj = np.where(up, _W, 10 - _W)
    cov = _seq(len_f * (_W * wr)) + _seq(len_s * (nq * wj))
    cov -= f.cdf_sum * s.cdf_sum
    mix = c / (cov / (f.sd * s.sd))
    mix[degenerate] = 0.0
    d = 1 - mix
    ld = _log2_abs(d)
    # Off the staircase the joint pdf is the product term, whose entropy sums in closed
    # form; the staircase cells (at most 17) are corrected one by one.
    h_joint = -d * (f.sum * s.sum * ld + s.sum * f.spl + f.sum * s.spl)
    for size, pa, la, pb, lb in (
        (len_f, f.p, f.lg, stp[ir], stl[ir]),
        (len_s, ftp[iq], ftl[iq], g.p, g.lg),
    ):
        prod = d * pa
        prod *= pb
        t = mix * size
        t += prod
        corr = la + lb
        corr += ld
        corr *= prod  # -(-prod log2 prod)
        lt = _log2_abs(t)
        lt *= t
        corr -= lt  # + (-t log2 |t|)
        h_joint += _seq(corr)
    mi = s.h + f.h - h_joint
    out = 2 * mi / (s.h + f.h)
    out[mi == 0] = 0.0
    return out


def _fmi_windows(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(fmi_af + fmi_bf) / 2 of (9, n) windows of the IR, VI and fused features.

    The a-branch leaves fSub normalised where aSub ~= fSub; the b-branch compares bSub with
    that. Normalising is idempotent (min 0 and max 1 exactly), so both branches see the
    same normalised fused window and share its statistics.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        fn = _normalise(f)
        same_a = (a == f).all(0)
        same_b = (b == np.where(same_a, f, fn)).all(0)
        fs = _Side(fn)
        fmi_a = _fmi_pairs(_Side(_normalise(a)), fs)
        fmi_b = _fmi_pairs(_Side(_normalise(b)), fs)
    fmi_a[same_a] = 1.0
    fmi_b[same_b] = 1.0
    return (fmi_a + fmi_b) / 2


def _window_values(feat: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """(9, n) column-major 3x3 windows whose top rows are r0..r1-1."""
    w = feat.shape[1] - 2
    out = np.empty((9, r1 - r0, w))
    for v in range(3):
        for u in range(3):
            out[3 * v + u] = feat[r0 + u : r1 + u, v : v + w]
    return out.reshape(9, -1)


def fmi_maps(a: np.ndarray, b: np.ndarray, f: np.ndarray, binary: bool = False) -> float:
    """Mean over the interior 3x3 windows of the feature images (same shape) a, b, f."""
    m, n = f.shape
    rows = max(1, CHUNK // max(n - 2, 1))
    total = 0.0
    if binary:
        # 0/1 maps: each window is a 9-bit code; evaluate each distinct triple once.
        shifts = np.arange(9)[:, None]
        codes = []
        for r0 in range(0, m - 2, rows):
            r1 = min(m - 2, r0 + rows)
            ca, cb, cf = (
                (_window_values(x, r0, r1).astype(np.int64) << shifts).sum(0) for x in (a, b, f)
            )
            codes.append((ca << 18) | (cb << 9) | cf)
        uniq, counts = np.unique(np.concatenate(codes), return_counts=True)
        unpack = ((uniq[None, :] >> np.arange(27)[:, None]) & 1).astype(np.float64)
        vals = np.empty(len(uniq))
        for k in range(0, len(uniq), CHUNK):
            u = unpack[:, k : k + CHUNK]
            vals[k : k + CHUNK] = _fmi_windows(u[18:27], u[9:18], u[0:9])
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
