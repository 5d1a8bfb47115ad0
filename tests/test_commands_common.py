"""Shared command helpers (``commands/_common.py``) and the data-layer pieces they rely on."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.commands._common import (
    check_output_outside,
    check_targets,
    device_arg,
    input_folders,
    parse_device,
    parse_named_dirs,
    resolve_weights,
)
from moefusion.data import (
    Pair,
    decode_pil,
    load_pair,
    parse_size,
    read_pair_batches,
    same_size_batches,
)
from moefusion.errors import MoEFusionError, PairError


def test_parse_named_dirs() -> None:
    assert parse_named_dirs(["ours=out/a", "out/lp"]) == {
        "ours": Path("out/a"),
        "lp": Path("out/lp"),
    }
    with pytest.raises(MoEFusionError, match="NAME=DIR"):
        parse_named_dirs(["=x"])
    with pytest.raises(MoEFusionError, match="given twice"):
        parse_named_dirs(["a=x", "a=y"], "--fused")


@pytest.mark.parametrize("text", ["auto", "cpu", "cuda", "cuda:1", "CUDA:12", "mps"])
def test_parse_device_accepts(text: str) -> None:
    assert parse_device(text) == text.lower()


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:0:1", ""])
def test_parse_device_refuses(text: str) -> None:
    with pytest.raises(MoEFusionError, match="unknown device"):
        parse_device(text)
    with pytest.raises(argparse.ArgumentTypeError):
        device_arg(text)


def test_resolve_device_names_the_missing_device() -> None:
    import torch

    from moefusion.fuser import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(MoEFusionError, match="CUDA is not available"):
            resolve_device("cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(MoEFusionError, match="CUDA device"):
            resolve_device(f"cuda:{n}")
    if not torch.backends.mps.is_available():
        with pytest.raises(MoEFusionError, match="MPS is not available"):
            resolve_device("mps")


def test_resolve_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MoEFusionError, match="not found"):
        resolve_weights(tmp_path / "missing.safetensors")
    import moefusion.weights

    monkeypatch.setattr(moefusion.weights, "bundled_weights_path", lambda: None)
    with pytest.raises(MoEFusionError, match="--weights"):
        resolve_weights(None)


def test_output_folder_rules(tmp_path: Path) -> None:
    ir_dir, vi_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vi_dir.mkdir()
    (tmp_path / "big_ir.tif").touch()
    (tmp_path / "big_vi.png").touch()
    # folders: nothing inside them
    inside, beside = input_folders(ir_dir, vi_dir)
    for out in (ir_dir, vi_dir / "fused"):
        with pytest.raises(MoEFusionError, match="input folder"):
            check_output_outside(out, inside, beside)
    check_output_outside(tmp_path / "fused", inside, beside)
    # two files (the README's --tile example): a sub-folder is fine, their folder is not
    inside, beside = input_folders(tmp_path / "big_ir.tif", tmp_path / "big_vi.png")
    check_output_outside(tmp_path / "fused", inside, beside)
    with pytest.raises(MoEFusionError, match="beside the inputs"):
        check_output_outside(tmp_path, inside, beside)


def test_check_targets(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.touch()
    with pytest.raises(MoEFusionError, match="overwrite input"):
        check_targets([a], [a], overwrite=True)
    with pytest.raises(MoEFusionError, match="same file"):
        check_targets([b, tmp_path / "." / "b.png"], [], overwrite=True)
    with pytest.raises(MoEFusionError, match="--overwrite"):
        check_targets([a], [], overwrite=False)
    check_targets([a, b], [], overwrite=True)


# ------------------------------------------------------------------------- data layer


def test_parse_size() -> None:
    assert parse_size(" 640 x480 ") == (640, 480) and parse_size("64X48") == (64, 48)
    assert parse_size("1x10") is None and parse_size("big") is None


def test_same_size_batches() -> None:
    sizes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3)]
    assert same_size_batches(sizes, 1) == [[0], [1], [2], [3], [4]]
    assert same_size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]
    with pytest.raises(MoEFusionError):
        same_size_batches(sizes, 0)


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_read_pair_batches_groups_and_reports(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for stem, (h, w) in (("a", (8, 10)), ("b", (6, 6)), ("c", (8, 10))):
        ir = _write(tmp_path / "ir" / f"{stem}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        vi = _write(
            tmp_path / "vi" / f"{stem}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        )
        pairs.append(Pair(stem, ir, vi))
    bad_vi = _write(tmp_path / "vi" / "d.png", np.zeros((5, 5), np.uint8))
    pairs.append(Pair("d", pairs[0].ir, bad_vi))  # size mismatch
    batches = list(read_pair_batches(pairs, batch_size=4))
    assert [[i for i, _ in b] for b in batches] == [[0, 2, 3], [1]]
    (_, d_err) = batches[0][2]
    assert isinstance(d_err, PairError)
    a = batches[0][0][1]
    want = load_pair(pairs[0].ir, pairs[0].vi)
    np.testing.assert_array_equal(a.vi, want.vi)
    # resize: the pair that failed is fused at the infrared size
    ((_, d_ok),) = next(iter(read_pair_batches(pairs[3:], resize="ir")))
    assert d_ok.ir.shape == d_ok.vi.shape == (8, 10)


def test_decode_pil_float_mode() -> None:
    arr = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = decode_pil(Image.fromarray(arr, mode="F"))
    assert out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)
