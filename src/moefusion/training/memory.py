"""Will a training step fit in memory? An estimate made before anything is trained.

A step's memory grows with the pixels of a batch (``batch_size * crop**2``, or the
resized image without a crop) times the activations the model keeps per pixel for
the backward pass, plus the parameters with their gradients and Adam's two moments.
The activations per pixel are counted, not guessed: one no-grad forward of the
stage's network on a small image with hooks on every leaf module (in-place layers
share their input's memory and are not counted), times a measured factor per part
(:data:`BACKWARD_FACTOR`) for what the hooks do not see: the tensors autograd keeps,
gradients, and element-wise products outside modules (the attention masks, the
expert combination).

Calibration (``cpu`` config, 1 thread, growth of the peak RSS over one Adam step):
the fusion branch at crop 128 / 256 with batch 4 took 240 / 819 MB, 2.94 kB per
batch pixel against 0.84 kB counted (x3.5); the detectors at crop 256 x 4 / 512 x 2
took 621 / 1191 MB, 2.2 kB per pixel against 1.56 kB counted (x1.4). The factors
are rounded up (4.0, 1.6) so that the estimate errs on the high side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion, MoEFusionConfig
from moefusion.training.config import FUSION_STAGES

#: Peak step memory per counted activation element, per part (see the module doc).
BACKWARD_FACTOR: dict[str, float] = {"fusion": 4.0, "attention": 1.6}
#: Bytes per float32 parameter: weights, gradients, Adam's first and second moments.
PARAMETER_BYTES = 4 * 4
#: Side of the probe image the activations are counted on.
PROBE = 64


@dataclass(frozen=True)
class StepEstimate:
    """Estimated peak memory of one training step of a stage (bytes)."""

    stage: str
    pixels: int  # per batch: batch_size * height * width
    activations: int
    parameters: int

    @property
    def total(self) -> int:
        return self.activations + self.parameters


def _counted_elements(module: nn.Module, forward: Callable[[], Any]) -> int:
    total = 0

    def hook(m: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if getattr(m, "inplace", False):
            return  # shares its input's memory
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return total


def activations_per_pixel(model: MoEFusion, part: str) -> float:
    """Counted activation elements per input pixel of ``part`` (``fusion``/``attention``)."""
    was_training = model.training
    model.eval()
    x = torch.rand(1, 1, PROBE, PROBE)
    try:
        if part == "fusion":
            count = _counted_elements(model.fusion, lambda: model.fusion(x, x, x))
        else:
            count = _counted_elements(model.attention, lambda: model.attention(x, x, None))
    finally:
        model.train(was_training)
    return count / float(PROBE * PROBE)


def batch_pixels(data: Mapping[str, Any]) -> int:
    """Pixels of one training batch: ``batch_size`` crops, or resized whole images."""
    batch = int(data.get("batch_size") or 1)
    crop = data.get("crop")
    if crop:
        h, w = (int(crop), int(crop)) if isinstance(crop, (int, float)) else map(int, crop)
    elif data.get("resize"):
        w, h = (int(v) for v in data["resize"])
    else:
        side = int(data.get("max_side") or 640)
        h, w = side * 3 // 4, side  # the shared data's 4:3 frames
    return batch * h * w


def estimate_step(model: MoEFusion, stage: str, data: Mapping[str, Any]) -> StepEstimate:
    """Estimated memory of one step of ``stage`` (one of :data:`~moefusion.training.config.STAGES`)."""
    parts = {
        "detect": ("attention",),
        **dict.fromkeys(FUSION_STAGES, ("fusion",)),
        "joint": ("attention", "fusion"),
    }[stage]
    per_pixel = sum(activations_per_pixel(model, p) * BACKWARD_FACTOR[p] for p in parts)
    modules = [getattr(model, p) for p in parts]
    params = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
    pixels = batch_pixels(data)
    return StepEstimate(
        stage=stage,
        pixels=pixels,
        activations=int(pixels * per_pixel * 4),
        parameters=int(params * PARAMETER_BYTES),
    )


def check_training_memory(config: Mapping[str, Any], available: int | None) -> list[StepEstimate]:
    """Refuse (:class:`MoEFusionError`, with the estimate) a run whose step cannot fit.

    ``config`` is a resolved run config; staged runs are checked stage by stage with
    the stage's own crop and batch size. ``available`` bytes (None: unknown, no check).
    Returns the estimates of the stages that will train.
    """
    from moefusion.training.stages import STAGES, stage_config, stage_is_empty

    model = MoEFusion(MoEFusionConfig.from_dict(config["model"]), with_heads=False)
    if config.get("schedule", "joint") == "staged":
        runs = []
        for name in STAGES:
            cfg = stage_config(config, name)
            if not stage_is_empty(cfg):
                runs.append((name, cfg["data"]))
    else:
        runs = [("joint", config["data"])]
    estimates = [estimate_step(model, stage, data) for stage, data in runs]
    if available is None:
        return estimates
    for e in estimates:
        if e.total > available:
            key = (
                "data" if config.get("schedule", "joint") != "staged" else f"stages.{e.stage}.data"
            )
            raise MoEFusionError(
                f"a {e.stage} training step needs about {e.total / 2**30:.1f} GiB "
                f"({e.pixels:,} pixels per batch) but only {available / 2**30:.1f} GiB is "
                f"available: lower {key}.crop or {key}.batch_size"
            )
    return estimates
