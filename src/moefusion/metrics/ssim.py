"""SSIM as CDDFuse calls it: scikit-image 0.19 ``structural_similarity`` defaults.

Written from the published algorithm (Wang et al. 2004) with skimage 0.19's choices:
7x7 uniform window (scipy ``uniform_filter``), sample covariance (N/(N-1)), K1 = 0.01,
K2 = 0.03, mean over the interior the window fully covers; float32 input is processed in
float32 and averaged in float64; and, because CDDFuse passes float32 images without
``data_range``, a dynamic range of 2 (the float dtype range -1..1), so C1 and C2 are tiny.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

_WIN = 7
_K1, _K2 = 0.01, 0.03
#: The data_range skimage 0.19 infers for float images (dtype range -1..1).
SKIMAGE019_FLOAT_RANGE = 2.0


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and mean of squares over the 7x7 window, (H, W) each."""
    return uniform_filter(x, _WIN), uniform_filter(x * x, _WIN)


def _ssim_mean(
    x: np.ndarray,
    y: np.ndarray,
    mx: tuple[np.ndarray, np.ndarray],
    my: tuple[np.ndarray, np.ndarray],
    data_range: float,
) -> float:
    """Mean SSIM of (H, W) x, y given their local moments; arithmetic in x's dtype."""
    cov_norm = _WIN**2 / (_WIN**2 - 1)
    (ux, uxx), (uy, uyy) = mx, my
    uxy = uniform_filter(x * y, _WIN)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux**2 + uy**2 + c1
    b2 = vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    pad = (_WIN - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


def ssim_single(x: np.ndarray, y: np.ndarray, data_range: float = SKIMAGE019_FLOAT_RANGE) -> float:
    """Mean SSIM of two (H, W) float images (H, W >= 7), in their dtype (float32 for CDDFuse)."""
    return _ssim_mean(x, y, _moments(x), _moments(y), data_range)


def ssim_sum(ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> float:
    """CDDFuse SSIM = ssim(F, A) + ssim(F, B) (a sum, so at most 2); (H, W) float32 inputs.

    The fused image's local moments are computed once for both terms.
    """
    mf = _moments(fused)
    r = SKIMAGE019_FLOAT_RANGE
    return _ssim_mean(fused, ir, mf, _moments(ir), r) + _ssim_mean(fused, vi, mf, _moments(vi), r)
