"""Configuration dataclasses of the MoE-Fusion network and its auxiliary detectors.

Both are plain dataclasses so that they round-trip through YAML: :meth:`to_dict` gives
nested dicts of built-in types (tuples become lists) and :meth:`from_dict` rebuilds
them, rejecting unknown keys with a :class:`~moefusion.errors.ConfigError` that names
them. Values are validated on construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from moefusion.errors import ConfigError

#: Backbones the auxiliary detectors can be built on.
BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)
#: Ablation variants of paper section 4.5 (see ``docs/architecture.md``).
VARIANTS: tuple[str, ...] = ("full", "no_mole", "no_moge", "att_local")
#: How the selected experts' outputs are combined.
COMBINE_MODES: tuple[str, ...] = ("linear", "log")
#: How the visible and infrared attention maps become one map.
ATTENTION_FUSE_MODES: tuple[str, ...] = ("max", "conv")
#: Normalisation layers of the detector backbones.
BACKBONE_NORMS: tuple[str, ...] = ("auto", "frozen_bn", "bn")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _as_tuple(value: Any, name: str, kind: type) -> tuple:
    """Lists from YAML become tuples; scalars and strings are rejected."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {value!r}")
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a list of {kind.__name__}, got {value!r}") from exc


#: The mixtures a gate setting can name: the two MoLE gates, the MoGE gate.
MIXTURES = ("mole", "moge")
#: Balancing losses a gate can report (:meth:`moefusion.models.GateOutput.balancing_loss`).
BALANCE_LOSSES = ("cv2", "switch", "bias")
#: What standardised gate inputs are scaled to (deviations 28 and 32).
GATE_INPUT_SCALES = ("variance", "norm")


def _mixture_names(value: Any, name: str) -> tuple[str, ...]:
    """``true`` (every mixture), ``false`` (none) or a list of :data:`MIXTURES`."""
    if isinstance(value, bool):
        return MIXTURES if value else ()
    names = _as_tuple(value, name, str)
    unknown = [n for n in names if n not in MIXTURES]
    _check(not unknown, f"{name}: unknown mixture(s) {unknown}; use {', '.join(MIXTURES)}")
    return tuple(n for n in MIXTURES if n in names)


def _mixture_kinds(value: Any, name: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """One kind for every mixture (``"switch"``) or ``{mixture: kind}`` (missing: the
    first of ``allowed``, the default)."""
    if isinstance(value, str):
        value = dict.fromkeys(MIXTURES, value)
    _check(isinstance(value, Mapping), f"{name} must be a kind or a mapping, got {value!r}")
    unknown = [k for k in value if k not in MIXTURES]
    _check(not unknown, f"{name}: unknown mixture(s) {unknown}; use {', '.join(MIXTURES)}")
    kinds = {m: str(value.get(m, allowed[0])) for m in MIXTURES}
    bad = {m: k for m, k in kinds.items() if k not in allowed}
    _check(not bad, f"{name} must be one of {', '.join(allowed)}, got {bad}")
    return kinds


def _mixture_weights(value: Any, name: str) -> dict[str, float]:
    """One weight for every mixture (``0.001``) or ``{mixture: weight}`` (missing: 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = dict.fromkeys(MIXTURES, value)
    _check(isinstance(value, Mapping), f"{name} must be a number or a mapping, got {value!r}")
    unknown = [k for k in value if k not in MIXTURES]
    _check(not unknown, f"{name}: unknown mixture(s) {unknown}; use {', '.join(MIXTURES)}")
    try:
        weights = {m: float(value.get(m, 0.0)) for m in MIXTURES}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must hold numbers, got {dict(value)}") from exc
    bad = {m: w for m, w in weights.items() if not w >= 0}
    _check(not bad, f"{name} must be >= 0, got {bad}")
    return weights


def _to_builtin(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_builtin(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    return value


def _reject_unknown(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        prefix = f"{where}." if where else ""
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown model config key(s): {names}")


@dataclass
class DetectorConfig:
    """The two auxiliary Faster R-CNNs (visible and infrared) that produce the attention map.

    Defaults follow the authors' release (ResNet-50 + 256-channel FPN, anchors of scale 8
    at strides 4..64, 256 RPN samples, 512 RoI samples at 25 % positives; test score
    0.05, NMS 0.5, 100 detections).

    Attributes:
        backbone: one of :data:`BACKBONES`.
        fpn_channels: FPN width C (every level).
        num_classes: object classes, background excluded.
        backbone_weights: optional path to a local ImageNet classification state_dict
            (``.pth``/``.pt`` or ``.safetensors``) of the torchvision model named by
            ``backbone``; nothing is ever downloaded.
        trainable_backbone_layers: number of trainable backbone stages counted from
            the last, torchvision's convention (resnet: 0..5, 3 = stem + layer1 frozen,
            the release's ``frozen_stages=1``; mobilenet: 0..6).
        backbone_norm: ``"frozen_bn"`` (for ImageNet weights), ``"bn"`` (trainable
            BatchNorm, for training from scratch) or ``"auto"`` (frozen when
            ``backbone_weights`` is given, else ``bn``; torchvision's rule).
        anchor_sizes: one anchor size per FPN level (strides 4, 8, 16, 32, 64).
        aspect_ratios: anchor aspect ratios, the same at every level.
        attention_fuse: ``"max"`` (release: element-wise max of the two stride-4 maps)
            or ``"conv"`` (paper: two conv layers on the concatenated maps, then max).
    """

    backbone: str = "resnet50"
    fpn_channels: int = 256
    num_classes: int = 3
    backbone_weights: str | None = None
    trainable_backbone_layers: int = 3
    backbone_norm: str = "auto"
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    representation_size: int = 1024
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    attention_fuse: str = "max"

    def __post_init__(self) -> None:
        self.anchor_sizes = _as_tuple(self.anchor_sizes, "detector.anchor_sizes", int)
        self.aspect_ratios = _as_tuple(self.aspect_ratios, "detector.aspect_ratios", float)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value."""
        _check(
            self.backbone in BACKBONES,
            f"detector.backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}",
        )
        _check(
            self.attention_fuse in ATTENTION_FUSE_MODES,
            f"detector.attention_fuse must be one of {ATTENTION_FUSE_MODES}; "
            f"got {self.attention_fuse!r}",
        )
        _check(
            self.backbone_norm in BACKBONE_NORMS,
            f"detector.backbone_norm must be one of {BACKBONE_NORMS}; got {self.backbone_norm!r}",
        )
        _check(
            self.fpn_channels >= 2, f"detector.fpn_channels must be >= 2, got {self.fpn_channels}"
        )
        _check(self.num_classes >= 1, f"detector.num_classes must be >= 1, got {self.num_classes}")
        max_layers = 5 if self.backbone.startswith("resnet") else 6
        _check(
            0 <= self.trainable_backbone_layers <= max_layers,
            f"detector.trainable_backbone_layers must be in [0, {max_layers}] for "
            f"{self.backbone}, got {self.trainable_backbone_layers}",
        )
        _check(
            len(self.anchor_sizes) == 5,
            "detector.anchor_sizes needs one size per FPN level (5: strides 4..64), "
            f"got {list(self.anchor_sizes)}",
        )
        _check(len(self.aspect_ratios) >= 1, "detector.aspect_ratios must not be empty")
        _check(
            all(a > 0 for a in self.anchor_sizes) and all(r > 0 for r in self.aspect_ratios),
            "detector anchor sizes and aspect ratios must be positive",
        )
        for name in ("rpn_positive_fraction", "box_positive_fraction"):
            value = getattr(self, name)
            _check(0.0 < value <= 1.0, f"detector.{name} must be in (0, 1], got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of built-in types (YAML-friendly)."""
        return _to_builtin(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, _where: str = "detector") -> Self:
        """Build from a (possibly partial) dict; unknown keys raise :class:`ConfigError`."""
        data = dict(data or {})
        _reject_unknown(cls, data, _where)
        try:
            return cls(**data)
        except TypeError as exc:  # wrong value types that the dataclass itself rejects
            raise ConfigError(f"invalid {_where} config: {exc}") from exc


@dataclass
class MoEFusionConfig:
    """The fusion network (encoders, MoLE, MoGE) plus its auxiliary detectors.

    Attributes:
        num_experts: N experts per mixture (MoLE foreground, MoLE background, MoGE).
        top_k: K experts active per sample.
        mole_top_k: K of the two MoLE gates when it differs from ``top_k`` (``None``:
            ``top_k``, the paper). More than two of four local experts makes a pair
            rarely take its local features from one modality alone (deviation 34).
        variant: ``"full"`` or an ablation of paper section 4.5: ``"no_mole"``,
            ``"no_moge"``, ``"att_local"``.
        encoder_growth: DenseFuse encoder width (stem output and dense growth rate);
            the dense output has ``4 * encoder_growth`` channels.
        local_hidden: hidden width of a local expert.
        decoder_channels: hidden widths of a global expert (the decoder); the last
            layer maps to 1 channel.
        gate_grid: (H_g, W_g) grid every gate input is average-pooled to, so the gate
            works at any image size. (15, 20) = 480x640 / 32.
        noisy_gating: the mixtures (``"mole"``, ``"moge"``; ``true``: both, the paper
            and the release; ``false``: none) whose gates add Shazeer et al.'s trainable
            Gaussian noise to their logits in training. Noise-free MoLE gates are
            deviation 33.
        noise_epsilon: minimum noise standard deviation.
        gate_input_norm: the mixtures (``"mole"``, ``"moge"``; ``true``: both) whose
            gates standardise their pooled input per sample before their weights
            (deviation 28; none in the paper and the release).
        gate_input_scale: what those gates standardise to: ``"variance"`` (unit variance
            per value, deviation 28) or ``"norm"`` (unit L2 norm, deviation 32), for
            every mixture or per mixture (``{mole: variance, moge: norm}``).
        balance_loss: the load-balancing loss, ``"cv2"`` (paper, release: cv^2 of
            importance and load) or ``"switch"`` (the Switch Transformer loss, deviation
            29), or ``"bias"`` (no loss: a per-expert selection bias nudged towards
            balanced loads after every training step, deviation 31), for every mixture or
            per mixture (``{mole: switch, moge: bias}``).
        router_z_weight: coefficient of the router z-loss (ST-MoE; deviation 30, 0 in
            the paper and the release), for every mixture or per mixture (``{moge: 1e-3}``).
        mole_load_weight: coefficient of each MoLE load-balancing term.
        moge_load_weight: coefficient of the MoGE load-balancing term.
        combine: ``"linear"`` (paper eqs. 2 and 4) or ``"log"`` (release: log of the
            gate-weighted sum of exp(expert output)).
        detector: the auxiliary detectors.
        detach_attention: stop the fusion loss from training the detectors (release).
    """

    num_experts: int = 4
    top_k: int = 2
    mole_top_k: int | None = None
    variant: str = "full"
    encoder_growth: int = 16
    local_hidden: int = 8
    decoder_channels: tuple[int, ...] = (64, 32, 16)
    gate_grid: tuple[int, int] = (15, 20)
    noisy_gating: tuple[str, ...] = MIXTURES
    noise_epsilon: float = 0.01
    gate_input_norm: tuple[str, ...] = ()
    gate_input_scale: dict[str, str] = field(
        default_factory=lambda: dict.fromkeys(MIXTURES, "variance")
    )
    balance_loss: dict[str, str] = field(default_factory=lambda: dict.fromkeys(MIXTURES, "cv2"))
    router_z_weight: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MIXTURES, 0.0))
    mole_load_weight: float = 0.01
    moge_load_weight: float = 0.02
    combine: str = "linear"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    detach_attention: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.detector, Mapping):
            self.detector = DetectorConfig.from_dict(self.detector)
        self.decoder_channels = _as_tuple(self.decoder_channels, "decoder_channels", int)
        self.gate_grid = _as_tuple(self.gate_grid, "gate_grid", int)  # type: ignore[assignment]
        self.gate_input_norm = _mixture_names(self.gate_input_norm, "gate_input_norm")
        self.noisy_gating = _mixture_names(self.noisy_gating, "noisy_gating")
        self.balance_loss = _mixture_kinds(self.balance_loss, "balance_loss", BALANCE_LOSSES)
        self.gate_input_scale = _mixture_kinds(
            self.gate_input_scale, "gate_input_scale", GATE_INPUT_SCALES
        )
        self.router_z_weight = _mixture_weights(self.router_z_weight, "router_z_weight")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value."""
        _check(self.num_experts >= 2, f"num_experts must be >= 2, got {self.num_experts}")
        _check(
            1 <= self.top_k <= self.num_experts,
            f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}",
        )
        _check(
            self.mole_top_k is None or 1 <= self.mole_top_k <= self.num_experts,
            f"mole_top_k must be in [1, num_experts={self.num_experts}], got {self.mole_top_k}",
        )
        _check(
            self.variant in VARIANTS,
            f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}",
        )
        _check(
            self.combine in COMBINE_MODES,
            f"combine must be one of {', '.join(COMBINE_MODES)}; got {self.combine!r}",
        )
        _check(self.encoder_growth >= 1, f"encoder_growth must be >= 1, got {self.encoder_growth}")
        _check(self.local_hidden >= 1, f"local_hidden must be >= 1, got {self.local_hidden}")
        _check(
            len(self.decoder_channels) >= 1 and all(c >= 1 for c in self.decoder_channels),
            f"decoder_channels must be positive widths, got {list(self.decoder_channels)}",
        )
        _check(
            len(self.gate_grid) == 2 and all(g >= 1 for g in self.gate_grid),
            f"gate_grid must be two positive ints (H_g, W_g), got {list(self.gate_grid)}",
        )
        _check(self.noise_epsilon >= 0, f"noise_epsilon must be >= 0, got {self.noise_epsilon}")
        _check(
            self.mole_load_weight >= 0 and self.moge_load_weight >= 0,
            "load-balancing weights must be >= 0",
        )
        if not isinstance(self.detector, DetectorConfig):
            raise ConfigError(f"detector must be a mapping, got {self.detector!r}")

    def k_of(self, mixture: str) -> int:
        """Experts a gate of ``mixture`` (``"mole"`` or ``"moge"``) selects per sample."""
        _check(mixture in MIXTURES, f"unknown mixture {mixture!r}; use {', '.join(MIXTURES)}")
        if mixture == "mole" and self.mole_top_k is not None:
            return self.mole_top_k
        return self.top_k

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of built-in types (YAML-friendly)."""
        return _to_builtin(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Self:
        """Build from a (possibly partial, nested) dict; unknown keys raise ConfigError."""
        data = dict(data or {})
        _reject_unknown(cls, data, "")
        if "detector" in data:
            det = data["detector"]
            if det is not None and not isinstance(det, Mapping):
                raise ConfigError(f"detector must be a mapping, got {det!r}")
            data["detector"] = DetectorConfig.from_dict(det)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc
