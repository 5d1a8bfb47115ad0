"""``moefusion demo`` without a browser: the page's logic on a real sample pair (tiny
model), its error messages, and that nothing but the page itself needs gradio."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moefusion.cli import main
from moefusion.commands import demo as demo_command
from moefusion.data.io import read_image
from moefusion.demo.logic import (
    DEFAULT_BASELINE,
    METHOD_NAME,
    Demo,
    attention_overlay,
    bundled_samples_dir,
    gate_bars,
    metrics_markdown,
    sample_pairs,
)
from moefusion.errors import MoEFusionError
from moefusion.metrics import TABLE1_METRICS, compute, to_gray_u8

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
IR = SAMPLES / "ir" / "FLIR_00006.jpg"  # 500x329, 1-channel
VI = SAMPLES / "vi" / "FLIR_00006.jpg"  # RGB
OTHER_VI = SAMPLES / "vi" / "00012N.png"  # 640x480


@pytest.fixture(scope="module")
def demo(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    from moefusion.fuser import Fuser

    return Demo(
        Fuser.from_file(tiny_weights, device="cpu"),
        tmp_path_factory.mktemp("demo-downloads"),
        weights_name=tiny_weights.name,
        samples=sample_pairs(SAMPLES),
    )


def test_nothing_but_the_page_imports_gradio() -> None:
    code = (
        "import sys\n"
        "import moefusion.demo.logic, moefusion.commands.demo\n"
        "from moefusion.cli import build_parser\n"
        "build_parser()\n"
        "print('gradio' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_demo_is_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_without_gradio_one_line_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        demo_command.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gradio" else real(name, *a),
    )
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[demo]"' in err[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--port", "0"], "--port"), (["--samples", "nowhere"], "ir/ and vi/")],
)
def test_bad_options_refused_before_serving(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.setattr(demo_command.importlib.util, "find_spec", lambda name, *a: object())
    assert main(["demo", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_bundled_samples_are_offered() -> None:
    assert bundled_samples_dir() == SAMPLES
    assert {"FLIR_00006", "00012N", "010006"} <= set(sample_pairs(SAMPLES))
    assert sample_pairs(None) == {}


def test_sample_pair_fused_gates_attention_metrics_downloads(demo: Demo) -> None:
    ir, vi = demo.sample("FLIR_00006")
    assert (ir, vi) == (str(IR), str(VI))
    out = demo.run(ir, vi)
    assert out.ok, out.message
    r = out.result
    assert r is not None
    fused = r.fusion.fused
    assert fused.shape == (329, 500) and fused.dtype == np.float32
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    assert r.fusion.color is not None and r.fusion.color.shape == (329, 500, 3)
    assert set(r.fusion.gates) == {"mole_fg", "mole_bg", "moge"}
    for name, w in r.fusion.gates.items():
        assert w.sum() == pytest.approx(1.0, abs=1e-5), name
        assert np.count_nonzero(w) >= 1
    assert r.fusion.attention.shape == (329, 500)
    panels = r.panels()
    assert panels["vi"].shape == (329, 500, 3)  # a colour visible image is shown in colour
    for key in ("ir", "fused", "baseline"):
        assert panels[key].shape == (329, 500) and panels[key].dtype == np.uint8
    assert panels["attention"].shape == (329, 500, 3)
    small = r.panels(max_side=250)  # large images are shown smaller, downloaded full size
    assert small["fused"].shape == (164, 250) and small["attention"].shape == (164, 250, 3)
    assert "Experts that fired" in out.message and "FLIR_00006" in out.message

    # the table: the eight paper metrics of both methods, equal to compute() on the
    # files as `moefusion evaluate` reads them (sources and the downloaded images)
    assert list(r.metrics) == [METHOD_NAME, DEFAULT_BASELINE]
    files = {p.name: p for p in out.files}
    assert set(files) == {
        "FLIR_00006_moefusion.png",
        "FLIR_00006_moefusion_color.png",
        f"FLIR_00006_{DEFAULT_BASELINE}.png",
    }
    ir_u8, vi_u8 = read_image(IR), to_gray_u8(read_image(VI), "paper")
    for method in (METHOD_NAME, DEFAULT_BASELINE):
        assert list(r.metrics[method]) == list(TABLE1_METRICS)
        expected = compute(
            ir_u8, vi_u8, read_image(files[f"FLIR_00006_{method}.png"]), "paper", TABLE1_METRICS
        )
        assert r.metrics[method] == expected
    table = metrics_markdown(r.metrics)
    assert all(m in table for m in TABLE1_METRICS) and METHOD_NAME in table
    assert read_image(files["FLIR_00006_moefusion_color.png"]).shape == (329, 500, 3)


def test_changing_the_baseline_does_not_fuse_again(demo: Demo) -> None:
    first = demo.run(str(IR), str(VI), "laplacian")
    again = demo.run(str(IR), str(VI), "average")
    assert first.result is not None and again.result is not None
    assert again.result.fusion is first.result.fusion
    assert list(again.result.metrics) == [METHOD_NAME, "average"]
    assert not demo.run(str(IR), str(VI), "nope").ok


def test_gate_bars_and_attention_overlay() -> None:
    gates = {"mole_fg": np.array([0.0, 0.5, 0.5, 0.0]), "moge": np.array([1.0, 0, 0, 0])}
    bars = gate_bars(gates)
    assert bars.ndim == 3 and bars.shape[2] == 3 and bars.dtype == np.uint8
    with pytest.raises(MoEFusionError):
        gate_bars({})
    over = attention_overlay(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.ones((3, 4)))
    assert over.shape == (3, 4, 3) and over.dtype == np.uint8
    with pytest.raises(MoEFusionError):
        attention_overlay(np.zeros((3, 4)), np.zeros((4, 3)))


def test_bad_inputs_give_a_message_not_an_exception(demo: Demo, tmp_path: Path) -> None:
    mismatched = demo.run(str(IR), str(OTHER_VI))
    assert not mismatched.ok and mismatched.result is None and not mismatched.files
    assert "500x329" in mismatched.message and "640x480" in mismatched.message
    assert "00012N.png" in mismatched.message and str(SAMPLES) not in mismatched.message
    resized = demo.run(str(IR), str(OTHER_VI), resize=True)
    assert resized.result is not None and resized.result.fusion.fused.shape == (329, 500)

    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    unreadable = demo.run(str(bad), str(VI))
    assert not unreadable.ok and "cannot read image broken.png" in unreadable.message

    text = tmp_path / "notes.txt"
    text.write_text("x")
    for ir, vi, needle in (
        (None, str(VI), "upload an infrared image"),
        (None, None, "an infrared and a visible"),
        (str(text), str(VI), "not an image"),
        (str(tmp_path / "gone.png"), str(VI), "not found"),
    ):
        out = demo.run(ir, vi)
        assert not out.ok and needle in out.message, out.message
        assert "\n" not in out.message


def test_page_builds_when_gradio_is_installed(demo: Demo) -> None:
    pytest.importorskip("gradio")
    from moefusion.demo.app import IDS, build

    page = build(demo)
    config = page.get_config_file()
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert set(IDS.values()) <= elem_ids


def test_listening_beyond_this_machine_warns() -> None:
    import argparse
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loopback: no warning
        for host in ("127.0.0.1", "localhost", "::1"):
            demo_command._check_args(argparse.Namespace(host=host, port=7860, samples=None))
    with pytest.warns(UserWarning, match="anyone who can reach"):
        demo_command._check_args(argparse.Namespace(host="0.0.0.0", port=7860, samples=None))
