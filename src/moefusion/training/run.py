"""Run a training job from a resolved config: trainer, loggers, checkpoints, export.

``schedule: joint`` (the paper) trains everything end to end in one Lightning run;
``schedule: staged`` runs the stages of :mod:`moefusion.training.stages` one after the
other, each in its own sub-folder, and exports the last stage's weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from moefusion.config import save_config
from moefusion.errors import ConfigError, MoEFusionError
from moefusion.models import MoEFusion, MoEFusionConfig
from moefusion.training.cache import CachedPairs, build_cache
from moefusion.training.data import (
    build_random_transform,
    build_train_dataset,
    build_train_loader,
    labelled_subset,
    loader_for,
)
from moefusion.training.fit_report import FitReport
from moefusion.training.module import MoEFusionModule
from moefusion.training.stages import (
    SCHEDULES,
    STAGES,
    DetectorStageModule,
    FusionStageModule,
    stage_config,
    stage_is_empty,
)
from moefusion.weights import load_weights, save_weights

TRAINER_KEYS = {
    "max_epochs",
    "max_steps",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "log_every_n_steps",
    "limit_train_batches",
    "accumulate_grad_batches",
    "deterministic",
    "max_time",
}


class SaveConfigBeside(L.Callback):
    """Writes the resolved config next to each checkpoint, so each one is self-describing."""

    def __init__(self, config: Mapping[str, Any], ckpt_dir: Path) -> None:
        self.config = dict(config)
        self.ckpt_dir = ckpt_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_config(self.config, self.ckpt_dir / "config.yaml")


def trainer_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    raw = dict(config.get("trainer", {}))
    unknown = set(raw) - TRAINER_KEYS
    if unknown:
        raise ConfigError(f"unknown trainer keys: {', '.join(sorted(unknown))}")
    return {k: v for k, v in raw.items() if v is not None}


def train(
    config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train with the config's ``schedule`` (``joint`` or ``staged``); see the module doc."""
    schedule = config.get("schedule", "joint")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "staged":
        return train_staged(config, out_dir, resume=resume, progress=progress)
    return train_joint(config, out_dir, resume=resume, progress=progress)


def train_joint(
    config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train end to end, checkpointing every epoch, and export the fusion weights to safetensors.

    Returns the run directory, which holds ``config.yaml``, ``checkpoints/`` (one per epoch
    plus ``last.ckpt``), ``logs/{tensorboard,csv}/version_N`` (one version per launch) and ``moefusion.safetensors``.
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_path: str | None = None
    if resume is not None:
        resume_path = ckpt_dir / "last.ckpt" if str(resume) == "auto" else Path(resume)
        if not resume_path.is_file():
            raise ConfigError(f"cannot resume: checkpoint not found: {resume_path}")
        ckpt_path = str(resume_path)

    seed = int(config.get("seed", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    save_config(config, out / "config.yaml")
    loader = build_train_loader(config["data"], seed)
    module = MoEFusionModule(config)

    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=1,
        save_top_k=-1,
        save_last=True,
    )
    trainer = L.Trainer(
        default_root_dir=out,
        logger=[
            # versioned sub-folders, so a resumed run appends instead of overwriting
            TensorBoardLogger(out / "logs", name="tensorboard"),
            CSVLogger(out / "logs", name="csv"),
        ],
        callbacks=[checkpoint, SaveConfigBeside(config, ckpt_dir)],
        gradient_clip_val=float(config["optim"].get("grad_clip", 35.0)),
        gradient_clip_algorithm="norm",
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
        **trainer_kwargs(config),
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        save_weights(
            module.model,
            out / "moefusion.safetensors",
            metadata={
                "epochs": str(trainer.current_epoch),
                "global_step": str(trainer.global_step),
                "train_seconds_this_session": f"{time.perf_counter() - start:.1f}",
            },
        )
    return out


def _stage_trainer(
    cfg: Mapping[str, Any], stage_dir: Path, progress: bool, callbacks: list[L.Callback]
) -> L.Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=int(cfg.get("checkpoint_every", 1)),
        save_top_k=-1,
        save_last=True,
    )
    return L.Trainer(
        default_root_dir=stage_dir,
        logger=[
            TensorBoardLogger(stage_dir / "logs", name="tensorboard"),
            CSVLogger(stage_dir / "logs", name="csv"),
        ],
        callbacks=[checkpoint, SaveConfigBeside(cfg, stage_dir / "checkpoints"), *callbacks],
        gradient_clip_val=float(cfg["optim"].get("grad_clip", 35.0)),
        gradient_clip_algorithm="norm",
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **trainer_kwargs(cfg),
    )


def _load_attention_branch(model: MoEFusion, path: str | Path) -> None:
    """Copy the attention branch (backbones, FPNs, mixing, attention) of a weights file."""
    source = load_weights(path)
    if source.config.detector != model.config.detector:
        raise ConfigError(f"{path}: its detector config differs from this run's model.detector")
    branch = {k: v for k, v in source.inference_state_dict().items() if k.startswith("attention.")}
    missing, unexpected = model.load_state_dict(branch, strict=False)
    if unexpected:
        raise ConfigError(f"{path}: unexpected attention keys {unexpected[:5]}")


def _stage_finished(stage_dir: Path, cfg: Mapping[str, Any]) -> bool:
    """Whether a stage's last launch reached the budget that ``cfg`` asks for now
    (so a resumed run with a longer budget continues it)."""
    done_file = stage_dir / "done.json"
    if not done_file.is_file():
        return False
    done = json.loads(done_file.read_text())
    trainer = cfg["trainer"]
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    if steps not in (None, -1):
        return int(done["global_step"]) >= int(steps)
    if epochs not in (None, -1):
        return int(done["epochs"]) >= int(epochs)
    return True  # a wall-clock budget (max_time) was used up


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def _val_pairs(cfg: Mapping[str, Any], model: Any, progress: bool) -> list[dict[str, Any]]:
    """Whole validation pairs (split part ``val``) with cached attention; [] without a val part."""
    data = dict(cfg["data"], crop=None, hflip=0, split_part="val")
    try:
        dataset = build_train_dataset(data)
    except (ConfigError, MoEFusionError, KeyError):
        return []
    return build_cache(model, dataset, progress=progress, desc="validation pairs")


def train_staged(
    config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run the ``detect``, ``fusion`` and ``joint`` stages in ``<out>/stage<i>-<name>/``.

    ``resume="auto"`` skips finished stages (``done.json``) and continues the first
    unfinished one from its ``last.ckpt`` (exactly, as for joint runs). A stage that
    starts fresh takes the previous stage's last weights, or ``stages.<name>.init_weights``
    (a moefusion ``.safetensors`` file) when given; empty stages are skipped.
    """
    if resume is not None and str(resume) != "auto":
        raise ConfigError(
            "a staged run resumes with --resume auto (it finds each stage's last.ckpt)"
        )
    out = Path(out_dir)
    stage_dirs = {name: out / f"stage{i + 1}-{name}" for i, name in enumerate(STAGES)}
    if resume is not None and not any(
        (d / "checkpoints" / "last.ckpt").is_file() for d in stage_dirs.values()
    ):
        raise ConfigError(f"cannot resume: no stage checkpoint under {out}")
    seed = int(config.get("seed", 0))
    save_config(config, out / "config.yaml")
    state: dict[str, torch.Tensor] | None = None
    module: L.LightningModule | None = None
    is_global_zero = True
    start = time.perf_counter()
    for name in STAGES:
        cfg = stage_config(config, name)
        if name == "detect" and stage_is_empty(cfg):
            if cfg.get("init_weights"):  # stage 1's result taken from a weights file
                model = MoEFusion(MoEFusionConfig.from_dict(cfg["model"]))
                _load_attention_branch(model, cfg["init_weights"])
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            continue
        if stage_is_empty(cfg):
            continue
        stage_dir = stage_dirs[name]
        last = stage_dir / "checkpoints" / "last.ckpt"
        if resume is not None and _stage_finished(stage_dir, cfg) and last.is_file():
            state = _checkpoint_state(last)
            continue
        ckpt_path = str(last) if resume is not None and last.is_file() else None
        L.seed_everything(seed, workers=True, verbose=False)
        module_cls = {
            "detect": DetectorStageModule,
            "fusion": FusionStageModule,
            "joint": MoEFusionModule,
        }[name]
        module = module_cls(cfg)
        if ckpt_path is not None:
            # Lightning restores the checkpoint only in fit(); the attention cache needs
            # the trained detectors before that
            module.model.load_state_dict(_checkpoint_state(last))
        else:
            if state is not None:
                module.model.load_state_dict(state)
            if cfg.get("init_weights") and name == "detect":
                _load_attention_branch(module.model, cfg["init_weights"])
            elif cfg.get("init_weights"):
                module.model.load_inference_state_dict(
                    load_weights(cfg["init_weights"]).inference_state_dict()
                )
        callbacks: list[L.Callback] = []
        optim = cfg["optim"]
        if name == "detect":
            loader = loader_for(
                labelled_subset(build_train_dataset(cfg["data"])), cfg["data"], seed
            )
        elif name == "fusion":
            # the cache holds whole (resized) pairs; crops and flips are drawn per step
            whole = dict(cfg["data"], crop=None, hflip=0)
            items = build_cache(module.model, build_train_dataset(whole), progress=progress)
            dataset = CachedPairs(items, build_random_transform(cfg["data"]))
            loader = loader_for(dataset, dict(cfg["data"], num_workers=0), seed)
        else:
            loader = build_train_loader(cfg["data"], seed)
        if name in ("fusion", "joint"):
            pairs = _val_pairs(cfg, module.model, progress)
            if pairs:
                callbacks.append(
                    FitReport(
                        pairs,
                        out / "fit_report.jsonl",
                        pixel_target=str(optim.get("pixel_target", "boxes")),
                        alpha=float(optim.get("alpha", 10.0)),
                        stage=name,
                        recompute_attention=name == "joint",
                    )
                )
        save_config(cfg, stage_dir / "config.yaml")
        trainer = _stage_trainer(cfg, stage_dir, progress, callbacks)
        stage_start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
        is_global_zero = trainer.is_global_zero
        if is_global_zero:
            (stage_dir / "done.json").write_text(
                json.dumps(
                    {
                        "stage": name,
                        "epochs": trainer.current_epoch,
                        "global_step": trainer.global_step,
                        "seconds_this_launch": round(time.perf_counter() - stage_start, 1),
                    }
                )
                + "\n"
            )
        state = {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
    if state is None:
        raise ConfigError("every stage is empty: nothing to train")
    if module is None:  # all stages were already done: rebuild the model to export it
        module = FusionStageModule(stage_config(config, "fusion"))
        module.model.load_state_dict(state)
    if is_global_zero:
        save_weights(
            module.model,
            out / "moefusion.safetensors",
            metadata={
                "schedule": "staged",
                "train_seconds_this_session": f"{time.perf_counter() - start:.1f}",
            },
        )
    return out
