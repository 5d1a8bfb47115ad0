"""Torchvision detection plumbing shared by the auxiliary detectors and the detection evaluation.

Nothing here is specific to the paper: backbones with a 5-level FPN (levels ``"0"``..``"3"``
and ``"pool"``, strides 4, 8, 16, 32, 64), the normalisation layer they use, loading a
local ImageNet classification state_dict into them, the stride-4 FPN level alone, and the
RPN and RoI heads of a Faster R-CNN. The paper's modules (cross-modal mixing, spatial
attention, :class:`~moefusion.models.attention.AttentionDetectors`) live in
:mod:`moefusion.models.attention`; the Table 3 detector of :mod:`moefusion.detection`
is assembled from the same builders.

Nothing is ever downloaded: every backbone is built with ``weights=None`` and optional
weights come from a local file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from moefusion.errors import ConfigError
from moefusion.models.backbones import LEVELS
from moefusion.models.config import DetectorConfig

__all__ = [
    "LEVELS",
    "NORMS",
    "build_backbone",
    "build_roi_heads",
    "build_rpn",
    "fpn_finest_level",
    "load_backbone_weights",
    "mobilenet_fpn_backbone",
    "norm_layer",
    "read_state_dict",
    "resnet_fpn_backbone",
]

#: Normalisation layers of the backbones: trainable BatchNorm, frozen BatchNorm (for
#: ImageNet weights), GroupNorm with 32 groups.
NORMS: tuple[str, ...] = ("bn", "frozen_bn", "group")
#: Keys of the classification heads (ResNet ``fc``, MobileNetV3 ``classifier``): the FPN
#: extractors drop the head, so a checkpoint may hold it or not.
_CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "classifier.")


# --------------------------------------------------------------------------- weights
def norm_layer(kind: str) -> Callable[..., nn.Module]:
    """The normalisation layer class for ``kind`` in :data:`NORMS`."""
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "group":
        # 32 groups divide every ResNet width (64 .. 2048).
        return partial(nn.GroupNorm, 32)
    raise ConfigError(f"backbone norm must be one of {', '.join(NORMS)}, got {kind!r}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state_dict from ``.safetensors`` or a ``torch.save`` file.

    Unwraps the common checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``)
    and strips DataParallel's ``module.`` prefix.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"backbone weights not found: {file}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable/corrupt file is a user error
        raise ConfigError(f"cannot read backbone weights {file}: {exc}") from exc
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ConfigError(f"backbone weights {file} do not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load an ImageNet classification state_dict into a torchvision ``model``.

    Every parameter and buffer of the feature extractor must be present with the right
    shape (BatchNorm's ``num_batches_tracked`` counters may be absent; the classification
    head is ignored); otherwise a :class:`ConfigError` lists what does not match.
    """
    state = {
        k: v for k, v in read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)
    }
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    details = []
    if mismatched:
        details.append(f"shape mismatch {len(mismatched)} (e.g. {mismatched[:3]})")
    else:
        result = model.load_state_dict(state, strict=False)
        missing = [
            k
            for k in result.missing_keys
            if not k.endswith("num_batches_tracked") and not k.startswith(_CLASSIFIER_PREFIXES)
        ]
        if missing:
            details.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if result.unexpected_keys:
            unexpected = result.unexpected_keys
            details.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
    if details:
        raise ConfigError(
            f"backbone weights {path} do not match torchvision {name}: " + "; ".join(details)
        )


# --------------------------------------------------------------------------- backbones
def resnet_fpn_backbone(
    name: str,
    fpn_channels: int,
    *,
    norm: str = "bn",
    weights: str | Path | None = None,
    trainable_layers: int = 5,
) -> BackboneWithFPN:
    """ResNet ``name`` + FPN on layer1..layer4 plus a max-pooled P6, ``fpn_channels`` wide.

    ``trainable_layers`` follows torchvision's ``_resnet_fpn_extractor`` (0..5, counted
    from layer4; 5 trains everything, 3 freezes the stem and layer1).
    """
    if not name.startswith("resnet") or name not in torchvision.models.__dict__:
        raise ConfigError(f"not a torchvision ResNet: {name!r}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"ResNet trainable layers must be in [0, 5], got {trainable_layers}")
    model = torchvision.models.__dict__[name](weights=None, norm_layer=norm_layer(norm))
    if weights:
        load_backbone_weights(model, weights, name)
    # torchvision's freezing rule; the FPN is built here because torchvision's extractor
    # fixes its width at 256.
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for param_name, parameter in model.named_parameters():
        if not param_name.startswith(tuple(layers)):
            parameter.requires_grad_(False)
    stage2 = model.inplanes // 8
    return BackboneWithFPN(
        model,
        {f"layer{i + 1}": str(i) for i in range(4)},
        [stage2 * 2**i for i in range(4)],
        fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def mobilenet_fpn_backbone(
    name: str,
    fpn_channels: int,
    *,
    norm: str = "bn",
    weights: str | Path | None = None,
    trainable_layers: int = 6,
) -> BackboneWithFPN:
    """MobileNetV3 ``name`` + FPN on the last block of every stride (4, 8, 16, 32) + P6."""
    if not name.startswith("mobilenet_v3") or name not in torchvision.models.__dict__:
        raise ConfigError(f"not a torchvision MobileNetV3: {name!r}")
    layer = norm_layer(norm)
    # None keeps MobileNetV3's own BatchNorm settings (eps 1e-3, momentum 0.01)
    model = torchvision.models.__dict__[name](
        weights=None, norm_layer=None if layer is nn.BatchNorm2d else layer
    )
    if weights:
        load_backbone_weights(model, weights, name)
    features = model.features
    # Same stage bookkeeping and freezing rule as torchvision's _mobilenet_extractor, but
    # returning the last block of every stride (4, 8, 16, 32) so that the FPN has the
    # stride-4 level the attention map comes from (torchvision's returns stride 32 only).
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stages.append(len(features) - 1)
    if not 0 <= trainable_layers <= len(stages):
        raise ConfigError(
            f"MobileNetV3 trainable layers must be in [0, {len(stages)}], got {trainable_layers}"
        )
    freeze_before = (
        len(features) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
    )
    for block in features[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    ends = [stages[2] - 1, stages[3] - 1, stages[4] - 1, len(features) - 1]
    return_layers = {str(index): str(level) for level, index in enumerate(ends)}
    in_channels_list = [features[i].out_channels for i in ends]
    return BackboneWithFPN(
        features,
        return_layers,
        in_channels_list,
        fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_backbone(config: DetectorConfig) -> BackboneWithFPN:
    """Backbone + 5-level FPN (``"0"``..``"3"``, ``"pool"``; strides 4..64), ``fpn_channels`` wide.

    ``backbone_norm="auto"`` means frozen BatchNorm with ``backbone_weights``, else
    trainable BatchNorm (torchvision's rule).
    """
    norm = config.backbone_norm
    if norm == "auto":
        norm = "frozen_bn" if config.backbone_weights else "bn"
    kwargs = {
        "norm": norm,
        "weights": config.backbone_weights,
        "trainable_layers": config.trainable_backbone_layers,
    }
    if config.backbone.startswith("resnet"):
        return resnet_fpn_backbone(config.backbone, config.fpn_channels, **kwargs)
    if config.backbone.startswith("mobilenet_v3"):
        return mobilenet_fpn_backbone(config.backbone, config.fpn_channels, **kwargs)
    raise ConfigError(f"unsupported detector backbone {config.backbone!r}")


def fpn_finest_level(backbone: BackboneWithFPN, x: Tensor) -> Tensor:
    """Only the stride-4 FPN output: the full top-down path, but only level 0's 3x3 conv.

    Equals ``backbone(x)["0"]`` (same operations in the same order as torchvision's
    :class:`FeaturePyramidNetwork`), without the other levels' output convs.

    Shapes:
        ``[B, 3, H, W] -> [B, C, H/4, W/4]``.
    """
    fpn = backbone.fpn
    feats = list(backbone.body(x).values())
    last_inner = fpn.get_result_from_inner_blocks(feats[-1], -1)
    for idx in range(len(feats) - 2, -1, -1):
        lateral = fpn.get_result_from_inner_blocks(feats[idx], idx)
        last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
    return fpn.get_result_from_layer_blocks(last_inner, 0)


# --------------------------------------------------------------------------- heads
def build_rpn(config: DetectorConfig) -> RegionProposalNetwork:
    """RPN with one anchor size per FPN level and the configured aspect ratios."""
    sizes = tuple((s,) for s in config.anchor_sizes)
    ratios = (tuple(config.aspect_ratios),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    head = RPNHead(config.fpn_channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
    )


def build_roi_heads(config: DetectorConfig) -> RoIHeads:
    """RoIAlign on levels 0-3, 2-fc box head, (num_classes + 1)-way predictor."""
    size = config.roi_output_size
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], size, config.roi_sampling_ratio)
    box_head = TwoMLPHead(config.fpn_channels * size * size, config.representation_size)
    predictor = FastRCNNPredictor(config.representation_size, config.num_classes + 1)
    return RoIHeads(
        pool,
        box_head,
        predictor,
        fg_iou_thresh=config.box_fg_iou_thresh,
        bg_iou_thresh=config.box_bg_iou_thresh,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=None,
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.box_detections_per_img,
    )
