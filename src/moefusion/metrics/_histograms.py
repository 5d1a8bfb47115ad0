"""Grey-level histograms of a triple, and exact integer moments derived from them.

For 8-bit images every first/second moment the metrics need (sums of x, x^2 and x*y)
is a weighted sum over a 256x256 joint histogram. Working from histograms is exact (no
float rounding), needs no full-size float temporaries, and is several times faster
than array arithmetic on a 640x480 image.
"""

from __future__ import annotations

from functools import cached_property

import numba
import numpy as np

from moefusion.metrics._filters import JIT

_LEVELS = np.arange(256, dtype=np.int64)


@numba.njit(**JIT)
def _count(x: np.ndarray) -> np.ndarray:
    # Four interleaved partial histograms: runs of equal grey levels do not wait on the
    # previous increment of the same counter.
    part = np.zeros((4, 256), np.int64)
    n4 = x.shape[0] // 4 * 4
    for i in range(0, n4, 4):
        part[0, x[i]] += 1
        part[1, x[i + 1]] += 1
        part[2, x[i + 2]] += 1
        part[3, x[i + 3]] += 1
    for i in range(n4, x.shape[0]):
        part[0, x[i]] += 1
    return part[0] + part[1] + part[2] + part[3]


@numba.njit(**JIT)
def _count_pairs(
    a: np.ndarray, b: np.ndarray, ta: np.ndarray, tb: np.ndarray, out: np.ndarray
) -> None:
    for i in range(a.shape[0]):
        out[(ta[a[i]] << 8) | tb[b[i]]] += 1


def grey_counts(x: np.ndarray) -> np.ndarray:
    """(256,) int64 counts of the grey levels of an (H, W) uint8 image."""
    return _count(x.ravel())


def joint_counts(
    a: np.ndarray, b: np.ndarray, ta: np.ndarray = _LEVELS, tb: np.ndarray = _LEVELS
) -> np.ndarray:
    """(256, 256) int64 counts of the pairs (ta[a[i]], tb[b[i]]) of two (H, W) uint8 images;
    the tables ``ta``, ``tb`` (256,) map grey levels to bins 0..255 (default: identity)."""
    # int32 counters (exact below 2^31 pixels): half the cache footprint of int64.
    out = np.zeros(65536, np.int32)
    _count_pairs(a.ravel(), b.ravel(), ta, tb, out)
    return out.reshape(256, 256).astype(np.int64)


def _weighted(counts: np.ndarray, weights: np.ndarray) -> int:
    return int(np.sum(counts * weights))


class Histograms:
    """Joint histograms of (ir, fused), (vi, fused), (ir, vi); each image (H, W) uint8."""

    def __init__(self, ir: np.ndarray, vi: np.ndarray, fused: np.ndarray) -> None:
        self.n = int(fused.size)
        self.ir_f = joint_counts(ir, fused)
        self.vi_f = joint_counts(vi, fused)
        self._ir, self._vi = ir, vi

    @cached_property
    def ir_vi(self) -> np.ndarray:
        """(256, 256) joint counts of (ir, vi); only SCD needs it."""
        return joint_counts(self._ir, self._vi)

    @cached_property
    def marginals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(256,) grey-level counts of ir, vi and fused."""
        return self.ir_f.sum(axis=1), self.vi_f.sum(axis=1), self.ir_f.sum(axis=0)

    @cached_property
    def sums(self) -> dict[str, int]:
        """Exact sums: 'a', 'b', 'f' (sum x) and 'aa', 'bb', 'ff', 'af', 'bf' (sum x*y)."""
        ha, hb, hf = self.marginals
        lv, lv2 = _LEVELS, _LEVELS * _LEVELS
        outer = np.outer(_LEVELS, _LEVELS)
        return {
            "a": _weighted(ha, lv),
            "b": _weighted(hb, lv),
            "f": _weighted(hf, lv),
            "aa": _weighted(ha, lv2),
            "bb": _weighted(hb, lv2),
            "ff": _weighted(hf, lv2),
            "af": _weighted(self.ir_f, outer),
            "bf": _weighted(self.vi_f, outer),
        }

    @cached_property
    def sum_ab(self) -> int:
        """Exact sum of ir*vi."""
        return _weighted(self.ir_vi, np.outer(_LEVELS, _LEVELS))
