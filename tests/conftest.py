"""Test-wide settings and the shared fixtures: the tiny model config and its weights, and
a loader for the scripts under ``scripts/``."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Must be set before torch starts its OpenMP pool: passive waiting keeps 2-core CI
# machines from spinning (3x faster test runs under load, no cost when idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("make_report")``: the module of ``scripts/make_report.py`` (scripts are
    not a package; registered in ``sys.modules`` so that its dataclasses resolve)."""

    def load(name: str) -> ModuleType:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load


#: The smallest useful MoE-Fusion: growth 8, 8-channel decoders, a MobileNetV3 detector
#: with a 16-channel FPN. Fast enough on 2 CPU cores for every CLI and API test.
TINY_CONFIG: dict[str, Any] = {
    "encoder_growth": 8,
    "decoder_channels": [8, 8, 8],
    "detector": {"backbone": "mobilenet_v3_large", "fpn_channels": 16},
}


def _make_tiny_model(*, seed: int = 0, random_gates: bool = True) -> Any:
    """The tiny inference model (no detection heads), seeded; with ``random_gates`` the
    gate weights are drawn from N(0, 0.05) so that routing depends on the input (zero
    init would make every gate pick the same experts)."""
    import torch
    from torch import nn

    from moefusion.models import NoisyTopKGate, build_model

    torch.manual_seed(seed)
    model = build_model(copy.deepcopy(TINY_CONFIG), with_heads=False)
    if random_gates:
        for gate in model.modules():
            if isinstance(gate, NoisyTopKGate):
                nn.init.normal_(gate.w_gate, std=0.05)
    return model


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """A fresh copy of :data:`TINY_CONFIG` (the ``model`` part of a run config)."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def make_tiny_model() -> Callable[..., Any]:
    """``make_tiny_model(seed=0, random_gates=True) -> MoEFusion`` (see above)."""
    return _make_tiny_model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with random gates saved as safetensors (``--weights`` file)."""
    from moefusion.weights import save_weights

    path = tmp_path_factory.mktemp("tiny-weights") / "tiny.safetensors"
    return save_weights(_make_tiny_model(), path)


#: Markers of tests that run only when ``-m`` names them: the browser test (a real
#: Chromium, minutes of set-up) and the full FMI reference check (168 values, about
#: 10 CPU minutes; a verified subset runs by default).
OPT_IN_MARKERS = {
    "browser": "browser test: run it with -m browser (see docs/demo.md)",
    "fmi_full": "full FMI reference check: run it with -m fmi_full (docs/metrics.md)",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests with an :data:`OPT_IN_MARKERS` marker run only when the marker expression
    asks for them: ``python -m pytest -m browser ...``."""
    expr = config.getoption("markexpr") or ""
    for marker, reason in OPT_IN_MARKERS.items():
        if marker in expr:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
