"""The auxiliary network (paper sections 3.1-3.2): two Faster R-CNNs that produce ``Att``.

One detector per modality (visible, infrared), assembled from torchvision's detection
parts: backbone + FPN (:class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`,
5 levels at strides 4, 8, 16, 32, 64), :class:`AnchorGenerator`,
:class:`RegionProposalNetwork`, :class:`RoIHeads` with :class:`MultiScaleRoIAlign`,
:class:`TwoMLPHead` and :class:`FastRCNNPredictor`. Those parts are built by
:mod:`moefusion.models.detector_parts`; this module holds the paper's own modules.

Between FPN and heads, at every FPN level ``l`` (one module per level, so that every
level keeps its own BatchNorm statistics):

1. cross-modal mixing: ``m = ReLU(Conv1x1_{2C->C}(concat(f_vis, f_ir)))`` is added to
   both modalities' features (:class:`CrossModalMixing`);
2. per modality, spatial attention ``a = Sigmoid(BN(Conv1x1_{C/2->1}(ReLU(BN(Conv1x1_{C->C/2}(f))))))``
   (no conv bias, :class:`SpatialAttention`), and the heads see ``f + f * a``.

The map passed to the fusion network is built at the stride-4 level from
``a_vis`` and ``a_ir`` (:class:`AttentionFuse`: element-wise max as the release, or the
paper's two conv layers), upsampled x4 bilinearly and cropped to the input size.

Inputs are 1-channel images in [0, 1]; they are repeated to 3 channels, normalised with
the ImageNet mean/std and zero-padded (bottom/right, after normalisation, as
torchvision's batching) to a multiple of 32. There is no resizing, so boxes are in input
pixels. At inference (no targets) only what the stride-4 map needs is computed: the
backbone, the FPN's top-down path and its finest output conv, the level-0 mixing and
attention modules; RPN and RoI heads are not run.

torchvision is imported only to build its backbones or the heads: a model loaded from a
weights file uses the lean backbones of :mod:`moefusion.models.backbones` (same keys,
same outputs), so inference never pays for importing torchvision.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moefusion.models.backbones import LEVELS, build_lean_backbone
from moefusion.models.config import DetectorConfig

# The torchvision plumbing (backbones, weight loading, heads) lives in detector_parts,
# imported only when needed: importing torchvision costs seconds, and inference from a
# weights file does not need it (lean backbones, moefusion.models.backbones). The package
# `moefusion.models` re-exports its builders.


__all__ = [
    "HEAD_PREFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEVELS",
    "MODALITIES",
    "SIZE_DIVISOR",
    "AttentionDetectors",
    "AttentionFuse",
    "CrossModalMixing",
    "SpatialAttention",
    "Target",
    "prepare_target",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inputs are padded to a multiple of this (the coarsest backbone stride).
SIZE_DIVISOR = 32
MODALITIES: tuple[str, ...] = ("vis", "ir")
#: state_dict prefixes of the training-only parts (left out of released weights).
HEAD_PREFIXES: tuple[str, ...] = ("rpn.", "roi_heads.")

Target = Mapping[str, Tensor] | None


# --------------------------------------------------------------------------- attention
class CrossModalMixing(nn.Module):
    """``ReLU(Conv1x1_{2C->C}(concat(f_vis, f_ir)))``, the term added to both modalities.

    Shapes:
        ``(f_vis [B, C, h, w], f_ir [B, C, h, w]) -> [B, C, h, w]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, f_vis: Tensor, f_ir: Tensor) -> Tensor:
        return F.relu(self.conv(torch.cat([f_vis, f_ir], dim=1)))


class SpatialAttention(nn.Sequential):
    """Conv1x1(C->C/2, no bias)-BN-ReLU-Conv1x1(C/2->1, no bias)-BN-Sigmoid.

    Shapes:
        ``[B, C, h, w] -> [B, 1, h, w]`` in (0, 1).
    """

    def __init__(self, channels: int) -> None:
        hidden = max(channels // 2, 1)
        super().__init__(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )


class AttentionFuse(nn.Module):
    """One attention map from the visible and infrared ones.

    ``"max"`` (release): ``max(a_vis, a_ir)``, no parameters. ``"conv"`` (paper 3.2:
    "concatenated and fed into 2 convolutional layers, the maximum of which output is
    the Att"): Conv3x3(2->hidden)-ReLU-Conv3x3(hidden->2)-Sigmoid, then the max over the
    two output channels (the sigmoid keeps Att in (0, 1) as MoLE's ``1 - Att`` needs).

    Shapes:
        ``(a_vis [B, 1, h, w], a_ir [B, 1, h, w]) -> [B, 1, h, w]``.
    """

    def __init__(self, mode: str = "max", hidden: int = 8) -> None:
        super().__init__()
        if mode not in ("max", "conv"):
            raise ValueError(f"attention fuse mode must be 'max' or 'conv', got {mode!r}")
        self.mode = mode
        self.convs: nn.Module | None = None
        if mode == "conv":
            self.convs = nn.Sequential(
                nn.Conv2d(2, hidden, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, 2, 3, padding=1),
                nn.Sigmoid(),
            )

    def forward(self, a_vis: Tensor, a_ir: Tensor) -> Tensor:
        if self.convs is None:
            return torch.maximum(a_vis, a_ir)
        return self.convs(torch.cat([a_vis, a_ir], dim=1)).amax(dim=1, keepdim=True)


def _finest_level(backbone: nn.Module, x: Tensor) -> Tensor:
    """The stride-4 FPN level alone, from a lean or a torchvision backbone."""
    finest = getattr(backbone, "finest_level", None)
    if finest is not None:
        return finest(x)
    from moefusion.models.detector_parts import fpn_finest_level

    return fpn_finest_level(backbone, x)


@contextlib.contextmanager
def _training_heads(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run RPN/RoI heads in training mode (loss computation) whatever the model's mode.

    The heads hold only convs and linears (no BN/dropout), so the flag only switches
    them to target sampling and losses; the backbones keep their own mode.
    """
    previous = [m.training for m in modules]
    for m in modules:
        m.train(True)
    try:
        yield
    finally:
        for m, mode in zip(modules, previous, strict=True):
            m.train(mode)


def prepare_target(
    target: Mapping[str, Tensor], num_classes: int, device: torch.device
) -> dict[str, Tensor]:
    """``{boxes [K,4] xyxy pixels, labels [K] 0-based}`` -> torchvision's form (labels + 1).

    Boxes with non-positive width or height are dropped (they would make the box
    regression targets infinite); labels outside ``[0, num_classes)`` raise ValueError.
    """
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=device).reshape(-1)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.tolist()}")
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "labels": labels[keep] + 1}


class AttentionDetectors(nn.Module):
    """Visible and infrared Faster R-CNNs with cross-modal mixing and spatial attention.

    Args:
        config: detector settings.
        detach: detach the per-modality attention maps before they are fused, so the
            fusion loss never trains the detectors (the release). With
            ``attention_fuse="conv"`` the fuse convs are still trained by the fusion loss.
        with_heads: build the RPN and RoI heads (needed for detection losses and
            :meth:`detect`; inference-only models can leave them out).
        lean_backbones: build the backbones + FPNs from plain torch layers
            (:mod:`moefusion.models.backbones`: same keys and outputs, torchvision is
            not imported) instead of torchvision's. They are not initialised like
            torchvision's: for models whose weights are loaded (``load_weights``), not
            for training from scratch. Needs ``with_heads=False``.

    Submodules: ``backbones[m]`` (backbone + FPN), ``cross[level]``, ``spatial[m][level]``,
    ``fuse``; heads ``rpn[m]`` and ``roi_heads[m]``, ``m`` in ``("vis", "ir")``.
    """

    def __init__(
        self,
        config: DetectorConfig,
        *,
        detach: bool = True,
        with_heads: bool = True,
        lean_backbones: bool = False,
    ) -> None:
        super().__init__()
        if lean_backbones and with_heads:
            raise ValueError("lean backbones are for inference models (with_heads=False)")
        self.config = config
        self.detach = detach
        channels = config.fpn_channels
        build: Callable[[DetectorConfig], nn.Module] = build_lean_backbone
        if not lean_backbones:
            from moefusion.models.detector_parts import build_backbone

            build = build_backbone
        self.backbones = nn.ModuleDict({m: build(config) for m in MODALITIES})
        self.cross = nn.ModuleDict({lvl: CrossModalMixing(channels) for lvl in LEVELS})
        self.spatial = nn.ModuleDict(
            {
                m: nn.ModuleDict({lvl: SpatialAttention(channels) for lvl in LEVELS})
                for m in MODALITIES
            }
        )
        self.fuse = AttentionFuse(config.attention_fuse)
        self.rpn: nn.ModuleDict | None = None
        self.roi_heads: nn.ModuleDict | None = None
        if with_heads:
            from moefusion.models.detector_parts import build_roi_heads, build_rpn

            self.rpn = nn.ModuleDict({m: build_rpn(config) for m in MODALITIES})
            self.roi_heads = nn.ModuleDict({m: build_roi_heads(config) for m in MODALITIES})
        self.reset_constants()

    def reset_constants(self, device: torch.device | str | None = None) -> None:
        """(Re)create the normalisation constants (non-persistent buffers: a model built
        on the meta device gets them back after its weights are loaded)."""
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def has_heads(self) -> bool:
        return self.rpn is not None and self.roi_heads is not None

    # ------------------------------------------------------------------ helpers
    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> normalised 3-channel ``[B, 3, H32, W32]`` (zero-padded)."""
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"expected a [B, 1, H, W] image, got {tuple(image.shape)}")
        x = (image.expand(-1, 3, -1, -1) - self.mean) / self.std
        height, width = x.shape[-2:]
        pad_h = (-height) % SIZE_DIVISOR
        pad_w = (-width) % SIZE_DIVISOR
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        # channels-last: same results, ~15 % faster backbones on CPU
        return x.contiguous(memory_format=torch.channels_last)

    def _attend(self, modality: str, level: str, feature: Tensor) -> tuple[Tensor, Tensor]:
        att = self.spatial[modality][level](feature)
        return feature + feature * att, att

    def _levels(
        self, x_vis: Tensor, x_ir: Tensor, levels: Sequence[str]
    ) -> tuple[dict[str, OrderedDict[str, Tensor]], dict[str, dict[str, Tensor]]]:
        """Attended features and attention maps per modality for ``levels``."""
        if tuple(levels) == ("0",):
            pyramid = {
                m: {"0": _finest_level(self.backbones[m], x)}
                for m, x in (("vis", x_vis), ("ir", x_ir))
            }
        else:
            pyramid = {m: self.backbones[m](x) for m, x in (("vis", x_vis), ("ir", x_ir))}
        attended: dict[str, OrderedDict[str, Tensor]] = {m: OrderedDict() for m in MODALITIES}
        maps: dict[str, dict[str, Tensor]] = {m: {} for m in MODALITIES}
        for level in levels:
            f_vis, f_ir = pyramid["vis"][level], pyramid["ir"][level]
            mix = self.cross[level](f_vis, f_ir)
            for m, f in (("vis", f_vis + mix), ("ir", f_ir + mix)):
                attended[m][level], maps[m][level] = self._attend(m, level, f)
        return attended, maps

    def _fused_map(self, maps: dict[str, dict[str, Tensor]], height: int, width: int) -> Tensor:
        a_vis, a_ir = maps["vis"]["0"], maps["ir"]["0"]
        if self.detach:
            a_vis, a_ir = a_vis.detach(), a_ir.detach()
        att = self.fuse(a_vis, a_ir)
        att = F.interpolate(att, scale_factor=4.0, mode="bilinear", align_corners=False)
        return att[..., :height, :width]

    @staticmethod
    def _check_pair(ir: Tensor, vi: Tensor) -> None:
        if ir.shape != vi.shape or ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(
                f"ir and vi must both be [B, 1, H, W]; got {tuple(ir.shape)} and {tuple(vi.shape)}"
            )

    # ------------------------------------------------------------------ API
    def forward(
        self, ir: Tensor, vi: Tensor, targets: Sequence[Target] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Attention map and, for labelled samples, both detectors' losses.

        Args:
            ir, vi: ``[B, 1, H, W]`` images in [0, 1].
            targets: ``None`` (attention only: RPN/RoI heads are not run) or a list of
                B entries, each ``None`` (unlabelled) or ``{"boxes": [K, 4] xyxy in input
                pixels, "labels": [K] 0-based}``. Both detectors train on the same boxes.

        Returns:
            ``(attention [B, 1, H, W] in (0, 1), losses)``: losses keyed
            ``vis_loss_objectness``, ``vis_loss_rpn_box_reg``, ``vis_loss_classifier``,
            ``vis_loss_box_reg`` and the same with ``ir_``; computed on the labelled
            samples only, in any module mode; empty when no sample is labelled.
        """
        self._check_pair(ir, vi)
        batch, _, height, width = ir.shape
        if targets is not None and len(targets) != batch:
            raise ValueError(f"targets has {len(targets)} entries for a batch of {batch}")
        labelled = [i for i, t in enumerate(targets or []) if t is not None]
        if labelled and not self.has_heads:
            raise RuntimeError("detection losses need the RPN/RoI heads (built with_heads=False)")

        x_vis, x_ir = self.preprocess(vi), self.preprocess(ir)
        levels = LEVELS if labelled else ("0",)
        attended, maps = self._levels(x_vis, x_ir, levels)
        attention = self._fused_map(maps, height, width)
        if not labelled:
            return attention, {}

        assert targets is not None and self.rpn is not None and self.roi_heads is not None
        index = torch.tensor(labelled, device=ir.device)
        subset = len(labelled) < batch

        def pick(t: Tensor) -> Tensor:
            return t.index_select(0, index) if subset else t

        from torchvision.models.detection.image_list import ImageList

        images = ImageList(pick(x_vis), [(height, width)] * len(labelled))
        prepared = [
            prepare_target(targets[i], self.config.num_classes, ir.device) for i in labelled
        ]  # type: ignore[arg-type]
        losses: dict[str, Tensor] = {}
        for m in MODALITIES:
            features = OrderedDict((k, pick(v)) for k, v in attended[m].items())
            with _training_heads([self.rpn[m], self.roi_heads[m]]):
                proposals, rpn_losses = self.rpn[m](images, features, prepared)
                _, roi_losses = self.roi_heads[m](features, proposals, images.image_sizes, prepared)
            losses.update({f"{m}_{k}": v for k, v in {**rpn_losses, **roi_losses}.items()})
        return attention, losses

    @torch.no_grad()
    def detect(self, ir: Tensor, vi: Tensor) -> list[dict[str, dict[str, Tensor]]]:
        """Both detectors' detections, computed in eval mode (the mode is restored after).

        Returns:
            one entry per sample: ``{"vis": det, "ir": det}`` with ``det = {"boxes": [D, 4]
            xyxy input pixels, "labels": [D] 0-based, "scores": [D]}``.
        """
        if not self.has_heads:
            raise RuntimeError("detect() needs the RPN/RoI heads (built with_heads=False)")
        assert self.rpn is not None and self.roi_heads is not None
        self._check_pair(ir, vi)
        height, width = ir.shape[-2:]
        from torchvision.models.detection.image_list import ImageList

        was_training = self.training
        self.eval()
        try:
            x_vis, x_ir = self.preprocess(vi), self.preprocess(ir)
            attended, _ = self._levels(x_vis, x_ir, LEVELS)
            images = ImageList(x_vis, [(height, width)] * ir.shape[0])
            per_modality = {}
            for m in MODALITIES:
                proposals, _ = self.rpn[m](images, attended[m])
                dets, _ = self.roi_heads[m](attended[m], proposals, images.image_sizes)
                per_modality[m] = [
                    {"boxes": d["boxes"], "labels": d["labels"] - 1, "scores": d["scores"]}
                    for d in dets
                ]
        finally:
            self.train(was_training)
        return [{m: per_modality[m][i] for m in MODALITIES} for i in range(ir.shape[0])]

    def attention_state_dict(self) -> dict[str, Tensor]:
        """State of the inference part only (backbones, FPNs, mixing, attention, fuse)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(HEAD_PREFIXES)}
