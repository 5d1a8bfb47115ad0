"""CDDFuse ``Evaluator`` statistics restated in float32 numpy, rounding included.

CDDFuse reads images as float32 and evaluates SF, SD, AG, CC, SCD, MSE and PSNR with
float32 numpy reductions (pairwise sums). Their rounding moves values by up to ~1e-6
relative, so matching the published numbers to 1e-6 needs the same dtype and the same
reduction shapes. Every function takes (H, W) float32 arrays holding [0, 255] levels.
"""

from __future__ import annotations

import numpy as np


def sf(f: np.ndarray) -> float:
    """SF = sqrt(mean(dCol^2) + mean(dRow^2)), float32."""
    return float(
        np.sqrt(np.mean((f[:, 1:] - f[:, :-1]) ** 2) + np.mean((f[1:, :] - f[:-1, :]) ** 2))
    )


def sd(f: np.ndarray) -> float:
    """Population std, float32 (``np.std``)."""
    return float(np.std(f))


def ag(f: np.ndarray) -> float:
    """AG with MATLAB-style gradients, divided by H*W (``np.mean``), float32."""
    gx = np.zeros_like(f)
    gy = np.zeros_like(f)
    gx[:, 0] = f[:, 1] - f[:, 0]
    gx[:, -1] = f[:, -1] - f[:, -2]
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) / 2
    gy[0, :] = f[1, :] - f[0, :]
    gy[-1, :] = f[-1, :] - f[-2, :]
    gy[1:-1, :] = (f[2:, :] - f[:-2, :]) / 2
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def _corr(x: np.ndarray, y: np.ndarray) -> np.floating:
    dx = x - np.mean(x)
    dy = y - np.mean(y)
    return np.sum(dx * dy) / np.sqrt(np.sum(dx**2) * np.sum(dy**2))


def cc(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """CC = (corr(A, F) + corr(B, F)) / 2, float32."""
    return float((_corr(a, f) + _corr(b, f)) / 2)


def scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """SCD = corr(A, F - B) + corr(B, F - A), float32."""
    return float(_corr(a, f - b) + _corr(b, f - a))


def _mse32(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.floating:
    return (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2


def mse(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """MSE on [0, 255], mean over the two sources, float32."""
    return float(_mse32(a, b, f))


def psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """PSNR = 10 log10(max(F)^2 / MSE), float32; inf when MSE is 0."""
    m = _mse32(a, b, f)
    return float("inf") if m == 0 else float(10 * np.log10(np.max(f) ** 2 / m))
