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

Speed: each window is one compiled (numba) pass in the original loops' order. Only the
joint entropy and the covariance of the Frechet bound are not summed over the 9 x 9 cells
as the original does: the bound's mass lies on a staircase of at most 17 cells (a merge
of the two sorted cdfs), and the product part's entropy sums in closed form. Those sums
decide nothing and agree with the 81-cell loops to about 1e-14. Binary edge maps have few
distinct windows, so ``edge`` evaluates each distinct (ir, vi, fused) window triple once.
The Sobel filter and the dmey DWT are compiled loops too, with the summation order of
the code they replace (bit-identical output). numba compiles the kernels on first use
and caches them next to this file (``cache=True``). The DCT and wavelet window loops run
rows of windows in parallel on numba's threads (``NUMBA_NUM_THREADS``,
``numba.set_num_threads``); per-row sums added in row order make the result independent
of the thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft

from moefusion.metrics._dmey import DMEY_MATLAB
from moefusion.metrics._filters import JIT

_jit = numba.njit(**JIT)
# The window loop over rows: parallel over numba's threads (one thread where
# NUMBA_NUM_THREADS=1), deterministic by construction (see _fmi_sum).
_pjit = numba.njit(**JIT, parallel=True)


# ----------------------------------------------------------------------------- features


#: fspecial('sobel') / 8 and its transpose (global arrays are compile-time constants).
_SOBEL = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]) / 8.0
_SOBEL_T = np.ascontiguousarray(_SOBEL.T)


@_jit
def _sobel(p: np.ndarray, transpose: bool) -> np.ndarray:
    """imfilter with fspecial('sobel') / 8 (or its transpose) of the image p padded by one
    pixel; the products are added in the order of the reference's ``conv2`` (kernel taps in
    reverse column-major order)."""
    k = _SOBEL_T if transpose else _SOBEL
    h, w = p.shape[0] - 2, p.shape[1] - 2
    out = np.empty((h, w))
    for r in range(h):
        for c in range(w):
            acc = 0.0
            for v in range(2, -1, -1):
                for u in range(2, -1, -1):
                    if k[u, v] != 0:
                        acc = acc + k[u, v] * p[r + u, c + v]
            out[r, c] = acc
    return out


@_jit
def _thin(bx: np.ndarray, by: np.ndarray, b: np.ndarray, cutoff: float) -> np.ndarray:
    """Edge pixels: b > cutoff and a maximum of b across the gradient direction, a missing
    neighbour (image border) counting as satisfied."""
    h, w = b.shape
    tol = 100 * np.finfo(np.float64).eps
    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            x = b[r, c]
            if not x > cutoff:
                continue
            ax, ay = abs(bx[r, c]), abs(by[r, c])
            horizontal = (
                ax >= ay - tol and (c == 0 or b[r, c - 1] <= x) and (c == w - 1 or x > b[r, c + 1])
            )
            vertical = (
                ay >= ax - tol and (r == 0 or b[r - 1, c] <= x) and (r == h - 1 or x > b[r + 1, c])
            )
            if horizontal or vertical:
                out[r, c] = 1.0
    return out


def matlab_edge(x: np.ndarray) -> np.ndarray:
    """MATLAB's default ``edge(I)`` (Sobel, automatic threshold, thinning) of a float image:
    (H, W) float64 0/1.

    bx = imfilter(I, op', 'replicate'), by = imfilter(I, op, 'replicate'), op = fspecial('sobel')
    / 8, b = bx^2 + by^2, cutoff = 4 mean(b). On [0, 255] integers every term is exact; on
    [0, 1] (TANG-2022) the order of the products decides a few edge pixels.
    """
    p = np.pad(np.asarray(x, dtype=np.float64), 1, mode="edge")
    bx, by = _sobel(p, True), _sobel(p, False)
    b = bx * bx + by * by
    cutoff = 4 * float(np.sum(b)) / b.size  # numpy's pairwise sum, as before
    return _thin(bx, by, b, cutoff)


def _dmey_filters() -> tuple[np.ndarray, np.ndarray]:
    """Decomposition filters (lowpass, highpass) of MATLAB's ``dmey``: orthfilt(W): Lo_R =
    sqrt(2) W / sum(W), Hi_R = qmf(Lo_R), decomposition filters reversed."""
    w = np.asarray(DMEY_MATLAB)
    lo_r = math.sqrt(2) * (w / w.sum())
    hi_r = lo_r[::-1].copy()
    hi_r[1::2] = -hi_r[1::2]
    return lo_r[::-1].copy(), hi_r[::-1].copy()


_DMEY_LO, _DMEY_HI = _dmey_filters()


@_jit
def _dwt_axis0(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-level DWT of every column of x, symmetric (half-sample) extension: (cA, cD), each
    (floor((n + len(lo) - 1) / 2), m).

    Output o is sum_j filter[j] x(2o + 1 - j), summed in PyWavelets' order (``mode=
    'symmetric'``): j ascending, except where the filter overhangs the end of the signal
    (2o + 1 >= n), where the mirrored terms come first, j = 2o + 1 - n down to 0. The
    result is bit-identical to ``pywt.dwt(x, ..., axis=0)`` whenever n >= len(lo). The
    columns are the inner loop, so each output keeps its own sequential sum.
    """
    n, m = x.shape
    taps = len(lo)
    out = (n + taps - 1) // 2
    a = np.zeros((out, m))
    d = np.zeros((out, m))
    for o in range(out):
        i = 2 * o + 1
        for step in range(taps):
            j = i - n - step if i >= n and step <= i - n else step
            t = i - j
            while t < 0 or t >= n:  # mirror: x(-1) = x(0), x(n) = x(n - 1)
                t = -1 - t if t < 0 else 2 * n - 1 - t
            lj = lo[j]
            hj = hi[j]
            for c in range(m):
                v = x[t, c]
                a[o, c] += lj * v
                d[o, c] += hj * v
    return a, d


def _rerange(x: np.ndarray) -> np.ndarray:
    hi, lo = x.max(), x.min()
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def wavelet_mosaic(x: np.ndarray) -> np.ndarray:
    """``rerange([cA, cH; cV, cD])`` of ``dwt2(x, 'dmey')`` (symmetric extension), as
    ``pywt.dwt2`` computes it: columns first, then rows."""
    a, d = _dwt_axis0(np.ascontiguousarray(x, dtype=np.float64), _DMEY_LO, _DMEY_HI)
    ca, cv = _dwt_axis0(np.ascontiguousarray(a.T), _DMEY_LO, _DMEY_HI)
    ch, cd = _dwt_axis0(np.ascontiguousarray(d.T), _DMEY_LO, _DMEY_HI)
    return _rerange(np.block([[ca.T, ch.T], [cv.T, cd.T]]))


def dct_feature(x: np.ndarray) -> np.ndarray:
    """MATLAB ``dct2``: orthonormal 2-D DCT-II."""
    return scipy.fft.dctn(x, norm="ortho")


# ----------------------------------------------------------------------------- windows
#
# One compiled pass per window, following the original loops. A window's state lives in
# one flat float64 buffer addressed by offsets (array slices would cost reference counting
# in the hot loop): a side (a normalised window and what the fmi of a pair needs of it) is
# _SIDE values at offset side * _SIDE, sides 0 (IR), 1 (VI), 2 (fused), 3 (a source read
# backwards, see _fmi_pair); the raw windows (column-major) follow at _RAW + 9 * side.

_X, _P, _LG, _C, _T = 0, 9, 18, 27, 37  # normalised window, pdf, log2 pdf, [cdf, inf], T
_TT, _SD, _H, _CSUM, _PSUM = 46, 47, 48, 49, 50  # sum(T^2), sd, entropy, sum(cdf), sum(pdf)
_SIDE = 51
_RAW = 4 * _SIDE
_SIZES = _RAW + 27  # masses of the staircase cells of a pair
_BUF = _SIZES + 18
_TINY = float(np.finfo(np.float64).tiny)


@_jit
def _new_buffer() -> np.ndarray:
    buf = np.empty(_BUF)
    for side in range(4):
        buf[side * _SIDE + _C + 9] = np.inf  # sentinel for the staircase merge
    return buf


@_jit
def _log2_abs(p: float) -> float:
    """log2 |p|, with a finite value (-1022) where p == 0, so that p * log2|p| is 0 there."""
    return math.log2(max(abs(p), _TINY))


@_jit
def _side(buf: np.ndarray, raw: int, o: int) -> None:
    """Side o of the raw window at offset raw; every sum left to right like the loops."""
    # Normalised window: (x - min) / (max - min), ones(3) for a flat window.
    mx = mn = buf[raw]
    for k in range(1, 9):
        mx = max(mx, buf[raw + k])
        mn = min(mn, buf[raw + k])
    rng = mx - mn
    x = o + _X
    for k in range(9):
        buf[x + k] = 1.0 if rng == 0 else (buf[raw + k] - mn) / rng
    # x(:) ./ sum(sum(x)): column sums first, then across the three columns.
    tot = (buf[x] + buf[x + 1]) + buf[x + 2]
    tot += (buf[x + 3] + buf[x + 4]) + buf[x + 5]
    tot += (buf[x + 6] + buf[x + 7]) + buf[x + 8]
    cdf = e = m2 = plg = csum = 0.0
    for k in range(9):
        p = buf[x + k] / tot
        buf[o + _P + k] = p
        cdf = p if k == 0 else cdf + p
        buf[o + _C + k] = cdf
        csum = cdf if k == 0 else csum + cdf
        w = k + 1.0
        e = p if k == 0 else e + w * p
        m2 = p if k == 0 else m2 + (w * w) * p
        lg = _log2_abs(p)
        buf[o + _LG + k] = lg
        plg = p * lg if k == 0 else plg + p * lg
    mean = cdf / 9  # sum / 9, the sum sequential = cdf_8
    tt = 0.0
    for k in range(9):
        t = buf[o + _P + k] - mean
        buf[o + _T + k] = t
        tt = t * t if k == 0 else tt + t * t
    buf[o + _TT] = tt
    buf[o + _SD] = math.sqrt(m2 - e * e)
    buf[o + _H] = -plg
    buf[o + _CSUM] = csum
    buf[o + _PSUM] = cdf


@_jit
def _fmi_pair(buf: np.ndarray, s: int, cells: np.ndarray) -> float:
    """fmi of source side s against the fused side, whose normalised windows differ;
    cells (18, 2) is scratch."""
    f = 2 * _SIDE
    num = 0.0
    for k in range(9):
        tk = buf[s + _T + k] * buf[f + _T + k]
        num = tk if k == 0 else num + tk
    c = 0.0 if num == 0 else num / math.sqrt(buf[s + _TT] * buf[f + _TT])
    up = c >= 0
    degenerate = buf[s + _SD] == 0 or buf[f + _SD] == 0 or (up and c == 0)
    # The joint pdf is mix * bound + (1 - mix) pf_i ps_j, with bound the cell masses of the
    # Frechet upper bound min(F_i, S_j) (c >= 0) or lower bound max(F_i + S_j - 1, 0)
    # (c < 0), which is the upper bound against the source read backwards (side 3): pdf
    # reversed, cdf 1 - cdf_7, ..., 1 - cdf_0, 1; its cell j is the source's cell 8 - j.
    g = s
    if not up:
        g = 3 * _SIDE
        for k in range(9):
            buf[g + _P + k] = buf[s + _P + 8 - k]
            buf[g + _LG + k] = buf[s + _LG + 8 - k]
            buf[g + _C + k] = 1.0 if k == 8 else max(1 - buf[s + _C + 7 - k], 0.0)
    # The bound's mass lies on a staircase: merging the sorted cdfs F and G, each interval
    # between consecutive breakpoints is the mass of cell (i, j), the breakpoints F_i and
    # G_j not yet passed (ties: F first); at most 17 cells have mass. Cells of size 0 or
    # past the 9 x 9 grid (rounding near cdf = 1) carry none. sum_ij bound_cdf(i, j), which
    # the covariance of the bound needs, is sum over cells of mass (9 - i)(9 - j), j in the
    # source's own order. The merge steps are branch-free (the comparisons are random).
    fc = f + _C
    gc = g + _C
    n_cells = 0
    cov = prev = 0.0
    i = j = 0
    for _ in range(18):
        fi = buf[fc + i]
        gj = buf[gc + j]
        take_f = fi <= gj
        v = fi if take_f else gj
        size = v - prev
        prev = v
        keep = (i < 9) & (j < 9) & (size > 0)
        if keep:
            cov += size * ((9 - i) * (9 - j if up else j + 1))
        cells[n_cells, 0] = i
        cells[n_cells, 1] = j
        buf[_SIZES + n_cells] = size
        n_cells += keep
        i += take_f
        j += 1 - take_f
    cov -= buf[f + _CSUM] * buf[s + _CSUM]
    mix = 0.0 if degenerate else c / (cov / (buf[f + _SD] * buf[s + _SD]))
    d = 1 - mix
    ld = _log2_abs(d)
    # Off the staircase the joint pdf is the product term, whose entropy sums in closed
    # form (sum p log2 p = -H); the staircase cells are corrected one by one.
    fsum, ssum = buf[f + _PSUM], buf[s + _PSUM]
    h_joint = -d * (fsum * ssum * ld + ssum * -buf[f + _H] + fsum * -buf[s + _H])
    for k in range(n_cells):
        ci = f + cells[k, 0]
        cj = g + cells[k, 1]
        prod = d * buf[ci + _P] * buf[cj + _P]
        t = mix * buf[_SIZES + k] + prod
        # -(-prod log2 prod) + (-t log2 |t|)
        h_joint += (buf[ci + _LG] + buf[cj + _LG] + ld) * prod - t * _log2_abs(t)
    h = buf[s + _H] + buf[f + _H]
    mi = h - h_joint
    return 0.0 if mi == 0 else 2 * mi / h


@_jit
def _fmi_window(buf: np.ndarray, cells: np.ndarray) -> float:
    """(fmi_af + fmi_bf) / 2 of the raw IR, VI and fused windows in buf.

    The a-branch leaves fSub normalised where aSub ~= fSub; the b-branch compares bSub with
    that. Normalising is idempotent (min 0 and max 1 exactly), so both branches see the
    same normalised fused window and share its side.
    """
    f = 2 * _SIDE
    out = 0.0
    fsub = _RAW + 18  # raw until the a-branch normalises it
    for src in range(2):
        same = True
        for k in range(9):
            same = same and buf[_RAW + 9 * src + k] == buf[fsub + k]
        if same:
            out += 1.0
            continue
        if fsub != f + _X:
            _side(buf, _RAW + 18, f)
            fsub = f + _X
        _side(buf, _RAW + 9 * src, src * _SIDE)
        out += _fmi_pair(buf, src * _SIDE, cells)
    return out / 2


@_pjit
def _fmi_sum(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Sum of the window fmi over the interior 3x3 windows of the feature images a, b, f.

    Rows of windows run in parallel (numba's thread count: ``NUMBA_NUM_THREADS`` or
    ``numba.set_num_threads``). Each row is summed left to right into its own slot and the
    rows are added in order afterwards, so the sum does not depend on the thread count.
    """
    m, n = f.shape
    rows = np.empty(m - 2)
    for r in numba.prange(m - 2):
        # Scratch per row (a few hundred bytes): rows may run on different threads.
        buf = _new_buffer()
        cells = np.empty((18, 2), dtype=np.int64)
        row = 0.0
        for c in range(n - 2):
            for u in range(3):
                for k in range(3):
                    buf[_RAW + 3 * u + k] = a[r + k, c + u]
                    buf[_RAW + 9 + 3 * u + k] = b[r + k, c + u]
                    buf[_RAW + 18 + 3 * u + k] = f[r + k, c + u]
            row += _fmi_window(buf, cells)
        rows[r] = row
    total = 0.0
    for r in range(m - 2):  # sequential, in row order (not a prange reduction)
        total += rows[r]
    return total


@_jit
def _fmi_codes(codes: np.ndarray) -> np.ndarray:
    """Window fmi of binary windows given as 27-bit codes (bits 18-26: IR, 9-17: VI, 0-8:
    fused; bit k of each: window value k)."""
    buf = _new_buffer()
    cells = np.empty((18, 2), dtype=np.int64)
    out = np.empty(len(codes))
    for q in range(len(codes)):
        for k in range(9):
            buf[_RAW + k] = (codes[q] >> (18 + k)) & 1
            buf[_RAW + 9 + k] = (codes[q] >> (9 + k)) & 1
            buf[_RAW + 18 + k] = (codes[q] >> k) & 1
        out[q] = _fmi_window(buf, cells)
    return out


@_jit
def _edge_codes(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The 27-bit code (see _fmi_codes) of every interior 3x3 window of 0/1 maps."""
    m, n = f.shape
    out = np.empty((m - 2) * (n - 2), dtype=np.int64)
    q = 0
    for r in range(m - 2):
        for c in range(n - 2):
            code = 0
            for u in range(3):
                for k in range(3):
                    bit = 3 * u + k
                    code |= int(a[r + k, c + u]) << (18 + bit)
                    code |= int(b[r + k, c + u]) << (9 + bit)
                    code |= int(f[r + k, c + u]) << bit
            out[q] = code
            q += 1
    return out


def fmi_maps(a: np.ndarray, b: np.ndarray, f: np.ndarray, binary: bool = False) -> float:
    """Mean over the interior 3x3 windows of the feature images (same shape) a, b, f."""
    m, n = f.shape
    a, b, f = (np.ascontiguousarray(x, dtype=np.float64) for x in (a, b, f))  # one signature
    if binary:
        # 0/1 maps have few distinct windows: evaluate each distinct triple once.
        uniq, counts = np.unique(_edge_codes(a, b, f), return_counts=True)
        total = float(np.dot(_fmi_codes(uniq), counts))
    else:
        total = _fmi_sum(a, b, f)
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
