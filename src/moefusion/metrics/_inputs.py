"""Validation of metric inputs: every image becomes a 2-D ``uint8`` numpy array.

Accepted: 2-D ``uint8`` arrays/tensors, and 2-D floating-point arrays/tensors whose values
are whole grey levels in [0, 255] (what an 8-bit image holds). Anything else is refused,
because every reference toolbox reads 8-bit files and several metrics (EN, MI, paper SD,
paper VIF) are only defined on 8-bit grey levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moefusion.errors import MoEFusionError
from moefusion.metrics._histograms import Histograms


class MetricInputError(MoEFusionError):
    """An image, convention or metric name given to :mod:`moefusion.metrics` is invalid."""


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Array or tensor -> numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, np.ndarray):
        return x
    # Test the class's module rather than importing torch: numpy-only callers stay light.
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    raise MetricInputError(
        f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}"
    )


def as_gray_u8(x: Any, name: str = "image") -> np.ndarray:
    """Validate one image and return it as a C-contiguous (H, W) ``uint8`` array."""
    a = _to_numpy(x, name)
    if a.ndim != 2:
        hint = " (squeeze channel dims or use moefusion.metrics.to_gray_u8)" if a.ndim == 3 else ""
        raise MetricInputError(f"{name}: expected a 2-D (H, W) image, got shape {a.shape}{hint}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise MetricInputError(
            f"{name}: dtype {a.dtype} is not supported; pass uint8 or float holding "
            "whole grey levels in [0, 255]"
        )
    if a.size and not np.all(np.isfinite(a)):
        raise MetricInputError(f"{name}: contains NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise MetricInputError(
            f"{name}: float values must lie in [0, 255], got range [{lo:g}, {hi:g}]"
        )
    if not np.array_equal(a, np.round(a)):
        extra = " (looks like [0, 1]: use round(x*255) first)" if hi <= 1 else ""
        raise MetricInputError(
            f"{name}: float values must be whole grey levels 0..255{extra}; "
            "metrics are defined on 8-bit images"
        )
    return np.ascontiguousarray(a.astype(np.uint8))


@dataclass(frozen=True)
class Triple:
    """One validated (ir, vi, fused) triple, each (H, W) uint8, with cached derived data.

    Cached derived data (histograms, float32 copies) is shared by the metrics that need it.
    """

    ir: np.ndarray
    vi: np.ndarray
    fused: np.ndarray

    @cached_property
    def hist(self) -> Histograms:
        """Joint grey-level histograms, shared by EN, SD, MI, CC, SCD, MSE and PSNR."""
        return Histograms(self.ir, self.vi, self.fused)

    @cached_property
    def f32(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ir, vi, fused) as float32 in [0, 255], what CDDFuse's reader returns."""
        return tuple(x.astype(np.float32) for x in (self.ir, self.vi, self.fused))  # type: ignore[return-value]


def make_triple(ir: Any, vi: Any, fused: Any) -> Triple:
    """Validate three images of equal size into a :class:`Triple`."""
    a = as_gray_u8(ir, "ir")
    b = as_gray_u8(vi, "vi")
    f = as_gray_u8(fused, "fused")
    if not (a.shape == b.shape == f.shape):
        raise MetricInputError(
            f"image sizes differ: ir {a.shape}, vi {b.shape}, fused {f.shape} "
            "(resize to a common size first)"
        )
    if min(f.shape) < 2:
        raise MetricInputError(f"images must be at least 2x2 pixels, got {f.shape}")
    return Triple(a, b, f)
