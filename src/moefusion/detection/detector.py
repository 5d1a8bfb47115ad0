"""The Table 3 detector: building it, and saving / loading a trained one.

A Faster R-CNN assembled from the same torchvision builders as the auxiliary detectors
(:mod:`moefusion.models.detector_parts`): a ResNet-FPN backbone (P2-P6, ``weights=None``,
optional local ImageNet weights), the RPN and the RoI heads. A saved detector is a
``.safetensors`` file plus a same-stem ``.json`` sidecar holding the resolved config,
the classes and the training pairs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from moefusion.atomic import atomic_path, atomic_write_text
from moefusion.detection.config import DetectConfig, ModelConfig, check_classes
from moefusion.errors import ConfigError, MoEFusionError
from moefusion.models.detector_parts import build_roi_heads, build_rpn, resnet_fpn_backbone

__all__ = [
    "DETECTOR_FORMAT",
    "build_detector",
    "detector_config",
    "detector_files",
    "load_detector",
    "read_detector_info",
    "save_detector",
]

DETECTOR_FORMAT = "moefusion-detector/1"


class _PresizedTransform(GeneralizedRCNNTransform):
    """Normalises and batches but does not resize: images arrive at their working size,
    so training-time scale jitter is not undone and test images are not rescaled twice."""

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


def build_detector(model_cfg: ModelConfig | Mapping[str, Any], num_classes: int) -> GeneralizedRCNN:
    """Faster R-CNN with a ResNet-FPN backbone (P2-P6), built with ``weights=None``.

    ``model_cfg`` is the ``model`` section of a detect config; ``num_classes`` excludes
    the background. Input: list of ``[3, H, W]`` images in [0, 1] at their working size.
    """
    cfg = (
        model_cfg
        if isinstance(model_cfg, ModelConfig)
        else ModelConfig.from_dict(model_cfg, "model")
    )
    heads = cfg.heads_config(num_classes)
    backbone = resnet_fpn_backbone(
        cfg.backbone,
        cfg.fpn_channels,
        norm=cfg.norm_kind,
        weights=cfg.backbone_weights,
        trainable_layers=5,
    )
    # RoI heads before the RPN: the order in which torchvision's FasterRCNN initialises
    # them when given a box head and predictor, so seeded models stay the same.
    roi_heads = build_roi_heads(heads)
    rpn = build_rpn(heads)
    # Gray inputs repeated to 3 channels: one mean/std for all three.
    mean, std = cfg.image_mean, cfg.image_std
    transform = _PresizedTransform(1, 1, [mean] * 3, [std] * 3)
    return GeneralizedRCNN(backbone, rpn, roi_heads, transform)


def detector_files(path: str | Path) -> tuple[Path, Path]:
    """``(weights .safetensors, sidecar .json)`` of a saved detector named by either."""
    weights = Path(path).with_suffix(".safetensors")
    return weights, weights.with_suffix(".json")


def save_detector(
    model: GeneralizedRCNN,
    path: str | Path,
    config: DetectConfig | Mapping[str, Any],
    meta: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write the weights (``.safetensors``) and a same-stem ``.json`` with config and classes."""
    from safetensors.torch import save_file

    weights, sidecar = detector_files(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    resolved = DetectConfig.coerce(config).to_dict()
    info = {"format": DETECTOR_FORMAT, "config": resolved, **dict(meta)}
    # each file whole or not at all; the sidecar last, so a detector with a sidecar is whole
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": DETECTOR_FORMAT})
    atomic_write_text(sidecar, json.dumps(info, indent=2) + "\n")
    return weights, sidecar


def _is_fusion_weights(path: Path) -> bool:
    """Whether ``path`` is a moefusion fusion-weights file (``save_weights`` metadata)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return str((f.metadata() or {}).get("format", "")).startswith("moefusion-inference")
    except (SafetensorError, OSError):
        return False


def read_detector_info(path: str | Path) -> dict[str, Any]:
    """The ``.json`` sidecar of a saved detector (config, classes, training pairs).

    ``info["config"]`` is returned as saved; :func:`detector_config` parses it.
    """
    weights, sidecar = detector_files(path)
    if weights.is_file() and not sidecar.is_file() and _is_fusion_weights(weights):
        raise MoEFusionError(
            f"{weights} holds MoE-Fusion fusion weights (for fuse/--weights), not a detector; "
            "--detector takes the detector.safetensors that detect-eval saved in its --out"
        )
    for p in (weights, sidecar):
        if not p.is_file():
            raise MoEFusionError(f"detector file not found: {p} (need both .safetensors and .json)")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoEFusionError(f"cannot read detector config {sidecar}: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != DETECTOR_FORMAT:
        raise MoEFusionError(f"{sidecar} is not a moefusion detector config ({DETECTOR_FORMAT})")
    check_classes(info.get("classes") or [])
    return info


def detector_config(info: Mapping[str, Any], path: str | Path = "") -> DetectConfig:
    """The :class:`DetectConfig` a detector was trained with (missing keys: defaults)."""
    try:
        return DetectConfig.from_dict(info.get("config") or {})
    except ConfigError as exc:
        raise MoEFusionError(f"detector {path}: its saved config is not valid: {exc}") from exc


def load_detector(path: str | Path) -> tuple[GeneralizedRCNN, dict[str, Any]]:
    """Load a detector saved by :func:`save_detector`: ``(model in eval mode, sidecar dict)``.

    ``path`` may name the ``.safetensors`` or the ``.json`` file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_detector_info(path)
    weights, _ = detector_files(path)
    model = build_detector(detector_config(info, path).model, len(info["classes"]))
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise MoEFusionError(f"cannot load detector weights {weights}: {exc}") from exc
    return model.eval(), info
