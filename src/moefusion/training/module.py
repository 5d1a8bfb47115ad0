"""The Lightning module that trains MoE-Fusion end to end (paper section 3.4)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from moefusion.losses import fusion_loss
from moefusion.models import MoEFusion
from moefusion.runtime import denormals_flushed, set_flush_denormal_all_threads
from moefusion.training.config import OptimConfig, RunConfig
from moefusion.training.sampling import step_seed


def apply_milestones(
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    milestones: Sequence[int],
    gamma: float,
    base_lr: float | None = None,
) -> None:
    """Set a step schedule's milestones (and base rate) and the learning rates they imply now.

    The rate for the scheduler's current epoch becomes ``base_lr * gamma ** n`` with
    ``n`` the number of milestones already reached, as if the schedule had always been
    this one. ``base_lr=None`` keeps the scheduler's base rates.
    """
    steps = sorted(int(m) for m in milestones)
    optimizer = scheduler.optimizer
    scheduler.milestones = Counter(steps)
    scheduler.gamma = gamma
    if base_lr is not None:
        scheduler.base_lrs = [base_lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = base_lr
    reached = bisect.bisect_right(steps, scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * gamma**reached
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def batch_targets(batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor] | None]:
    """Per-sample detection targets; ``None`` marks an unlabelled pair (fusion loss only)."""
    return [
        None if boxes is None else {"boxes": boxes, "labels": labels}
        for boxes, labels in zip(batch["boxes"], batch["labels"], strict=True)
    ]


def apply_base_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lr: float) -> None:
    """Give a per-step schedule the base rate ``base_lr`` and set the rate it implies at
    the scheduler's current step (``base_lr * factor(step)``)."""
    optimizer = scheduler.optimizer
    scheduler.base_lrs = [base_lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class RunModule(L.LightningModule):
    """What every training module shares: the run config (stored in each checkpoint),
    the model, per-step seeding of the gate noise and the expert-usage log.

    ``run_config`` is the plain dict (saved in every checkpoint's hyper-parameters);
    :attr:`config` reads it as a :class:`~moefusion.training.config.RunConfig`.
    """

    def __init__(self, config: Mapping[str, Any] | RunConfig) -> None:
        super().__init__()
        plain = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        self.save_hyperparameters({"config": plain})
        self.run_config = plain
        typed = self.config  # refuses an invalid config before anything is built
        self.model = MoEFusion(typed.model)
        self.seed = typed.seed

    @property
    def config(self) -> RunConfig:
        """The typed run config, read from ``run_config`` (so it follows edits of the dict)."""
        return RunConfig.from_dict(self.run_config)

    def setup(self, stage: str) -> None:
        # Processes that Lightning spawns do not run train()'s flush_denormals(): subnormal
        # weights would slow their steps (moefusion.runtime); teardown restores the mode.
        self._denormals_were_flushed = denormals_flushed()
        set_flush_denormal_all_threads(True)
        if self._trainer is not None and isinstance(self._trainer.strategy, DDPStrategy):
            # Before DDP wraps the model: the convolutions see channels-last activations,
            # so the gradients of 1x1 and depthwise kernels come out channels-last; with
            # the parameters in that layout too, they match DDP's bucket views (same
            # values; otherwise DDP warns "Grad strides do not match bucket view strides").
            self.model.to(memory_format=torch.channels_last)

    def teardown(self, stage: str) -> None:
        set_flush_denormal_all_threads(getattr(self, "_denormals_were_flushed", False))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Gate noise draws from the global RNG: seed it per step so resume is exact.
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))

    def on_train_start(self) -> None:
        # A resumed run follows the *config's* schedule, so a run can be extended or its
        # rate changed: the checkpoint stores the old base rate (both kinds) and the old
        # milestones (epoch-step schedules: joint runs, the detector stage); a per-step
        # schedule's shape (fusion-type stages) is rebuilt from the config already.
        optim = self.config.optim
        for scheduler_config in self.trainer.lr_scheduler_configs:
            scheduler = scheduler_config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
                apply_milestones(scheduler, optim.milestones, optim.gamma, optim.lr)
            elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                apply_base_lr(scheduler, optim.lr)

    def log_gate_usage(self, gates: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """Fraction of the batch's samples routed to each expert: shows which experts fire."""
        for key, weights in gates.items():
            for i, share in enumerate((weights > 0).float().mean(0).tolist()):
                self.log(f"gates/{key}_e{i}", share, batch_size=batch_size)


def adam_with_epoch_steps(params: Any, optim: OptimConfig) -> dict[str, Any]:
    """Adam (``optim.lr``, ``optim.weight_decay``) with x``gamma`` steps at the epochs in
    ``optim.milestones``, as Lightning's ``configure_optimizers`` returns it."""
    optimizer = torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(optim.milestones), gamma=optim.gamma
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class MoEFusionModule(RunModule):
    """Fusion loss (pixel + alpha * gradient + load, eq. 5) plus both detectors' losses.

    ``config`` is the whole resolved run config; it is stored in every checkpoint.
    """

    def __init__(self, config: Mapping[str, Any] | RunConfig) -> None:
        super().__init__(config)
        self.alpha = self.config.optim.alpha

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(batch["ir"], batch["vi"], batch_targets(batch))
        losses = fusion_loss(
            out.fused,
            batch["ir"],
            batch["vi"],
            batch["boxes"],
            out.load_loss,
            alpha=self.alpha,
            valid=batch["valid"],
            grad_target_scale=self.config.optim.grad_target_scale,
        )
        det = sum(out.det_losses.values(), torch.zeros((), device=out.fused.device))
        total = losses["total"] + det
        bsz = batch["ir"].shape[0]
        self.log("loss/total", total, prog_bar=True, batch_size=bsz)
        self.log("loss/fusion", losses["total"], prog_bar=True, batch_size=bsz)
        for key in ("pixel", "grad", "load"):
            self.log(f"loss/{key}", losses[key], batch_size=bsz)
        self.log("loss/det", det, batch_size=bsz)
        for key, value in out.det_losses.items():
            self.log(f"det/{key}", value, batch_size=bsz)
        self.log_gate_usage(out.gates, bsz)
        return total

    def configure_optimizers(self) -> Any:
        return adam_with_epoch_steps(self.parameters(), self.config.optim)
