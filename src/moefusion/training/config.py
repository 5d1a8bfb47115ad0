"""The typed run config: :class:`RunConfig` and its sections ``data``, ``optim``, ``trainer``
and ``stages``.

On disk a run config stays plain data: the YAML files in ``moefusion/configs``, dotted
overrides (:func:`moefusion.config.load_run_config`) and the ``config.yaml`` saved beside
every checkpoint. The training code reads it through these dataclasses, in the style of
:class:`~moefusion.models.MoEFusionConfig`: every default lives here once,
:meth:`RunConfig.from_dict` refuses unknown keys (naming them) and wrong values with a
:class:`~moefusion.errors.ConfigError`, and :meth:`RunConfig.to_dict` gives the plain
dict back with every key. A key set to ``null`` takes its default, except where ``null``
is a value of its own (``data.crop: null``: no crop; ``trainer.*: null``: Lightning's
default).

A stage of a staged run sees the run config with ``stages.<name>.{data,optim,trainer}``
merged over the base sections: :func:`stage_config` (a plain dict, saved in the stage's
folder; it also carries ``stage``, ``init_weights`` and ``checkpoint_every`` at the top).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar, Self

from moefusion.errors import ConfigError
from moefusion.models.config import MoEFusionConfig
from moefusion.training._config_base import (
    Section,
    as_bool,
    as_float,
    as_int,
    choice,
    fail,
    int_list,
    is_number,
    mapping,
    opt_int,
    opt_str,
    reject_unknown,
)

__all__ = [
    "LR_SCHEDULES",
    "PIXEL_TARGETS",
    "SCHEDULES",
    "SPLIT_PARTS",
    "FUSION_STAGES",
    "STAGES",
    "DataConfig",
    "DatasetEntry",
    "OptimConfig",
    "RunConfig",
    "StageConfig",
    "StagesConfig",
    "TrainerConfig",
    "stage_config",
]

#: Stages of a staged run, in order (:mod:`moefusion.training.stages`).
STAGES: tuple[str, ...] = ("detect", "fusion", "refine", "sharpen", "joint")
#: Fusion-branch stages (:class:`~moefusion.training.stages.FusionStageModule` on cached
#: attention maps): ``refine`` continues ``fusion``'s weights with its own settings, and
#: ``sharpen`` continues ``refine``'s.
FUSION_STAGES: tuple[str, ...] = ("fusion", "refine", "sharpen")
#: ``schedule``: end to end (the paper) or stage by stage.
SCHEDULES: tuple[str, ...] = ("joint", "staged")
#: ``optim.schedule`` of the fusion stage (per-step learning rate).
LR_SCHEDULES: tuple[str, ...] = ("step", "cosine", "constant")
#: ``optim.pixel_target``: the release's max in boxes / mean outside, or max everywhere.
PIXEL_TARGETS: tuple[str, ...] = ("boxes", "max")
#: Parts of a split file (``data.split_part``).
SPLIT_PARTS: tuple[str, ...] = ("train", "val", "test")
#: Keys of a ``data.datasets`` entry passed on to :class:`~moefusion.data.PairedFusionDataset`.
DATASET_OPTIONS = (
    "label_set",
    "labels",
    "ir_dir",
    "vi_dir",
    "high_bit",
    "recursive",
    "layout",
    "part",
)


# ------------------------------------------------------------------------------- data


@dataclass
class DatasetEntry(Section):
    """One training dataset: a folder with ``ir/``, ``vi/`` and optional ``labels/``, or
    in the layout of an official download (``layout``: ``auto``, ``moefusion``, ``m3fd``,
    ``llvip``, ``flir``, ``msrs``; ``part``: ``train`` or ``test``; docs/data.md).

    In YAML a folder name alone or ``{root: DIR, name: NAME, label_set: infrared, ...}``;
    keys other than ``root``, ``name``, ``layout`` and ``part`` (:data:`DATASET_OPTIONS`)
    go to :class:`~moefusion.data.PairedFusionDataset` as they are, and keep its
    defaults when left out.

    Attributes:
        root: the dataset folder.
        name: the dataset's name in the split file and in samples (default: the folder name).
        options: the :data:`DATASET_OPTIONS` given.
    """

    WHERE: ClassVar[str] = "data.datasets"

    root: str
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = opt_str(self.root, "data.datasets: root") or fail(
            "data.datasets: every entry needs a root folder"
        )
        self.name = opt_str(self.name, f"data.datasets ({self.root}): name")
        self.options = mapping(self.options, f"data.datasets ({self.root})")
        reject_unknown(self.options, DATASET_OPTIONS, f"data.datasets ({self.root})")
        from moefusion.data.layouts import LAYOUT_PARTS, LAYOUTS

        where = f"data.datasets ({self.root})"
        if self.options.get("layout") is not None:
            choice(self.options["layout"], ("auto", *LAYOUTS), f"{where}: layout")
        if self.options.get("part") is not None:
            choice(self.options["part"], LAYOUT_PARTS, f"{where}: part")

    @property
    def dataset_name(self) -> str:
        return self.name or PurePath(self.root).name

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str | PurePath | None) -> Self:  # type: ignore[override]
        if isinstance(data, (str, PurePath)):
            return cls(root=str(data))
        values = mapping(data, cls.WHERE)
        if "root" not in values:
            fail(f"data.datasets: entry {values!r} has no root folder")
        reject_unknown(
            values, ("root", "name", *DATASET_OPTIONS), f"data.datasets ({values['root']})"
        )
        root, name = values.pop("root"), values.pop("name", None)
        return cls(root=root, name=name, options=values)

    def to_dict(self) -> dict[str, Any]:
        """``{root, name (when set), options...}``: the YAML form."""
        out: dict[str, Any] = {"root": self.root}
        if self.name is not None:
            out["name"] = self.name
        return {**out, **copy.deepcopy(self.options)}


@dataclass
class DataConfig(Section):
    """Which pairs are trained on and how they are augmented and batched.

    Attributes:
        datasets: the training datasets (:class:`DatasetEntry`).
        split: split name (``configs/splits/NAME.json``) or JSON path; None: every pair.
        split_part: the split part trained on (``train``; ``val`` for validation pairs).
        classes: detection classes, in label-index order.
        class_map: raw label name -> class synonyms; None (or empty): the data layer's.
        resize: ``[H, W]`` every pair is resized to; None: no resize.
        max_side: shrink pairs so that the longer side is at most this; None: no limit.
        crop: random crop (pixels, or ``[H, W]``), padded when needed; None: whole pairs.
        hflip: probability of a horizontal flip.
        batch_size: pairs per batch (per process under DDP).
        num_workers: DataLoader workers.
        repeat: passes over the pairs per epoch.
        skip_bad: drop pairs that fail validation (warns) instead of stopping.
    """

    WHERE: ClassVar[str] = "data"

    datasets: tuple[DatasetEntry, ...] = ()
    split: str | None = None
    split_part: str = "train"
    classes: tuple[str, ...] = ("person", "car", "bicycle")
    class_map: dict[str, str] | None = None
    resize: tuple[int, int] | None = None
    max_side: int | None = None
    crop: int | tuple[int, int] | None = None
    hflip: float = 0.0
    batch_size: int = 4
    num_workers: int = 0
    repeat: int = 1
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.datasets, (str, Mapping)) or not isinstance(
            self.datasets, (list, tuple)
        ):
            fail(f"data.datasets must be a list of folders, got {self.datasets!r}")
        self.datasets = tuple(DatasetEntry.coerce(e) for e in self.datasets)  # type: ignore[arg-type]
        self.split = opt_str(self.split, "data.split") or None
        self.split_part = choice(self.split_part, SPLIT_PARTS, "data.split_part")
        if isinstance(self.classes, str) or not isinstance(self.classes, (list, tuple)):
            fail(f"data.classes must be a list of names, got {self.classes!r}")
        if not self.classes or not all(isinstance(c, str) and c.strip() for c in self.classes):
            fail(f"data.classes must be non-empty names, got {list(self.classes)}")
        self.classes = tuple(self.classes)
        # an empty map behaves as null (the data layer's synonyms), as it always has
        self.class_map = {
            str(k): str(v) for k, v in mapping(self.class_map, "data.class_map").items()
        } or None
        if isinstance(self.resize, (list, tuple)) and not self.resize:
            self.resize = None
        if self.resize is not None:
            size = int_list(self.resize, "data.resize")
            if len(size) != 2 or min(size) < 1:
                fail(f"data.resize must be [H, W] in pixels, got {list(size)}")
            self.resize = (size[0], size[1])
        self.max_side = opt_int(self.max_side, "data.max_side", minimum=1)
        if isinstance(self.crop, (list, tuple)):
            crop = int_list(self.crop, "data.crop")
            if len(crop) != 2 or min(crop) < 1:
                fail(f"data.crop must be a size in pixels or [H, W], got {list(crop)}")
            self.crop = (crop[0], crop[1])
        else:
            self.crop = opt_int(self.crop, "data.crop", minimum=1)
        self.hflip = as_float(self.hflip, "data.hflip", 0.0, 1.0)
        self.batch_size = as_int(self.batch_size, "data.batch_size", minimum=1)
        self.num_workers = as_int(self.num_workers, "data.num_workers", minimum=0)
        self.repeat = as_int(self.repeat, "data.repeat", minimum=1)
        self.skip_bad = as_bool(self.skip_bad, "data.skip_bad")


# ------------------------------------------------------------------------------ optim


@dataclass
class OptimConfig(Section):
    """Optimiser, learning-rate schedule and loss weights.

    Every module trains with Adam (``lr``, ``weight_decay``) and clips gradients to the
    norm ``grad_clip``. Joint runs and the detector stage step the rate by ``gamma`` at
    the epochs in ``milestones``; the fusion stage follows ``schedule`` per step. Which
    stage reads which key: :mod:`moefusion.training.optim_keys` (a command-line override
    that no stage which trains reads is refused there).

    Attributes:
        lr: base learning rate.
        weight_decay: Adam weight decay.
        grad_clip: gradient-norm clip; None: no clipping.
        milestones: epochs at which the rate is multiplied by ``gamma`` (epoch schedules).
        gamma: step-schedule factor.
        alpha: weight of the gradient loss (paper eq. 5).
        schedule: fusion stage, per step: ``step`` (``step_milestones``), ``cosine``
            (to ``min_lr_factor`` over ``trainer.max_steps``) or ``constant``.
        warmup_steps: fusion stage: linear warm-up steps.
        min_lr_factor: fusion stage: the cosine's final fraction of ``lr``.
        step_milestones: fusion stage, ``schedule: step``: milestones in steps.
        pixel_target: fusion stage pixel loss: ``boxes`` (the release's) or ``max``.
        alpha_warmup_steps: fusion stage: ``alpha`` ramps up from 0 over these steps.
        grad_target_scale: the gradient loss's target is this times the larger source
            gradient (1: the paper's ``max``; above 1 asks for sharper edges than either
            source, docs/training.md "Capacity at a fixed wall time").
    """

    WHERE: ClassVar[str] = "optim"

    lr: float = 1.0e-4
    weight_decay: float = 1.0e-4
    grad_clip: float | None = 35.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    alpha: float = 10.0
    schedule: str = "step"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    step_milestones: tuple[int, ...] = ()
    pixel_target: str = "boxes"
    alpha_warmup_steps: int = 0
    grad_target_scale: float = 1.0

    @classmethod
    def nullable(cls, name: str) -> bool:
        return name == "grad_clip"

    def __post_init__(self) -> None:
        self.lr = as_float(self.lr, "optim.lr", minimum=0.0)
        self.weight_decay = as_float(self.weight_decay, "optim.weight_decay", minimum=0.0)
        if self.grad_clip is not None:
            self.grad_clip = as_float(self.grad_clip, "optim.grad_clip", minimum=0.0)
        self.milestones = int_list(self.milestones, "optim.milestones")
        self.gamma = as_float(self.gamma, "optim.gamma", minimum=0.0)
        self.alpha = as_float(self.alpha, "optim.alpha", minimum=0.0)
        self.schedule = choice(self.schedule, LR_SCHEDULES, "optim.schedule")
        self.warmup_steps = as_int(self.warmup_steps, "optim.warmup_steps", minimum=0)
        self.min_lr_factor = as_float(self.min_lr_factor, "optim.min_lr_factor", 0.0, 1.0)
        self.step_milestones = int_list(self.step_milestones, "optim.step_milestones")
        self.pixel_target = choice(self.pixel_target, PIXEL_TARGETS, "optim.pixel_target")
        self.alpha_warmup_steps = as_int(
            self.alpha_warmup_steps, "optim.alpha_warmup_steps", minimum=0
        )
        self.grad_target_scale = as_float(
            self.grad_target_scale, "optim.grad_target_scale", minimum=0.0
        )
        if self.grad_target_scale <= 0:
            fail(f"optim.grad_target_scale must be > 0, got {self.grad_target_scale}")


# ---------------------------------------------------------------------------- trainer


@dataclass
class TrainerConfig(Section):
    """Arguments of the Lightning ``Trainer``; None leaves Lightning's default.

    Values are passed on as given (``limit_train_batches: 2`` is two batches, ``0.5``
    half of them; ``devices`` may be a count, ``auto`` or a list; ``max_time`` a
    ``DD:HH:MM:SS`` string or a mapping such as ``{minutes: 30}``).
    """

    WHERE: ClassVar[str] = "trainer"

    max_epochs: int | None = None
    max_steps: int | None = None
    max_time: str | dict[str, float] | None = None
    accelerator: str | None = None
    devices: int | str | list[int] | None = None
    num_nodes: int | None = None
    strategy: str | None = None
    precision: int | str | None = None
    log_every_n_steps: int | None = None
    limit_train_batches: int | float | None = None
    accumulate_grad_batches: int | None = None
    deterministic: bool | str | None = None

    def __post_init__(self) -> None:
        self.max_epochs = opt_int(self.max_epochs, "trainer.max_epochs", minimum=-1)
        self.max_steps = opt_int(self.max_steps, "trainer.max_steps", minimum=-1)
        if isinstance(self.max_time, Mapping):
            self.max_time = {
                str(k): as_float(v, f"trainer.max_time.{k}", minimum=0.0)
                for k, v in self.max_time.items()
            }
        elif self.max_time is not None and not isinstance(self.max_time, str):
            fail(f"trainer.max_time must be DD:HH:MM:SS or a mapping, got {self.max_time!r}")
        self.accelerator = opt_str(self.accelerator, "trainer.accelerator")
        if isinstance(self.devices, (list, tuple)):
            self.devices = list(int_list(self.devices, "trainer.devices"))
        elif self.devices is not None and not isinstance(self.devices, str):
            self.devices = as_int(self.devices, "trainer.devices", minimum=-1)
        self.num_nodes = opt_int(self.num_nodes, "trainer.num_nodes", minimum=1)
        self.strategy = opt_str(self.strategy, "trainer.strategy")
        if self.precision is not None and not isinstance(self.precision, str):
            self.precision = as_int(self.precision, "trainer.precision")
        self.log_every_n_steps = opt_int(
            self.log_every_n_steps, "trainer.log_every_n_steps", minimum=1
        )
        if self.limit_train_batches is not None and not is_number(self.limit_train_batches):
            fail(
                "trainer.limit_train_batches must be a number of batches or a fraction, "
                f"got {self.limit_train_batches!r}"
            )
        self.accumulate_grad_batches = opt_int(
            self.accumulate_grad_batches, "trainer.accumulate_grad_batches", minimum=1
        )
        if self.deterministic is not None and not isinstance(self.deterministic, (bool, str)):
            fail(f"trainer.deterministic must be true, false or warn, got {self.deterministic!r}")

    def lightning_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``lightning.Trainer`` (the values that are set)."""
        return {
            f.name: copy.copy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def is_empty(self) -> bool:
        """``max_steps: 0``, or ``max_epochs: 0`` with no step or time budget: nothing to train."""
        steps, epochs = self.max_steps, self.max_epochs
        return steps == 0 or (steps in (None, -1) and epochs == 0 and not self.max_time)


# ----------------------------------------------------------------------------- stages


def _check_partial(section: type[Section], values: Mapping[str, Any], where: str) -> None:
    """A stage's partial ``data``/``optim``/``trainer``: known keys, valid values."""
    reject_unknown(values, section.field_names(), where)
    try:
        section.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"in {where.rsplit('.', 1)[0]}: {exc}") from exc


@dataclass
class StageConfig(Section):
    """``stages.<name>``: one stage's settings over the run config's.

    Attributes:
        init_weights: a moefusion ``.safetensors`` file the stage starts from, or
            ``bundled`` for the package's bundled weights (a fine-tune); the detector
            stage: its attention branch replaces training when the stage is empty.
        checkpoint_every: epochs between numbered checkpoints (``last.ckpt`` every epoch).
        data, optim, trainer: keys of those sections that this stage sets differently.
    """

    WHERE: ClassVar[str] = "stages.<name>"

    init_weights: str | None = None
    checkpoint_every: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.init_weights = opt_str(self.init_weights, "init_weights") or None
        self.checkpoint_every = as_int(self.checkpoint_every, "checkpoint_every", minimum=1)
        self.data = mapping(self.data, "data")
        self.optim = mapping(self.optim, "optim")
        self.trainer = mapping(self.trainer, "trainer")

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` (naming ``where``) on an unknown key or a bad value."""
        _check_partial(DataConfig, self.data, f"{where}.data")
        _check_partial(OptimConfig, self.optim, f"{where}.optim")
        _check_partial(TrainerConfig, self.trainer, f"{where}.trainer")

    @classmethod
    def from_stage_dict(cls, data: Mapping[str, Any] | None, stage: str) -> Self:
        where = f"stages.{stage}"
        values = mapping(data, where)
        reject_unknown(values, cls.field_names(), where)
        try:
            settings = cls(**{k: v for k, v in values.items() if v is not None})
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from exc
        settings.check(where)
        return settings


@dataclass
class StagesConfig(Section):
    """``stages``: the settings of each stage of a staged run."""

    WHERE: ClassVar[str] = "stages"

    detect: StageConfig = field(default_factory=StageConfig)
    fusion: StageConfig = field(default_factory=StageConfig)
    # off unless a config sets them (older configs have no refine or sharpen stage)
    refine: StageConfig = field(default_factory=lambda: StageConfig(trainer={"max_steps": 0}))
    sharpen: StageConfig = field(default_factory=lambda: StageConfig(trainer={"max_steps": 0}))
    joint: StageConfig = field(default_factory=StageConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Self:
        values = mapping(data, cls.WHERE)
        reject_unknown(values, cls.field_names(), cls.WHERE)
        return cls(**{k: StageConfig.from_stage_dict(v, k) for k, v in values.items()})

    def __post_init__(self) -> None:
        for name in STAGES:
            value = getattr(self, name)
            if isinstance(value, StageConfig):
                value.check(f"stages.{name}")  # its sections may have been set directly
            else:
                setattr(self, name, StageConfig.from_stage_dict(value, name))

    def get(self, stage: str) -> StageConfig:
        """The settings of ``stage`` (one of :data:`STAGES`)."""
        return getattr(self, choice(stage, STAGES, "stage"))


# -------------------------------------------------------------------------------- run


@dataclass
class RunConfig(Section):
    """A whole training run: ``seed``, ``schedule``, ``model`` and the sections.

    The last three fields are set in the config one stage of a staged run sees
    (:func:`stage_config`) and keep their defaults otherwise.

    Attributes:
        seed: seeds initialisation, data order, augmentation and gate noise.
        schedule: ``joint`` (end to end, the paper) or ``staged``.
        model: the network (:class:`~moefusion.models.MoEFusionConfig`).
        data, optim, trainer: see :class:`DataConfig`, :class:`OptimConfig`,
            :class:`TrainerConfig`.
        stages: per-stage settings of a staged run (:class:`StagesConfig`).
        stage: the stage this config is resolved for; None for a whole run.
        init_weights: the stage's ``init_weights``.
        checkpoint_every: epochs between numbered checkpoints.
    """

    seed: int = 0
    schedule: str = "joint"
    model: MoEFusionConfig = field(default_factory=MoEFusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    stage: str | None = None
    init_weights: str | None = StageConfig.init_weights
    checkpoint_every: int = StageConfig.checkpoint_every

    def __post_init__(self) -> None:
        self.seed = as_int(self.seed, "seed")
        self.schedule = choice(self.schedule, SCHEDULES, "schedule")
        if isinstance(self.model, Mapping):
            self.model = MoEFusionConfig.from_dict(self.model)
        elif not isinstance(self.model, MoEFusionConfig):
            fail(f"model must be a mapping, got {self.model!r}")
        self.data = DataConfig.coerce(self.data)
        self.optim = OptimConfig.coerce(self.optim)
        self.trainer = TrainerConfig.coerce(self.trainer)
        self.stages = StagesConfig.coerce(self.stages)
        if self.stage is not None:
            self.stage = choice(self.stage, STAGES, "stage")
        self.init_weights = opt_str(self.init_weights, "init_weights") or None
        self.checkpoint_every = as_int(self.checkpoint_every, "checkpoint_every", minimum=1)


def stage_config(config: RunConfig | Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The run config as one stage sees it: ``stages.<stage>`` sections merged over the base.

    Returns the plain dict (saved in the stage's folder): ``config`` with its ``data``,
    ``optim`` and ``trainer`` updated by the stage's and ``stage``, ``init_weights`` and
    ``checkpoint_every`` added. Raises :class:`ConfigError` for an unknown stage, key or
    value.
    """
    if stage not in STAGES:
        fail(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    if isinstance(config, RunConfig):
        config = config.to_dict()
    settings = RunConfig.from_dict(config).stages.get(stage)
    out = copy.deepcopy(dict(config))
    for section in ("data", "optim", "trainer"):
        out[section] = {**(out.get(section) or {}), **copy.deepcopy(getattr(settings, section))}
    out["init_weights"] = settings.init_weights
    out["checkpoint_every"] = settings.checkpoint_every
    out["stage"] = stage
    RunConfig.from_dict(out)  # the merged values must hold together too
    return out
