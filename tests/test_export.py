"""ONNX and TorchScript export match PyTorch at several sizes (dynamic batch, H, W)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion.cli import main
from moefusion.export import export_onnx, export_torchscript, load_exported
from moefusion.models import MoEFusion
from moefusion.weights import save_weights

#: (B, H, W): the sizes of the brief, plus a batch and a multiple of 32 (no detector padding)
SHAPES = [(1, 64, 96), (1, 77, 123), (2, 50, 70)]
ATOL = 1e-4


@pytest.fixture(scope="module")
def model(make_tiny_model) -> MoEFusion:
    return make_tiny_model().eval()  # random gates: routing that depends on the input


def _reference(model: MoEFusion, ir: torch.Tensor, vi: torch.Tensor) -> tuple[np.ndarray, ...]:
    with torch.inference_mode():
        out = model(ir, vi)
    return out.fused.clamp(0, 1).numpy(), out.attention.numpy()


def _compare(model: MoEFusion, path: Path, fmt: str, with_attention: bool) -> None:
    run = load_exported(path, fmt)
    g = torch.Generator().manual_seed(1)
    for b, h, w in SHAPES:
        ir, vi = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
        fused, attention = _reference(model, ir, vi)
        got = run(ir.numpy(), vi.numpy())
        assert got[0].shape == (b, 1, h, w)
        np.testing.assert_allclose(got[0], fused, atol=ATOL, rtol=0)
        if with_attention:
            # the attention map is where a frozen detector padding would show
            np.testing.assert_allclose(got[1], attention, atol=ATOL, rtol=0)


def test_onnx_matches_pytorch(model: MoEFusion, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", with_attention=True)
    _compare(model, path, "onnx", with_attention=True)


def test_torchscript_matches_pytorch(model: MoEFusion, tmp_path: Path) -> None:
    path = export_torchscript(model, tmp_path / "m.pt")
    _compare(model, path, "torchscript", with_attention=False)
    # the caller's model keeps sparse dispatch
    assert all(m.dispatch == "sparse" for m in model.modules() if hasattr(m, "dispatch"))


def test_export_command(
    model: MoEFusion,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.pt"
    args = ["export", "--format", "torchscript", "--weights", str(weights), "--out", str(out)]
    assert main(args) == 0
    assert out.is_file() and "check: max" in capsys.readouterr().out
    assert main(args) == 2  # exists
    assert main([*args, "--opset", "17"]) == 2  # opset is for ONNX
    import moefusion.weights

    monkeypatch.setattr(moefusion.weights, "bundled_weights_path", lambda: None)
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--weights" in capsys.readouterr().err
