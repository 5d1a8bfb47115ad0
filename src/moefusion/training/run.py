"""Run a training job from a resolved config: trainer, loggers, checkpoints, export."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from moefusion.config import save_config
from moefusion.errors import ConfigError
from moefusion.training.data import build_train_loader
from moefusion.training.module import MoEFusionModule
from moefusion.weights import save_weights

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
    """Train, checkpointing every epoch, and export the fusion weights to safetensors.

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
