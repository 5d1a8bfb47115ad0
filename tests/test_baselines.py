"""Classical fusion baselines: exact values on tiny arrays, invariants, and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from moefusion.baselines import BASELINES, fuse_baseline, guided_filter
from moefusion.cli import main
from moefusion.errors import MoEFusionError, PairError

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _texture(seed: int, shape: tuple[int, int] = (37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def test_average_and_max_exact() -> None:
    ir = np.array([[0.0, 0.25], [1.0, 0.5]])
    vi = np.array([[1.0, 0.75], [0.0, 0.5]])
    np.testing.assert_array_equal(fuse_baseline(ir, vi, "average"), [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_array_equal(fuse_baseline(ir, vi, "max"), [[1.0, 0.75], [1.0, 0.5]])


@pytest.mark.parametrize("method", ["laplacian", "dwt", "gff"])
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5, 7)])
def test_constant_images_stay_constant(method: str, shape: tuple[int, int]) -> None:
    c = np.full(shape, 0.3)
    out = fuse_baseline(c, np.full(shape, 0.3), method)
    assert out.shape == shape
    np.testing.assert_allclose(out, 0.3, atol=1e-9)


@pytest.mark.parametrize("method", list(BASELINES))
def test_identical_textures_give_the_average(method: str) -> None:
    # With both sources equal, every method must return that image (the average).
    t = _texture(1)
    np.testing.assert_allclose(fuse_baseline(t, t.copy(), method), t, atol=1e-9)


@pytest.mark.parametrize("method", list(BASELINES))
def test_output_in_range_and_shape(method: str) -> None:
    ir, vi = _texture(2), _texture(3)
    out = fuse_baseline(ir, vi, method)
    assert out.shape == ir.shape and out.dtype == np.float64
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_detail_selection_keeps_the_stronger_edge() -> None:
    # IR has a strong vertical edge, VI is flat: multi-scale methods keep most of the
    # step across the edge, the average halves it.
    ir = np.zeros((64, 64))
    ir[:, 32:] = 1.0
    vi = np.full((64, 64), 0.5)
    for method in ("laplacian", "dwt", "gff"):
        out = fuse_baseline(ir, vi, method)
        assert np.all(out[:, 32] - out[:, 31] > 0.6), method
    avg = fuse_baseline(ir, vi, "average")
    np.testing.assert_allclose(avg[:, 32] - avg[:, 31], 0.5)


def test_guided_filter_properties() -> None:
    g = _texture(4)
    # Constant input passes unchanged; with a tiny eps the guide reproduces itself.
    np.testing.assert_allclose(guided_filter(g, np.full_like(g, 0.7), 5, 0.1), 0.7, atol=1e-12)
    np.testing.assert_allclose(guided_filter(g, g, 3, 1e-9), g, atol=1e-5)
    # A huge eps makes a ~ 0 and b the box mean, so the output is a box mean of box means.
    big = guided_filter(g, g, 2, 1e6)
    inner = [g[i - 2 : i + 3, j - 2 : j + 3].mean() for i in range(8, 13) for j in range(8, 13)]
    assert big[10, 10] == pytest.approx(np.mean(inner), abs=1e-6)


def test_fuse_baseline_errors() -> None:
    a = _texture(5, (8, 8))
    with pytest.raises(MoEFusionError, match="unknown baseline"):
        fuse_baseline(a, a, "pca")
    with pytest.raises(PairError, match="sizes differ"):
        fuse_baseline(a, a[:7], "average")
    with pytest.raises(MoEFusionError, match=r"\[0, 1\]"):
        fuse_baseline(a * 255, a, "average")
    with pytest.raises(MoEFusionError, match="2-D float"):
        fuse_baseline((a * 255).astype(np.uint8), a, "average")


# ---------------------------------------------------------------------------------- CLI


def _copy_pairs(dataset: str, n: int, dst: Path) -> list[str]:
    src = DATA / dataset
    if not (src / "ir").is_dir():
        pytest.skip(f"{src} not available")
    files = sorted((src / "ir").iterdir())[:n]
    for role in ("ir", "vi"):
        (dst / role).mkdir(parents=True)
        for f in files:
            shutil.copy(src / role / f.name, dst / role / f.name)
    return [f.stem for f in files]


def _gray_unit(path: Path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255


@pytest.mark.parametrize(
    ("dataset", "method"), [("msrs", "average"), ("roadscene", "gff"), ("llvip", "laplacian")]
)
def test_cli_writes_gray_pngs(tmp_path: Path, dataset: str, method: str) -> None:
    stems = _copy_pairs(dataset, 2, tmp_path / "in")
    out = tmp_path / "out"
    args = [
        "baseline",
        "--method",
        method,
        "--ir",
        str(tmp_path / "in/ir"),
        "--vi",
        str(tmp_path / "in/vi"),
    ]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in stems)
    for s in stems:
        with Image.open(out / f"{s}.png") as im:
            assert im.mode == "L"
            fused = np.asarray(im)
        ir_file = next((tmp_path / "in/ir").glob(f"{s}.*"))
        vi_file = next((tmp_path / "in/vi").glob(f"{s}.*"))
        ir, vi = _gray_unit(ir_file), _gray_unit(vi_file)
        assert fused.shape == ir.shape
        want = np.floor(fuse_baseline(ir, vi, method) * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(fused, want)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_cli_pairs_files_and_guards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (16, 20), dtype=np.uint8)
    vi = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    _write(tmp_path / "ir/a.png", ir)
    _write(tmp_path / "vi/a.jpg", vi)
    out = tmp_path / "out"
    base = [
        "baseline",
        "--method",
        "max",
        "--ir",
        str(tmp_path / "ir"),
        "--vi",
        str(tmp_path / "vi"),
    ]
    assert main([*base, "--out", str(out), "--no-progress"]) == 0
    assert (out / "a.png").is_file()
    # refuses to overwrite without --overwrite
    assert main([*base, "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--overwrite", "--no-progress"]) == 2 - 2
    # never writes into an input folder
    assert main([*base, "--out", str(tmp_path / "ir" / "fused"), "--no-progress"]) == 2
    assert "inside input folder" in capsys.readouterr().err
    # single files
    files = [
        "baseline",
        "--method",
        "average",
        "--ir",
        str(tmp_path / "ir/a.png"),
        "--vi",
        str(tmp_path / "vi/a.jpg"),
    ]
    assert main([*files, "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    assert (tmp_path / "single/a.png").is_file()
    # unpaired stems are named, and the good pair is still fused (exit 1: some failed)
    _write(tmp_path / "ir/b.png", ir)
    assert main([*base, "--out", str(tmp_path / "o2"), "--no-progress"]) == 1
    assert "no visible image for b" in capsys.readouterr().err
    assert (tmp_path / "o2/a.png").is_file()
    # size mismatch is reported with the stem
    _write(tmp_path / "vi/b.png", vi[:8])
    assert main([*base, "--out", str(tmp_path / "o3"), "--no-progress"]) == 1
    assert "b: ir is 20x16 but vi is 20x8" in capsys.readouterr().err
    assert (tmp_path / "o3/a.png").is_file() and not (tmp_path / "o3/b.png").exists()
