"""Bad-input corpus: every command survives bad input and interruption (issue 11).

The corpus is built at test time from the bundled ``samples/`` (downscaled so the run is
fast): truncated, zero-byte and mislabelled files, size mismatches, unpaired stems,
read-only output locations, constant images, corrupt and mismatched weights, bad
labels and overrides, and a real SIGINT through a subprocess. For each case the tests
check the exit code, a one-line message naming the file and no traceback, that no input
file changed, that no existing output was replaced without ``--overwrite``, that no
partial file was left and that the good pairs of the same run were still processed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from moefusion.atomic import TEMP_MARK, atomic_path, check_writable
from moefusion.cli import main
from moefusion.data.io import save_image_atomic, to_unit_float
from moefusion.errors import MoEFusionError
from moefusion.weights import CONFIG_KEY

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SIZE = (80, 64)  # (W, H) of the downscaled samples: VIF needs 41 px, fusing stays fast
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# ------------------------------------------------------------------------------ helpers


def _digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARK in p.name or p.name.endswith(".tmp")]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    """The one error line of a refused command (and nothing else on stderr)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert ": error: " in lines[0]
    return lines[0]


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def small_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The bundled sample pairs, downscaled to ``SIZE`` PNGs: stem -> (ir, vi)."""
    folder = tmp_path_factory.mktemp("samples")
    out = {}
    for ir in sorted((SAMPLES / "ir").iterdir()):
        vi = SAMPLES / "vi" / ir.name
        pair = []
        for role, src in (("ir", ir), ("vi", vi)):
            with Image.open(src) as im:
                small = im.convert("L" if role == "ir" else "RGB").resize(SIZE, Image.BILINEAR)
            dst = folder / role / f"{ir.stem}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            small.save(dst)
            pair.append(dst)
        out[ir.stem] = (pair[0], pair[1])
    return out


def _good_folders(root: Path, samples: dict[str, tuple[Path, Path]], n: int = 3) -> list[str]:
    stems = sorted(samples)[:n]
    for s in stems:
        for role, src in zip(("ir", "vi"), samples[s], strict=True):
            (root / role).mkdir(parents=True, exist_ok=True)
            (root / role / src.name).write_bytes(src.read_bytes())
    return stems


def _unwritable(tmp_path: Path, kind: str) -> Path:
    """An output location files cannot be created in: a read-only folder, or (works as
    root too, which ignores permissions) a folder below a regular file."""
    if kind == "readonly":
        if ROOT:
            pytest.skip("root ignores read-only permissions")
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "out"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return blocker / "out"


UNWRITABLE = ["readonly", "below_a_file"]


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path: Path):
    yield
    for p in tmp_path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


# ---------------------------------------------------------------------- atomic writing


def test_atomic_path_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and _temp_files(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not replaced before the block completes
    assert target.read_text() == "new" and _temp_files(tmp_path) == []


def test_interrupted_image_save_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):  # noqa: ANN001, ANN202
        real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(Path(fp).read_bytes()[:40])  # as if cut off mid-write
        raise KeyboardInterrupt

    target = tmp_path / "img.png"
    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(target, np.zeros((8, 8), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper")  # creatable
    assert not (tmp_path / "new").exists()  # and nothing was created
    with pytest.raises(MoEFusionError, match="is a file"):
        check_writable(_unwritable(tmp_path, "below_a_file"))
    assert list(tmp_path.iterdir()) == [tmp_path / "a_file"]  # no probe left behind


# ---------------------------------------------------------------------------- baseline


def test_baseline_goes_on_past_bad_pairs(
    tmp_path: Path, small_samples: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    good = _good_folders(src, small_samples)
    ir_d, vi_d = src / "ir", src / "vi"
    a, b = small_samples[good[0]]
    # truncated, zero-byte, size mismatch, unpaired both ways, mislabelled, bomb, webp, 16-bit
    (ir_d / "trunc.png").write_bytes(a.read_bytes()[:200])
    (vi_d / "trunc.png").write_bytes(b.read_bytes())
    (ir_d / "empty.png").write_bytes(a.read_bytes())
    (vi_d / "empty.png").write_bytes(b"")
    (ir_d / "size.png").write_bytes(a.read_bytes())
    _write(vi_d / "size.png", np.zeros((10, 12), np.uint8))
    (ir_d / "only_ir.png").write_bytes(a.read_bytes())
    (vi_d / "only_vi.png").write_bytes(b.read_bytes())
    (ir_d / "text.jpg").write_text("this is not a JPEG")
    (vi_d / "text.jpg").write_bytes(b.read_bytes())
    _png_claiming(ir_d / "bomb.png", 40000, 40000)
    (vi_d / "bomb.png").write_bytes(b.read_bytes())
    with Image.open(a) as im:
        im.save(ir_d / "web.webp", lossless=True)
    with Image.open(b) as im:
        im.save(vi_d / "web.webp", lossless=True)
    ir16 = (np.asarray(Image.open(a), dtype=np.uint16) * 40 + 3000).astype(np.uint16)
    _write(ir_d / "deep.png", ir16)
    (vi_d / "deep.png").write_bytes(b.read_bytes())
    before = _digest(src)

    out = tmp_path / "out"
    argv = ["baseline", "--method", "average", "--ir", str(ir_d), "--vi", str(vi_d)]
    code, printed, err = _cli([*argv, "--out", str(out), "--no-progress"], capsys)
    assert code == 1
    failures = [ln for ln in err.splitlines() if ln.startswith("moefusion baseline: failed")]
    named = {ln.split()[3] for ln in failures}
    assert named == {"trunc", "empty", "size", "only_ir", "only_vi", "text", "bomb"}
    assert len(failures) == len(err.strip().splitlines())  # exactly one line per failure
    assert any("trunc.png" in ln for ln in failures) and any("bomb.png" in ln for ln in failures)
    assert "7 of 12 failed" in printed
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{s}.png" for s in [*good, "web", "deep"])
    assert _digest(src) == before and _temp_files(out) == []
    # 16-bit input is normalised like `fuse` does (1..99th percentile), not refused
    fused = np.asarray(Image.open(out / "deep.png"), dtype=np.float64)
    ir_unit = to_unit_float(ir16).astype(np.float64)
    vi_unit = np.asarray(Image.open(b).convert("L"), dtype=np.float64) / 255
    want = np.floor((ir_unit + vi_unit) / 2 * 255 + 0.5)
    assert np.abs(fused - want).max() <= 1

    # a rerun neither replaces anything without --overwrite nor loses what was there
    outputs = _digest(out)
    code, _, err = _cli([*argv, "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--overwrite" in _error_line(err) and _digest(out) == outputs
    code, _, _ = _cli([*argv, "--out", str(out), "--no-progress", "--overwrite"], capsys)
    assert code == 1 and _digest(out) == outputs  # same results, deterministic


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_unwritable_outputs_are_refused_before_work(
    tmp_path: Path,
    kind: str,
    small_samples: dict,
    tiny_weights: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = tmp_path / "in"
    _good_folders(src, small_samples, 2)
    bad = _unwritable(tmp_path, kind)
    io = ["--ir", str(src / "ir"), "--vi", str(src / "vi")]
    cases = [
        ["baseline", "--method", "max", *io, "--out", str(bad)],
        ["evaluate", *io, "--fused", f"x={src / 'ir'}", "--out", str(bad)],
        [
            "export",
            "--format",
            "torchscript",
            "--weights",
            str(tiny_weights),
            "--out",
            str(bad / "m.pt"),
        ],
    ]
    for argv in cases:
        code, _, err = _cli([*argv, *(["--no-progress"] if argv[0] != "export" else [])], capsys)
        line = _error_line(err)
        assert code == 2 and "cannot" in line and str(bad.parent) in line, line
    # fuse --save-gates: found before any pair is fused (nothing written to --out)
    out = tmp_path / "fused"
    code, _, err = _cli(
        ["fuse", *io, "--weights", str(tiny_weights), "--out", str(out), "--save-gates",
         str(bad / "g.json"), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "cannot" in _error_line(err) and not out.exists()


def test_same_input_and_bad_figure_are_refused(
    tmp_path: Path, small_samples: dict, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _good_folders(src, small_samples, 2)
    out = tmp_path / "out"
    same = ["--ir", str(src / "ir"), "--vi", str(src / "ir"), "--out", str(out), "--no-progress"]
    for argv in (
        ["fuse", "--weights", str(tiny_weights), *same],
        ["baseline", "--method", "max", *same],
    ):
        code, _, err = _cli(argv, capsys)
        assert code == 2 and "same folder" in _error_line(err) and not out.exists()
    io = ["--ir", str(src / "ir"), "--vi", str(src / "vi")]
    code, _, err = _cli(
        ["fuse", "--weights", str(tiny_weights), *io, "--out", str(out), "--figure",
         str(tmp_path / "fig.xyz"), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "fig.xyz" in _error_line(err) and not out.exists()


# ----------------------------------------------------------------------------- weights


def _bad_weights(tmp_path: Path, tiny_weights: Path) -> dict[str, Path]:
    from safetensors import safe_open

    tmp_path.mkdir(parents=True, exist_ok=True)
    state = load_file(str(tiny_weights))
    with safe_open(str(tiny_weights), framework="pt") as f:
        meta = dict(f.metadata())
    files = {}
    files["truncated"] = tmp_path / "truncated.safetensors"
    files["truncated"].write_bytes(tiny_weights.read_bytes()[: tiny_weights.stat().st_size // 2])
    files["empty"] = tmp_path / "empty.safetensors"
    files["empty"].write_bytes(b"")
    nan_state = dict(state)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    nan_state[key] = torch.full_like(state[key], float("nan"))
    files["nan"] = tmp_path / "nan.safetensors"
    save_file(nan_state, str(files["nan"]), metadata=meta)
    other = json.loads(meta[CONFIG_KEY])
    other["encoder_growth"] = 4  # same tensor names, other shapes
    files["shapes"] = tmp_path / "shapes.safetensors"
    save_file(state, str(files["shapes"]), metadata={**meta, CONFIG_KEY: json.dumps(other)})
    files["no_config"] = tmp_path / "plain.safetensors"
    save_file(state, str(files["no_config"]))
    return files


def test_bad_weights_get_one_line(
    tmp_path: Path, small_samples: dict, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _good_folders(src, small_samples, 1)
    io = ["--ir", str(src / "ir"), "--vi", str(src / "vi")]
    expected = {
        "truncated": "truncated or corrupt",
        "empty": "cannot read weights",
        "nan": "NaN or infinite",
        "shapes": "wrong shape",
        "no_config": "no moefusion model config",
    }
    for name, path in _bad_weights(tmp_path / "w", tiny_weights).items():
        out = tmp_path / f"fused_{name}"
        code, _, err = _cli(
            ["fuse", *io, "--weights", str(path), "--out", str(out), "--no-progress"], capsys
        )
        line = _error_line(err)
        assert code == 2 and str(path) in line and expected[name] in line, line
        assert not out.exists()
        # export refuses the same files and leaves no (partial) model behind
        target = tmp_path / f"{name}.onnx"
        code, _, err = _cli(
            ["export", "--format", "onnx", "--weights", str(path), "--out", str(target)], capsys
        )
        assert code == 2 and expected[name] in _error_line(err)
        assert not target.exists() and _temp_files(tmp_path) == []


def test_export_opset_and_existing_output(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "m.onnx"
    code, _, err = _cli(
        ["export", "--format", "onnx", "--weights", str(tiny_weights), "--out", str(target),
         "--opset", "3"],
        capsys,
    )  # fmt: skip
    line = _error_line(err)
    assert code == 2 and "opset 3" in line and len(line) < 200 and not target.exists()
    target.write_text("keep me")
    code, _, err = _cli(
        ["export", "--format", "onnx", "--weights", str(tiny_weights), "--out", str(target)], capsys
    )
    assert code == 2 and "--overwrite" in _error_line(err) and target.read_text() == "keep me"


# ------------------------------------------------------------------------------- train


def test_train_refuses_bad_overrides_checkpoints_and_existing_runs(
    tmp_path: Path, small_samples: dict, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _good_folders(data, small_samples, 2)
    base = ["train", "--config", "cpu", "--data", str(data), "--no-progress"]
    for override, words in (("optim.lr=fast", "optim.lr must be a number"),
                            ("data.crop=abc", "data.crop must be a number"),
                            ("optim.milestones=[a, b]", "list of numbers")):  # fmt: skip
        out = tmp_path / "run_override"
        code, _, err = _cli([*base, "--out", str(out), override], capsys)
        line = _error_line(err)
        assert code == 2 and words in line and override.split("=")[0] in line
        assert not out.exists()

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, run / "checkpoints" / "full.ckpt")
    good = (run / "checkpoints" / "full.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(good[: len(good) // 2])
    before = _digest(run)
    # an existing run without --resume or --overwrite
    code, _, err = _cli([*base, "--out", str(run)], capsys)
    assert code == 2 and "--resume" in _error_line(err) and _digest(run) == before
    # a truncated checkpoint, a safetensors file, an empty file
    empty = run / "checkpoints" / "empty.ckpt"
    empty.write_bytes(b"")
    for resume, words in ((str(run / "checkpoints" / "last.ckpt"), "truncated or corrupt"),
                          (str(tiny_weights), "safetensors file"),
                          (str(empty), "empty")):  # fmt: skip
        code, _, err = _cli([*base, "--out", str(run), "--resume", resume], capsys)
        line = _error_line(err)
        assert code == 2 and words in line, line
    empty.unlink()
    assert _digest(run) == before


def test_train_validates_labels_before_writing(
    tmp_path: Path, small_samples: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    stems = _good_folders(data, small_samples, 2)
    (data / "labels").mkdir()
    (data / "labels" / f"{stems[0]}.xml").write_text("<annotation><object>")  # malformed
    out = tmp_path / "run"
    code, _, err = _cli(
        ["train", "--config", "cpu", "--data", str(data), "--out", str(out), "--no-progress"],
        capsys,
    )
    line = _error_line(err)
    assert code == 2 and f"{stems[0]}.xml" in line and not out.exists()


def test_unknown_classes_are_warned_with_counts(tmp_path: Path) -> None:
    from moefusion.data.annotations import load_voc

    xml = tmp_path / "a.xml"
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
        "<ymax>5</ymax></bndbox></object>"
        for n in ("person", "truck", "truck", "bus")
    )
    xml.write_text(f"<annotation>{objects}</annotation>")
    with pytest.warns(UserWarning, match=r"a\.xml: dropped 3 object.*bus x1, truck x2"):
        ann = load_voc(xml, ("person", "car"))
    assert len(ann) == 1 and ann.n_ignored == 3


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_marks_undefined_values(
    tmp_path: Path, small_samples: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    stems = _good_folders(src, small_samples, 2)
    fused = tmp_path / "fused"
    fused.mkdir()
    # stem 0: a constant (all-black) fused image; stem 1: a normal one, as .webp
    _write(fused / f"{stems[0]}.png", np.zeros(SIZE[::-1], np.uint8))
    ir1, vi1 = (np.asarray(Image.open(p).convert("L"), np.uint16) for p in small_samples[stems[1]])
    Image.fromarray(((ir1 + vi1) // 2).astype(np.uint8)).save(
        fused / f"{stems[1]}.webp", lossless=True
    )
    before = _digest(src) | {f"f/{k}": v for k, v in _digest(fused).items()}
    out = tmp_path / "eval"
    argv = ["evaluate", "--ir", str(src / "ir"), "--vi", str(src / "vi"), "--fused",
            f"m={fused}", "--convention", "all", "--out", str(out), "--no-progress"]  # fmt: skip
    code, printed, err = _cli(argv, capsys)
    assert code == 0
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "undefined" in warn[0] and stems[0] in warn[0]
    with (out / "per_image_paper.csv").open() as fh:
        rows = {r["stem"]: r for r in csv.DictReader(fh)}
    assert "CC" in rows[stems[0]]["undefined"].split() and rows[stems[1]]["undefined"] == ""
    data = json.loads((out / "summary_paper.json").read_text())
    assert data["n_defined"]["m"]["CC"] == 1 and data["n_defined"]["m"]["EN"] == 2
    assert data["means"]["m"]["CC"] == pytest.approx(float(rows[stems[1]]["CC"]))
    assert all(v is not None for v in data["means"]["m"].values())
    md = (out / "summary_paper.md").read_text()
    assert "(1/2)" in md and "nan |" not in md and "inf |" not in md
    assert before == _digest(src) | {f"f/{k}": v for k, v in _digest(fused).items()}
    # ir = vi = fused: cddfuse PSNR is infinite; it is left out, not averaged as inf
    same = tmp_path / "same"
    code, _, err = _cli(
        ["evaluate", "--ir", str(src / "ir"), "--vi", str(src / "ir"), "--fused",
         f"m={src / 'ir'}", "--convention", "cddfuse", "--out", str(same), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "PSNR" in err
    data = json.loads((same / "summary_cddfuse.json").read_text())
    assert data["n_defined"]["m"]["PSNR"] == 0 and data["means"]["m"]["PSNR"] is None
    # existing tables are not replaced without --overwrite
    tables = _digest(out)
    code, _, err = _cli(argv, capsys)
    assert code == 2 and "--overwrite" in _error_line(err) and _digest(out) == tables
    code, _, _ = _cli([*argv, "--overwrite"], capsys)
    assert code == 0 and _temp_files(out) == []


def test_evaluate_goes_on_past_an_unreadable_fused_image(
    tmp_path: Path, small_samples: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    stems = _good_folders(src, small_samples, 3)
    good, other = tmp_path / "good", tmp_path / "other"
    for folder in (good, other):
        folder.mkdir()
        for stem in stems:
            Image.open(src / "ir" / f"{stem}.png").save(folder / f"{stem}.png")
    (other / f"{stems[1]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "eval"
    argv = ["evaluate", "--ir", str(src / "ir"), "--vi", str(src / "vi"), "--fused",
            f"a={good}", "--fused", f"b={other}", "--out", str(out), "--no-progress"]  # fmt: skip
    code, _, err = _cli(argv, capsys)
    assert code == 1
    failed = [ln for ln in err.splitlines() if "failed" in ln]
    assert len(failed) == 1 and stems[1] in failed[0] and "cannot read image" in failed[0]
    with (out / "per_image_paper.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # both methods keep the same two stems, so their means stay comparable
    assert sorted((r["method"], r["stem"]) for r in rows) == sorted(
        (m, s) for m in "ab" for s in (stems[0], stems[2])
    )
    assert "Traceback" not in err


# -------------------------------------------------------------------------------- fuse


def test_fuse_tiles_automatically_when_memory_is_short(
    tmp_path: Path,
    small_samples: dict,
    tiny_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import moefusion.fuser as fuser_module

    src = tmp_path / "in"
    _good_folders(src, small_samples, 1)
    monkeypatch.setattr(fuser_module, "AUTO_TILE", 32)
    monkeypatch.setattr(fuser_module, "available_memory", lambda device="cpu": 1000)
    out = tmp_path / "out"
    code, _, err = _cli(
        ["fuse", "--ir", str(src / "ir"), "--vi", str(src / "vi"), "--weights", str(tiny_weights),
         "--out", str(out), "--save-gates", str(tmp_path / "g.json"), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "32x32 tiles" in err
    record = json.loads((tmp_path / "g.json").read_text())["pairs"][0]
    assert record["tiles"] > 1


SCRIPT = "import sys\nfrom moefusion.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_sigint_during_fuse_leaves_only_complete_files(
    tmp_path: Path, small_samples: dict, tiny_weights: Path
) -> None:
    src = tmp_path / "in"
    for role in ("ir", "vi"):
        (src / role).mkdir(parents=True)
    stems = sorted(small_samples)
    for i in range(400):
        ir, vi = small_samples[stems[i % len(stems)]]
        (src / "ir" / f"p{i:03d}.png").write_bytes(ir.read_bytes())
        (src / "vi" / f"p{i:03d}.png").write_bytes(vi.read_bytes())
    before = _digest(src)
    out, gates = tmp_path / "out", tmp_path / "gates.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "fuse", "--ir", str(src / "ir"),
         "--vi", str(src / "vi"), "--weights", str(tiny_weights), "--out", str(out), "--color",
         "--save-gates", str(gates), "--device", "cpu", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a shell's background job ignores SIGINT, and children inherit that (Python then
        # installs no KeyboardInterrupt handler): give the child the default disposition
        preexec_fn=_default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("*.png"))) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "fuse finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert _temp_files(tmp_path) == []
    written = sorted(out.glob("*.png"))
    assert 3 <= len(written) < 400
    for p in [*written, *(out / "color").glob("*.png")]:
        with Image.open(p) as im:
            im.load()  # every file under its final name is complete
    logged = {r["stem"] for r in json.loads(gates.read_text())["pairs"]}
    names = {p.stem for p in written}
    assert logged <= names and len(logged) >= len(names) - 1
    assert _digest(src) == before
