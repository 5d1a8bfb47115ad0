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
