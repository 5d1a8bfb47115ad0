"""How well the fusion branch fits its objective, measured each epoch on validation pairs.

The validation part is carved out of the training data (the split's ``val`` lists), never
the held-out test part. For the same whole pairs the report gives the fusion loss
(pixel + alpha x gradient, the training objective without the load term, always with
the paper's gradient target, the larger source gradient: a run trained with
``optim.grad_target_scale`` != 1 is scored on the same scale as every other run) of the
model and of three training-free outputs (average, max, Laplacian pyramid), the model's SCD
(paper convention) and its correlation with the infrared and the visible image, and
the expert usage of every gate (fraction of samples on which each expert gets at least
:data:`~moefusion.models.gating.USED_WEIGHT` of the gate weight, entropy of that
distribution in bits; ``log2(N)`` is perfectly balanced).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from moefusion.baselines import fuse_baseline, to_u8
from moefusion.losses import fusion_loss
from moefusion.metrics import compute
from moefusion.models import MoEFusion
from moefusion.models.gating import expert_usage
from moefusion.training.cache import attention_map

REFERENCE_METHODS: tuple[str, ...] = ("average", "max", "laplacian")


def objective(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    boxes: Tensor | None,
    *,
    pixel_target: str,
    alpha: float,
) -> float:
    """Pixel + alpha x gradient loss of one ``[1, H, W]`` output (the fusion objective)."""
    f, a, b = fused[None], ir[None], vi[None]
    target_boxes = [boxes] if pixel_target == "boxes" else None
    return float(fusion_loss(f, a, b, target_boxes, 0.0, alpha=alpha)["total"])


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two images (float64); NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the defined (finite) values; NaN when there are none.

    ``np.nanmean`` would give the same numbers, plus a ``Mean of empty slice`` warning
    when no value is defined, e.g. every correlation of a constant output early on a
    tiny data set: that is a result (undefined), not something to act on.
    """
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else float("nan")


def reference_losses(
    pairs: Sequence[Mapping[str, Any]], *, pixel_target: str, alpha: float
) -> dict[str, float]:
    """Mean objective of the training-free outputs on ``pairs`` (computed once)."""
    out: dict[str, float] = {}
    for method in REFERENCE_METHODS:
        values = []
        for p in pairs:
            ir, vi = p["ir"].float(), p["vi"].float()
            fused = fuse_baseline(ir[0].double().numpy(), vi[0].double().numpy(), method)
            f = torch.from_numpy(fused).float()[None]
            values.append(
                objective(f, ir, vi, p.get("boxes"), pixel_target=pixel_target, alpha=alpha)
            )
        out[method] = float(np.mean(values))
    return out


@torch.no_grad()
def model_fit(
    model: MoEFusion,
    pairs: Sequence[Mapping[str, Any]],
    *,
    pixel_target: str,
    alpha: float,
    recompute_attention: bool = False,
) -> dict[str, float]:
    """Objective, SCD, correlations and expert usage of ``model`` on whole ``pairs``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, scds, c_ir, c_vi = [], [], [], []
    gates: dict[str, list[Tensor]] = {}
    try:
        for p in pairs:
            ir, vi = p["ir"].float().to(device), p["vi"].float().to(device)
            att = (
                attention_map(model, ir, vi)
                if recompute_attention
                else p["attention"].float().to(device)
            )
            out = model.fusion(ir[None], vi[None], att[None])
            fused = out.fused[0].clamp(0, 1).cpu()
            losses.append(
                objective(
                    fused,
                    ir.cpu(),
                    vi.cpu(),
                    p.get("boxes"),
                    pixel_target=pixel_target,
                    alpha=alpha,
                )
            )
            ir_u8, vi_u8 = to_u8(ir[0].cpu().double().numpy()), to_u8(vi[0].cpu().double().numpy())
            f_u8 = to_u8(fused[0].double().numpy())
            scds.append(compute(ir_u8, vi_u8, f_u8, convention="paper", metrics=["SCD"])["SCD"])
            f64 = f_u8.astype(np.float64)
            c_ir.append(correlation(f64, ir_u8.astype(np.float64)))
            c_vi.append(correlation(f64, vi_u8.astype(np.float64)))
            for name, g in out.gates.items():
                gates.setdefault(name, []).append(g.cpu())
    finally:
        model.train(was_training)
    stats = {
        "loss": float(np.mean(losses)),
        "scd": finite_mean(scds),
        "corr_ir": finite_mean(c_ir),
        "corr_vi": finite_mean(c_vi),
    }
    for name, gs in gates.items():
        usage = expert_usage(torch.cat(gs))
        for i, share in enumerate(usage.tolist()):
            stats[f"usage_{name}_e{i}"] = share
        dist = usage / usage.sum().clamp_min(1e-12)
        stats[f"entropy_{name}"] = float(-(dist * dist.clamp_min(1e-12).log2()).sum())
        stats[f"min_usage_{name}"] = float(usage.min())
    return stats


class FitReport(L.Callback):
    """Logs ``fit/*`` each training epoch (CSV/TensorBoard) and appends a JSON line to
    ``path`` (rank 0 only).

    Under DDP the report is measured on rank 0 alone (the weights are the same on every
    rank); the other ranks go on to the next collective and wait there, so nothing
    deadlocks.

    Args:
        pairs: whole validation pairs (as :func:`moefusion.training.cache.build_cache`),
            or a function of the model being trained that returns them, called by every
            rank in the callback's ``setup`` (once the process group exists, so it may
            compute them collectively, e.g. ``build_cache(..., distributed=True)``);
            ranks other than 0 then drop them.
        pixel_target: ``"max"`` or ``"boxes"`` (as the training objective).
        alpha: gradient-loss weight.
        stage: stage name written with every record.
        recompute_attention: recompute the attention each time (joint training, where
            the detectors change) instead of using the cached map.
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, Any]] | Callable[[MoEFusion], Sequence[Mapping[str, Any]]],
        path: str | Path,
        *,
        pixel_target: str,
        alpha: float,
        stage: str,
        recompute_attention: bool = False,
    ) -> None:
        self.path = Path(path)
        self.pixel_target = pixel_target
        self.alpha = alpha
        self.stage = stage
        self.recompute_attention = recompute_attention
        self._make_pairs = pairs if callable(pairs) else None
        self.pairs: list[Mapping[str, Any]] = []
        self.references: dict[str, float] = {}
        if not callable(pairs):
            self._set_pairs(pairs)

    def _set_pairs(self, pairs: Sequence[Mapping[str, Any]]) -> None:
        self.pairs = list(pairs)
        self.references = reference_losses(
            self.pairs, pixel_target=self.pixel_target, alpha=self.alpha
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._make_pairs is None:
            return
        # every rank: it may be a collective computation
        pairs = self._make_pairs(pl_module.model)  # type: ignore[arg-type]
        self._make_pairs = None
        if trainer.is_global_zero:
            self._set_pairs(pairs)

    def measure(self, model: MoEFusion) -> dict[str, float]:
        stats = model_fit(
            model,
            self.pairs,
            pixel_target=self.pixel_target,
            alpha=self.alpha,
            recompute_attention=self.recompute_attention,
        )
        stats.update({f"loss_{m}": v for m, v in self.references.items()})
        return stats

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.pairs or not trainer.is_global_zero:
            return
        stats = self.measure(pl_module.model)  # type: ignore[arg-type]
        # straight to the loggers: measured on rank 0 alone, the values have nothing to
        # sync, and LightningModule.log under DDP would recommend sync_dist for each one
        metrics = {f"fit/{k}": v for k, v in stats.items()}
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, trainer.global_step)
        record = {
            "stage": self.stage,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            **stats,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
