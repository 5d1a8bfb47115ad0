"""Top-level overrides of a staged config reach its stages (issue 38, point 1).

``trainer.max_epochs=1`` on the staged ``cpu`` config used to be replaced by each stage's
own ``trainer`` values without a word; now it applies to every stage that sets the key,
unless the same command sets that stage's key itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from moefusion.config import load_config_file, load_run_config
from moefusion.errors import ConfigError
from moefusion.training.config import RunConfig, stage_config

V4 = "src/moefusion/pretrained/moefusion-cpu-v6.safetensors"  # the bundled weights


def _stage(config: dict[str, Any], name: str) -> RunConfig:
    return RunConfig.from_dict(stage_config(config, name))


def test_top_level_overrides_reach_every_stage_that_trains() -> None:
    notes: list[str] = []
    config = load_run_config(
        "cpu", ["trainer.max_epochs=1", "data.crop=96", "data.batch_size=1"], notes
    )
    for name in ("detect", "fusion"):
        stage = _stage(config, name)
        assert stage.trainer.max_epochs == 1, name
        assert stage.data.crop == 96 and stage.data.batch_size == 1, name
    # the fusion stage keeps its own step budget (Lightning stops at the first limit)
    assert _stage(config, "fusion").trainer.max_steps == 10000
    # a length does not turn on the stage the config turns off, and says so
    assert _stage(config, "joint").trainer.is_empty()
    assert notes == [
        "trainer.max_epochs=1 applies to the stages that train; joint stays off "
        "(set stages.joint.trainer.max_epochs to train it)"
    ]


@pytest.mark.parametrize("stage_first", [True, False])
def test_a_stage_key_on_the_command_line_wins_in_any_order(stage_first: bool) -> None:
    items = ["trainer.max_steps=5", "stages.fusion.trainer.max_steps=7"]
    config = load_run_config("cpu", items if stage_first else items[::-1])
    assert _stage(config, "fusion").trainer.max_steps == 7
    assert _stage(config, "detect").trainer.max_steps == 5
    # a whole stage section counts as setting its keys
    config = load_run_config(
        "cpu", ["stages.fusion.trainer={max_epochs: null, max_steps: 26}", "trainer.max_steps=5"]
    )
    assert _stage(config, "fusion").trainer.max_steps == 26


def test_a_whole_top_level_section_reaches_the_stages() -> None:
    config = load_run_config("cpu", ["data={crop: 64, batch_size: 2}"])
    assert _stage(config, "fusion").data.crop == 64
    assert _stage(config, "detect").data.batch_size == 2


def test_keys_no_stage_sets_and_the_running_commands_mean_what_they_did() -> None:
    """The v5 commands: stage keys plus ``optim.alpha``, which no stage sets."""
    items = [
        f"stages.detect.init_weights={V4}",
        "stages.detect.trainer.max_epochs=0",
        "stages.fusion.trainer.max_steps=6000",
        "optim.alpha=20",
    ]
    config = load_run_config("cpu", items)
    shipped = load_config_file("cpu")
    assert config["stages"]["fusion"] == {
        **shipped["stages"]["fusion"],
        "trainer": {**shipped["stages"]["fusion"]["trainer"], "max_steps": 6000},
    }
    assert config["stages"]["joint"] == shipped["stages"]["joint"]
    assert _stage(config, "detect").trainer.is_empty()
    assert _stage(config, "fusion").optim.alpha == 20


def test_a_config_file_follows_the_same_rule(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(load_config_file("cpu"), sort_keys=False))
    config = load_run_config(path, ["trainer.max_epochs=2", "optim.lr=3e-4"])
    assert _stage(config, "detect").trainer.max_epochs == 2
    assert _stage(config, "fusion").optim.lr == pytest.approx(3e-4)
    # and the run's saved config.yaml (what --config runs/x/config.yaml reads) records it
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config, sort_keys=False))
    assert _stage(load_run_config(saved), "detect").trainer.max_epochs == 2


def test_resume_with_a_longer_budget_continues_a_finished_stage(tmp_path: Path) -> None:
    """``--resume auto trainer.max_epochs=90`` extends a staged run (train's own example)."""
    from moefusion.training.run import _stage_finished

    stage_dir = tmp_path / "stage1-detect"
    stage_dir.mkdir()
    (stage_dir / "done.json").write_text(json.dumps({"epochs": 60, "global_step": 600}))
    assert _stage_finished(stage_dir, _stage(load_run_config("cpu"), "detect"))
    longer = load_run_config("cpu", ["trainer.max_epochs=90", "optim.milestones=[80, 86]"])
    assert not _stage_finished(stage_dir, _stage(longer, "detect"))
    assert _stage(longer, "detect").optim.milestones == (80, 86)


def test_train_command_applies_the_override_to_the_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moefusion.cli import main
    from moefusion.commands import train as train_command

    seen: dict[str, Any] = {}

    def fake_train(config: dict[str, Any], out: Path, **kwargs: Any) -> Path:
        seen.update(config)
        return Path(out)

    monkeypatch.setattr("moefusion.training.run.train", fake_train)
    monkeypatch.setattr(train_command, "check_data", lambda config: None)
    monkeypatch.setattr(train_command, "check_memory", lambda config: None)
    code = main(
        ["train", "--config", "cpu", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
        + ["trainer.max_epochs=1", "data.crop=96"]
    )
    assert code == 0
    assert _stage(seen, "detect").trainer.max_epochs == 1
    assert _stage(seen, "fusion").data.crop == 96
    assert _stage(seen, "fusion").data.datasets[0].root == str(tmp_path / "d")
    assert "joint stays off" in capsys.readouterr().err


# ------------------------------------- learning-rate overrides that no stage would read

#: (config, overrides, pieces of the one-line refusal: the key, why, what to set instead)
REFUSED = [
    pytest.param(
        "finetune",
        ["optim.milestones=[5, 10]"],
        [
            "optim.milestones has no effect, as no stage that trains reads it",
            "stages.fusion follows optim.schedule=cosine (per step), which has no epoch milestones",
            "set stages.fusion.optim.schedule=step stages.fusion.optim.step_milestones=[...]",
        ],
        id="epoch-milestones-cosine-fusion-only",
    ),
    pytest.param(
        "finetune",
        ["optim.gamma=0.5"],
        [
            "optim.gamma has no effect",
            "optim.schedule=cosine (per step), which never multiplies the rate by gamma",
            "add stages.fusion.optim.schedule=step stages.fusion.optim.step_milestones=[...]",
        ],
        id="gamma-cosine",
    ),
    pytest.param(
        "finetune",
        ["stages.fusion.optim.step_milestones=[5]"],
        [
            "stages.fusion.optim.step_milestones has no effect",
            "stages.fusion follows optim.schedule=cosine (per step), which has no milestones",
            "add stages.fusion.optim.schedule=step",
        ],
        id="step-milestones-cosine",
    ),
    pytest.param(
        "cpu",
        ["stages.fusion.optim.schedule=step", "stages.fusion.optim.min_lr_factor=0.1"],
        [
            "stages.fusion.optim.min_lr_factor has no effect",
            "optim.schedule=step (per step), which has no min_lr_factor (only cosine has)",
            "add stages.fusion.optim.schedule=cosine",
        ],
        id="min-lr-factor-step",
    ),
    pytest.param(
        "finetune",
        ["stages.fusion.optim.schedule=constant", "stages.fusion.optim.min_lr_factor=0.1"],
        ["optim.schedule=constant (per step), which has no min_lr_factor"],
        id="min-lr-factor-constant",
    ),
    pytest.param(
        "finetune",
        ["stages.fusion.optim.schedule=step", "optim.gamma=0.5"],
        [
            "stages.fusion follows optim.schedule=step with no step_milestones, so gamma "
            "never applies",
            "add stages.fusion.optim.step_milestones=[...]",
        ],
        id="gamma-step-without-milestones",
    ),
    pytest.param(
        "cpu",
        ["stages.detect.trainer.max_epochs=0", "optim.milestones=[5]"],
        [
            "each of stages.fusion, stages.refine, stages.sharpen follows "
            "optim.schedule=cosine (per step)"
        ],
        id="epoch-milestones-detect-off",
    ),
    pytest.param(
        "finetune",
        ["stages.detect.optim.milestones=[3]"],
        [
            "stages.detect.optim.milestones has no effect",
            "stages.detect does not train (its budget is 0)",
            "add stages.detect.trainer.max_epochs=N to train it",
        ],
        id="stage-that-does-not-train",
    ),
    pytest.param(
        "finetune",
        ["optim={lr: 1.0e-4, milestones: [5], gamma: 0.1}"],
        ["optim.milestones has no effect"],
        id="whole-top-level-section",
    ),
    pytest.param(
        "finetune",
        ["stages.fusion.optim={lr: 2.0e-4, schedule: cosine, step_milestones: [40]}"],
        ["stages.fusion.optim.step_milestones has no effect"],
        id="whole-stage-section",
    ),
    pytest.param(
        "cpu",
        ["schedule=joint", "stages.fusion.optim.warmup_steps=10"],
        [
            "stages.fusion.optim.warmup_steps has no effect",
            "schedule=joint trains end to end from the top-level sections, not stages.*",
        ],
        id="stage-key-of-a-joint-run",
    ),
    pytest.param(
        "paper",
        ["optim.milestones=[]", "optim.gamma=0.5"],
        ["schedule=joint steps the rate at epochs but has no optim.milestones"],
        id="joint-gamma-without-milestones",
    ),
]


@pytest.mark.parametrize(("config", "items", "pieces"), REFUSED)
def test_an_optim_override_that_no_training_stage_reads_is_refused(
    config: str, items: list[str], pieces: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(config, items)
    message = str(info.value)
    assert "\n" not in message and message.startswith("override '")
    for piece in pieces:
        assert piece in message


@pytest.mark.parametrize(
    ("config", "items"),
    [
        # read by a stage that trains: cpu's detector stage steps at epoch milestones
        ("cpu", ["optim.milestones=[5, 10]", "optim.gamma=0.5"]),
        ("cpu", ["trainer.max_epochs=90", "optim.milestones=[80, 86]"]),  # train's example
        (
            "finetune",
            ["stages.fusion.optim.schedule=step", "stages.fusion.optim.step_milestones=[5]"],
        ),
        (
            "finetune",
            [
                "stages.fusion.optim.schedule=step",
                "stages.fusion.optim.step_milestones=[5]",
                "optim.gamma=0.5",
            ],
        ),
        (
            "finetune",
            ["stages.fusion.optim.min_lr_factor=0.1", "stages.fusion.optim.warmup_steps=5"],
        ),
        ("finetune", ["stages.detect.trainer.max_epochs=5", "stages.detect.optim.milestones=[3]"]),
        ("cpu", ["schedule=joint", "optim.milestones=[1]", "optim.gamma=0.5"]),
        ("paper", ["optim.gamma=0.5"]),
        # values that ask for what happens anyway
        ("finetune", ["optim.milestones=[]"]),
        ("finetune", ["stages.fusion.optim.step_milestones=[]"]),
        # a stage section copied from cpu.yaml (its cosine lists step_milestones: [])
        (
            "finetune",
            [
                "stages.fusion.optim={lr: 1.0e-3, schedule: cosine, warmup_steps: 200, "
                "min_lr_factor: 0.05, step_milestones: [], pixel_target: max, "
                "alpha_warmup_steps: 300}"
            ],
        ),
        # a bad value is left to the validation, which names it
        ("cpu", ["stages.fusion.optim.schedule=linear"]),
    ],
)
def test_an_optim_override_that_a_training_stage_reads_applies(
    config: str, items: list[str]
) -> None:
    load_run_config(config, items)


def test_a_milestone_override_applies_to_the_detector_stage() -> None:
    config = load_run_config("cpu", ["optim.milestones=[5, 10]", "optim.gamma=0.5"])
    detect = _stage(config, "detect").optim
    assert detect.milestones == (5, 10) and detect.gamma == 0.5
    fusion = load_run_config(
        "finetune",
        ["stages.fusion.optim.schedule=step", "stages.fusion.optim.step_milestones=[5]"],
    )
    assert _stage(fusion, "fusion").optim.step_milestones == (5,)


def test_the_train_command_refuses_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moefusion.cli import main
    from moefusion.commands import train as train_command

    monkeypatch.setattr("moefusion.training.run.train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(train_command, "check_data", lambda config: None)
    monkeypatch.setattr(train_command, "check_memory", lambda config: None)
    out = tmp_path / "r"
    code = main(["train", "--config", "finetune", "--out", str(out), "optim.milestones=[5, 10]"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "moefusion train: error: override 'optim.milestones=[5, 10]': optim.milestones has no "
        "effect"
    )
    assert "stages.fusion.optim.step_milestones=[...]" in err


def test_the_studies_and_the_recipe_script_pass_only_overrides_that_apply(
    tmp_path: Path, load_script: Any
) -> None:
    from moefusion.studies.definitions import STUDIES
    from moefusion.studies.runner import Budget, StudySettings, resolve_run
    from moefusion.weights import bundled_weights_path

    for budget in (Budget(steps=50), Budget(minutes=2)):
        settings = StudySettings(weights=bundled_weights_path(), budget=budget)
        for study in STUDIES.values():
            for variant in study.variants:
                resolve_run(settings, variant, 0, tmp_path)
    script = load_script("recipe_study")
    for row in script.ROWS:
        command = script.row_command(row, tmp_path, 1.0, 100, [])
        load_run_config("cpu", command[command.index("--out") + 2 :])
