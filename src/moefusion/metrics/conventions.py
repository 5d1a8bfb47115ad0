"""The three metric conventions: which function, input scale and dtype each metric uses.

* ``paper``  - TANG-2022 MATLAB toolbox, the scales of the MoE-Fusion paper's Table 1.
* ``float``  - TANG-2023 MATLAB toolbox: float [0, 255] everywhere.
* ``cddfuse`` - the CDDFuse ``Evaluator`` (float32 numpy), copied by many later papers.

See ``docs/metrics.md`` and ``shared/notes/metrics.md`` for the derivation of every quirk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from moefusion.metrics import cddfuse
from moefusion.metrics._inputs import MetricInputError, Triple
from moefusion.metrics.fused_only import (
    average_gradient,
    entropy_bits,
    sd_population,
    sd_tang2022,
    spatial_frequency,
)
from moefusion.metrics.information import mi_cddfuse, mi_tang
from moefusion.metrics.qabf import qabf
from moefusion.metrics.reference_based import cc, mse, psnr_tang, scd
from moefusion.metrics.ssim import ssim_sum
from moefusion.metrics.vif import MIN_SIDE as VIF_MIN_SIDE
from moefusion.metrics.vif import vif_pairs

#: Every metric name, in table order (the paper's eight first).
METRICS: tuple[str, ...] = (
    "EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf", "CC", "PSNR", "MSE", "SSIM",
)  # fmt: skip
#: The eight metrics of MoE-Fusion Table 1.
TABLE1_METRICS: tuple[str, ...] = METRICS[:8]
#: Direction per metric: every metric is higher-is-better except MSE.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType({m: m != "MSE" for m in METRICS})
#: Smallest image side each metric accepts (VIF's 4-scale pyramid, SSIM's 7x7 window).
MIN_SIDE: Mapping[str, int] = MappingProxyType({"VIF": VIF_MIN_SIDE, "SSIM": 7})

MetricFn = Callable[[Triple], float]


@dataclass(frozen=True)
class Convention:
    """One convention: its name, the line tools print with results, and its metrics."""

    name: str
    description: str
    functions: Mapping[str, MetricFn]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names this convention defines, in :data:`METRICS` order."""
        return tuple(m for m in METRICS if m in self.functions)


# Metrics that TANG-2022 and TANG-2023 compute identically.
_TANG_COMMON: dict[str, MetricFn] = {
    "EN": lambda t: entropy_bits(t.hist.marginals[2]),
    "MI": lambda t: mi_tang(t.hist.ir_f, t.hist.vi_f),
    "AG": lambda t: average_gradient(t.fused),
    "CC": lambda t: cc(t.hist),
    "SCD": lambda t: scd(t.hist),
    "PSNR": lambda t: psnr_tang(t.hist),
    "MSE": lambda t: mse(t.hist, 1 / 255),
}

_PAPER = Convention(
    name="paper",
    description=(
        "paper = TANG-2022 MATLAB toolbox (Linfeng-Tang/Evaluation-for-Image-Fusion before "
        "2023-03-03), the scales of MoE-Fusion Table 1: gray by MATLAB rgb2gray; SF on [0,1]; "
        "SD uint8-saturated (<= 15.97, not a std); MI in bits, joint levels 254/255 merged; "
        "VIF summed over sources, scale 1 uint8-saturated; AG / ((M-1)(N-1)); Qabf on [0,1] "
        "(+-5e-3 float noise); CC mean over sources; MSE on [0,1], PSNR = 20log10(255/sqrt(MSE))"
    ),
    functions=MappingProxyType(
        {
            **_TANG_COMMON,
            "SF": lambda t: spatial_frequency(t.fused, 1 / 255),
            "SD": lambda t: sd_tang2022(t.hist.marginals[2], t.fused.shape),
            "VIF": lambda t: vif_pairs((t.ir, t.vi), t.fused, saturate_u8=True),
            "Qabf": lambda t: qabf(t.ir, t.vi, t.fused, scale=255.0),
        }
    ),
)

_FLOAT = Convention(
    name="float",
    description=(
        "float = TANG-2023 MATLAB toolbox: float [0,255] everywhere, gray by MATLAB rgb2gray; "
        "SF on [0,255]; SD = population std; MI in bits, joint levels 254/255 merged; float VIF "
        "summed over sources; AG / ((M-1)(N-1)); Qabf on [0,255]; CC mean over sources; "
        "MSE on [0,1], PSNR = 20log10(255/sqrt(MSE))"
    ),
    functions=MappingProxyType(
        {
            **_TANG_COMMON,
            "SF": lambda t: spatial_frequency(t.fused),
            "SD": lambda t: sd_population(t.hist.marginals[2]),
            "VIF": lambda t: vif_pairs((t.ir, t.vi), t.fused, saturate_u8=False),
            "Qabf": lambda t: qabf(t.ir, t.vi, t.fused),
        }
    ),
)

_CDDFUSE = Convention(
    name="cddfuse",
    description=(
        "cddfuse = CDDFuse Evaluator (CVPR 2023), float32 [0,255], gray by cv2 BGR2GRAY + round: "
        "SF on [0,255]; SD = population std; MI in nats, no bin merging; float VIF summed over "
        "sources; AG / (M*N); Qabf on [0,255]; CC mean over sources; SSIM = sum over sources "
        "(skimage 0.19, data_range 2); MSE on [0,255], PSNR = 10log10(max(F)^2/MSE)"
    ),
    functions=MappingProxyType(
        {
            "EN": lambda t: entropy_bits(t.hist.marginals[2]),
            "SF": lambda t: cddfuse.sf(t.f32[2]),
            "SD": lambda t: cddfuse.sd(t.f32[2]),
            "MI": lambda t: mi_cddfuse(t.hist.ir_f, t.hist.vi_f),
            "VIF": lambda t: vif_pairs((t.ir, t.vi), t.fused, saturate_u8=False, nan_as_one=True),
            "AG": lambda t: cddfuse.ag(t.f32[2]),
            "SCD": lambda t: cddfuse.scd(*t.f32),
            "Qabf": lambda t: qabf(t.ir, t.vi, t.fused, dtype=np.float32, block_rows=None),
            "CC": lambda t: cddfuse.cc(*t.f32),
            "PSNR": lambda t: cddfuse.psnr(*t.f32),
            "MSE": lambda t: cddfuse.mse(*t.f32),
            "SSIM": lambda t: ssim_sum(*t.f32),
        }
    ),
)

_REGISTRY: Mapping[str, Convention] = MappingProxyType(
    {c.name: c for c in (_PAPER, _FLOAT, _CDDFUSE)}
)
#: Convention names, the default (``paper``) first.
CONVENTIONS: tuple[str, ...] = tuple(_REGISTRY)
#: One line per convention, to print with every table of results.
CONVENTION_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {name: c.description for name, c in _REGISTRY.items()}
)


def check_convention(name: str) -> str:
    """Return ``name`` if it is a known convention, else raise :class:`MetricInputError`."""
    if name not in _REGISTRY:
        raise MetricInputError(
            f"unknown metric convention {name!r}; choose one of {', '.join(CONVENTIONS)}"
        )
    return name


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name``."""
    return _REGISTRY[check_convention(name)]


def describe(name: str) -> str:
    """The one-line description of convention ``name`` that tools print with results."""
    return get_convention(name).description
