"""The typed detection-evaluation config: :class:`DetectConfig` and its sections.

Every default lives here once and equals ``configs/detect_cpu.yaml`` (a test checks that
they agree). :meth:`DetectConfig.from_dict` refuses unknown keys, naming them and the
known ones, and converts YAML values to the field types; :meth:`DetectConfig.to_dict`
gives the plain dict saved beside a trained detector.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from moefusion.devices import parse_device, resolve_device
from moefusion.errors import ConfigError
from moefusion.models.config import DetectorConfig

__all__ = [
    "DataConfig",
    "DetectConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "check_classes",
    "resolve_device",
]

#: ResNets the Table 3 detector can be built on (``weights=None``; optional local weights).
RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
#: ``model.norm`` values -> the names of :func:`moefusion.models.detector_parts.norm_layer`.
NORM_KINDS: dict[str, str] = {"batch": "bn", "group": "group", "frozen": "frozen_bn"}
FPN_LEVELS = 5  # P2..P5 from layer1..layer4 plus a max-pooled P6


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class names stripped; refuses empty, blank or (case-insensitively) repeated names."""
    if isinstance(classes, str):
        raise ConfigError(f"classes must be a list of names, got {classes!r}")
    out = [str(c).strip() for c in classes]
    if not out or any(not c for c in out) or len({c.lower() for c in out}) != len(out):
        raise ConfigError(f"classes must be distinct, non-empty names, got {list(classes)}")
    return out


# ----------------------------------------------------------------------- conversion


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (int, float, str, X | None, tuple[X, ...], dict)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} needs {len(args)} values, got {list(value)}")
        return tuple(
            _convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is str:
        if value is None or isinstance(value, Mapping | list | tuple):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    if hint in (int, float):
        if value is None or isinstance(value, bool | Mapping | list | tuple):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key} must be a number, got {value!r}") from exc
    raise TypeError(f"unsupported config field type {hint!r} for {key}")  # programming error


class _Section:
    """Shared ``from_dict`` / ``to_dict`` of the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "") -> Self:
        """Build from a (possibly partial) mapping; unknown keys raise :class:`ConfigError`."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"detect config {where or 'root'} must be a mapping, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in data if k not in fields)
        if unknown:
            prefix = f"{where}." if where else ""
            raise ConfigError(
                f"unknown detect config key(s): {', '.join(prefix + k for k in unknown)}; "
                f"known{' in ' + where if where else ''}: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, value in data.items():
            key = f"{where}.{name}" if where else name
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, _Section):
                values[name] = hint.from_dict(value, key)
            else:
                values[name] = _convert(value, hint, key)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of built-in types (tuples become lists): JSON- and YAML-friendly."""

        def plain(v: Any) -> Any:
            if isinstance(v, _Section):
                return v.to_dict()
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return dict(v)
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ------------------------------------------------------------------------- sections


@dataclass
class DataConfig(_Section):
    """Which boxes count and how images are sized and augmented.

    Attributes:
        classes: class names in table order.
        class_map: label name -> class name; None: the data layer's synonyms.
        label_set: MSRS-style label subfolder; None: the data layer's default (infrared).
        image_size: long side in pixels, training and testing.
        scale_jitter: training long side drawn from ``image_size * [lo, hi]``; None: none.
        hflip: probability of a horizontal flip in training.
        gamma_jitter: training gamma in ``[exp(-g), exp(g)]``; 0 disables.
        crop: random square training crop (pixels) after scaling; None: whole images.
    """

    classes: tuple[str, ...] = ("person", "car", "bicycle")
    class_map: dict[str, str] | None = None
    label_set: str | None = None
    image_size: int = 512
    scale_jitter: tuple[float, float] | None = (0.8, 1.2)
    hflip: float = 0.5
    gamma_jitter: float = 0.4
    crop: int | None = 384

    def __post_init__(self) -> None:
        self.classes = tuple(check_classes(self.classes))
        _require(self.image_size >= 1, f"data.image_size must be >= 1, got {self.image_size}")


@dataclass
class ModelConfig(_Section):
    """Faster R-CNN with a ResNet-FPN backbone (P2-P6), built with ``weights=None``.

    ``box_representation`` is the width of the two-layer box head; ``image_mean`` and
    ``image_std`` normalise the gray inputs (one value for the three repeated channels).
    """

    backbone: str = "resnet18"
    norm: str = "batch"
    backbone_weights: str | None = None
    fpn_channels: int = 64
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    image_mean: float = 0.45
    image_std: float = 0.25
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    box_batch_size_per_image: int = 256
    box_representation: int = 256
    box_score_thresh: float = 0.001
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        _require(
            self.backbone in RESNETS,
            f"model.backbone must be one of {', '.join(RESNETS)}, got {self.backbone!r}",
        )
        _require(
            self.norm in NORM_KINDS,
            f"model.norm must be batch, group or frozen, got {self.norm!r}",
        )
        _require(
            len(self.anchor_sizes) == FPN_LEVELS,
            f"model.anchor_sizes needs {FPN_LEVELS} entries (P2..P6), got {list(self.anchor_sizes)}",
        )

    @property
    def norm_kind(self) -> str:
        """``norm`` in the names of :func:`moefusion.models.detector_parts.norm_layer`."""
        return NORM_KINDS[self.norm]

    def heads_config(self, num_classes: int) -> DetectorConfig:
        """The RPN and RoI head settings as a :class:`DetectorConfig` for the shared builders.

        Settings not in this section (IoU thresholds, sampling fractions, NMS, RoIAlign)
        keep :class:`DetectorConfig`'s defaults, which are torchvision's Faster R-CNN
        defaults. The backbone is built from this section directly (``norm`` may be
        ``group``, which the auxiliary detectors do not offer).
        """
        return DetectorConfig(
            backbone=self.backbone,
            fpn_channels=self.fpn_channels,
            num_classes=num_classes,
            trainable_backbone_layers=5,
            anchor_sizes=self.anchor_sizes,
            aspect_ratios=self.aspect_ratios,
            rpn_pre_nms_top_n_train=self.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=self.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=self.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=self.rpn_post_nms_top_n_test,
            representation_size=self.box_representation,
            box_batch_size_per_image=self.box_batch_size_per_image,
            box_score_thresh=self.box_score_thresh,
            box_detections_per_img=self.box_detections_per_img,
        )


@dataclass
class TrainConfig(_Section):
    """Optimiser and schedule.

    Attributes:
        epochs: passes over the training images.
        max_iters: cap on iterations (tests, quick checks); None: no cap.
        optimizer: ``sgd`` (with ``momentum``) or ``adamw``.
        schedule: ``cosine``, or ``step`` (learning rate times ``gamma`` at every epoch
            in ``milestones``); both after ``warmup_iters`` linear warm-up iterations.
        grad_clip: gradient-norm clipping; None or 0: none.
    """

    epochs: int = 16
    max_iters: int | None = None
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 1.0e-3
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    warmup_iters: int = 50
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_clip: float | None = 10.0

    def __post_init__(self) -> None:
        self.optimizer = self.optimizer.lower()
        _require(
            self.optimizer in ("sgd", "adamw"),
            f"train.optimizer must be sgd or adamw, got {self.optimizer!r}",
        )
        _require(
            self.schedule in ("cosine", "step"),
            f"train.schedule must be cosine or step, got {self.schedule!r}",
        )
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvalConfig(_Section):
    """Testing: images per batch and the IoU threshold of the AP."""

    batch_size: int = 4
    iou_threshold: float = 0.5


@dataclass
class DetectConfig(_Section):
    """A detection-evaluation run (``configs/detect_*.yaml``).

    Attributes:
        seed: seeds model initialisation, order, augmentation and RPN/RoI sampling.
        device: ``cpu``, ``cuda[:N]``, ``mps`` or ``auto`` (:mod:`moefusion.devices`;
            whether it exists is checked when the detector is put on it).
        threads: torch CPU threads for the run; None: torch's default.
    """

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.device = parse_device(self.device, ConfigError)

    @classmethod
    def coerce(cls, config: DetectConfig | Mapping[str, Any]) -> DetectConfig:
        """``config`` itself, or a :class:`DetectConfig` built from a mapping."""
        return config if isinstance(config, DetectConfig) else cls.from_dict(config)

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes)
