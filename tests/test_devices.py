"""Device names: one parser for --device options and the detection config's ``device``."""

from __future__ import annotations

import pytest
import torch

from moefusion.devices import parse_device, resolve_device
from moefusion.errors import ConfigError, MoEFusionError


def test_the_commands_and_the_detection_config_share_the_device_parser() -> None:
    from moefusion.commands import _common
    from moefusion.detection import DetectConfig
    from moefusion.detection import resolve_device as detection_resolve

    assert _common.parse_device is parse_device and detection_resolve is resolve_device
    assert DetectConfig.from_dict({"device": "mps"}).device == "mps"  # refused before
    assert DetectConfig.from_dict({"device": " CUDA:1 "}).device == "cuda:1"
    with pytest.raises(ConfigError, match="unknown device 'gpu'; use auto"):
        DetectConfig.from_dict({"device": "gpu"})
    with pytest.raises(MoEFusionError, match="unknown device"):
        parse_device("cuda:x")


def test_resolve_device_gives_the_torch_device_when_it_exists() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(MoEFusionError, match="unknown device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(MoEFusionError, match="CUDA is not available"):
            resolve_device("cuda:0")
    if not torch.backends.mps.is_available():
        with pytest.raises(MoEFusionError, match="MPS is not available"):
            resolve_device("mps")
