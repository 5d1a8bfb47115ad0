"""Staged training (``schedule: staged``): detectors first, then the fusion branch alone.

The release detaches the attention map, so in end-to-end training the fusion loss
never reaches the detectors and the detectors never see the fusion loss: the two parts
only share the time of each step. Staged training uses that:

1. ``detect``: both auxiliary detectors with their cross-modal mixing and spatial
   attention, on the labelled pairs only (detection losses).
2. ``fusion``: detectors frozen; each training pair's attention map is computed once
   (:mod:`moefusion.training.cache`) and the fusion branch trains at fusion-only speed
   on random crops of pairs, maps and boxes.
3. ``refine`` (optional, off unless the config sets it): the fusion stage again, from
   ``fusion``'s weights, with its own settings (the ``cpu`` config: the fine-tune that
   made ``moefusion-cpu-v5``, a higher gradient weight at a lower learning rate).
4. ``sharpen`` (optional, off unless the config sets it): the fusion stage once more, from
   ``refine``'s weights (the ``cpu`` config: the fine-tune that made ``moefusion-cpu-v6``
   from v5, a gradient target 1.1 x the sharper source's).
5. ``joint`` (optional, 0 epochs by default): the end-to-end module of the paper.

Each stage is a Lightning run of its own in ``<out>/stage<i>-<name>/`` (checkpoints,
logs, ``done.json`` when finished); a stage starts from the previous stage's weights.
A stage's settings are the run config's ``data``/``optim``/``trainer`` sections with
``stages.<name>.{data,optim,trainer}`` merged over them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from moefusion.errors import ConfigError
from moefusion.losses import fusion_loss
from moefusion.training.config import (
    FUSION_STAGES,
    LR_SCHEDULES,
    PIXEL_TARGETS,
    SCHEDULES,
    STAGES,
    RunConfig,
    stage_config,
)
from moefusion.training.module import RunModule, adam_with_epoch_steps, batch_targets

__all__ = [
    "FUSION_STAGES",
    "LR_SCHEDULES",
    "PIXEL_TARGETS",
    "SCHEDULES",
    "STAGES",
    "DetectorStageModule",
    "FusionStageModule",
    "lr_factor",
    "stage_config",
    "stage_is_empty",
]


def stage_is_empty(cfg: RunConfig | Mapping[str, Any]) -> bool:
    """A stage with ``max_steps: 0``, or ``max_epochs: 0`` and no step budget, is skipped."""
    return RunConfig.coerce(cfg).trainer.is_empty()


def lr_factor(
    schedule: str,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> Callable[[int], float]:
    """Learning-rate multiplier per optimisation step (for ``LambdaLR``, ``interval: step``).

    ``step``: ``gamma ** (milestones passed)``, milestones in steps; ``cosine``: from 1 to
    ``min_factor`` over ``total_steps``; ``constant``: 1. All after a linear warm-up of
    ``warmup_steps``.
    """
    if schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"optim.schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}"
        )
    if schedule == "cosine" and not total_steps:
        raise ConfigError(
            "optim.schedule=cosine needs trainer.max_steps (the length of the cosine)"
        )
    steps = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        if schedule == "step":
            return warm * gamma ** bisect.bisect_right(steps, step)
        if schedule == "cosine":
            assert total_steps is not None
            t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
            return warm * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t)))
        return warm

    return factor


class DetectorStageModule(RunModule):
    """Stage 1: both detectors' losses on labelled batches; the fusion branch is frozen.

    Learning rate: Adam with a step schedule in epochs (``optim.milestones``).
    """

    def __init__(self, config: Mapping[str, Any] | RunConfig) -> None:
        super().__init__(config)
        self.model.fusion.requires_grad_(False)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        _, det_losses = self.model.attention(batch["ir"], batch["vi"], batch_targets(batch))
        if not det_losses:  # stage 1 samples labelled pairs only
            raise RuntimeError("detector stage got a batch without labelled pairs")
        total = sum(det_losses.values(), torch.zeros((), device=batch["ir"].device))
        bsz = batch["ir"].shape[0]
        self.log("loss/det", total, prog_bar=True, batch_size=bsz)
        for key, value in det_losses.items():
            self.log(f"det/{key}", value, batch_size=bsz)
        return total

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.attention.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        return adam_with_epoch_steps(self._params(), self.config.optim)


class FusionStageModule(RunModule):
    """Stage 2: the fusion branch alone on cached attention maps (detectors frozen).

    Batches carry ``"attention"`` ``[B, 1, H, W]``. Loss: paper eq. 5 with the pixel
    target ``optim.pixel_target`` (``boxes``: the release's max inside boxes / mean
    outside, max on unlabelled pairs; ``max``: max everywhere). Learning rate per step:
    :func:`lr_factor` of ``optim.schedule`` (``step`` milestones are steps here).
    """

    def __init__(self, config: Mapping[str, Any] | RunConfig) -> None:
        super().__init__(config)
        self.model.attention.requires_grad_(False)
        optim = self.config.optim
        self.alpha = optim.alpha
        self.alpha_warmup_steps = optim.alpha_warmup_steps
        self.pixel_target = optim.pixel_target

    def on_train_epoch_start(self) -> None:
        self.model.attention.eval()  # frozen: its BatchNorm statistics must not move

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model.fusion(batch["ir"], batch["vi"], batch["attention"])
        boxes = batch["boxes"] if self.pixel_target == "boxes" else None
        losses = fusion_loss(
            out.fused,
            batch["ir"],
            batch["vi"],
            boxes,
            out.load_loss,
            alpha=self.current_alpha(),
            valid=batch["valid"],
            grad_target_scale=self.config.optim.grad_target_scale,
        )
        bsz = batch["ir"].shape[0]
        self.log("loss/fusion", losses["total"], prog_bar=True, batch_size=bsz)
        for key in ("pixel", "grad", "load"):
            self.log(f"loss/{key}", losses[key], batch_size=bsz)
        self.log_gate_usage(out.gates, bsz)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bsz)  # type: ignore[union-attr]
        return losses["total"]

    def current_alpha(self) -> float:
        """Gradient-loss weight now: ramped linearly from 0 over ``optim.alpha_warmup_steps``.

        The gradient term compares Sobel magnitudes, which an inverted image matches as
        well as the original; with the full weight from a random start the output can
        settle into an inverted-infrared basin. A short pixel-loss-first warm-up fixes
        the polarity before the texture term takes over (docs/architecture.md).
        """
        if self.alpha_warmup_steps <= 0:
            return self.alpha
        return self.alpha * min(1.0, self.global_step / self.alpha_warmup_steps)

    def configure_optimizers(self) -> Any:
        config = self.config
        optim = config.optim
        optimizer = torch.optim.Adam(
            self.model.fusion.parameters(), lr=optim.lr, weight_decay=optim.weight_decay
        )
        factor = lr_factor(
            optim.schedule,
            warmup_steps=optim.warmup_steps,
            total_steps=config.trainer.max_steps,
            milestones=optim.step_milestones,
            gamma=optim.gamma,
            min_factor=optim.min_lr_factor,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
