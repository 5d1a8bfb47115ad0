"""Fusing from a training checkpoint: ``load_weights``/``Fuser.from_file`` accept a .ckpt."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion.errors import MoEFusionError


def _checkpoint(path: Path, config: dict, *, subnormal: bool = False) -> torch.nn.Module:
    """A file laid out as a Lightning checkpoint of the training module (model.* keys)."""
    from moefusion.models import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(config)).eval()
    gate = model.fusion.global_stage.mixture.gate
    with torch.no_grad():
        gate.w_gate.normal_(std=0.05)
        if subnormal:
            gate.w_gate[0, 0] = 1e-40
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    run_config = {"model": copy.deepcopy(config)}
    torch.save({"state_dict": state, "hyper_parameters": {"config": run_config}}, path)
    return model


def test_a_checkpoint_fuses_like_its_model(tmp_path: Path, tiny_config: dict) -> None:
    from moefusion import Fuser
    from moefusion.weights import load_weights

    model = _checkpoint(tmp_path / "last.ckpt", tiny_config)
    loaded = load_weights(tmp_path / "last.ckpt")
    assert not loaded.training
    ir, vi = torch.rand(1, 1, 40, 56), torch.rand(1, 1, 40, 56)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ir, vi).fused, model(ir, vi).fused)
    fused = Fuser.from_file(tmp_path / "last.ckpt", device="cpu").fuse(
        ir[0, 0].numpy(), vi[0, 0].numpy()
    )
    assert fused.shape == (40, 56) and np.isfinite(fused).all()


def test_a_checkpoint_loses_its_subnormal_weights(tmp_path: Path, tiny_config: dict) -> None:
    from moefusion.weights import load_weights

    _checkpoint(tmp_path / "last.ckpt", tiny_config, subnormal=True)
    gate = load_weights(tmp_path / "last.ckpt").fusion.global_stage.mixture.gate
    assert gate.w_gate[0, 0].item() == 0.0


def test_a_zip_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    from moefusion.weights import load_weights

    bad = tmp_path / "notes.ckpt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(MoEFusionError, match="not a PyTorch checkpoint"):
        load_weights(bad)
