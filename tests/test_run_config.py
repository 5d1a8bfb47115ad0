"""The typed run config: unknown keys and bad values refused, defaults in one place,
plain-dict round trips, shipped and stored configs still load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moefusion.config import load_config_file, load_run_config
from moefusion.errors import ConfigError
from moefusion.training.config import (
    DataConfig,
    DatasetEntry,
    OptimConfig,
    RunConfig,
    StageConfig,
    TrainerConfig,
    stage_config,
)
from moefusion.weights import BUNDLED_RUN_CONFIG

PRETRAINED_CONFIG = Path(__file__).resolve().parents[1] / "src" / "moefusion" / "pretrained"
TINY_MODEL = {
    "decoder_channels": [8, 8, 8],
    "detector": {"backbone": "mobilenet_v3_small", "fpn_channels": 16},
}


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("data", "corp"), 64, "in data: corp"),
        (("optim", "lrr"), 1e-3, "in optim: lrr"),
        (("trainer", "max_epoch"), 3, "in trainer: max_epoch"),
        (("stages", "fusoin"), {}, "in stages: fusoin"),
        (("stages", "fusion", "learning_rate"), 1, "in stages.fusion: learning_rate"),
        (("stages", "fusion", "optim", "lrr"), 1, "in stages.fusion.optim: lrr"),
        (("stages", "detect", "data", "corp"), 1, "in stages.detect.data: corp"),
        (("stages", "joint", "trainer", "epochs"), 1, "in stages.joint.trainer: epochs"),
        (("data", "datasets"), [{"root": "a", "labelset": "x"}], r"data.datasets \(a\): labelset"),
        (("seeed",), 1, "in the run config: seeed"),
    ],
)
def test_unknown_keys_are_refused_by_name(path: tuple[str, ...], value: object, named: str) -> None:
    config = load_run_config("cpu")
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=named):
        RunConfig.from_dict(config)
    if path[0] == "stages":  # the stage's resolved config is refused as well
        with pytest.raises(ConfigError, match=named):
            stage_config(config, "fusion")


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (OptimConfig, {"schedule": "linear"}, "optim.schedule must be one of step, cosine"),
        (OptimConfig, {"pixel_target": "min"}, "optim.pixel_target must be one of"),
        (OptimConfig, {"milestones": 5}, "optim.milestones must be a list"),
        (DataConfig, {"hflip": 2}, r"data.hflip must be in \[0, 1\]"),
        (DataConfig, {"batch_size": 0}, "data.batch_size must be >= 1"),
        (DataConfig, {"skip_bad": "no"}, "data.skip_bad must be true or false"),
        (DataConfig, {"split_part": "dev"}, "data.split_part must be one of"),
        (DataConfig, {"resize": [480]}, r"data.resize must be \[H, W\]"),
        (TrainerConfig, {"max_steps": 1.5}, "trainer.max_steps must be an integer"),
        (TrainerConfig, {"max_time": 5}, "trainer.max_time must be"),
    ],
)
def test_bad_values_are_refused(section: type, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        section.from_dict(values)


def test_a_bad_stage_value_names_the_stage() -> None:
    config = load_run_config("cpu", ["stages.fusion.optim.schedule=linear"])
    with pytest.raises(ConfigError, match="stages.fusion: optim.schedule must be one of"):
        RunConfig.from_dict(config)
    config = load_run_config("cpu", ["stages.fusion.checkpoint_every=0"])
    with pytest.raises(ConfigError, match="stages.fusion.checkpoint_every must be >= 1"):
        RunConfig.from_dict(config)


def test_left_out_and_null_keys_take_the_one_default() -> None:
    run = RunConfig.from_dict({"model": TINY_MODEL})
    assert run.data == DataConfig() and run.optim == OptimConfig()
    assert run.trainer == TrainerConfig() and run.trainer.lightning_kwargs() == {}
    assert run.seed == 0 and run.schedule == "joint"
    assert run.checkpoint_every == StageConfig().checkpoint_every == 1
    assert run.stages.get("fusion") == StageConfig()
    # null means "the default" (old configs wrote warmup_steps: null), except where null
    # is a value of its own (no crop, no clipping, Lightning's default)
    optim = OptimConfig.from_dict(
        {"warmup_steps": None, "step_milestones": None, "grad_clip": None}
    )
    assert optim.warmup_steps == OptimConfig().warmup_steps and optim.step_milestones == ()
    assert optim.grad_clip is None
    assert DataConfig.from_dict({"crop": None, "batch_size": None}).batch_size == 4
    stage = StageConfig.from_stage_dict({"checkpoint_every": None, "init_weights": None}, "joint")
    assert stage == StageConfig()
    # the fields' defaults are what the training code uses
    optim_default = OptimConfig()
    for name, value in {
        "alpha": 10.0,
        "gamma": 0.1,
        "grad_clip": 35.0,
        "schedule": "step",
        "pixel_target": "boxes",
    }.items():
        assert getattr(optim_default, name) == value


def test_modules_read_the_typed_defaults() -> None:
    from moefusion.training.module import MoEFusionModule
    from moefusion.training.stages import FusionStageModule

    minimal = {"model": TINY_MODEL, "optim": {"milestones": [3]}}
    joint = MoEFusionModule(minimal)
    assert joint.alpha == OptimConfig.alpha and joint.seed == RunConfig.seed
    assert joint.run_config == minimal  # the dict is stored as given
    fusion = FusionStageModule(minimal)
    assert fusion.pixel_target == OptimConfig.pixel_target
    assert fusion.alpha_warmup_steps == OptimConfig.alpha_warmup_steps
    optimizer = fusion.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == OptimConfig.lr
    assert optimizer.param_groups[0]["weight_decay"] == OptimConfig.weight_decay


def test_to_dict_from_dict_round_trip_for_shipped_and_stored_configs() -> None:
    stored = load_config_file(PRETRAINED_CONFIG / BUNDLED_RUN_CONFIG)
    for plain in (load_run_config("cpu"), load_run_config("paper"), stored):
        run = RunConfig.from_dict(plain)
        again = RunConfig.from_dict(run.to_dict())
        assert again == run and again.to_dict() == run.to_dict()
        for name in ("data", "optim", "trainer", "seed", "schedule"):
            if name in plain and not isinstance(plain[name], dict):
                assert run.to_dict()[name] == plain[name]
        for section in ("optim", "trainer"):
            assert {k: run.to_dict()[section][k] for k in plain[section]} == plain[section]
    run = RunConfig.from_dict(load_run_config("cpu"))
    assert run.data.datasets[1] == DatasetEntry(
        "../shared/data/msrs", None, {"label_set": "infrared"}
    )
    assert run.to_dict()["data"]["datasets"][1] == {
        "root": "../shared/data/msrs",
        "label_set": "infrared",
    }
    assert isinstance(run.data.classes, tuple) and run.to_dict()["data"]["classes"] == [
        "person",
        "car",
        "bicycle",
    ]
    changed = dataclasses.replace(run.optim, lr=3e-4)
    assert OptimConfig.from_dict(changed.to_dict()) == changed


def test_stage_configs_merge_and_load_as_typed_configs() -> None:
    plain = load_run_config("cpu", ["stages.fusion.checkpoint_every=2"])
    resolved = stage_config(plain, "fusion")
    # the stage's dict keeps the run's keys (it is saved beside the stage's checkpoints)
    assert resolved["stages"] == plain["stages"] and resolved["model"] == plain["model"]
    typed = RunConfig.from_dict(resolved)
    assert typed.stage == "fusion" and typed.checkpoint_every == 2
    assert typed.data.crop == 128 and typed.data.max_side == 640
    assert typed.optim.schedule == "cosine" and typed.optim.weight_decay == 1e-4
    assert typed.trainer.max_steps == 10000 and typed.trainer.max_epochs is None
    # a typed config gives the same stage dict as its plain form
    assert RunConfig.from_dict(stage_config(RunConfig.from_dict(plain), "fusion")) == typed
    with pytest.raises(ConfigError, match="unknown stage 'fuse'"):
        stage_config(plain, "fuse")


def test_train_refuses_a_bad_config_before_writing(tmp_path: Path) -> None:
    from moefusion.training.run import train

    config = load_run_config("cpu")
    config["trainer"] = {**config["trainer"], "max_epoch": 1}
    with pytest.raises(ConfigError, match="in trainer: max_epoch"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
