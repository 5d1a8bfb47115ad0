"""Run a training job from a resolved config: trainer, loggers, checkpoints, export.

``schedule: joint`` (the paper) trains everything end to end in one Lightning run;
``schedule: staged`` runs the stages of :mod:`moefusion.training.stages` one after the
other, each in its own sub-folder, and exports the last stage's weights.

Distributed training (DDP, ``trainer.devices``/``num_nodes``/``strategy``): every rank
builds the same loaders, whose :class:`~moefusion.training.sampling.EpochSampler` gives
each rank its share of every epoch; the fusion stage's attention cache and the fit
report's validation pairs are computed in ``setup`` hooks, each rank its share. Only
global rank 0 writes (configs, checkpoints, logs, ``done.json``, ``fit_report.jsonl``,
the exported weights), and nothing is written before ``trainer.fit`` has started all
ranks: under Lightning's DDP launcher the other ranks re-run the command from the start
and must find the run folder as rank 0 found it.

Debugging aid: with the environment variable ``MOEFUSION_RANK_TRACE`` set to a folder,
every rank appends one JSON line per optimisation step to
``<folder>/<stage>-rank<r>.jsonl`` (:class:`RankTrace`: the pairs of its batch, the
step, a digest of the weights after the step), to check the sharding of a real run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from moefusion.config import save_config
from moefusion.errors import ConfigError, MoEFusionError
from moefusion.models import MoEFusion
from moefusion.runtime import flush_denormals
from moefusion.training.cache import CachedPairs, build_cache
from moefusion.training.checkpoint_io import AtomicCheckpointIO
from moefusion.training.config import FUSION_STAGES, STAGES, RunConfig, stage_config
from moefusion.training.data import (
    SetupLoader,
    build_random_transform,
    build_train_dataset,
    build_train_loader,
    labelled_subset,
    loader_for,
)
from moefusion.training.fit_report import FitReport
from moefusion.training.module import MoEFusionModule
from moefusion.training.stages import DetectorStageModule, FusionStageModule
from moefusion.weights import bundled_weights_path, load_weights, save_weights

#: A run config as ``train`` takes it: the plain dict (saved as it is) or typed.
Config = Mapping[str, Any] | RunConfig


#: Environment variable naming a folder for :class:`RankTrace` records (off when unset).
TRACE_ENV = "MOEFUSION_RANK_TRACE"


class SaveConfigs(L.Callback):
    """Writes resolved configs (the run's, the stage's, the one beside the checkpoints,
    which makes each checkpoint self-describing) on global rank 0 when training starts.

    Not before ``trainer.fit``: the other DDP ranks must find the run folder unchanged.
    """

    def __init__(self, files: Mapping[Path, Mapping[str, Any]]) -> None:
        self.files = {Path(path): dict(config) for path, config in files.items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for path, config in self.files.items():
                save_config(config, path)


class RankTrace(L.Callback):
    """One JSON line per optimisation step and rank: what the rank trained on.

    ``{"stage", "rank", "world", "epoch", "step", "stems", "datasets", "digest"}`` in
    ``<folder>/<stage>-rank<r>.jsonl`` (appended, so a resumed run adds its steps);
    ``step`` is the global step after the optimiser step and ``digest`` a BLAKE2 hash of
    all the parameters then (equal on every rank when DDP keeps them in sync; buffers
    such as BatchNorm statistics are left out: each rank updates its own, and DDP
    broadcasts rank 0's at the next forward). Enabled by :data:`TRACE_ENV`; hashing the
    weights each step costs time, so only for checks.
    """

    def __init__(self, folder: str | Path, stage: str) -> None:
        self.folder = Path(folder)
        self.stage = stage

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        record = {
            "stage": self.stage,
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "stems": list(batch["stems"]),
            "datasets": list(batch.get("datasets") or []),
            "digest": parameter_digest(pl_module),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.stage}-rank{trainer.global_rank}.jsonl"
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def parameter_digest(module: torch.nn.Module) -> str:
    """BLAKE2 hash (hex) of all of ``module``'s parameters, in order (not its buffers)."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in module.parameters():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _trace(stage: str) -> list[L.Callback]:
    folder = os.environ.get(TRACE_ENV)
    return [RankTrace(folder, stage)] if folder else []


def _plain_and_typed(config: Config) -> tuple[dict[str, Any], RunConfig]:
    """The plain dict (what is saved) and the typed config; refuses an invalid config."""
    if isinstance(config, RunConfig):
        return config.to_dict(), config
    return dict(config), RunConfig.from_dict(config)


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train with the config's ``schedule`` (``joint`` or ``staged``); see the module doc.

    Runs with subnormal floats flushed to zero (:func:`moefusion.runtime.flush_denormals`):
    weight decay makes some expert and gate weights subnormal, which slowed steps 7x.
    """
    staged = _plain_and_typed(config)[1].schedule == "staged"
    with flush_denormals():
        if staged:
            return train_staged(config, out_dir, resume=resume, progress=progress)
        return train_joint(config, out_dir, resume=resume, progress=progress)


def train_joint(
    config: Config,
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

    plain, typed = _plain_and_typed(config)
    seed = typed.seed
    L.seed_everything(seed, workers=True, verbose=False)
    loader = build_train_loader(typed.data, seed)
    module = MoEFusionModule(plain)

    trainer = _run_trainer(
        typed,
        out,
        progress,
        [],
        {out / "config.yaml": plain, ckpt_dir / "config.yaml": plain},
        trace="joint",
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


def _run_trainer(
    cfg: RunConfig,
    run_dir: Path,
    progress: bool,
    callbacks: list[L.Callback],
    configs: Mapping[Path, Mapping[str, Any]],
    *,
    trace: str | None = None,
) -> L.Trainer:
    """The Trainer of one run (a joint run or one stage) in ``run_dir``: checkpoints every
    ``cfg.checkpoint_every`` epochs plus ``last.ckpt``, versioned
    TensorBoard and CSV logs (a resumed run appends a version), ``configs`` written on
    rank 0 once training starts, and the rank trace named ``trace`` (default the stage)."""
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=cfg.checkpoint_every,
        save_top_k=-1,
        save_last=True,
    )
    return L.Trainer(
        default_root_dir=run_dir,
        logger=[
            TensorBoardLogger(run_dir / "logs", name="tensorboard"),
            CSVLogger(run_dir / "logs", name="csv"),
        ],
        callbacks=[
            checkpoint,
            SaveConfigs(configs),
            *callbacks,
            *_trace(trace or str(cfg.stage)),
        ],
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=cfg.optim.grad_clip,
        gradient_clip_algorithm="norm",
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself, when iterated
        **cfg.trainer.lightning_kwargs(),
    )


#: ``init_weights`` value that names the package's bundled weights (a fine-tune's start).
BUNDLED_INIT = "bundled"


def init_weights_file(value: str) -> str:
    """The weights file an ``init_weights`` value names: a path, or :data:`BUNDLED_INIT`."""
    return str(bundled_weights_path()) if value == BUNDLED_INIT else value


def _load_attention_branch(model: MoEFusion, path: str | Path) -> None:
    """Copy the attention branch (backbones, FPNs, mixing, attention) of a weights file."""
    path = init_weights_file(str(path))
    source = load_weights(path)
    if source.config.detector != model.config.detector:
        raise ConfigError(f"{path}: its detector config differs from this run's model.detector")
    branch = {k: v for k, v in source.inference_state_dict().items() if k.startswith("attention.")}
    missing, unexpected = model.load_state_dict(branch, strict=False)
    if unexpected:
        raise ConfigError(f"{path}: unexpected attention keys {unexpected[:5]}")


def _stage_finished(stage_dir: Path, cfg: RunConfig) -> bool:
    """Whether a stage's last launch reached the budget that ``cfg`` asks for now
    (so a resumed run with a longer budget continues it)."""
    done_file = stage_dir / "done.json"
    if not done_file.is_file():
        return False
    done = json.loads(done_file.read_text())
    steps, epochs = cfg.trainer.max_steps, cfg.trainer.max_epochs
    if steps not in (None, -1):
        return int(done["global_step"]) >= int(steps)
    if epochs not in (None, -1):
        return int(done["epochs"]) >= int(epochs)
    return True  # a wall-clock budget (max_time) was used up


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def _val_dataset(cfg: RunConfig) -> Dataset | None:
    """Whole validation pairs (split part ``val``); None without a val part."""
    data = dataclasses.replace(cfg.data, crop=None, hflip=0.0, split_part="val")
    try:
        dataset = build_train_dataset(data)
    except (ConfigError, MoEFusionError, KeyError):
        return None
    return dataset if len(dataset) else None


def _val_pairs(dataset: Dataset, progress: bool, model: MoEFusion) -> list[dict[str, Any]]:
    """The validation pairs with cached attention (every rank its share, in ``setup``)."""
    return build_cache(model, dataset, progress=progress, desc="validation pairs", distributed=True)


def _fusion_loader(
    cfg: RunConfig, seed: int, progress: bool, module: L.LightningModule
) -> DataLoader:
    """Stage 2's loader over the attention cache, built in ``setup`` (every rank its share)."""
    # the cache holds whole (resized) pairs; crops and flips are drawn per step
    whole = dataclasses.replace(cfg.data, crop=None, hflip=0.0)
    items = build_cache(
        module.model,  # type: ignore[arg-type]
        build_train_dataset(whole),
        progress=progress,
        distributed=True,
    )
    dataset = CachedPairs(items, build_random_transform(cfg.data))
    return loader_for(dataset, dataclasses.replace(cfg.data, num_workers=0), seed)


def train_staged(
    config: Config,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run the ``detect``, ``fusion``, ``refine``, ``sharpen`` and ``joint`` stages in
    ``<out>/stage<i>-<name>/``.

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
    config, typed = _plain_and_typed(config)
    seed = typed.seed
    # written by the first stage that trains (see the module doc), else at the end
    run_config: dict[Path, Mapping[str, Any]] = {out / "config.yaml": config}
    state: dict[str, torch.Tensor] | None = None
    module: L.LightningModule | None = None
    is_global_zero = True
    start = time.perf_counter()
    for name in STAGES:
        plain = stage_config(config, name)  # saved in the stage's folder
        cfg = RunConfig.from_dict(plain)
        if name == "detect" and cfg.trainer.is_empty():
            if cfg.init_weights:  # stage 1's result taken from a weights file
                # seeded: the fusion branch of this model is the next stage's start
                L.seed_everything(seed, workers=True, verbose=False)
                model = MoEFusion(cfg.model)
                _load_attention_branch(model, cfg.init_weights)
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            continue
        if cfg.trainer.is_empty():
            continue
        stage_dir = stage_dirs[name]
        last = stage_dir / "checkpoints" / "last.ckpt"
        if resume is not None and _stage_finished(stage_dir, cfg) and last.is_file():
            state = _checkpoint_state(last)
            continue
        ckpt_path = str(last) if resume is not None and last.is_file() else None
        L.seed_everything(seed, workers=True, verbose=False)
        module_cls: type[L.LightningModule]
        if name == "detect":
            module_cls = DetectorStageModule
        elif name in FUSION_STAGES:
            module_cls = FusionStageModule
        else:
            module_cls = MoEFusionModule  # joint
        module = module_cls(plain)
        if ckpt_path is not None:
            # Lightning restores the checkpoint only in fit(); the attention cache needs
            # the trained detectors before that
            module.model.load_state_dict(_checkpoint_state(last))
        else:
            if state is not None:
                module.model.load_state_dict(state)
            if cfg.init_weights and name == "detect":
                _load_attention_branch(module.model, cfg.init_weights)
            elif cfg.init_weights:
                module.model.load_inference_state_dict(
                    load_weights(init_weights_file(cfg.init_weights)).inference_state_dict()
                )
        callbacks: list[L.Callback] = []
        data: dict[str, Any]
        if name == "detect":
            loader = loader_for(labelled_subset(build_train_dataset(cfg.data)), cfg.data, seed)
            data = {"train_dataloaders": loader}
        elif name in FUSION_STAGES:
            data = {
                "datamodule": SetupLoader(functools.partial(_fusion_loader, cfg, seed, progress))
            }
        else:
            data = {"train_dataloaders": build_train_loader(cfg.data, seed)}
        if name in (*FUSION_STAGES, "joint"):
            val = _val_dataset(cfg)
            if val is not None:
                callbacks.append(
                    FitReport(
                        functools.partial(_val_pairs, val, progress),
                        out / "fit_report.jsonl",
                        pixel_target=cfg.optim.pixel_target,
                        alpha=cfg.optim.alpha,
                        stage=name,
                        recompute_attention=name == "joint",
                    )
                )
        configs = {
            **run_config,
            stage_dir / "config.yaml": plain,
            stage_dir / "checkpoints" / "config.yaml": plain,
        }
        run_config = {}
        trainer = _run_trainer(cfg, stage_dir, progress, callbacks, configs)
        stage_start = time.perf_counter()
        trainer.fit(module, ckpt_path=ckpt_path, **data)
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
        for path, saved in run_config.items():  # no stage trained in this launch
            save_config(saved, path)
        save_weights(
            module.model,
            out / "moefusion.safetensors",
            metadata={
                "schedule": "staged",
                "train_seconds_this_session": f"{time.perf_counter() - start:.1f}",
            },
        )
    return out
