"""Small convolution helpers shared by the metrics, tuned to reproduce the references.

* :func:`sobel_padded` reproduces ``scipy.signal.convolve2d(x, k, mode="same")`` bit for bit
  (same zero padding, same order of floating-point additions), which matters for the
  ``paper`` Qabf on [0, 1] where tests such as ``Sx == 0`` depend on rounding noise.
* :func:`gaussian_valid` is MATLAB ``filter2(fspecial('gaussian', N, N/5), x, 'valid')``
  done as two 1-D passes with OpenCV (about 50x faster than a direct 2-D convolution).
"""

from __future__ import annotations

import cv2
import numpy as np


def padded_rows(x: np.ndarray, r0: int, r1: int, dtype: type, scale: float | None) -> np.ndarray:
    """Rows r0..r1-1 of (H, W) uint8 ``x`` with a one-pixel zero frame: (r1-r0+2, W+2).

    Values are ``x`` converted to ``dtype`` and divided by ``scale`` if given (division,
    not multiplication by 1/scale, to round like MATLAB's ``im2double``).
    """
    h, w = x.shape
    out = np.zeros((r1 - r0 + 2, w + 2), dtype)
    lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
    rows = x[lo:hi].astype(dtype)
    if scale is not None:
        rows /= scale
    out[lo - (r0 - 1) : hi - (r0 - 1), 1 : w + 1] = rows
    return out


def sobel_padded(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-framed (h+2, w+2) image -> (Sx, Sy), each (h, w), the Qabf Sobel responses.

    Sx = conv2(x, [-1 0 1; -2 0 2; -1 0 1], 'same'), Sy = conv2(x, [1 2 1; 0 0 0; -1 -2 -1],
    'same'). The terms are added in the kernel's row-major order starting from 0, the
    order scipy's ``convolve2d`` uses, so the float rounding is identical to the Python
    reference; the dtype is kept (float32 stays float32).
    """
    h, w = p.shape[0] - 2, p.shape[1] - 2
    # p[2 - u : ..., 2 - v : ...] is the sample that kernel tap (u, v) multiplies in a
    # true convolution.
    tl, tc, tr = p[2 : 2 + h, 2 : 2 + w], p[2 : 2 + h, 1 : 1 + w], p[2 : 2 + h, 0:w]
    ml, mr = p[1 : 1 + h, 2 : 2 + w], p[1 : 1 + h, 0:w]
    bl, bc, br = p[0:h, 2 : 2 + w], p[0:h, 1 : 1 + w], p[0:h, 0:w]
    # a + (-b) == a - b exactly in IEEE arithmetic, and 2*v is exact, so these equal
    # sum += k[u, v] * sample over taps (0,0), (0,1), ... (2,2) with zero taps skipped.
    sx = -tl + tr
    sx -= 2 * ml
    sx += 2 * mr
    sx -= bl
    sx += br
    sy = tl + 2 * tc
    sy += tr
    sy -= bl
    sy -= 2 * bc
    sy -= br
    return sx, sy


def matlab_gaussian_1d(n: int) -> np.ndarray:
    """1-D factor (n,) of MATLAB ``fspecial('gaussian', n, n/5)`` (outer(g, g) is the window)."""
    sd = n / 5.0
    r = (n - 1) / 2.0
    t = np.arange(-r, r + 1)
    g = np.exp(-(t * t) / (2.0 * sd * sd))
    # fspecial zeroes taps below eps*max; for n <= 17 and sd = n/5 no tap is that small,
    # so the separable factor is exact up to rounding.
    return g / g.sum()


def gaussian_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(H, W) float64 -> (H-n+1, W-n+1): 'valid' correlation with outer(g, g), g of length n."""
    r = (len(g) - 1) // 2
    y = cv2.sepFilter2D(
        np.ascontiguousarray(x, dtype=np.float64),
        cv2.CV_64F,
        g,
        g,
        borderType=cv2.BORDER_REFLECT,
    )
    # The border mode only affects the r-pixel frame that 'valid' throws away.
    return y[r : y.shape[0] - r, r : y.shape[1] - r]
