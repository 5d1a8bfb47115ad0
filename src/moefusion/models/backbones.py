"""Detector backbones + FPN without torchvision: what loading inference weights builds.

Importing torchvision costs seconds (it imports all its models, datasets and
``torch._dynamo``), which ``moefusion fuse`` cannot afford at start-up. The attention
branch at inference needs only the backbone and the FPN, so this module rebuilds those
from plain ``torch.nn`` layers with **the same module tree, state_dict keys, shapes and
forward computation** as torchvision's ``BackboneWithFPN`` over ``mobilenet_v3_large``,
``mobilenet_v3_small`` and ``resnet18/34/50/101`` as
:mod:`moefusion.models.detector_parts` assembles them (``tests/test_fast_inference.py``
checks keys and outputs against torchvision's).

Nothing here initialises weights the way torchvision does: these modules are meant to be
built on the meta device and filled from a weights file
(:func:`moefusion.weights.load_weights`). Training and the detection heads keep using
torchvision (:mod:`moefusion.models.detector_parts`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moefusion.errors import ConfigError
from moefusion.models.config import DetectorConfig

__all__ = [
    "LEVELS",
    "ConvNormAct",
    "FeaturePyramid",
    "FrozenBatchNorm2d",
    "LeanBackboneWithFPN",
    "build_lean_backbone",
]

#: FPN level names (strides 4, 8, 16, 32, 64); level "0" gives the attention map.
LEVELS: tuple[str, ...] = ("0", "1", "2", "3", "pool")

Norm = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, as torchvision's
    ``torchvision.ops.misc.FrozenBatchNorm2d`` (same buffers, eps and arithmetic)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        return x * scale + (b - rm * scale)


class ConvNormAct(nn.Sequential):
    """``Conv2d [-> norm] [-> activation]`` (torchvision's ``Conv2dNormActivation``): keys
    ``0.weight`` (``0.bias`` without a norm), ``1.*`` for the norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        groups: int = 1,
        norm: Norm | None = None,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
        padding: int | None = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=norm is None,
            )
        ]
        if norm is not None:
            layers.append(norm(out_channels))
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def _norm(kind: str, *, batchnorm: Norm) -> Norm:
    if kind == "bn":
        return batchnorm
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "group":
        return partial(nn.GroupNorm, 32)
    raise ConfigError(f"backbone norm must be one of bn, frozen_bn, group, got {kind!r}")


# ----------------------------------------------------------------------- MobileNetV3
class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` with ReLU and a hard sigmoid (MobileNetV3)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    """MobileNetV3 block (torchvision's ``InvertedResidual``, keys ``block.*``)."""

    def __init__(
        self,
        in_ch: int,
        kernel: int,
        expanded: int,
        out_ch: int,
        use_se: bool,
        hardswish: bool,
        stride: int,
        norm: Norm,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_ch == out_ch
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvNormAct(in_ch, expanded, 1, norm=norm, activation=act))
        layers.append(
            ConvNormAct(
                expanded, expanded, kernel, stride, groups=expanded, norm=norm, activation=act
            )
        )
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(ConvNormAct(expanded, out_ch, 1, norm=norm, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_ch
        self._is_cn = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


# (in, kernel, expanded, out, SE, hard-swish, stride) of torchvision's _mobilenet_v3_conf
_MOBILENET_V3: dict[str, list[tuple[int, int, int, int, bool, bool, int]]] = {
    "mobilenet_v3_large": [
        (16, 3, 16, 16, False, False, 1),
        (16, 3, 64, 24, False, False, 2),
        (24, 3, 72, 24, False, False, 1),
        (24, 5, 72, 40, True, False, 2),
        (40, 5, 120, 40, True, False, 1),
        (40, 5, 120, 40, True, False, 1),
        (40, 3, 240, 80, False, True, 2),
        (80, 3, 200, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 480, 112, True, True, 1),
        (112, 3, 672, 112, True, True, 1),
        (112, 5, 672, 160, True, True, 2),
        (160, 5, 960, 160, True, True, 1),
        (160, 5, 960, 160, True, True, 1),
    ],
    "mobilenet_v3_small": [
        (16, 3, 16, 16, True, False, 2),
        (16, 3, 72, 24, False, False, 2),
        (24, 3, 88, 24, False, False, 1),
        (24, 5, 96, 40, True, True, 2),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 120, 48, True, True, 1),
        (48, 5, 144, 48, True, True, 1),
        (48, 5, 288, 96, True, True, 2),
        (96, 5, 576, 96, True, True, 1),
        (96, 5, 576, 96, True, True, 1),
    ],
}


def _mobilenet_body(name: str, norm_kind: str) -> tuple[nn.Module, list[int]]:
    """``features`` of MobileNetV3 as an :class:`IntermediateBody` returning the last block
    of every stride (4, 8, 16, 32), like ``detector_parts.mobilenet_fpn_backbone``."""
    norm = _norm(norm_kind, batchnorm=partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))
    setting = _MOBILENET_V3[name]
    layers: list[nn.Module] = [
        ConvNormAct(3, setting[0][0], 3, 2, norm=norm, activation=nn.Hardswish)
    ]
    layers += [InvertedResidual(*row, norm=norm) for row in setting]
    last = setting[-1][3]
    layers.append(ConvNormAct(last, 6 * last, 1, norm=norm, activation=nn.Hardswish))
    stages = [0] + [i for i, b in enumerate(layers) if getattr(b, "_is_cn", False)]
    stages.append(len(layers) - 1)
    ends = [stages[2] - 1, stages[3] - 1, stages[4] - 1, len(layers) - 1]
    channels = [int(layers[i].out_channels) for i in ends]  # type: ignore[arg-type]
    named = OrderedDict((str(i), m) for i, m in enumerate(layers))
    return IntermediateBody(named, {str(i): str(lvl) for lvl, i in enumerate(ends)}), channels


# ---------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, norm: Norm
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, norm: Norm
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


_RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def _resnet_body(name: str, norm_kind: str) -> tuple[nn.Module, list[int]]:
    """torchvision's ResNet up to ``layer4`` returning layer1..layer4 (keys ``conv1``,
    ``bn1``, ``layer1.0.conv1``...), as ``detector_parts.resnet_fpn_backbone``."""
    if name not in _RESNETS:
        raise ConfigError(f"not a supported ResNet: {name!r}")
    block, counts = _RESNETS[name]
    norm = _norm(norm_kind, batchnorm=nn.BatchNorm2d)
    modules: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        bn1=norm(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, 1),
    )
    inplanes = 64
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                norm(planes * block.expansion),
            )
        blocks: list[nn.Module] = [block(inplanes, planes, stride, downsample, norm)]
        inplanes = planes * block.expansion
        blocks += [block(inplanes, planes, 1, None, norm) for _ in range(1, count)]
        modules[f"layer{i + 1}"] = nn.Sequential(*blocks)
    channels = [64 * block.expansion * 2**i for i in range(4)]
    return IntermediateBody(modules, {f"layer{i + 1}": str(i) for i in range(4)}), channels


# ------------------------------------------------------------------------------ FPN
class IntermediateBody(nn.ModuleDict):
    """Runs its children in order and returns the outputs of ``return_layers`` (as
    torchvision's ``IntermediateLayerGetter``)."""

    def __init__(self, modules: OrderedDict[str, nn.Module], return_layers: dict[str, str]):
        super().__init__(modules)
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class FeaturePyramid(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` (keys
    ``inner_blocks.i.0.*``, ``layer_blocks.i.0.*``)."""

    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, padding=0, activation=None) for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, activation=None) for _ in in_channels_list
        )

    def get_result_from_inner_blocks(self, x: Tensor, idx: int) -> Tensor:
        return self.inner_blocks[idx](x)

    def get_result_from_layer_blocks(self, x: Tensor, idx: int) -> Tensor:
        return self.layer_blocks[idx](x)

    def top_down(self, feats: list[Tensor]) -> Tensor:
        """The finest lateral + top-down sum (before its 3x3 output conv)."""
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            last_inner = lateral + F.interpolate(
                last_inner, size=lateral.shape[-2:], mode="nearest"
            )
        return last_inner

    def forward(self, x: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        names.append("pool")
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return OrderedDict(zip(names, results, strict=True))


class LeanBackboneWithFPN(nn.Module):
    """``body`` + ``fpn`` (torchvision's ``BackboneWithFPN`` layout).

    Shapes:
        ``forward([B, 3, H, W]) -> {"0".."3", "pool"}`` (strides 4..64);
        :meth:`finest_level` ``-> [B, C, H/4, W/4]`` (level "0" alone).
    """

    def __init__(self, body: nn.Module, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramid(in_channels_list, out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))

    def finest_level(self, x: Tensor) -> Tensor:
        """``forward(x)["0"]`` without the coarser levels' output convs."""
        return self.fpn.get_result_from_layer_blocks(
            self.fpn.top_down(list(self.body(x).values())), 0
        )


def build_lean_backbone(config: DetectorConfig) -> LeanBackboneWithFPN:
    """The detector backbone + FPN of ``config`` (same keys as ``build_backbone``'s),
    uninitialised in spirit: build it on the meta device and load weights into it."""
    norm = config.backbone_norm
    if norm == "auto":
        norm = "frozen_bn" if config.backbone_weights else "bn"
    if config.backbone.startswith("mobilenet_v3"):
        if config.backbone not in _MOBILENET_V3:
            raise ConfigError(f"not a supported MobileNetV3: {config.backbone!r}")
        body, channels = _mobilenet_body(config.backbone, norm)
    elif config.backbone.startswith("resnet"):
        body, channels = _resnet_body(config.backbone, norm)
    else:
        raise ConfigError(f"unsupported detector backbone {config.backbone!r}")
    return LeanBackboneWithFPN(body, channels, config.fpn_channels)
