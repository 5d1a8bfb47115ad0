"""Small convolution helpers shared by the metrics, tuned to reproduce the references.

* :func:`gaussian_valid` is MATLAB ``filter2(fspecial('gaussian', N, N/5), x, 'valid')``
  done as two 1-D passes with OpenCV (about 50x faster than a direct 2-D convolution).
* :func:`framed_rows` gives three rows of an image with the one-pixel frame of a 3x3
  filter (zero, mirrored or replicated), for the compiled kernels that stream an image
  row by row (Qabf, Nabf, VIFB Edge_intensity and Qcv).
* :func:`row_sym11` / :func:`col_sym11` (symmetric 11-tap window sums) and
  :func:`row_box11` (11-tap box sums) are the building blocks of the compiled kernels
  that stream an image through 11x11 'valid' windows (VIFB Ssim, MEF-MS-SSIM): each row
  is filtered once into a ring of the last 11 rows, so every window sum of every
  quantity is formed in cache, with no full-size temporaries.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

#: Options of every compiled kernel: cached on disk, IEEE arithmetic (no fastmath, so
#: the order of operations written is the order evaluated), and numpy's error model
#: (x / 0 gives inf or NaN as in the array code instead of raising).
JIT = {"cache": True, "error_model": "numpy"}


#: Borders of :func:`framed_rows`.
ZERO, MIRROR, REPLICATE = 0, 1, 2


@numba.njit(**JIT)
def framed_rows(x: np.ndarray, levels: np.ndarray, i: int, border: int, out: np.ndarray) -> None:
    """out (3, W+2) = rows i-1, i, i+1 of levels[x] ((H, W) uint8 ``x``, H >= 2, (256,)
    ``levels``) inside a one-pixel frame: ``ZERO``, ``MIRROR`` (the edge not repeated,
    numpy's 'reflect') or ``REPLICATE`` (the edge repeated)."""
    h, w = x.shape
    for r in range(3):
        src, row = i - 1 + r, out[r]
        if src < 0 or src >= h:
            if border == ZERO:
                row[:] = 0
                continue
            inward = 1 if border == MIRROR else 0  # the row next to the edge, or the edge
            src = inward if src < 0 else h - 1 - inward
        xs = x[src]
        for j in range(w):
            row[j + 1] = levels[xs[j]]
        if border == ZERO:
            row[0], row[w + 1] = 0, 0
        elif border == MIRROR:
            row[0], row[w + 1] = row[2], row[w - 1]
        else:
            row[0], row[w + 1] = row[1], row[w]


def matlab_gaussian_1d(n: int, sd: float | None = None) -> np.ndarray:
    """1-D factor (n,) of MATLAB ``fspecial('gaussian', n, sd)``, sd = n/5 by default
    (outer(g, g) is the window)."""
    sd = n / 5.0 if sd is None else sd
    r = (n - 1) / 2.0
    t = np.arange(-r, r + 1)
    g = np.exp(-(t * t) / (2.0 * sd * sd))
    # fspecial zeroes taps below eps*max; for n <= 17 with sd = n/5, and for n = 11 with
    # sd = 1.5 (SSIM's window), no tap is that small, so the separable factor is exact up
    # to rounding.
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


def sym11_taps(g: np.ndarray) -> tuple[float, ...]:
    """Symmetric 11-tap kernel ``g`` -> (g[5], g[4], ..., g[0]), the centre first, for
    :func:`row_sym11` and :func:`col_sym11`."""
    return tuple(float(v) for v in g[5::-1])


@numba.njit(**JIT)
def row_sym11(src: np.ndarray, dst: np.ndarray, k: tuple[float, ...]) -> None:
    """dst[c] = sum_t g[t] src[c + t] ('valid', len(dst) = len(src) - 10), the taps paired
    from the centre outwards: k[0] src[c+5] + k[1] (src[c+4] + src[c+6]) + ..."""
    for c in range(dst.shape[0]):
        dst[c] = (
            ((((k[0] * src[c + 5] + k[1] * (src[c + 4] + src[c + 6]))
            + k[2] * (src[c + 3] + src[c + 7])) + k[3] * (src[c + 2] + src[c + 8]))
            + k[4] * (src[c + 1] + src[c + 9])) + k[5] * (src[c] + src[c + 10])
        )  # fmt: skip


@numba.njit(**JIT)
def col_sym11(ring: np.ndarray, top: int, dst: np.ndarray, k: tuple[float, ...]) -> None:
    """dst = sum_t g[t] row_t over the 11 rows of ``ring`` (11, W), row_t = ring[(top + t)
    % 11] (``top`` is the slot of the window's first row), paired like :func:`row_sym11`."""
    r0, r1, r2, r3 = ring[top % 11], ring[(top + 1) % 11], ring[(top + 2) % 11], ring[(top + 3) % 11]  # fmt: skip
    r4, r5, r6, r7 = ring[(top + 4) % 11], ring[(top + 5) % 11], ring[(top + 6) % 11], ring[(top + 7) % 11]  # fmt: skip
    r8, r9, r10 = ring[(top + 8) % 11], ring[(top + 9) % 11], ring[(top + 10) % 11]
    for c in range(dst.shape[0]):
        dst[c] = (
            ((((k[0] * r5[c] + k[1] * (r4[c] + r6[c])) + k[2] * (r3[c] + r7[c]))
            + k[3] * (r2[c] + r8[c])) + k[4] * (r1[c] + r9[c])) + k[5] * (r0[c] + r10[c])
        )  # fmt: skip


@numba.njit(**JIT)
def row_box11(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[c] = sum of src[c : c + 11] ('valid')."""
    for c in range(dst.shape[0]):
        dst[c] = (
            (src[c] + src[c + 1]) + (src[c + 2] + src[c + 3]) + (src[c + 4] + src[c + 5])
            + (src[c + 6] + src[c + 7]) + (src[c + 8] + src[c + 9]) + src[c + 10]
        )  # fmt: skip
