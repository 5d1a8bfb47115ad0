"""``moefusion fuse`` on videos and frame sequences; the temporal gate smoother.

The videos are real: a few frames of the TNO Duine sequence (``../shared/data/tno_extra``),
downscaled to 96x72 and written with OpenCV; the error-line tests use the bundled sample
pair instead, so they run without the shared data.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from moefusion.cli import main
from moefusion.temporal import FlickerMeter, GateSmoother

TNO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tno_extra"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
needs_tno = pytest.mark.skipif(
    not (TNO / "ir" / "seq_duine_7400.bmp").is_file(), reason="../shared/data/tno_extra absent"
)
W, H = 96, 72
FRAMES = 6


def _tno_frames(kind: str, n: int = FRAMES, seq: str = "seq_duine") -> list[np.ndarray]:
    files = sorted((TNO / kind).glob(f"{seq}_*.bmp"))[:n]
    return [
        cv2.resize(np.asarray(Image.open(f).convert("L")), (W, H), interpolation=cv2.INTER_AREA)
        for f in files
    ]


def _write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f[..., ::-1])
    writer.release()
    return path


def _sample_frames(n: int) -> list[np.ndarray]:
    """n RGB frames from the FLIR_05016 sample, panning 2 px a frame (no shared data)."""
    vi = np.asarray(Image.open(SAMPLES / "vi" / "FLIR_05016.jpg").convert("RGB"))
    return [np.ascontiguousarray(cv2.resize(vi[:, 2 * i : 2 * i + 400], (W, H))) for i in range(n)]


def _sample_videos(folder: Path, n: int) -> tuple[Path, Path]:
    """The same n sample frames as an infrared and a visible video (8 fps)."""
    frames = _sample_frames(n)
    return _write_video(folder / "ir.mp4", frames, 8), _write_video(folder / "vi.mp4", frames, 8)


@pytest.fixture(scope="module")
def tno_videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tno-videos")
    return (
        _write_video(folder / "thermal.mp4", _tno_frames("ir"), 10.0),
        _write_video(folder / "rgb.mp4", _tno_frames("vi"), 10.0),
    )


def _fuse(tiny_weights: Path, *args: object) -> int:
    return main(["fuse", "--weights", str(tiny_weights), "--no-progress", *map(str, args)])


def _video_info(path: Path) -> tuple[int, int, int, float, list[np.ndarray]]:
    """(decoded frames, width, height, fps, frames) of a video, read back with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    cap.release()
    return len(frames), w, h, fps, frames


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _all_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ------------------------------------------------------------------------------ videos


@needs_tno
def test_real_videos_fuse_to_a_playable_video_with_gates(
    tiny_weights: Path,
    tno_videos: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir, vi = tno_videos
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 0
    captured = capsys.readouterr()
    assert "frames matched by index (both 10 fps)" in captured.err
    assert f"fused {FRAMES} frame(s) into {out / 'thermal.mp4'}" in captured.out
    assert _all_files(out) == ["thermal.mp4", "thermal_gates.csv"]
    n, w, h, fps, frames = _video_info(out / "thermal.mp4")
    assert (n, w, h) == (FRAMES, W, H) and fps == pytest.approx(10.0)
    assert all(np.array_equal(f[..., 0], f[..., 1]) for f in frames)  # gray video
    rows = _rows(out / "thermal_gates.csv")
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / 10 for i in range(FRAMES)])
    for r in rows:
        for gate in ("mole_fg", "mole_bg", "moge"):
            weights = [float(r[f"{gate}_{i}"]) for i in range(4)]
            assert sum(weights) == pytest.approx(1.0, abs=1e-5)
            assert len(r[f"{gate}_experts"].split()) == 2  # top-2 of 4

    # colour, lossless, smoothed: the colour of the visible stream (gray here) is kept
    out2 = tmp_path / "out2"
    rc = _fuse(
        tiny_weights, "--ir", ir, "--vi", vi, "--out", out2, "--color", "--video-format", "mkv",
        "--temporal-smoothing", "0.5", "--batch-size", "2",
    )  # fmt: skip
    assert rc == 0
    n, w, h, _, _ = _video_info(out2 / "thermal.mkv")
    assert (n, w, h) == (FRAMES, W, H)
    assert len(_rows(out2 / "thermal_gates.csv")) == FRAMES


@needs_tno
def test_sequence_folders_in_frame_number_order(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir_dir, vi_dir = tmp_path / "ir_seq", tmp_path / "vi_seq"
    ir_dir.mkdir()
    vi_dir.mkdir()
    for i, (a, b) in enumerate(zip(_tno_frames("ir", 4), _tno_frames("vi", 4), strict=True)):
        Image.fromarray(a).save(ir_dir / f"frame_{8 + i}.png")  # 8, 9, 10, 11: numeric order
        Image.fromarray(b).save(vi_dir / f"v{8 + i:04d}.bmp")
    out = tmp_path / "out"
    rc = _fuse(tiny_weights, "--ir", ir_dir, "--vi", vi_dir, "--out", out, "--sequence", "--fps", 5)
    assert rc == 0
    assert "frame sequences have no timestamps" in capsys.readouterr().err
    n, w, h, fps, _ = _video_info(out / "ir_seq.mp4")
    assert (n, w, h) == (4, W, H) and fps == pytest.approx(5.0)
    assert [float(r["time_s"]) for r in _rows(out / "ir_seq_gates.csv")] == pytest.approx(
        [0, 0.2, 0.4, 0.6]
    )

    from moefusion.video import SequenceSource

    assert [p.name for p in SequenceSource(ir_dir).files] == [
        "frame_8.png", "frame_9.png", "frame_10.png", "frame_11.png",
    ]  # fmt: skip


@needs_tno
def test_different_frame_rates_resampled_to_the_infrared_one(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir = _write_video(tmp_path / "ir.mp4", _tno_frames("ir", 4), 10.0)
    vi_frames = [f for f in _tno_frames("vi", 4) for _ in range(2)]  # 8 frames at 20 fps
    vi = _write_video(tmp_path / "vi.mp4", vi_frames, 20.0)
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 0
    err = capsys.readouterr().err
    assert "infrared 10 fps, visible 20 fps" in err and "nearest in time" in err
    n, _, _, fps, _ = _video_info(out / "ir.mp4")
    assert n == 4 and fps == pytest.approx(10.0)
    assert [int(r["vi_frame"]) for r in _rows(out / "ir_gates.csv")] == [0, 2, 4, 6]


@needs_tno
def test_video_align_estimates_once_and_refines(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir = _write_video(tmp_path / "ir.mp4", _tno_frames("ir", 4), 10.0)
    shifted = [np.roll(f, 3, axis=1) for f in _tno_frames("vi", 4)]
    vi = _write_video(tmp_path / "vi.mp4", shifted, 10.0)
    out = tmp_path / "out"
    rc = _fuse(
        tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--align", "ecc",
        "--align-model", "translation", "--align-every", 2,
    )  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "frame 0: ecc translation: shift" in captured.err
    assert "refined 1 time(s)" in captured.out
    rows = _rows(out / "ir_gates.csv")
    assert len(rows) == 4 and all(float(r["align_confidence"]) > 0.2 for r in rows)


# ------------------------------------------------------------------------------ errors


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_mismatched_lengths_said_clearly_and_trim(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = _sample_frames(4)
    ir = _write_video(tmp_path / "ir.mp4", [f.mean(axis=2).astype(np.uint8) for f in frames], 8)
    vi = _write_video(tmp_path / "vi.mp4", frames[:3], 8)
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 2
    line = _error_line(capsys)
    assert line.startswith("moefusion fuse: error: the streams differ in length")
    assert "has 4 frames but visible" in line and "has 3" in line and "--trim" in line
    assert _all_files(out) == []
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--trim") == 0
    assert _video_info(out / "ir.mp4")[0] == 3


def test_unreadable_video_is_one_line(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    good = _write_video(tmp_path / "vi.mp4", _sample_frames(2), 8)
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", bad, "--vi", good, "--out", out) == 2
    line = _error_line(capsys)
    assert line.startswith(f"moefusion fuse: error: cannot read video {bad}")
    assert _fuse(tiny_weights, "--ir", tmp_path / "none.mp4", "--vi", good, "--out", out) == 2
    assert "no such video file" in _error_line(capsys)
    assert _all_files(out) == []


def test_video_options_checked(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = _sample_videos(tmp_path, 2)
    out = tmp_path / "out"
    cases = [
        (("--temporal-smoothing", "1.5"), "--temporal-smoothing must be in [0, 1)"),
        (("--recursive",), "--recursive is for image pairs, not videos"),
        (("--align-every", "3"), "--align-every needs --align"),
        (("--align-model", "homography"), "--align-model needs --align"),
        (("--save-gates", tmp_path / "g.json"), "--save-gates must end in .csv"),
    ]
    for extra, message in cases:
        assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, *extra) == 2
        assert message in _error_line(capsys)
    # an image pair refuses the video options
    img = SAMPLES / "ir" / "FLIR_05016.jpg"
    rc = _fuse(tiny_weights, "--ir", img, "--vi", SAMPLES / "vi" / "FLIR_05016.jpg",
               "--out", out, "--temporal-smoothing", "0.5")  # fmt: skip
    assert rc == 2
    assert "--temporal-smoothing is for videos" in _error_line(capsys)
    # --align-model without --align would choose a transform nothing estimates
    rc = _fuse(tiny_weights, "--ir", img, "--vi", SAMPLES / "vi" / "FLIR_05016.jpg",
               "--out", out, "--align-model", "affine")  # fmt: skip
    assert rc == 2
    assert "--align-model needs --align" in _error_line(capsys)
    assert _all_files(out) == []


def test_tiled_video_with_smoothing(tiny_weights: Path, tmp_path: Path) -> None:
    """Tiles share each frame's gate decisions, so the gates are smoothed per frame as
    for whole frames: ``--tile`` with ``--temporal-smoothing`` runs; frame 0 (the
    average starts at the frame's own logits) has the unsmoothed gates."""
    ir, vi = _sample_videos(tmp_path, 3)
    rows = {}
    for factor in ("0", "0.9"):
        out = tmp_path / f"out{factor}"
        rc = _fuse(
            tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--tile", "48",
            "--temporal-smoothing", factor,
        )  # fmt: skip
        assert rc == 0
        rows[factor] = _rows(out / "ir_gates.csv")
    assert len(rows["0.9"]) == 3
    for gate in ("mole_fg", "mole_bg", "moge"):
        assert rows["0.9"][0][f"{gate}_experts"] == rows["0"][0][f"{gate}_experts"]
        for r in rows["0.9"]:
            assert len(r[f"{gate}_experts"].split()) == 2  # top-2 of 4: one decision a frame


def test_existing_output_needs_overwrite(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = _sample_videos(tmp_path, 2)
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 0
    before = (out / "ir.mp4").read_bytes()
    capsys.readouterr()
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 2
    assert "already exist" in _error_line(capsys) and (out / "ir.mp4").read_bytes() == before
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--overwrite") == 0


def test_interrupted_run_leaves_no_file(
    tiny_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moefusion.fuser import Fuser

    ir, vi = _sample_videos(tmp_path, 5)
    real = Fuser.fuse_arrays
    calls = []

    def fuse_then_ctrl_c(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Fuser, "fuse_arrays", fuse_then_ctrl_c)
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 130
    err = capsys.readouterr().err
    assert "interrupted after 2 of 5 frame(s); nothing written" in err
    assert _all_files(out) == []  # no video, no gates, no hidden temporary file


# ------------------------------------------------------------------------------ smoother


def test_smoother_on_a_gate_is_the_documented_average() -> None:
    from moefusion.models import NoisyTopKGate

    gate = NoisyTopKGate(2, 2, 1, grid=(1, 1)).eval()
    with torch.no_grad():
        gate.w_gate.copy_(torch.eye(2))
    # logits (1.0, 0.8) and (0.8, 1.0) by turns: top-1 flips every frame unsmoothed
    frames = [
        torch.tensor([1.0, 0.8]) if t % 2 == 0 else torch.tensor([0.8, 1.0]) for t in range(6)
    ]
    x = [v.view(1, 2, 1, 1).expand(1, 2, 4, 4) for v in frames]

    def run(factor: float) -> tuple[list[int], list[torch.Tensor]]:
        with GateSmoother(factor).attached(gate):
            outs = [gate(xi) for xi in x]
        return [int(o.indices[0, 0]) for o in outs], [o.logits[0] for o in outs]

    plain, _ = run(0.0)
    assert plain == [0, 1, 0, 1, 0, 1]
    chosen, logits = run(0.8)
    assert chosen == [0] * 6
    m = frames[0]
    for t in range(1, 6):  # m_t = F m_(t-1) + (1 - F) z_t
        m = 0.8 * m + 0.2 * frames[t]
        torch.testing.assert_close(logits[t], m)
    assert gate.logit_filter is None  # detached after the block
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        GateSmoother(1.0)


def _fuse_frames(
    fuser: Any, factor: float | None, n: int, seq: str = "seq_duine"
) -> tuple[list[np.ndarray], FlickerMeter]:
    """Fuse the first n frames of a TNO sequence one by one (inside
    temporal_smoothing(factor) unless None); the fused frames and their flicker meter."""
    ir_frames = [f.astype(np.float32) / 255 for f in _tno_frames("ir", n, seq)]
    vi_frames = [f.astype(np.float32) / 255 for f in _tno_frames("vi", n, seq)]
    meter, fused = FlickerMeter(), []
    block = fuser.temporal_smoothing(factor) if factor is not None else contextlib.nullcontext()
    with block:
        for a, b in zip(ir_frames, vi_frames, strict=True):
            res = fuser.fuse_arrays([a], [b], details=True)[0]
            meter.add(res.fused, a, b, res.gates)
            fused.append(res.fused)
    return fused, meter


@needs_tno
def test_smoothing_zero_is_identical_to_none(make_tiny_model: Any) -> None:
    from moefusion.fuser import Fuser

    fuser = Fuser(make_tiny_model(seed=3), device="cpu")
    plain, plain_meter = _fuse_frames(fuser, None, 3)
    zero, zero_meter = _fuse_frames(fuser, 0.0, 3)
    assert all(np.array_equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert plain_meter.summary() == zero_meter.summary()


@needs_tno
def test_smoothing_reduces_expert_switches_on_a_real_sequence() -> None:
    """With the bundled weights (the tests' tiny random model does not switch on these
    near-duplicate frames) on the Tree sequence, where v4's gates switch (measured: 73
    switches per 100 transitions over 12 frames unsmoothed, 18 with F = 0.9; on Duine v4
    keeps the same experts throughout)."""
    from moefusion.fuser import Fuser

    fuser = Fuser.pretrained(device="cpu")
    _, plain = _fuse_frames(fuser, 0.0, 12, "seq_tree")
    _, smooth = _fuse_frames(fuser, 0.9, 12, "seq_tree")
    before = plain.summary()["switches_per_100"]
    after = smooth.summary()["switches_per_100"]
    assert before > 0 and after < before


def test_option_choices_match_the_modules() -> None:
    """The parser's choices live in a light module (no OpenCV at start-up): same values."""
    from moefusion.commands._fuse_options import ALIGN_MODELS, VIDEO_FORMAT_NAMES
    from moefusion.registration import MODELS
    from moefusion.video import VIDEO_FORMATS

    assert ALIGN_MODELS == MODELS
    assert tuple(VIDEO_FORMATS) == VIDEO_FORMAT_NAMES
