"""The Python API: moefusion.Fuser on numpy, PIL and tensor inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import moefusion
from moefusion.data import colorize, to_gray
from moefusion.errors import MoEFusionError, PairError
from moefusion.fuser import Fuser, FusionResult, resolve_device, to_unit_image

H, W = 40, 56


@pytest.fixture(scope="module")
def fuser(tiny_weights: Path) -> Fuser:
    return Fuser.from_file(tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (H, W), dtype=np.uint8)
    vi = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return ir, vi


def _reference(fuser: Fuser, ir01: np.ndarray, vi01: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = fuser.model(torch.from_numpy(ir01)[None, None], torch.from_numpy(vi01)[None, None])
    return out.fused.clamp(0, 1)[0, 0].numpy()


def test_lazy_export() -> None:
    assert moefusion.Fuser is Fuser
    with pytest.raises(AttributeError):
        _ = moefusion.NotThere  # type: ignore[attr-defined]


def test_numpy_matches_model(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    out = fuser.fuse(ir, vi)
    assert out.shape == (H, W) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    want = _reference(fuser, ir / np.float32(255), to_gray(vi / np.float32(255)))
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_pil_tensor_rgba_and_float_inputs_agree(
    fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]
) -> None:
    ir, vi = pair
    base = fuser.fuse(ir, vi)
    vi_f = vi.astype(np.float32) / 255
    rgba = np.concatenate([vi, np.full((H, W, 1), 7, np.uint8)], axis=2)  # alpha ignored
    variants = [
        (Image.fromarray(ir), Image.fromarray(vi)),
        (Image.fromarray(ir), Image.fromarray(rgba)),
        (torch.from_numpy(ir), torch.from_numpy(vi_f).permute(2, 0, 1)),
        (torch.from_numpy(ir)[None].float() / 255, torch.from_numpy(vi).permute(2, 0, 1)),
        (ir[..., None], rgba),
        (ir.astype(np.float64) / 255, vi_f),
    ]
    for a, b in variants:
        np.testing.assert_allclose(fuser.fuse(a, b), base, atol=1e-5)
    # views with negative strides (flipped float images) are accepted
    ir_f = ir.astype(np.float32) / 255
    np.testing.assert_array_equal(
        fuser.fuse(ir_f[::-1], vi_f[::-1]), fuser.fuse(ir_f[::-1].copy(), vi_f[::-1].copy())
    )


def test_16_bit_inputs(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    ir16 = ir.astype(np.uint16) * 257  # the same image on the full 16-bit scale
    np.testing.assert_allclose(
        fuser.fuse(ir16, vi, high_bit="scale"), fuser.fuse(ir, vi), atol=1e-5
    )
    # 14-bit radiometric data in a narrow band: the default stretches it to [0, 1]
    narrow = (8000 + ir.astype(np.uint16) * 4).astype(np.uint16)
    unit = to_unit_image(narrow)
    assert unit.min() == 0.0 and unit.max() == 1.0
    out = fuser.fuse(narrow, vi)
    assert out.shape == (H, W) and np.isfinite(out).all()
    pil16 = Image.fromarray(narrow)  # mode I;16
    np.testing.assert_allclose(
        to_unit_image(pil16, high_bit="minmax"), to_unit_image(narrow, high_bit="minmax")
    )


def test_exif_orientation_of_pil_input() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees: width and height swap
    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(buf, format="JPEG", exif=exif)
    buf.seek(0)
    assert to_unit_image(Image.open(buf)).shape == (20, 10)


def test_batches_return_lists(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    small_ir, small_vi = ir[:32, :48], vi[:32, :48]
    singles = [fuser.fuse(ir, vi), fuser.fuse(small_ir, small_vi)]
    out = fuser.fuse([ir, small_ir, ir], [vi, small_vi, vi], batch_size=2)
    assert isinstance(out, list) and [o.shape for o in out] == [(H, W), (32, 48), (H, W)]
    np.testing.assert_allclose(out[0], singles[0], atol=1e-5)
    np.testing.assert_allclose(out[1], singles[1], atol=1e-5)
    np.testing.assert_allclose(out[2], singles[0], atol=1e-5)
    t_ir = torch.from_numpy(np.stack([ir, ir]))[:, None].float() / 255
    t_vi = torch.from_numpy(np.stack([vi, vi])).permute(0, 3, 1, 2).float() / 255
    out_t = fuser.fuse(t_ir, t_vi, batch_size=2)
    assert len(out_t) == 2
    np.testing.assert_allclose(out_t[1], singles[0], atol=1e-5)


def test_details_gates_have_k_nonzeros(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    res = fuser.fuse(ir, vi, return_details=True)
    assert isinstance(res, FusionResult) and res.tiles == 1 and res.color is None
    k, n = fuser.model.config.top_k, fuser.model.config.num_experts
    assert set(res.gates) == {"mole_fg", "mole_bg", "moge"}
    for g in res.gates.values():
        assert g.shape == (n,) and np.count_nonzero(g) == k
        assert g.sum() == pytest.approx(1.0, abs=1e-6)
    assert res.attention.shape == (H, W)
    assert res.attention.min() > 0.0 and res.attention.max() < 1.0
    np.testing.assert_array_equal(res.fused, fuser.fuse(ir, vi))


def test_color(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    rgb = fuser.fuse_color(ir, vi)
    gray = fuser.fuse(ir, vi)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    # the visible image's YCbCr with Y replaced by the fused image (data.colorize)
    np.testing.assert_allclose(rgb, colorize(gray, vi.astype(np.float32) / 255), atol=1e-6)
    res = fuser.fuse(ir, vi[..., 0], color=True, return_details=True)  # gray visible
    assert np.allclose(res.color[..., 0], res.color[..., 2])


def test_tiled_details(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vi = pair
    res = fuser.fuse(ir, vi, tile=32, overlap=16, return_details=True)
    assert res.fused.shape == (H, W) and res.attention.shape == (H, W)
    assert res.tiles == 6 and len(res.tile_gates) == 6  # 2 rows x 3 columns
    for name, g in res.gates.items():
        assert g.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(g, np.mean([t[name] for t in res.tile_gates], axis=0), atol=1e-6)


def test_errors(
    fuser: Fuser, pair: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    ir, vi = pair
    with pytest.raises(PairError, match="56x40"):
        fuser.fuse(ir, vi[:30])
    with pytest.raises(MoEFusionError, match="shape"):
        fuser.fuse(ir[None, None], vi)
    with pytest.raises(MoEFusionError, match="equally long"):
        fuser.fuse([ir, ir], [vi])
    with pytest.raises(MoEFusionError, match="unsupported image type"):
        fuser.fuse("a.png", vi)  # type: ignore[arg-type]
    with pytest.raises(MoEFusionError, match="tile"):
        fuser.fuse(ir, vi, tile=8)
    import moefusion.weights

    monkeypatch.setattr(moefusion.weights, "bundled_weights_path", lambda: None)
    with pytest.raises(MoEFusionError, match="no bundled weights"):
        Fuser.pretrained(device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MoEFusionError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_float_outside_unit_range_warns(fuser: Fuser, pair: tuple[np.ndarray, np.ndarray]) -> None:
    """0-255 data passed as float is clipped (as before), but not silently."""
    ir, vi = pair
    want = fuser.fuse(np.clip(ir.astype(np.float32), 0, 1), vi)
    with pytest.warns(UserWarning, match="0-255 data"):
        got = fuser.fuse(ir.astype(np.float32), vi)
    np.testing.assert_array_equal(got, want)
