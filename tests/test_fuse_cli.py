"""``moefusion fuse``: files and folders, outputs, safety checks, failures, options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moefusion.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
H, W = 40, 56


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    """Three pairs like real cameras: 8-bit, 16-bit IR with RGBA visible, JPEG + PNG."""
    rng = np.random.default_rng(0)
    ir, vi = tmp_path / "in" / "ir", tmp_path / "in" / "vi"
    _write(ir / "a.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
    _write(vi / "a.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _write(ir / "b.png", rng.integers(7000, 9000, (H, W), dtype=np.uint16))
    _write(vi / "b.png", rng.integers(0, 256, (H, W, 4), dtype=np.uint8))
    _write(ir / "c.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _write(vi / "c.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
    return ir, vi


def _fuse(tiny_weights: Path, *args: object) -> int:
    return main(["fuse", "--weights", str(tiny_weights), "--no-progress", *map(str, args)])


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_single_sample_pair_with_color(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = _fuse(
        tiny_weights, "--ir", SAMPLES / "ir" / "FLIR_05016.jpg", "--vi", SAMPLES / "vi" / "FLIR_05016.jpg",
        "--out", out, "--color",
    )  # fmt: skip
    assert rc == 0
    gray = np.asarray(Image.open(out / "FLIR_05016.png"))
    rgb = np.asarray(Image.open(out / "color" / "FLIR_05016.png"))
    assert gray.dtype == np.uint8 and gray.shape == (286, 512)
    assert rgb.shape == (286, 512, 3)


def test_folders_batches_gates_and_figure(
    tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = data
    out, gates, fig = tmp_path / "out", tmp_path / "g.json", tmp_path / "fig.png"
    rc = _fuse(
        tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--color", "--batch-size", "2",
        "--save-gates", gates, "--figure", fig,
    )  # fmt: skip
    assert rc == 0
    assert _listing(out) == [
        "a.png",
        "b.png",
        "c.png",
        "color",
        "color/a.png",
        "color/b.png",
        "color/c.png",
    ]
    assert "fused 3/3 pair(s)" in capsys.readouterr().out
    doc = json.loads(gates.read_text())
    assert [r["stem"] for r in doc["pairs"]] == ["a", "b", "c"]
    for r in doc["pairs"]:
        assert set(r["gates"]) == {"mole_fg", "mole_bg", "moge"}
        for name, g in r["gates"].items():
            assert sum(x > 0 for x in g) == 2 and len(r["experts"][name]) == 2
    assert Image.open(fig).size[0] > 300
    # batched run gives the same images as one pair at a time
    out1 = tmp_path / "out1"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out1) == 0
    for stem in "abc":
        a = np.asarray(Image.open(out / f"{stem}.png"), dtype=int)
        b = np.asarray(Image.open(out1 / f"{stem}.png"), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_tile_and_csv_gates(tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    ir, vi = data
    out, gates = tmp_path / "out", tmp_path / "g.csv"
    rc = _fuse(
        tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--tile", "32", "--overlap", "16",
        "--save-gates", gates,
    )  # fmt: skip
    assert rc == 0
    assert np.asarray(Image.open(out / "b.png")).shape == (H, W)
    rows = list(csv.DictReader(gates.open()))
    assert [r["stem"] for r in rows] == ["a", "b", "c"] and rows[0]["tiles"] == "6"
    assert sum(float(rows[0][f"moge_{i}"]) for i in range(4)) == pytest.approx(1.0, abs=1e-4)


def test_refuses_to_overwrite(
    tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = data
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"keep")
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "b.png" in err and "--overwrite" in err
    assert _listing(out) == ["b.png"]  # checked before anything was written
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--overwrite") == 0
    assert _listing(out) == ["a.png", "b.png", "c.png"]


def test_never_writes_into_inputs(
    tiny_weights: Path, data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = data
    before = _listing(ir.parent)
    for out in (ir, vi / "fused", ir.parent.parent / "in" / "ir" / "x"):
        assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out) == 2
        assert "input folder" in capsys.readouterr().err
    # single files: their folders are inputs too
    assert _fuse(tiny_weights, "--ir", ir / "a.png", "--vi", vi / "a.png", "--out", vi) == 2
    assert (
        _fuse(
            tiny_weights, "--ir", ir, "--vi", vi, "--out", ir.parent / "o", "--figure", ir / "f.png"
        )
        == 2
    )
    assert _listing(ir.parent) == before


def test_two_files_into_a_sub_folder_of_their_folder(tiny_weights: Path, tmp_path: Path) -> None:
    """The README's --tile example: both files in one folder, --out a folder below it."""
    rng = np.random.default_rng(3)
    _write(tmp_path / "big_ir.tif", rng.integers(0, 256, (H, W), dtype=np.uint8))
    _write(tmp_path / "big_vi.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    files = ["--ir", tmp_path / "big_ir.tif", "--vi", tmp_path / "big_vi.png"]
    assert _fuse(tiny_weights, *files, "--out", tmp_path / "fused", "--tile", "32") == 0
    assert (tmp_path / "fused" / "big_ir.png").is_file()
    assert _fuse(tiny_weights, *files, "--out", tmp_path) == 2  # beside the inputs: refused


def test_device_names(
    tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = data
    if not torch.cuda.is_available():
        assert (
            _fuse(
                tiny_weights, "--ir", ir, "--vi", vi, "--out", tmp_path / "o", "--device", "cuda:1"
            )
            == 2
        )
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", tmp_path / "o", "--device", "gpu")
    assert "unknown device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_pair_does_not_stop_the_rest(
    tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = data
    (ir / "d.png").write_bytes(b"not a png")
    _write(vi / "d.png", np.zeros((H, W), np.uint8))
    _write(ir / "e.png", np.zeros((H, W), np.uint8))
    _write(vi / "e.png", np.zeros((H + 2, W), np.uint8))  # size mismatch
    out = tmp_path / "out"
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--batch-size", "4") == 1
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if "failed" in x]
    assert len(lines) == 2
    (bad_read,) = [x for x in lines if str(ir / "d.png") in x]
    (bad_size,) = [x for x in lines if str(ir / "e.png") in x]
    assert "cannot read" in bad_read and "--resize" in bad_size
    assert _listing(out) == ["a.png", "b.png", "c.png"]
    assert "3/5" in captured.out and "2 failed" in captured.out


def test_resize(tiny_weights: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    ir, vi = data
    _write(vi / "a.png", np.zeros((H + 8, W + 4, 3), np.uint8))
    assert (
        _fuse(tiny_weights, "--ir", ir / "a.png", "--vi", vi / "a.png", "--out", tmp_path / "o1")
        == 1
    )
    for spec, shape in (("ir", (H, W)), ("vi", (H + 8, W + 4)), ("50x36", (36, 50))):
        out = tmp_path / spec
        rc = _fuse(
            tiny_weights, "--ir", ir / "a.png", "--vi", vi / "a.png", "--out", out, "--resize", spec
        )
        assert rc == 0
        assert np.asarray(Image.open(out / "a.png")).shape == shape


def test_recursive_keeps_sub_paths(tiny_weights: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for sub in ("day/x", "night/x"):
        _write(tmp_path / "ir" / f"{sub}.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
        _write(tmp_path / "vi" / f"{sub}.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
    out = tmp_path / "out"
    rc = _fuse(
        tiny_weights,
        "--ir",
        tmp_path / "ir",
        "--vi",
        tmp_path / "vi",
        "--out",
        out,
        "--recursive",
        "--color",
    )
    assert rc == 0
    assert {"day/x.png", "night/x.png", "color/day/x.png", "color/night/x.png"} <= set(
        _listing(out)
    )


def test_usage_errors(
    tiny_weights: Path,
    data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir, vi = data
    out = tmp_path / "out"
    import moefusion.weights

    monkeypatch.setattr(moefusion.weights, "bundled_weights_path", lambda: None)
    assert main(["fuse", "--ir", str(ir), "--vi", str(vi), "--out", str(out)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--tile", "8") == 2
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--resize", "big") == 2
    assert (
        _fuse(
            tiny_weights, "--ir", ir, "--vi", vi, "--out", out, "--save-gates", tmp_path / "g.txt"
        )
        == 2
    )
    assert _fuse(tmp_path / "missing.safetensors", "--ir", ir, "--vi", vi, "--out", out) == 2
    assert not out.exists()


@pytest.mark.slow
def test_samples_folder(tiny_weights: Path, tmp_path: Path) -> None:
    """All five bundled sample pairs (three datasets, up to 1280x1024), colour and tiles."""
    out = tmp_path / "out"
    rc = _fuse(
        tiny_weights, "--ir", SAMPLES / "ir", "--vi", SAMPLES / "vi", "--out", out, "--color",
        "--tile", "512", "--figure", tmp_path / "fig.png",
    )  # fmt: skip
    assert rc == 0
    stems = sorted(p.stem for p in (SAMPLES / "ir").iterdir() if p.suffix in (".png", ".jpg"))
    assert sorted(p.stem for p in out.glob("*.png")) == stems
    assert np.asarray(Image.open(out / "010006.png")).shape == (1024, 1280)


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    """One pair in the working folder, as ``moefusion fuse --ir a.png --vi b.png`` sees it."""
    rng = np.random.default_rng(5)
    _write(tmp_path / "a.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
    _write(tmp_path / "b.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return tmp_path / "a.png", tmp_path / "b.png"


def test_one_pair_into_an_image_file_with_color_figure_and_gates(
    tiny_weights: Path, pair_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out fused.png`` is the output file, beside the inputs (issue 38); the colour
    image goes beside it, the figure and the gates where they are named."""
    ir, vi = pair_files
    folder = ir.parent
    fused = folder / "fused.png"
    rc = _fuse(
        tiny_weights, "--ir", ir, "--vi", vi, "--out", fused, "--color",
        "--figure", folder / "fig.png", "--save-gates", folder / "gates.json",
    )  # fmt: skip
    assert rc == 0
    assert fused.is_file() and not (folder / "color").exists()
    assert np.asarray(Image.open(fused)).shape == (H, W)
    assert np.asarray(Image.open(folder / "fused_color.png")).shape == (H, W, 3)
    assert (folder / "fig.png").is_file() and (folder / "gates.json").is_file()
    assert f"into {fused}" in capsys.readouterr().out
    # an existing output is replaced only with --overwrite; JPEG by its extension
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", fused) == 2
    assert "already exist" in capsys.readouterr().err
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", fused, "--overwrite") == 0
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", folder / "o" / "f.JPG") == 0
    assert Image.open(folder / "o" / "f.JPG").format == "JPEG"


def test_one_pair_output_file_may_not_replace_an_input(
    tiny_weights: Path, pair_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = pair_files
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", vi, "--overwrite") == 2
    assert "overwrite input" in capsys.readouterr().err


def test_a_folder_stays_a_folder(
    tiny_weights: Path,
    pair_files: tuple[Path, Path],
    data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir, vi = pair_files
    existing = tmp_path / "out.png"  # an existing folder named like an image
    existing.mkdir()
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", existing) == 0
    assert _listing(existing) == ["a.png"]
    assert _fuse(tiny_weights, "--ir", ir, "--vi", vi, "--out", tmp_path / "fused") == 0
    assert _listing(tmp_path / "fused") == ["a.png"]
    # input folders into one image name: refused, naming the folder to give instead
    irs, vis = data
    assert _fuse(tiny_weights, "--ir", irs, "--vi", vis, "--out", tmp_path / "x.png") == 2
    assert "give an output folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
