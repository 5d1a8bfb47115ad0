"""Training the Table 3 detector from scratch: augmentation, schedule, the loop."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from moefusion.data import RandomCrop
from moefusion.detection.config import DataConfig, DetectConfig, TrainConfig, resolve_device
from moefusion.detection.detector import build_detector
from moefusion.detection.images import load_gray_image, prepare_image, scale_boxes
from moefusion.detection.selection import DetectionImage
from moefusion.errors import MoEFusionError

__all__ = ["CHECKPOINT_EVERY", "train_detector"]

#: Iterations between two saves of the resume checkpoint.
CHECKPOINT_EVERY = 10


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from moefusion.atomic import atomic_path

    with atomic_path(path, keep_suffix=True) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, cfg: DetectConfig, n_images: int) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one message
        raise MoEFusionError(f"cannot read the resume checkpoint {path}: {exc}") from exc
    if state.get("config") != cfg.to_dict() or state.get("n_images") != n_images:
        raise MoEFusionError(
            f"the resume checkpoint {path} was written by a run with another config or other "
            "training images; repeat that run's command, or pass --overwrite to start over"
        )
    return state


def _lr_factor(it: int, total: int, train_cfg: TrainConfig, iters_per_epoch: int) -> float:
    """Learning-rate multiplier at iteration ``it``: cosine or step, after linear warm-up."""
    warmup = train_cfg.warmup_iters
    factor = 1.0
    if train_cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * it / max(total, 1)))
    else:
        epoch = it // max(iters_per_epoch, 1)
        passed = sum(epoch >= m for m in train_cfg.milestones)
        factor = train_cfg.gamma**passed
    if it < warmup:
        factor *= 0.001 + (1.0 - 0.001) * it / warmup
    return factor


def _augment(
    gray: Tensor, boxes: Tensor, labels: Tensor, data_cfg: DataConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random scale, flip, crop and gamma on a ``[1, H, W]`` image, its boxes and labels."""
    lo, hi = data_cfg.scale_jitter or (1.0, 1.0)
    s = lo + (hi - lo) * float(torch.rand((), generator=gen))
    img, (sx, sy) = prepare_image(gray, max(32, round(data_cfg.image_size * s)))
    boxes = scale_boxes(boxes, sx, sy)
    if float(torch.rand((), generator=gen)) < data_cfg.hflip:
        w = img.shape[-1]
        img = img.flip(-1)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    crop = data_cfg.crop
    if crop:
        # Crops cut the cost per image; the detector is fully convolutional up to the RoI
        # heads, so it is still tested on whole images.
        h, w = img.shape[-2:]
        sample = RandomCrop((min(crop, h), min(crop, w)))(
            {"ir": img, "boxes": boxes, "labels": labels}
        )
        img, boxes, labels = sample["ir"], sample["boxes"], sample["labels"]
    g = data_cfg.gamma_jitter
    if g > 0:
        # Gamma in [exp(-g), exp(g)]: brightness/contrast differ between IR, VI and fused.
        gamma = math.exp(g * (2.0 * float(torch.rand((), generator=gen)) - 1.0))
        img = img.clamp(min=1e-6).pow(gamma)
    return img, boxes, labels


def _optimizer(params: list[nn.Parameter], train_cfg: TrainConfig) -> torch.optim.Optimizer:
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=train_cfg.lr,
            momentum=train_cfg.momentum,
            weight_decay=train_cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def train_detector(
    images: Sequence[DetectionImage],
    config: DetectConfig | Mapping[str, Any],
    *,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> tuple[GeneralizedRCNN, list[dict[str, float]]]:
    """Train a detector from scratch on ``images`` (seeded by ``config.seed``).

    With ``checkpoint``, the model, optimizer, random states and position are saved there
    every :data:`CHECKPOINT_EVERY` iterations and at the end of every epoch; with
    ``resume`` and an existing ``checkpoint`` (same config and number of images), training
    continues from it. The caller removes the file once the detector is saved.

    Returns the model in eval mode and the per-epoch history
    (``{"epoch", "loss", "lr", "seconds"}``).
    """
    from tqdm.auto import tqdm

    if not images:
        raise MoEFusionError("no labelled training pairs: the detector has nothing to learn")
    cfg = DetectConfig.coerce(config)
    data_cfg, train_cfg = cfg.data, cfg.train
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_detector(cfg.model, len(data_cfg.classes)).to(device)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)

    # Decoding once keeps the loop compute-bound; images are kept at the working size.
    cache: list[tuple[Tensor, Tensor, Tensor]] = []
    for im in images:
        gray, (sx, sy) = prepare_image(load_gray_image(im), data_cfg.image_size)
        boxes = scale_boxes(torch.from_numpy(np.array(im.boxes, dtype=np.float32)), sx, sy)
        cache.append((gray, boxes.reshape(-1, 4), torch.from_numpy(np.array(im.labels)) + 1))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, train_cfg)
    batch = train_cfg.batch_size
    per_epoch = math.ceil(len(cache) / batch)
    epochs = train_cfg.epochs
    total = epochs * per_epoch
    if train_cfg.max_iters is not None:
        total = min(total, train_cfg.max_iters)
    clip = train_cfg.grad_clip
    history: list[dict[str, float]] = []
    it = 0
    first_epoch, first_b = 0, 0
    saved_order: list[int] | None = None
    losses: list[float] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.is_file():
        state = _load_checkpoint(ckpt, cfg, len(cache))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        it, history = int(state["it"]), list(state["history"])
        first_epoch, first_b = int(state["epoch"]), int(state["batch"])
        if first_b > 0:  # in the middle of an epoch: its order and losses so far
            saved_order, losses = list(state["order"]), list(state["losses"])

    def save(epoch: int, b: int, order: list[int], losses: list[float]) -> None:
        if ckpt is None:
            return
        _save_checkpoint(
            ckpt,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "it": it,
                "epoch": epoch,
                "batch": b,
                "order": order,
                "losses": losses,
                "history": history,
                "config": cfg.to_dict(),
                "n_images": len(cache),
            },
        )

    bar = tqdm(total=total, initial=it, desc="train detector", unit="it", disable=not progress)
    for epoch in range(first_epoch, epochs):
        if it >= total:
            break
        if saved_order is not None:
            order, start_b, saved_order = saved_order, first_b, None
        else:
            order = torch.randperm(len(cache), generator=gen).tolist()
            start_b, losses = 0, []
        start = time.perf_counter()
        for b in range(start_b, per_epoch):
            if it >= total:
                break
            for group in opt.param_groups:
                group["lr"] = train_cfg.lr * _lr_factor(it, total, train_cfg, per_epoch)
            imgs, targets = [], []
            for idx in order[b * batch : (b + 1) * batch]:
                gray, boxes, labels = cache[idx]
                img, bx, lab = _augment(gray, boxes, labels, data_cfg, gen)
                imgs.append(img.expand(3, -1, -1).to(device))
                targets.append({"boxes": bx.to(device), "labels": lab.to(device)})
            loss_dict = model(imgs, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise MoEFusionError(
                    f"detector loss became {float(loss)} at iteration {it}; lower train.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
            if it % CHECKPOINT_EVERY == 0 and b + 1 < per_epoch:
                save(epoch, b + 1, order, losses)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - start,
            }
        )
        save(epoch + 1, 0, [], [])
    bar.close()
    return model.eval(), history
