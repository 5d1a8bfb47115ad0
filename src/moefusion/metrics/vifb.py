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

import cv2
import numpy as np
import scipy.fft

from moefusion.metrics.fused_only import entropy_bits, sd_population
from moefusion.metrics.qabf import qabf as _qabf


def _hist(x: np.ndarray) -> np.ndarray:
    return np.bincount(x.ravel(), minlength=256)


# ----------------------------------------------------------------------------- histograms


def cross_entropy(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Mean over the sources of sum_k P_S(k) log2(P_S(k)/P_F(k)), bins with both P > 0 only."""
    n = fused.size
    pf = _hist(fused) / n

    def ce(src: np.ndarray) -> float:
        ps = _hist(src) / n
        k = (ps != 0) & (pf != 0)
        # The original accumulates in grey-level order: result = P1*log2(P1/P2) + result.
        terms = ps[k] * np.log2(ps[k] / pf[k])
        return float(np.cumsum(terms)[-1]) if terms.size else 0.0

    return (ce(vi) + ce(ir)) / 2.0


def entropy(fused: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin histogram."""
    return entropy_bits(_hist(fused))


def _rebin(x: np.ndarray) -> np.ndarray:
    """VIFB mutinf's re-binning: min-max to [0, 1], then ``double(int16(x*255)) + 1``.

    Evaluated once per grey level (a 256-entry table), with the same float arithmetic."""
    lo, hi = float(x.min()), float(x.max())
    table = x.dtype == np.uint8
    a = np.arange(256, dtype=np.float64) if table else x.astype(np.float64)
    a = (a - lo) / (hi - lo) if hi != lo else np.zeros_like(a)
    # int16() rounds half away from zero; values are >= 0 here.
    b = np.floor(a * 255 + 0.5).astype(np.int64)  # 0-based bin (the +1 of MATLAB)
    return b[x] if table else b


def _mi_nats(a: np.ndarray, b: np.ndarray) -> float:
    ia, ib = _rebin(a), _rebin(b)
    joint = np.bincount((ia * 256 + ib).ravel(), minlength=65536).astype(np.float64)

    def h(counts: np.ndarray) -> float:
        p = counts[counts != 0] / counts.sum()
        return float(np.sum(-p * np.log(p)))

    return h(joint.reshape(256, 256).sum(1)) + h(joint.reshape(256, 256).sum(0)) - h(joint)


def mutinf(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """MI(VI, F) + MI(IR, F) in nats, on min-max re-binned images."""
    return _mi_nats(vi, fused) + _mi_nats(ir, fused)


# ----------------------------------------------------------------------------- PSNR, RMSE


def _e(src: np.ndarray, fused: np.ndarray) -> float:
    """VIFB's ``mse``: sqrt(sum((a-b)^2)) / (M N) (not a mean squared error)."""
    d = src.astype(np.int32) - fused.astype(np.int32)
    sse = int(np.einsum("ij,ij->", d, d, dtype=np.int64))
    return math.sqrt(sse) / fused.size


def psnr(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """20 log10(255 / sqrt(m)), m = mean over the sources of sqrt(SSE) / (M N)."""
    m = (_e(vi, fused) + _e(ir, fused)) / 2.0
    return 20 * math.log10(255 / math.sqrt(m)) if m > 0 else math.inf


def rmse(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Mean over the sources of sqrt(SSE) / (M N) (lower is better)."""
    return (_e(vi, fused) + _e(ir, fused)) / 2.0


# ----------------------------------------------------------------------------- fused only


def avg_gradient(fused: np.ndarray) -> float:
    """sum sqrt((Gx^2 + Gy^2)/2) / ((M-1)(N-1)), MATLAB ``gradient``, in float64.

    Same definition as the TANG ``AG``; computed with float64 square roots (the TANG
    version's float32 ones stay within 2e-9, VIFB's references ask for 1e-9).
    """
    m, n = fused.shape
    x = fused.astype(np.float64)
    gx = np.empty_like(x)
    gy = np.empty_like(x)
    gx[:, 1:-1] = (x[:, 2:] - x[:, :-2]) / 2
    gx[:, 0] = x[:, 1] - x[:, 0]
    gx[:, -1] = x[:, -1] - x[:, -2]
    gy[1:-1, :] = (x[2:, :] - x[:-2, :]) / 2
    gy[0, :] = x[1, :] - x[0, :]
    gy[-1, :] = x[-1, :] - x[-2, :]
    return float(np.sum(np.sqrt((gx * gx + gy * gy) / 2)) / ((m - 1) * (n - 1)))


def edge_intensity(fused: np.ndarray) -> float:
    """Mean of sqrt(gx^2 + gy^2), unnormalised Sobel, ``imfilter(..., 'replicate')``."""
    x = fused.astype(np.float64)
    k = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
    # cv2.filter2D is a correlation, like imfilter; integer data, so exact.
    gx = cv2.filter2D(x, cv2.CV_64F, k, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(x, cv2.CV_64F, k.T.copy(), borderType=cv2.BORDER_REPLICATE)
    return float(np.mean(np.sqrt(gx * gx + gy * gy)))


def variance(fused: np.ndarray) -> float:
    """The population standard deviation (VIFB's ``Variance`` is a std)."""
    return sd_population(_hist(fused))


def spatial_frequency(fused: np.ndarray) -> float:
    """sqrt(RF + CF), both sums of squared neighbour differences divided by M N."""
    x = fused.astype(np.int32)
    dc = x[:, 1:] - x[:, :-1]
    dr = x[1:, :] - x[:-1, :]
    s = int(np.einsum("ij,ij->", dc, dc, dtype=np.int64)) + int(
        np.einsum("ij,ij->", dr, dr, dtype=np.int64)
    )
    m, n = fused.shape
    return math.sqrt(s / (m * n))


# ----------------------------------------------------------------------------- Qabf, SSIM


def qabf(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Qabf on 255 * im2double(double(u8)), i.e. on [0, 65025]."""
    return _qabf(*(x.astype(np.float64) * 255.0 for x in (vi, ir, fused)))


def _gauss_1d(n: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D factor g of MATLAB ``fspecial('gaussian', n, sigma)``: outer(g, g) is the window
    (no tap is below fspecial's eps * max cut for n = 11, sigma = 1.5)."""
    r = (n - 1) / 2
    t = np.arange(-r, r + 1)
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(outer(g, g), x, 'valid')`` (correlation, no padding), separably."""
    r = len(g) // 2
    y = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return y[r : y.shape[0] - r, r : y.shape[1] - r]


def ssim(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    """ssim(VI, F) + ssim(IR, F): Wang's SSIM, 11x11 Gaussian (1.5), 'valid' windows.

    The fused image's filtered mean and second moment are shared by both sources.
    """
    g = _gauss_1d()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = fused.astype(np.float64)
    ub = _filter_valid(f, g)
    ub_sq = ub * ub
    sb = _filter_valid(f * f, g)
    sb -= ub_sq
    sb += c2
    ub_sq += c1
    total = 0.0
    for src in (vi, ir):
        a = src.astype(np.float64)
        ua = _filter_valid(a, g)
        ua_sq = ua * ua
        ua_ub = ua * ub
        sa = _filter_valid(a * a, g)
        sa -= ua_sq
        sab = _filter_valid(a * f, g)
        sab -= ua_ub
        # ((2 ua ub + C1)(2 sab + C2)) / ((ua^2 + ub^2 + C1)(sa + sb + C2))
        num = 2 * ua_ub
        num += c1
        sab *= 2
        sab += c2
        num *= sab
        ua_sq += ub_sq
        sa += sb
        ua_sq *= sa
        num /= ua_sq
        total += float(num.mean())
    return total


# ----------------------------------------------------------------------------- Qcb, Qcv


def _normalize1(x: np.ndarray) -> np.ndarray:
    """Z. Liu's ``normalize1`` of a uint8 image: min-max to 0..255 and ``round`` (half away
    from zero). Evaluated once per grey level (a 256-entry table), same float arithmetic."""
    hi, lo = float(x.max()), float(x.min())
    if hi == 0 and lo == 0:
        return x.astype(np.float64)
    table = x.dtype == np.uint8
    d = np.arange(256, dtype=np.float64) if table else x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.floor((d - lo) / (hi - lo) * 255 + 0.5)  # v >= 0 (NaN: constant non-zero image)
    return v[x] if table else v


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
    """What Z. Liu's Qcb and Qcv share: the ``normalize1``-d images (VI, IR, fused) and
    their real 2-D spectra (computed once, on first use)."""

    def __init__(self, vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> None:
        """vi, ir, fused: (H, W) uint8."""
        self.images = tuple(_normalize1(x) for x in (vi, ir, fused))
        self._spectra: tuple[np.ndarray, ...] | None = None

    @property
    def spectra(self) -> tuple[np.ndarray, ...]:
        if self._spectra is None:
            self._spectra = tuple(scipy.fft.rfft2(x, workers=1) for x in self.images)
        return self._spectra

    def filtered(self, spectrum: np.ndarray, h_half: np.ndarray) -> np.ndarray:
        """real(ifft2(ifftshift(fftshift(fft2(x)) .* H))) from x's real spectrum."""
        return scipy.fft.irfft2(spectrum * h_half, s=self.images[0].shape, workers=1)


def _gaussian31(sigma: float) -> np.ndarray:
    """1-D factor g of Z. Liu's unnormalised 31x31 Gaussian: outer(g, g) =
    exp(-(x^2 + y^2) / (2 sigma^2)) / (2 pi sigma^2) on -15..15."""
    t = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(t * t) / (2 * sigma * sigma)) / math.sqrt(2 * np.pi * sigma * sigma)


def _filter_same_zero(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(outer(g, g), x, 'same')`` with zero padding, as two 1-D passes
    (direct sums, not OpenCV's DFT path for large 2-D kernels)."""
    return cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)


def qcb(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray, prep: LiuInputs | None = None) -> float:
    """Chen-Blum (Z. Liu's ``metricChenBlum``): CSF-filtered local contrast preservation."""
    prep = prep or LiuInputs(vi, ir, fused)
    sd = _csf_chen_blum(fused.shape)
    g1, g2 = _gaussian31(2.0), _gaussian31(4.0)

    def contrast_p(spectrum: np.ndarray) -> np.ndarray:
        y = prep.filtered(spectrum, sd)
        c = _filter_same_zero(y, g1)
        c /= _filter_same_zero(y, g2)
        c -= 1
        np.abs(c, out=c)
        c2 = c * c
        c *= c2  # |C|^3
        c2 += 0.0001
        c /= c2
        return c

    with np.errstate(divide="ignore", invalid="ignore"):
        c1p, c2p, cfp = (contrast_p(s) for s in prep.spectra)

        def preservation(cp: np.ndarray) -> np.ndarray:
            # (cp / cf) * mask + (cf / cp) * (1 - mask), mask = cp < cf; the masked-off
            # ratio still enters as ratio * 0 (NaN where it is infinite, like the original).
            mask = cp < cfp
            a = cp / cfp
            b = cfp / cp
            return np.where(mask, a + b * 0.0, a * 0.0 + b)

        q1f, q2f = preservation(c1p), preservation(c2p)
        c1p *= c1p
        c2p *= c2p
        den = c1p + c2p
        c1p /= den
        c1p *= q1f
        c2p /= den
        c2p *= q2f
        c1p += c2p
    return float(c1p.mean())


def _block_sums(x: np.ndarray, size: int = 16) -> np.ndarray:
    """Per-block sums of ``x`` over size x size blocks, zero-padding partial blocks
    (MATLAB ``blkproc`` semantics)."""
    m, n = x.shape
    pm, pn = -(-m // size) * size, -(-n // size) * size
    if (pm, pn) != (m, n):
        p = np.zeros((pm, pn), x.dtype)
        p[:m, :n] = x
        x = p
    return x.reshape(pm // size, size, pn // size, size).sum(axis=(1, 3))


def _sobel_strength5(x: np.ndarray) -> np.ndarray:
    """G^5, G = sqrt(gx^2 + gy^2), gx / gy = ``filter2`` 'same' (zero padding) of x with
    [-1 0 1; -2 0 2; -1 0 1] and its transpose. x holds integers 0..255, so the sums are
    exact in any order."""
    p = np.zeros((x.shape[0] + 2, x.shape[1] + 2))
    p[1:-1, 1:-1] = x
    h, w = x.shape
    left = p[:-2, :w] + 2 * p[1:-1, :w] + p[2:, :w]
    right = p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]
    top = p[:h, :-2] + 2 * p[:h, 1:-1] + p[:h, 2:]
    bottom = p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]
    right -= left
    bottom -= top
    right *= right
    bottom *= bottom
    right += bottom  # G^2
    g = np.sqrt(right)
    right *= right
    right *= g
    return right


def qcv(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray, prep: LiuInputs | None = None) -> float:
    """Chen-Varshney (Z. Liu's ``metricChen``), lower is better."""
    prep = prep or LiuInputs(vi, ir, fused)
    im1, im2, _ = prep.images
    lam1 = _block_sums(_sobel_strength5(im1))
    lam2 = _block_sums(_sobel_strength5(im2))
    theta_m = _csf_mannos(fused.shape)
    s1, s2, sf = prep.spectra
    # The CSF is linear: fft2(im_k - fused) = fft2(im_k) - fft2(fused).
    d1 = _block_sums(prep.filtered(s1 - sf, theta_m) ** 2) / 256.0
    d2 = _block_sums(prep.filtered(s2 - sf, theta_m) ** 2) / 256.0
    return float(np.sum(lam1 * d1 + lam2 * d2) / np.sum(lam1 + lam2))
