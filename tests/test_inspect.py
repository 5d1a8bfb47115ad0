"""``moefusion inspect`` and :func:`moefusion.inspection.inspect_pair`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion import Fuser
from moefusion.cli import main
from moefusion.data import load_pair
from moefusion.errors import PairError
from moefusion.inspection import OUTPUT_FILES, inspect_pair
from moefusion.models import build_model
from moefusion.weights import save_weights

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
STEM = "00095D"


@pytest.fixture(scope="module")
def pair():
    return load_pair(SAMPLES / "ir" / f"{STEM}.png", SAMPLES / "vi" / f"{STEM}.png")


def test_inspection_matches_the_fuser_and_its_experts_recombine(make_tiny_model, pair) -> None:
    model = make_tiny_model()
    ir, vi = pair.ir[:96, :128], pair.vi[:96, :128]
    ins = inspect_pair(model, ir, vi)
    expected = Fuser(model, device="cpu").fuse(ir, vi, return_details=True)
    # the Fuser runs a folded copy of the network (docs/fuse.md): equal up to rounding
    np.testing.assert_allclose(ins.fused, expected.fused, atol=1e-5)
    np.testing.assert_allclose(ins.attention, expected.attention, atol=1e-5)
    for name, gates in expected.gates.items():
        np.testing.assert_allclose(ins.gates[name], gates, atol=1e-5)
        assert (ins.gates[name] > 0).tolist() == (gates > 0).tolist()
        assert len(ins.selected(name)) == model.config.k_of(name.split("_")[0])
    n = model.config.num_experts
    assert ins.local_experts["mole_fg"].shape == (n, 96, 128)
    assert ins.local_modality == ["visible"] * (n // 2) + ["infrared"] * (n - n // 2)
    assert (ins.local_experts["mole_bg"] >= 0).all()
    # MoGE combines linearly: the gate-weighted sum of every expert's image is the output
    assert ins.global_experts.shape == (n, 96, 128)
    recombined = np.tensordot(ins.gates["moge"], ins.global_experts, axes=1)
    np.testing.assert_allclose(np.clip(recombined, 0, 1), ins.fused, atol=1e-5)
    summary = ins.summary()
    assert summary["size"] == [128, 96] and set(summary["selected"]) == set(ins.gates)


def test_inspection_of_ablations_has_only_their_parts(tiny_config, pair) -> None:
    ir, vi = pair.ir[:64, :64], pair.vi[:64, :64]
    for variant, has_local, has_global in (("no_mole", False, True), ("no_moge", True, False)):
        torch.manual_seed(0)
        model = build_model(dict(copy.deepcopy(tiny_config), variant=variant), with_heads=False)
        ins = inspect_pair(model, ir, vi)
        assert bool(ins.local_experts) is has_local, variant
        assert (ins.global_experts.size > 0) is has_global, variant
        assert ("moge" in ins.gates) is has_global and ("mole_fg" in ins.gates) is has_local
    with pytest.raises(PairError, match="same size"):
        inspect_pair(model, ir, vi[:32])


def test_inspect_command_writes_the_figures_and_refuses_to_replace_them(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "insp"
    args = ["inspect", "--ir", str(SAMPLES / "ir" / f"{STEM}.png"),
            "--vi", str(SAMPLES / "vi" / f"{STEM}.png"), "--out", str(out),
            "--weights", str(tiny_weights)]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "inspection.json").read_text())
    assert summary["size"] == [640, 480] and len(summary["gates"]["moge"]) == 4
    assert "moge: experts" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0

    # no_mole weights: no MoLE figure, and the old one does not linger
    torch.manual_seed(0)
    model = build_model(
        {"encoder_growth": 8, "decoder_channels": [8, 8, 8], "variant": "no_mole",
         "detector": {"backbone": "mobilenet_v3_large", "fpn_channels": 16}},
        with_heads=False,
    )  # fmt: skip
    other = save_weights(model, tmp_path / "no_mole.safetensors")
    assert main([*args[:-1], str(other), "--overwrite"]) == 0
    assert not (out / "mole_experts.png").exists()
    capsys.readouterr()

    bad = ["inspect", "--ir", str(SAMPLES / "ir" / f"{STEM}.png"),
           "--vi", str(SAMPLES / "vi" / "010006.jpg"), "--out", str(tmp_path / "b"),
           "--weights", str(tiny_weights)]  # fmt: skip
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "010006" in err, err
    assert main(["inspect", "--ir", str(SAMPLES / "ir"), "--vi", str(SAMPLES / "vi"),
                 "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert "not a file" in capsys.readouterr().err
