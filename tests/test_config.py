"""Run configs: shipped YAML plus dotted overrides, numbers read the way users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from moefusion.config import apply_overrides, load_config_file, load_run_config
from moefusion.errors import ConfigError
from moefusion.weights import BUNDLED_RUN_CONFIG

PRETRAINED_CONFIG = (
    Path(__file__).resolve().parents[1] / "src" / "moefusion" / "pretrained" / BUNDLED_RUN_CONFIG
)


def test_overrides_read_exponent_floats_and_lists() -> None:
    config = load_run_config(
        "cpu", ["optim.lr=1e-3", "optim.weight_decay=2E-5", "optim.milestones=[80, 86]"]
    )
    assert config["optim"]["lr"] == 1e-3 and isinstance(config["optim"]["lr"], float)
    assert config["optim"]["weight_decay"] == 2e-5
    assert config["optim"]["milestones"] == [80, 86]
    assert load_run_config("cpu", ["data.crop=null"])["data"]["crop"] is None
    # words stay strings, integers stay integers
    assert apply_overrides({"a": None}, ["a=e3"])["a"] == "e3"
    with pytest.raises(ConfigError, match="must be a number"):  # a word over a number
        apply_overrides({"a": 1}, ["a=e3"])
    assert apply_overrides({"a": 1}, ["a=12"])["a"] == 12


def test_unknown_override_keys_fail() -> None:
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_run_config("cpu", ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_run_config("cpu", ["optim.lr"])


def test_shipped_run_config_reads_its_learning_rates_as_numbers() -> None:
    # the bundled run's resolved config: floats, not strings such as "1e-3"
    config = load_config_file(PRETRAINED_CONFIG)
    assert config["optim"]["lr"] == pytest.approx(1e-4)
    fusion = config["stages"]["fusion"]["optim"]
    # v5 is a fine-tune of v4 at 2e-4 (docs/model-card.md)
    assert fusion["lr"] == pytest.approx(2e-4) and isinstance(fusion["lr"], float)
    assert config["schedule"] == "staged"


def test_per_mixture_settings_take_one_value_for_every_mixture() -> None:
    """``model.gate_input_scale=norm`` over the cpu config's mapping (a command of
    docs/training.md); other mappings still refuse a plain value."""
    from moefusion.models import MoEFusionConfig

    config = load_run_config("cpu", ["model.gate_input_scale=norm", "model.balance_loss=switch"])
    model = MoEFusionConfig.from_dict(config["model"])
    assert model.gate_input_scale == {"mole": "norm", "moge": "norm"}
    assert model.balance_loss == {"mole": "switch", "moge": "switch"}
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_run_config("cpu", ["stages.fusion.optim=3"])
    # lists of mixtures take true / false for all / none
    config = load_run_config("cpu", ["model.gate_input_norm=true", "model.noisy_gating=false"])
    model = MoEFusionConfig.from_dict(config["model"])
    assert model.gate_input_norm == ("mole", "moge") and model.noisy_gating == ()
    with pytest.raises(ConfigError, match="must be a list"):
        load_run_config("cpu", ["data.datasets=true"])


def test_finetune_config_continues_the_bundled_weights() -> None:
    """``--config finetune``: v5's recipe, starting from ``init_weights: bundled``."""
    from moefusion.training.config import RunConfig, stage_config
    from moefusion.training.run import init_weights_file
    from moefusion.weights import bundled_weights_path, load_weights

    config = load_run_config("finetune")
    fusion = RunConfig.from_dict(stage_config(config, "fusion"))
    assert fusion.init_weights == "bundled" and fusion.trainer.max_steps == 1500
    assert fusion.optim.alpha == pytest.approx(40.0)
    assert RunConfig.from_dict(stage_config(config, "detect")).trainer.is_empty()
    assert init_weights_file("bundled") == str(bundled_weights_path())
    assert init_weights_file("mine.safetensors") == "mine.safetensors"
    # the config's model is the bundled file's architecture, so the weights load into it
    assert load_weights(bundled_weights_path()).config == fusion.model
