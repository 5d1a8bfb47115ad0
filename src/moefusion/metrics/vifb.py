"""The 13 metrics of the VIFB toolbox (xingchenzhang/VIFB @ 22b2ea9d, ``metrics/``).

VIFB's driver calls ``metrics<Name>(imgVI, imgIR, fused)`` on the uint8 arrays from
``imread``: **visible first**. Every metric treats the two sources symmetrically, so the
order only fixes the labels. Each function here takes (H, W) uint8 images and reproduces
the original's arithmetic (same scale, same sums, same quirks); the quirks are listed in
``docs/metrics.md``:

* ``Psnr`` / ``Rmse`` use e = sqrt(SSE) / (M N), not an MSE;
* ``Variance`` is the population standard deviation;
* ``Mutinf`` is a sum over the sources, in nats, after min-max re-binning;
* ``Ssim`` is a sum over the sources;
* ``Qabf`` runs on 255 * the grey levels (so its gA == gF rule sees integers >= 255);
* ``Qcb`` / ``Qcv`` min-max normalise every image; ``Qcv`` zero-pads partial 16x16 blocks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import scipy.fft

from moefusion.metrics._filters import (
    JIT,
    REPLICATE,
    ZERO,
    col_sym11,
    framed_rows,
    matlab_gaussian_1d,
    row_sym11,
    sym11_taps,
)
from moefusion.metrics._histograms import grey_counts, joint_counts
from moefusion.metrics.fused_only import entropy_bits, sd_population
from moefusion.metrics.qabf import qabf as _qabf

# ----------------------------------------------------------------------------- histograms


def cross_entropy(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Mean over the sources of sum_k P_S(k) log2(P_S(k)/P_F(k)), bins with both P > 0 only."""
    n = fused.size
    pf = grey_counts(fused) / n

    def ce(src: np.ndarray) -> float:
        ps = grey_counts(src) / n
        k = (ps != 0) & (pf != 0)
        # The original accumulates in grey-level order: result = P1*log2(P1/P2) + result.
        terms = ps[k] * np.log2(ps[k] / pf[k])
        return float(np.cumsum(terms)[-1]) if terms.size else 0.0

    return (ce(vi) + ce(ir)) / 2.0


def entropy(fused: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin histogram."""
    return entropy_bits(grey_counts(fused))


def _rebin(x: np.ndarray) -> np.ndarray:
    """VIFB mutinf's re-binning of a uint8 image as a 256-entry table from grey level to
    0-based bin: min-max to [0, 1], then ``double(int16(x*255)) + 1`` (the +1 of MATLAB
    dropped), with the same float arithmetic."""
    lo, hi = float(x.min()), float(x.max())
    a = np.arange(256, dtype=np.float64)
    a = (a - lo) / (hi - lo) if hi != lo else np.zeros_like(a)
    # int16() rounds half away from zero; values are >= 0 here.
    return np.floor(a * 255 + 0.5).astype(np.intp)


def _mi_nats(joint: np.ndarray) -> float:
    """MI in nats from (256, 256) joint counts."""
    joint = joint.astype(np.float64)

    def h(counts: np.ndarray) -> float:
        p = counts[counts != 0] / counts.sum()
        return float(np.sum(-p * np.log(p)))

    return h(joint.sum(1)) + h(joint.sum(0)) - h(joint)


def mutinf(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """MI(VI, F) + MI(IR, F) in nats, on min-max re-binned images."""
    tf = _rebin(fused)
    return _mi_nats(joint_counts(vi, fused, _rebin(vi), tf)) + _mi_nats(
        joint_counts(ir, fused, _rebin(ir), tf)
    )


# ----------------------------------------------------------------------------- PSNR, RMSE


@numba.njit(**JIT)
def _sse(a: np.ndarray, b: np.ndarray) -> int:
    """sum((a - b)^2) of two (H, W) uint8 images, exact (integers)."""
    total = 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            d = np.int64(a[i, j]) - np.int64(b[i, j])
            total += d * d
    return total


def _e(src: np.ndarray, fused: np.ndarray) -> float:
    """VIFB's ``mse``: sqrt(sum((a-b)^2)) / (M N) (not a mean squared error)."""
    return math.sqrt(_sse(src, fused)) / fused.size


def psnr(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """20 log10(255 / sqrt(m)), m = mean over the sources of sqrt(SSE) / (M N)."""
    m = (_e(vi, fused) + _e(ir, fused)) / 2.0
    return 20 * math.log10(255 / math.sqrt(m)) if m > 0 else math.inf


def rmse(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Mean over the sources of sqrt(SSE) / (M N) (lower is better)."""
    return (_e(vi, fused) + _e(ir, fused)) / 2.0


# ----------------------------------------------------------------------------- fused only


@numba.njit(**JIT)
def _gradient_sum(x: np.ndarray) -> float:
    """sum sqrt((Gx^2 + Gy^2)/2) of MATLAB ``gradient`` (central differences / 2 inside,
    one-sided at the borders) of an (H, W) uint8 image, H, W >= 2, in float64."""
    m, n = x.shape
    total = 0.0
    for i in range(m):
        lo, hi = max(i - 1, 0), min(i + 1, m - 1)
        dy = 2.0 if hi - lo == 2 else 1.0
        row = 0.0
        for j in range(n):
            left, right = max(j - 1, 0), min(j + 1, n - 1)
            gx = (float(x[i, right]) - float(x[i, left])) / (2.0 if right - left == 2 else 1.0)
            gy = (float(x[hi, j]) - float(x[lo, j])) / dy
            row += math.sqrt((gx * gx + gy * gy) / 2)
        total += row
    return total


def avg_gradient(fused: np.ndarray) -> float:
    """sum sqrt((Gx^2 + Gy^2)/2) / ((M-1)(N-1)), MATLAB ``gradient``, in float64.

    Same definition as the TANG ``AG``; computed with float64 square roots (the TANG
    version's float32 ones stay within 2e-9, VIFB's references ask for 1e-9).
    """
    m, n = fused.shape
    return _gradient_sum(fused) / ((m - 1) * (n - 1))


@numba.njit(**JIT)
def _sobel_magnitude_sum(x: np.ndarray, levels: np.ndarray) -> float:
    """sum sqrt(gx^2 + gy^2) of an (H, W) uint8 image (as levels[x]) with replicated
    edges: gx, gy = correlations with [1 2 1; 0 0 0; -1 -2 -1] and its transpose. The
    image holds integers, so gx and gy are exact."""
    h, w = x.shape
    p = np.empty((3, w + 2))
    total = 0.0
    for i in range(h):
        framed_rows(x, levels, i, REPLICATE, p)
        top, mid, bot = p[0], p[1], p[2]
        row = 0.0
        for j in range(w):
            gx = (top[j] + 2 * top[j + 1] + top[j + 2]) - (bot[j] + 2 * bot[j + 1] + bot[j + 2])
            gy = (top[j] + 2 * mid[j] + bot[j]) - (top[j + 2] + 2 * mid[j + 2] + bot[j + 2])
            row += math.sqrt(gx * gx + gy * gy)
        total += row
    return total


def edge_intensity(fused: np.ndarray) -> float:
    """Mean of sqrt(gx^2 + gy^2), unnormalised Sobel, ``imfilter(..., 'replicate')``."""
    return _sobel_magnitude_sum(fused, np.arange(256, dtype=np.float64)) / fused.size


def variance(fused: np.ndarray) -> float:
    """The population standard deviation (VIFB's ``Variance`` is a std)."""
    return sd_population(grey_counts(fused))


def spatial_frequency(fused: np.ndarray) -> float:
    """sqrt(RF + CF), both sums of squared neighbour differences divided by M N."""
    m, n = fused.shape
    s = _sse(fused[:, 1:], fused[:, :-1]) + _sse(fused[1:, :], fused[:-1, :])
    return math.sqrt(s / (m * n))


# ----------------------------------------------------------------------------- Qabf, SSIM


def qabf(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Qabf on 255 * im2double(double(u8)), i.e. on [0, 65025]."""
    return _qabf(vi, ir, fused, np.arange(256, dtype=np.float64) * 255.0)


_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@numba.njit(**JIT)
def _ssim_means(
    vi: np.ndarray, ir: np.ndarray, fused: np.ndarray, taps: tuple[float, ...]
) -> tuple[float, float]:
    """Mean SSIM maps of (VI, F) and (IR, F) over the 'valid' 11x11 windows, (H, W) uint8.

    Streams the rows through a ring of row-filtered quantities (F, F^2, then A, A^2, A F
    for each source), so the fused image's moments are shared by both sources."""
    h, w = fused.shape
    wv = w - 10
    c1, c2 = _SSIM_C1, _SSIM_C2
    prod = np.empty((8, w))
    ring = np.empty((8, 11, wv))
    sums = np.empty((8, wv))
    q = np.empty(wv)
    totals = np.zeros(2)
    for i in range(h):
        for c in range(w):
            a, b, f = float(vi[i, c]), float(ir[i, c]), float(fused[i, c])
            prod[0, c], prod[1, c] = f, f * f
            prod[2, c], prod[3, c], prod[4, c] = a, a * a, a * f
            prod[5, c], prod[6, c], prod[7, c] = b, b * b, b * f
        for k in range(8):
            row_sym11(prod[k], ring[k, i % 11], taps)
        if i < 10:
            continue
        for k in range(8):
            col_sym11(ring[k], (i + 1) % 11, sums[k], taps)
        ub, ff = sums[0], sums[1]
        for src in range(2):
            ua, aa, af = sums[2 + 3 * src], sums[3 + 3 * src], sums[4 + 3 * src]
            for c in range(wv):
                # ((2 ua ub + C1)(2 sab + C2)) / ((ua^2 + ub^2 + C1)(sa + sb + C2))
                uu = ua[c] * ub[c]
                sb = (ff[c] - ub[c] * ub[c]) + c2
                num = (2 * uu + c1) * ((af[c] - uu) * 2 + c2)
                q[c] = num / (
                    (ua[c] * ua[c] + (ub[c] * ub[c] + c1)) * ((aa[c] - ua[c] * ua[c]) + sb)
                )
            row = 0.0
            for c in range(wv):
                row += q[c]
            totals[src] += row
    n = (h - 10) * wv
    return totals[0] / n, totals[1] / n


def ssim(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """ssim(VI, F) + ssim(IR, F): Wang's SSIM, 11x11 Gaussian (1.5), 'valid' windows."""
    m_vi, m_ir = _ssim_means(vi, ir, fused, sym11_taps(matlab_gaussian_1d(11, 1.5)))
    return m_vi + m_ir


# ----------------------------------------------------------------------------- Qcb, Qcv


@numba.njit(**JIT)
def _lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """table[x] for an (H, W) uint8 image x and a (256,) float64 table."""
    out = np.empty(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = table[x[i, j]]
    return out


def _normalize1_table(x: np.ndarray) -> np.ndarray:
    """Z. Liu's ``normalize1`` of a uint8 image (min-max to 0..255 and ``round``, half away
    from zero) as a 256-entry table from grey level to value, same float arithmetic."""
    hi, lo = float(x.max()), float(x.min())
    d = np.arange(256, dtype=np.float64)
    if hi == 0 and lo == 0:
        return d  # normalize1 returns an all-zero image unchanged
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.floor((d - lo) / (hi - lo) * 255 + 0.5)  # >= 0 (NaN: constant non-zero image)


def _freq_radius(shape: tuple[int, int], div: float) -> np.ndarray:
    """r = sqrt(u^2 + v^2) on MATLAB's ``freqspace([M, N], 'meshgrid')`` grid, u scaled by
    N/div and v by M/div (the shifted layout, DC at (floor(M/2), floor(N/2)))."""
    m, n = shape
    fu = (np.arange(n) - n // 2) * (2.0 / n)
    fv = (np.arange(m) - m // 2) * (2.0 / m)
    u = (n / div) * fu[None, :]
    v = (m / div) * fv[:, None]
    return np.sqrt(u * u + v * v)


def _half_spectrum(h_shifted: np.ndarray) -> np.ndarray:
    """``ifftshift(H)`` cut to the columns of a real FFT. H is a function of the radius on
    the freqspace grid, which is even (H(-k) = H(k) modulo the size), so filtering with it
    keeps real images real and ``ifft2(fft2(x) .* H)`` equals ``irfft2(rfft2(x) .* H)``."""
    n = h_shifted.shape[1]
    return np.ascontiguousarray(np.fft.ifftshift(h_shifted)[:, : n // 2 + 1])


@lru_cache(maxsize=8)
def _csf_chen_blum(shape: tuple[int, int]) -> np.ndarray:
    """Qcb's CSF Sd = exp(-(r/f0)^2) - a exp(-(r/f1)^2), as a half spectrum."""
    r = _freq_radius(shape, 30.0)
    f0, f1, a = 15.3870, 1.3456, 0.7622
    h = _half_spectrum(np.exp(-((r / f0) ** 2)) - a * np.exp(-((r / f1) ** 2)))
    h.flags.writeable = False
    return h


@lru_cache(maxsize=8)
def _csf_mannos(shape: tuple[int, int]) -> np.ndarray:
    """Qcv's Mannos-Sakrison CSF, as a half spectrum."""
    r = _freq_radius(shape, 8.0)
    h = _half_spectrum(2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1)))
    h.flags.writeable = False
    return h


class LiuInputs:
    """What Z. Liu's Qcb and Qcv share: the ``normalize1``-d images (VI, IR, fused), as
    the uint8 ``sources`` with their 256-entry ``tables`` and as float64 ``images``, and
    their real 2-D spectra (computed once, on first use)."""

    def __init__(self, vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> None:
        """vi, ir, fused: (H, W) uint8."""
        self.sources = (vi, ir, fused)
        self.tables = tuple(_normalize1_table(x) for x in self.sources)
        self.images = tuple(_lookup(t, x) for t, x in zip(self.tables, self.sources, strict=True))
        self._spectra: tuple[np.ndarray, ...] | None = None

    @property
    def spectra(self) -> tuple[np.ndarray, ...]:
        if self._spectra is None:
            self._spectra = tuple(scipy.fft.rfft2(x, workers=1) for x in self.images)
        return self._spectra

    def filtered(self, spectrum: np.ndarray, h_half: np.ndarray) -> np.ndarray:
        """real(ifft2(ifftshift(fftshift(fft2(x)) .* H))) from x's real spectrum."""
        return scipy.fft.irfft2(spectrum * h_half, s=self.images[0].shape, workers=1)


def _gaussian31(sigma: float) -> tuple[float, ...]:
    """Half (centre first) of the 1-D factor g of Z. Liu's unnormalised 31x31 Gaussian:
    outer(g, g) = exp(-(x^2 + y^2) / (2 sigma^2)) / (2 pi sigma^2) on -15..15."""
    t = np.arange(0, 16, dtype=np.float64)
    g = np.exp(-(t * t) / (2 * sigma * sigma)) / math.sqrt(2 * np.pi * sigma * sigma)
    return tuple(float(v) for v in g)


@numba.njit(**JIT)
def _sym31(
    src: np.ndarray, d1: np.ndarray, d2: np.ndarray, k1: tuple[float, ...], k2: tuple[float, ...]
) -> None:
    """d[c] = sum_t g[t] src[c + t] ('valid', len(src) = len(d) + 30) for two symmetric
    31-tap kernels given by their halves k1, k2 (centre first): k[0] src[c + 15] +
    k[1] (src[c + 14] + src[c + 16]) + ..., added in that order. Written out, the loop
    compiles to vector instructions; the pair sums are shared by the two kernels."""
    for c in range(d1.shape[0]):
        p1 = src[c + 14] + src[c + 16]
        p2 = src[c + 13] + src[c + 17]
        p3 = src[c + 12] + src[c + 18]
        p4 = src[c + 11] + src[c + 19]
        p5 = src[c + 10] + src[c + 20]
        p6 = src[c + 9] + src[c + 21]
        p7 = src[c + 8] + src[c + 22]
        p8 = src[c + 7] + src[c + 23]
        p9 = src[c + 6] + src[c + 24]
        p10 = src[c + 5] + src[c + 25]
        p11 = src[c + 4] + src[c + 26]
        p12 = src[c + 3] + src[c + 27]
        p13 = src[c + 2] + src[c + 28]
        p14 = src[c + 1] + src[c + 29]
        p15 = src[c + 0] + src[c + 30]
        d1[c] = (
            k1[0] * src[c + 15] + k1[1] * p1 + k1[2] * p2 + k1[3] * p3 + k1[4] * p4
            + k1[5] * p5 + k1[6] * p6 + k1[7] * p7 + k1[8] * p8 + k1[9] * p9 + k1[10] * p10
            + k1[11] * p11 + k1[12] * p12 + k1[13] * p13 + k1[14] * p14 + k1[15] * p15
        )  # fmt: skip
        d2[c] = (
            k2[0] * src[c + 15] + k2[1] * p1 + k2[2] * p2 + k2[3] * p3 + k2[4] * p4
            + k2[5] * p5 + k2[6] * p6 + k2[7] * p7 + k2[8] * p8 + k2[9] * p9 + k2[10] * p10
            + k2[11] * p11 + k2[12] * p12 + k2[13] * p13 + k2[14] * p14 + k2[15] * p15
        )  # fmt: skip


@numba.njit(**JIT)
def _sym31_column(rows: np.ndarray, i: int, dst: np.ndarray, k: tuple[float, ...]) -> None:
    """dst[c] = sum_t g[t] rows[i + t - 15, c]: :func:`_sym31` for one kernel, down the
    columns of ``rows`` (same pairing and order), for output row i."""
    for c in range(dst.shape[0]):
        dst[c] = (
            k[0] * rows[i, c] + k[1] * (rows[i - 1, c] + rows[i + 1, c])
            + k[2] * (rows[i - 2, c] + rows[i + 2, c])
            + k[3] * (rows[i - 3, c] + rows[i + 3, c])
            + k[4] * (rows[i - 4, c] + rows[i + 4, c])
            + k[5] * (rows[i - 5, c] + rows[i + 5, c])
            + k[6] * (rows[i - 6, c] + rows[i + 6, c])
            + k[7] * (rows[i - 7, c] + rows[i + 7, c])
            + k[8] * (rows[i - 8, c] + rows[i + 8, c])
            + k[9] * (rows[i - 9, c] + rows[i + 9, c])
            + k[10] * (rows[i - 10, c] + rows[i + 10, c])
            + k[11] * (rows[i - 11, c] + rows[i + 11, c])
            + k[12] * (rows[i - 12, c] + rows[i + 12, c])
            + k[13] * (rows[i - 13, c] + rows[i + 13, c])
            + k[14] * (rows[i - 14, c] + rows[i + 14, c])
            + k[15] * (rows[i - 15, c] + rows[i + 15, c])
        )  # fmt: skip


@numba.njit(**JIT)
def _contrast_p(
    y: np.ndarray, k1: tuple[float, ...], k2: tuple[float, ...], rows: np.ndarray, out: np.ndarray
) -> None:
    """out = |C|^3 / (C^2 + 1e-4), C = (G1 * y) / (G2 * y) - 1, ``filter2`` 'same' with
    zero padding of the 31x31 Gaussians G1, G2 (separable: each zero-padded row of y is
    filtered into ``rows`` (2, H + 30, W), whose first and last 15 rows must be zero, the
    vertical zero padding; then its columns)."""
    h, w = y.shape
    pad = np.zeros(w + 30)
    for i in range(h):
        pad[15 : 15 + w] = y[i]
        _sym31(pad, rows[0, i + 15], rows[1, i + 15], k1, k2)
    f1, f2 = np.empty(w), np.empty(w)
    for i in range(h):
        _sym31_column(rows[0], i + 15, f1, k1)
        _sym31_column(rows[1], i + 15, f2, k2)
        o = out[i]
        for c in range(w):
            a = abs(f1[c] / f2[c] - 1)
            o[c] = a * (a * a) / (a * a + 0.0001)


@numba.njit(**JIT)
def _chen_blum(c1p: np.ndarray, c2p: np.ndarray, cfp: np.ndarray) -> float:
    """Mean of the Chen-Blum quality map from the three contrast maps."""
    h, w = cfp.shape
    q = np.empty(w)
    total = 0.0
    for i in range(h):
        a, b, f = c1p[i], c2p[i], cfp[i]
        for j in range(w):
            # (cp / cf) * mask + (cf / cp) * (1 - mask), mask = cp < cf; the masked-off
            # ratio still enters as ratio * 0 (NaN where it is infinite, like the original).
            ra, rb = a[j] / f[j], b[j] / f[j]
            ia, ib = f[j] / a[j], f[j] / b[j]
            q1 = ra + ia * 0.0 if a[j] < f[j] else ra * 0.0 + ia
            q2 = rb + ib * 0.0 if b[j] < f[j] else rb * 0.0 + ib
            a2, b2 = a[j] * a[j], b[j] * b[j]
            den = a2 + b2
            q[j] = (a2 / den) * q1 + (b2 / den) * q2
        row = 0.0
        for j in range(w):
            row += q[j]
        total += row
    return total / cfp.size


def qcb(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray, prep: LiuInputs | None = None) -> float:
    """Chen-Blum (Z. Liu's ``metricChenBlum``): CSF-filtered local contrast preservation."""
    prep = prep or LiuInputs(vi, ir, fused)
    sd = _csf_chen_blum(fused.shape)
    k1, k2 = _gaussian31(2.0), _gaussian31(4.0)
    h, w = fused.shape
    rows = np.zeros((2, h + 30, w))
    cp = np.empty((3, h, w))
    for spectrum, out in zip(prep.spectra, cp, strict=True):
        _contrast_p(prep.filtered(spectrum, sd), k1, k2, rows, out)
    return _chen_blum(*cp)


@numba.njit(**JIT)
def _add_row_to_blocks(
    x: np.ndarray, table: np.ndarray, e: np.ndarray, i: int, lam: np.ndarray, d: np.ndarray
) -> None:
    """Add row i's G^5 (of the zero-framed image table[x]) and e^2 to the 16-column block
    sums ``lam`` and ``d``."""
    w = e.shape[1]
    p = np.empty((3, w + 2))
    framed_rows(x, table, i, ZERO, p)
    top, mid, bot, ei = p[0], p[1], p[2], e[i]
    g5, e2 = np.empty(w), np.empty(w)
    for j in range(w):
        gx = (top[j + 2] + 2 * mid[j + 2] + bot[j + 2]) - (top[j] + 2 * mid[j] + bot[j])
        gy = (bot[j] + 2 * bot[j + 1] + bot[j + 2]) - (top[j] + 2 * top[j + 1] + top[j + 2])
        g2 = gx * gx + gy * gy
        g5[j] = (g2 * g2) * math.sqrt(g2)
        e2[j] = ei[j] * ei[j]
    for j in range(w):
        lam[j // 16] += g5[j]
        d[j // 16] += e2[j]


@numba.njit(**JIT)
def _chen(
    x1: np.ndarray, t1: np.ndarray, x2: np.ndarray, t2: np.ndarray, e1: np.ndarray, e2: np.ndarray
) -> float:
    """sum(lam1 d1 + lam2 d2) / sum(lam1 + lam2) over 16x16 blocks (partial blocks
    zero-padded, ``blkproc``): lam_k = block sum of G^5 of the image t_k[x_k],
    G = sqrt(gx^2 + gy^2), gx / gy = ``filter2`` 'same' (zero padding) of [-1 0 1;
    -2 0 2; -1 0 1] and its transpose; d_k = block sum of e_k^2 / 256 (e_k: the
    CSF-filtered difference image). The images hold integers 0..255 (NaN for a constant
    non-zero image), so the Sobel sums are exact in any order."""
    h, w = e1.shape
    nb = (w + 15) // 16
    lam, d = np.zeros((2, nb)), np.zeros((2, nb))
    num = den = 0.0
    for i in range(h):
        _add_row_to_blocks(x1, t1, e1, i, lam[0], d[0])
        _add_row_to_blocks(x2, t2, e2, i, lam[1], d[1])
        if i % 16 == 15 or i == h - 1:
            for b in range(nb):
                l1, l2 = lam[0, b], lam[1, b]
                num += l1 * (d[0, b] / 256.0) + l2 * (d[1, b] / 256.0)
                den += l1 + l2
            lam[:] = 0.0
            d[:] = 0.0
    return num / den


def qcv(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray, prep: LiuInputs | None = None) -> float:
    """Chen-Varshney (Z. Liu's ``metricChen``), lower is better."""
    prep = prep or LiuInputs(vi, ir, fused)
    theta_m = _csf_mannos(fused.shape)
    s1, s2, sf = prep.spectra
    # The CSF is linear: fft2(im_k - fused) = fft2(im_k) - fft2(fused).
    e1, e2 = prep.filtered(s1 - sf, theta_m), prep.filtered(s2 - sf, theta_m)
    (x1, x2, _), (t1, t2, _) = prep.sources, prep.tables
    return _chen(x1, t1, x2, t2, e1, e2)
