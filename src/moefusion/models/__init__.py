"""The MoE-Fusion network: encoders, MoLE, MoGE, noisy top-K gates and auxiliary detectors.

See ``docs/architecture.md`` for the data path and how each part maps to the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moefusion.models.attention import (
    LEVELS,
    AttentionDetectors,
    AttentionFuse,
    CrossModalMixing,
    SpatialAttention,
)
from moefusion.models.config import (
    BACKBONES,
    VARIANTS,
    DetectorConfig,
    MoEFusionConfig,
)
from moefusion.models.encoder import DenseBlock, DenseEncoder
from moefusion.models.experts import (
    BranchOutput,
    ExpertMixture,
    GlobalExpert,
    LocalExpert,
    combine_dense,
    combine_sparse,
    prepare_for_export,
    set_dispatch,
)
from moefusion.models.gating import (
    USED_WEIGHT,
    GateOutput,
    NoisyTopKGate,
    adaptive_avg_pool2d_cumsum,
    cv_squared,
    expert_usage,
    gates_to_load,
    prob_in_top_k,
    top_k_softmax,
)
from moefusion.models.moefusion import (
    FusionNetwork,
    FusionOutput,
    MoEFusion,
    MoEFusionOutput,
    build_model,
    count_macs,
    count_parameters,
    macs_per_pixel,
)
from moefusion.models.moge import MixtureOfGlobalExperts, SingleDecoder, build_global_mixture
from moefusion.models.mole import (
    AttentionLocal,
    MixtureOfLocalExperts,
    build_local_mixture,
    num_visible_experts,
    route_by_modality,
)

if TYPE_CHECKING:
    from moefusion.models.detector_parts import (
        build_backbone,
        build_roi_heads,
        build_rpn,
        fpn_finest_level,
    )

#: torchvision-based builders, imported on first use (importing torchvision takes
#: seconds; inference from a weights file never needs it)
_DETECTOR_PARTS = ("build_backbone", "build_roi_heads", "build_rpn", "fpn_finest_level")


def __getattr__(name: str) -> Any:
    if name in _DETECTOR_PARTS:
        from moefusion.models import detector_parts

        return getattr(detector_parts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "USED_WEIGHT",
    "BACKBONES",
    "LEVELS",
    "VARIANTS",
    "AttentionDetectors",
    "AttentionFuse",
    "AttentionLocal",
    "BranchOutput",
    "CrossModalMixing",
    "DenseBlock",
    "DenseEncoder",
    "DetectorConfig",
    "ExpertMixture",
    "FusionNetwork",
    "FusionOutput",
    "GateOutput",
    "GlobalExpert",
    "LocalExpert",
    "MixtureOfGlobalExperts",
    "MixtureOfLocalExperts",
    "MoEFusion",
    "MoEFusionConfig",
    "MoEFusionOutput",
    "NoisyTopKGate",
    "SingleDecoder",
    "SpatialAttention",
    "adaptive_avg_pool2d_cumsum",
    "build_backbone",
    "build_global_mixture",
    "build_local_mixture",
    "build_model",
    "build_roi_heads",
    "build_rpn",
    "combine_dense",
    "combine_sparse",
    "count_macs",
    "count_parameters",
    "cv_squared",
    "expert_usage",
    "fpn_finest_level",
    "gates_to_load",
    "macs_per_pixel",
    "num_visible_experts",
    "prepare_for_export",
    "prob_in_top_k",
    "route_by_modality",
    "set_dispatch",
    "top_k_softmax",
]
