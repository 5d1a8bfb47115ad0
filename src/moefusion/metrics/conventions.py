"""The metric conventions: which function, input scale and dtype each metric uses.

* ``paper``  - TANG-2022 MATLAB toolbox, the scales of the MoE-Fusion paper's Table 1.
* ``float``  - TANG-2023 MATLAB toolbox: float [0, 255] everywhere.
* ``cddfuse`` - the CDDFuse ``Evaluator`` (float32 numpy), copied by many later papers.
* ``vifb``   - the 13 metrics of the VIFB toolbox (Zhang et al. 2020), under VIFB's names.

Besides its own metrics, every convention computes the :data:`EXTRA_METRICS` (FMI, Nabf,
MEF-MS-SSIM of the TANG toolbox) when they are asked for by name; their definitions do not
depend on the convention (the name says which toolbox version, e.g. ``FMI_w_tang2022``).

See ``docs/metrics.md`` and ``shared/notes/metrics.md`` for the derivation of every quirk.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from moefusion.metrics import cddfuse, vifb
from moefusion.metrics._inputs import MetricInputError, Triple
from moefusion.metrics.fmi import fmi
from moefusion.metrics.fused_only import (
    average_gradient,
    entropy_bits,
    sd_population,
    sd_tang2022,
    spatial_frequency,
)
from moefusion.metrics.information import mi_cddfuse, mi_tang
from moefusion.metrics.mef_ssim import mef_ms_ssim_scales
from moefusion.metrics.nabf import nabf_kumar, nabf_tang2022, nabf_tang2023
from moefusion.metrics.qabf import grey_levels, qabf
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
#: The 13 VIFB metrics, named and ordered as in VIFB's ``util/configMetrics.m``.
VIFB_METRICS: tuple[str, ...] = (
    "Cross_entropy", "Entropy", "Mutinf", "Psnr", "Avg_gradient", "Edge_intensity", "Qabf",
    "Variance", "Spatial_frequency", "Rmse", "Ssim", "Qcb", "Qcv",
)  # fmt: skip
#: Metrics computed on request in any convention (``metrics=[...]``), never by default.
EXTRA_METRICS: tuple[str, ...] = (
    "FMI_pixel", "FMI_dct", "FMI_w", "FMI_pixel_tang2022", "FMI_dct_tang2022", "FMI_w_tang2022",
    "Nabf", "Nabf_tang2023", "Nabf_tang2022",
    "MEF_MS_SSIM", "MEF_SSIM_scale1", "MEF_SSIM_scale2", "MEF_SSIM_scale3",
)  # fmt: skip
_LOWER_IS_BETTER = frozenset(
    {"MSE", "Cross_entropy", "Rmse", "Qcv", "Nabf", "Nabf_tang2023", "Nabf_tang2022"}
)
#: Direction per metric name: higher is better except MSE, Cross_entropy, Rmse, Qcv, Nabf*.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {m: m not in _LOWER_IS_BETTER for m in dict.fromkeys((*METRICS, *VIFB_METRICS, *EXTRA_METRICS))}
)
#: Smallest image side each metric accepts (VIF's 4-scale pyramid, SSIM's 7x7 window,
#: VIFB Ssim's 11x11 window, MEF-MS-SSIM's 11x11 window at 1/4 scale, FMI's 3x3 windows).
MIN_SIDE: Mapping[str, int] = MappingProxyType(
    {
        "VIF": VIF_MIN_SIDE,
        "SSIM": 7,
        "Ssim": 11,
        **{m: 44 for m in EXTRA_METRICS if m.startswith("MEF_")},
        **{m: 3 for m in EXTRA_METRICS if m.startswith("FMI_")},
    }
)

MetricFn = Callable[[Triple], float]


@dataclass(frozen=True)
class Convention:
    """One convention: its name, the line tools print with results, and its metrics."""

    name: str
    description: str
    functions: Mapping[str, MetricFn]
    order: tuple[str, ...] = METRICS

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names this convention computes by default, in table order."""
        return tuple(m for m in self.order if m in self.functions)


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
            "Qabf": lambda t: qabf(t.ir, t.vi, t.fused, grey_levels(scale=255.0)),
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
            "Qabf": lambda t: qabf(t.ir, t.vi, t.fused, grey_levels(np.float32)),
            "CC": lambda t: cddfuse.cc(*t.f32),
            "PSNR": lambda t: cddfuse.psnr(*t.f32),
            "MSE": lambda t: cddfuse.mse(*t.f32),
            "SSIM": lambda t: ssim_sum(*t.f32),
        }
    ),
)

_VIFB = Convention(
    name="vifb",
    description=(
        "vifb = VIFB toolbox (xingchenzhang/VIFB, 13 metrics, called as (VI, IR, fused) on uint8): "
        "Cross_entropy mean over sources, bits, bins with empty fused histogram skipped; "
        "Mutinf sum, nats, min-max re-binned; Psnr/Rmse from sqrt(SSE)/(MN) (not an MSE); "
        "Variance = population std; SF / (MN); Qabf on 255*[0,255]; Ssim sum over sources "
        "(11x11 Gaussian, valid); Qcb/Qcv on min-max normalised images, Qcv zero-pads 16x16 blocks"
    ),
    functions=MappingProxyType(
        {
            "Cross_entropy": lambda t: vifb.cross_entropy(t.vi, t.ir, t.fused),
            "Entropy": lambda t: entropy_bits(t.hist.marginals[2]),
            "Mutinf": lambda t: vifb.mutinf(t.vi, t.ir, t.fused),
            "Psnr": lambda t: vifb.psnr(t.vi, t.ir, t.fused),
            "Avg_gradient": lambda t: vifb.avg_gradient(t.fused),
            "Edge_intensity": lambda t: vifb.edge_intensity(t.fused),
            "Qabf": lambda t: vifb.qabf(t.vi, t.ir, t.fused),
            "Variance": lambda t: sd_population(t.hist.marginals[2]),
            "Spatial_frequency": lambda t: vifb.spatial_frequency(t.fused),
            "Rmse": lambda t: vifb.rmse(t.vi, t.ir, t.fused),
            "Ssim": lambda t: vifb.ssim(t.vi, t.ir, t.fused),
            "Qcb": lambda t: vifb.qcb(t.vi, t.ir, t.fused, _liu(t)),
            "Qcv": lambda t: vifb.qcv(t.vi, t.ir, t.fused, _liu(t)),
        }
    ),
    order=VIFB_METRICS,
)


def _shared(t: Triple, key: str, fn: Callable[[], object]) -> object:
    """``fn()`` computed once per triple (MEF-MS-SSIM gives all its scales in one pass)."""
    store = t.__dict__  # the frozen dataclass only blocks attribute assignment
    if key not in store:
        store[key] = fn()
    return store[key]


def _liu(t: Triple) -> vifb.LiuInputs:
    """Qcb's and Qcv's shared normalised images and spectra."""
    return _shared(t, "_vifb_liu", lambda: vifb.LiuInputs(t.vi, t.ir, t.fused))  # type: ignore[return-value]


def _mef(t: Triple, k: int) -> float:
    return _shared(t, "_mef_ms_ssim", lambda: mef_ms_ssim_scales(t.ir, t.vi, t.fused))[k]  # type: ignore[index]


def _fmi_fn(feature: str, scale: float) -> MetricFn:
    return lambda t: fmi(t.ir, t.vi, t.fused, feature, scale)


#: The extra metrics: same definition in every convention (see :data:`EXTRA_METRICS`).
#: FMI and MEF-MS-SSIM are called as the TANG toolbox calls them, (IR, VI, fused).
EXTRA_FUNCTIONS: Mapping[str, MetricFn] = MappingProxyType(
    {
        "FMI_pixel": _fmi_fn("edge", 1.0),
        "FMI_dct": _fmi_fn("dct", 1.0),
        "FMI_w": _fmi_fn("wavelet", 1.0),
        "FMI_pixel_tang2022": _fmi_fn("edge", 255.0),
        "FMI_dct_tang2022": _fmi_fn("dct", 255.0),
        "FMI_w_tang2022": _fmi_fn("wavelet", 255.0),
        "Nabf": lambda t: nabf_kumar(t.ir, t.vi, t.fused),
        "Nabf_tang2023": lambda t: nabf_tang2023(t.ir, t.vi, t.fused),
        "Nabf_tang2022": lambda t: nabf_tang2022(t.ir, t.vi, t.fused),
        "MEF_MS_SSIM": lambda t: _mef(t, 0),
        "MEF_SSIM_scale1": lambda t: _mef(t, 1),
        "MEF_SSIM_scale2": lambda t: _mef(t, 2),
        "MEF_SSIM_scale3": lambda t: _mef(t, 3),
    }
)

_REGISTRY: Mapping[str, Convention] = MappingProxyType(
    {c.name: c for c in (_PAPER, _FLOAT, _CDDFUSE, _VIFB)}
)
#: The conventions of the paper's metric set, the default (``paper``) first; what
#: ``--convention all`` means. ``vifb`` (:data:`VIFB_METRICS`) is named on its own.
CONVENTIONS: tuple[str, ...] = ("paper", "float", "cddfuse")
#: Every convention name: :data:`CONVENTIONS` plus ``vifb``.
ALL_CONVENTIONS: tuple[str, ...] = tuple(_REGISTRY)
#: One line per convention, to print with every table of results.
CONVENTION_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {name: c.description for name, c in _REGISTRY.items()}
)
#: Conventions temporarily narrowed to a selection of metrics (see :func:`selected_metrics`).
_SELECTED: dict[str, Convention] = {}


def check_convention(name: str) -> str:
    """Return ``name`` if it is a known convention, else raise :class:`MetricInputError`."""
    if name not in _REGISTRY:
        raise MetricInputError(
            f"unknown metric convention {name!r}; choose one of {', '.join(ALL_CONVENTIONS)}"
        )
    return name


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name`` (narrowed inside :func:`selected_metrics`)."""
    check_convention(name)
    return _SELECTED.get(name) or _REGISTRY[name]


def all_metric_names() -> tuple[str, ...]:
    """Every metric name any convention computes (own metrics first, then the extras)."""
    names = [m for c in _REGISTRY.values() for m in c.metrics]
    return tuple(dict.fromkeys((*names, *EXTRA_METRICS)))


def metric_function(convention: str, name: str) -> MetricFn | None:
    """The function computing ``name`` in ``convention`` (its own, or an extra), or None."""
    for table in (get_convention(convention).functions, _REGISTRY[convention].functions):
        if name in table:
            return table[name]
    return EXTRA_FUNCTIONS.get(name)


def unknown_metric_message(convention: str, names: Sequence[str]) -> str | None:
    """One line naming the metrics of ``names`` that ``convention`` cannot compute, with
    the closest known names and the conventions that define them; None if all are known."""
    bad = [m for m in names if metric_function(convention, m) is None]
    if not bad:
        return None
    known = all_metric_names()
    lower = {k.lower(): k for k in known}
    parts = []
    for m in bad:
        owners = [c for c, conv in _REGISTRY.items() if m in conv.functions]
        if owners:
            parts.append(f"{m} (a metric of convention {' / '.join(owners)})")
            continue
        close = difflib.get_close_matches(m.lower(), list(lower), n=3, cutoff=0.5)
        hint = f" (closest: {', '.join(lower[c] for c in close)})" if close else ""
        parts.append(m + hint)
    return (
        f"unknown metric(s) for convention {convention!r}: {'; '.join(parts)}; "
        f"available: {', '.join((*_REGISTRY[convention].metrics, *EXTRA_METRICS))}"
    )


@contextmanager
def selected_metrics(selection: Mapping[str, Sequence[str]]) -> Iterator[None]:
    """Within the block, convention ``c`` computes (by default) exactly ``selection[c]``,
    in that order, which may include :data:`EXTRA_METRICS`. Used by ``moefusion
    evaluate --metrics``; not thread-safe."""
    narrowed = {}
    for c, names in selection.items():
        msg = unknown_metric_message(c, names)
        if msg:
            raise MetricInputError(msg)
        base = _REGISTRY[c]
        fns = {m: metric_function(c, m) for m in names}
        narrowed[c] = Convention(c, base.description, MappingProxyType(fns), tuple(names))
    previous = dict(_SELECTED)
    _SELECTED.update(narrowed)
    try:
        yield
    finally:
        _SELECTED.clear()
        _SELECTED.update(previous)


def describe(name: str) -> str:
    """The one-line description of convention ``name`` that tools print with results."""
    return get_convention(name).description
