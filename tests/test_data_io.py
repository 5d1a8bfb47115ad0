"""Image decoding, normalisation, gray/colour conversion and saving."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from moefusion.data.color import colorize, colorize_u8, rgb_to_ycbcr, ycbcr_to_rgb
from moefusion.data.io import (
    IMAGE_EXTENSIONS,
    image_size,
    is_image_file,
    load_gray,
    load_pair,
    read_image,
    save_gray_u8,
    save_rgb_u8,
    to_gray,
    to_unit_float,
)
from moefusion.errors import ImageReadError, MoEFusionError, PairError

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_extensions_case_insensitive() -> None:
    assert ".png" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPG") and is_image_file("x.WebP")
    assert not is_image_file("notes.txt")


def test_read_8bit_gray_and_rgb(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, size=(10, 14), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "c.png")
    g = read_image(tmp_path / "g.png")
    c = read_image(tmp_path / "c.png")
    assert g.dtype == np.uint8 and g.shape == (10, 14)
    np.testing.assert_array_equal(g, gray)
    assert c.shape == (12, 16, 3)
    np.testing.assert_array_equal(c, rgb)


def test_16bit_gray_png_and_tiff_stay_uint16(tmp_path: Path) -> None:
    ramp = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    Image.fromarray(ramp).save(tmp_path / "r.tif")
    for name in ("r.png", "r.tif"):
        arr = read_image(tmp_path / name)
        assert arr.dtype == np.uint16 and arr.shape == (30, 40)
        np.testing.assert_array_equal(arr, ramp)


def test_16bit_rgb_png_and_tiff_are_not_truncated(tmp_path: Path) -> None:
    rgb16 = np.zeros((6, 8, 3), dtype=np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 1000, 30000, 65000
    for name in ("c16.png", "c16.tif"):
        cv2.imwrite(str(tmp_path / name), rgb16[..., ::-1].copy())  # cv2 writes BGR
        arr = read_image(tmp_path / name)
        assert arr.dtype == np.uint16 and arr.shape == (6, 8, 3)
        np.testing.assert_array_equal(arr[0, 0], [1000, 30000, 65000])


def test_percentile_stretch_hits_zero_and_one() -> None:
    ramp = np.linspace(20000, 30000, 101 * 50).astype(np.uint16).reshape(50, 101)
    out = to_unit_float(ramp)  # default: percentile
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    # 1 % of the pixels sit at or below the 1st percentile, so they all clip to 0.
    assert 0.005 < np.mean(out == 0.0) < 0.02
    lo, hi = np.percentile(ramp, [1, 99])
    mid = ramp[25, 50]
    assert out[25, 50] == pytest.approx((mid - lo) / (hi - lo), abs=1e-5)


def test_other_high_bit_modes() -> None:
    arr = np.array([[0, 256, 4096, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(to_unit_float(arr, high_bit="scale"), arr / 65535.0, atol=1e-7)
    np.testing.assert_allclose(to_unit_float(arr, high_bit="shift8"), (arr >> 8) / 255.0, atol=1e-7)
    mm = to_unit_float(np.array([[100, 200, 300]], dtype=np.uint16), high_bit="minmax")
    np.testing.assert_allclose(mm, [[0.0, 0.5, 1.0]], atol=1e-7)
    # A constant frame cannot be stretched: falls back to /65535, no division by zero.
    const = to_unit_float(np.full((4, 4), 6553, dtype=np.uint16))
    assert np.all(np.isfinite(const)) and const[0, 0] == pytest.approx(0.1, abs=1e-4)
    np.testing.assert_allclose(
        to_unit_float(np.array([[0, 51, 255]], dtype=np.uint8)), [[0.0, 0.2, 1.0]], atol=1e-7
    )
    with pytest.raises(MoEFusionError, match="high_bit"):
        to_unit_float(arr, high_bit="gamma")


def test_rgba_la_and_palette(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(), np.full((12, 16), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])

    la = Image.fromarray(np.full((5, 6), 90, np.uint8)).convert("LA")
    la.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (5, 6)

    pal = Image.new("P", (4, 3))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    arr = read_image(tmp_path / "p.png")
    assert arr.shape == (3, 4, 3)
    np.testing.assert_array_equal(arr[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(arr[1, 1], [0, 0, 255])


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, left half bright; orientation 6 = rotate 90 deg clockwise
    # for display, which brings the left side to the top.
    img = np.zeros((20, 40), np.uint8)
    img[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).convert("RGB").save(tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "rot.jpg")
    assert arr.shape == (40, 20, 3)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50
    assert image_size(tmp_path / "rot.jpg") == (20, 40)


def test_equal_channels_stay_three_channel(tmp_path: Path) -> None:
    g = RNG.integers(0, 256, size=(8, 9), dtype=np.uint8)
    Image.fromarray(np.dstack([g, g, g])).save(tmp_path / "g3.png")
    arr = read_image(tmp_path / "g3.png")
    assert arr.shape == (8, 9, 3)
    np.testing.assert_allclose(load_gray(tmp_path / "g3.png"), g / 255.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "garbage", "directory", "empty"])
def test_unreadable_file_names_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.png"
    if kind == "garbage":
        path.write_bytes(b"this is not an image")
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(path)
    with pytest.raises(ImageReadError, match="bad.png"):
        image_size(path)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"t.{ext}"
    Image.fromarray(_rgb(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"t.{ext}"):
        read_image(path)


def test_to_gray_weights() -> None:
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[0, 0] = [1, 0, 0]
    rgb[0, 1] = [0, 1, 0]
    rgb[0, 2] = [0, 0, 1]
    g = to_gray(rgb)
    assert g.shape == (2, 3) and g.dtype == np.float32
    np.testing.assert_allclose(g[0], [0.299, 0.587, 0.114], atol=1e-6)
    # cv2's BGR2GRAY weighs the last channel by 0.299, so feed it BGR to compare.
    u8 = _rgb()
    bgr_ref = cv2.cvtColor(u8[..., ::-1].astype(np.float32) / 255.0, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(to_gray(u8.astype(np.float32) / 255.0), bgr_ref, atol=1e-5)
    with pytest.raises(MoEFusionError):
        to_gray(np.zeros((2, 2, 2)))


def test_load_pair_sizes_and_color(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 12), 100, np.uint8)).save(tmp_path / "ir.png")
    Image.fromarray(np.full((10, 12), 50, np.uint8)).save(tmp_path / "vi_gray.png")
    Image.fromarray(_rgb(10, 12)).save(tmp_path / "vi.png")
    Image.fromarray(_rgb(11, 12)).save(tmp_path / "vi_big.png")

    p = load_pair(tmp_path / "ir.png", tmp_path / "vi_gray.png")
    assert p.ir.shape == (10, 12) and p.vi.shape == (10, 12) and p.vi_rgb.shape == (10, 12, 3)
    assert not p.vi_is_color
    np.testing.assert_allclose(p.vi_rgb[..., 2], 50 / 255.0, atol=1e-6)
    q = load_pair(tmp_path / "ir.png", tmp_path / "vi.png")
    assert q.vi_is_color and q.vi.dtype == np.float32
    np.testing.assert_allclose(q.vi, to_gray(q.vi_rgb), atol=1e-6)

    with pytest.raises(PairError) as err:
        load_pair(tmp_path / "ir.png", tmp_path / "vi_big.png")
    msg = str(err.value)
    assert "ir.png" in msg and "vi_big.png" in msg and "12x10" in msg and "12x11" in msg


def test_save_gray_and_rgb_round_trip(tmp_path: Path) -> None:
    img = np.array([[0.0, 0.5, 1.0, -0.3], [1.7, 1 / 255, 0.498, np.nan]], np.float32)
    out = save_gray_u8(tmp_path / "deep" / "dir" / "g.png", img)
    back = np.asarray(Image.open(out))
    assert back.dtype == np.uint8 and back.ndim == 2
    np.testing.assert_array_equal(back, [[0, 128, 255, 0], [255, 1, 127, 0]])

    rgb = _rgb()
    save_rgb_u8(tmp_path / "c.png", rgb / 255.0)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    with pytest.raises(MoEFusionError):
        save_gray_u8(tmp_path / "x.png", np.zeros((2, 2, 3)))
    with pytest.raises(MoEFusionError, match="x.unknownext"):
        save_gray_u8(tmp_path / "x.unknownext", np.zeros((2, 2)))


def test_ycbcr_matches_opencv_and_round_trips() -> None:
    rgb = RNG.random((9, 11, 3), dtype=np.float32)
    ycc = rgb_to_ycbcr(rgb)
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)  # Y, Cr, Cb
    np.testing.assert_allclose(ycc[..., 0], ref[..., 0], atol=1e-5)
    np.testing.assert_allclose(ycc[..., 1], ref[..., 2], atol=2e-3)
    np.testing.assert_allclose(ycc[..., 2], ref[..., 1], atol=2e-3)
    np.testing.assert_allclose(ycbcr_to_rgb(ycc), rgb, atol=1e-5)


def test_colorize_with_luma_returns_original() -> None:
    rgb = RNG.integers(0, 256, size=(16, 20, 3)).astype(np.float32) / 255.0
    out = colorize(to_gray(rgb), rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert np.abs(out - rgb).max() <= 1 / 255
    # A brighter fused image brightens the result but keeps the chroma.
    brighter = colorize(np.clip(to_gray(rgb) + 0.1, 0, 1), rgb)
    assert brighter.mean() > rgb.mean()
    with pytest.raises(MoEFusionError):
        colorize(np.zeros((3, 3)), rgb)


def test_colorize_u8_matches_save_rounding() -> None:
    """Strip-wise colourisation (bounded memory) equals colorize + save_rgb_u8's rounding."""
    rng = np.random.default_rng(2)
    fused = rng.random((50, 9), dtype=np.float32)
    vi_rgb = rng.random((50, 9, 3), dtype=np.float32)
    want = np.clip(np.floor(colorize(fused, vi_rgb).astype(np.float64) * 255 + 0.5), 0, 255)
    np.testing.assert_array_equal(colorize_u8(fused, vi_rgb, rows=7), want.astype(np.uint8))


def test_image_size_of_a_truncated_png_fails_cleanly(tmp_path, capfd) -> None:
    from moefusion.data.io import image_size

    sample = Path(__file__).resolve().parents[1] / "samples" / "ir" / "00012N.png"
    cut = tmp_path / "cut.png"
    cut.write_bytes(sample.read_bytes()[:3000])  # header intact, pixel data cut off
    with pytest.raises(ImageReadError, match="cannot read image"):
        image_size(cut)
    assert capfd.readouterr().err == ""  # no decoder chatter of its own on stderr


def test_pair_figure_is_replaced_only_by_a_whole_new_one(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from moefusion.figures import FigureRow, save_pair_figure

    img = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    rows = [FigureRow("a", img, img, img, None)]
    path = save_pair_figure(rows, tmp_path / "fig.png")
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def dies_writing(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dies_writing)
    with pytest.raises(KeyboardInterrupt):
        save_pair_figure(rows, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
