"""Hand-computed metric values on tiny images, input validation, and the public API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from moefusion.errors import MoEFusionError
from moefusion.metrics import (
    CONVENTION_DESCRIPTIONS,
    CONVENTIONS,
    HIGHER_IS_BETTER,
    METRICS,
    MetricInputError,
    compute,
    compute_batch,
    describe,
    to_gray_u8,
)

U8 = np.uint8


def _img(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=U8)


def _texture(seed: int, shape: tuple[int, int] = (48, 56)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(U8)


def test_public_constants() -> None:
    assert CONVENTIONS == ("paper", "float", "cddfuse")
    assert METRICS[:8] == ("EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf")
    assert not HIGHER_IS_BETTER["MSE"] and all(HIGHER_IS_BETTER[m] for m in METRICS if m != "MSE")
    for c in CONVENTIONS:
        assert describe(c) == CONVENTION_DESCRIPTIONS[c] and describe(c).startswith(c)


# ------------------------------------------------------------------------ fused-only metrics


def test_entropy_of_two_and_four_levels() -> None:
    two = _img([[0, 255], [0, 255]])
    four = _img([[0, 1], [2, 3]])
    for c in CONVENTIONS:
        assert compute(two, two, two, c, ["EN"])["EN"] == pytest.approx(1.0, abs=1e-15)
        assert compute(four, four, four, c, ["EN"])["EN"] == pytest.approx(2.0, abs=1e-15)


def test_spatial_frequency_scales() -> None:
    f = _img([[0, 255], [0, 255]])  # column differences 255, row differences 0
    assert compute(f, f, f, "float", ["SF"])["SF"] == pytest.approx(255.0)
    assert compute(f, f, f, "cddfuse", ["SF"])["SF"] == pytest.approx(255.0)
    assert compute(f, f, f, "paper", ["SF"])["SF"] == pytest.approx(1.0)  # on [0, 1]


def test_paper_sd_saturates_like_matlab_uint8() -> None:
    # mean 10: deviations -10 -> 0 (uint8 clips negatives), +10 -> 10, squared 100.
    f = _img([[0, 20], [0, 20]])
    assert compute(f, f, f, "paper", ["SD"])["SD"] == pytest.approx(math.sqrt(200 / 4))
    assert compute(f, f, f, "float", ["SD"])["SD"] == pytest.approx(10.0)
    # mean 50: deviation 50 squares to 2500, which uint8 clips to 255.
    g = _img([[0, 100], [0, 100]])
    assert compute(g, g, g, "paper", ["SD"])["SD"] == pytest.approx(math.sqrt(2 * 255 / 4))
    assert compute(g, g, g, "float", ["SD"])["SD"] == pytest.approx(50.0)
    # mean 0.5: +0.5 rounds half away from zero to 1.
    h = _img([[0, 1], [0, 1]])
    assert compute(h, h, h, "paper", ["SD"])["SD"] == pytest.approx(math.sqrt(2 / 4))
    # never above sqrt(255), whatever the contrast
    big = np.tile(_img([[0, 255]]), (8, 8))
    assert compute(big, big, big, "paper", ["SD"])["SD"] <= math.sqrt(255)


def test_average_gradient_of_a_ramp() -> None:
    f = np.tile(np.arange(0, 100, 10, dtype=U8), (6, 1))  # Gx = 10, Gy = 0 everywhere
    per_pixel = math.sqrt(10**2 / 2)
    m, n = f.shape
    assert compute(f, f, f, "paper", ["AG"])["AG"] == pytest.approx(
        per_pixel * m * n / ((m - 1) * (n - 1))
    )
    assert compute(f, f, f, "cddfuse", ["AG"])["AG"] == pytest.approx(per_pixel, rel=1e-6)


# ------------------------------------------------------------------------ joint metrics


def test_mi_merges_levels_254_and_255_in_the_joint_histogram() -> None:
    f = _img([[254, 255], [254, 255]])
    # Marginals: 1 bit each. TANG's joint histogram puts 254 and 255 in one bin, so
    # H(A, F) = 0 and each pair gives 1 + 1 - 0 = 2 bits instead of 1.
    assert compute(f, f, f, "paper", ["MI"])["MI"] == pytest.approx(4.0)
    assert compute(f, f, f, "float", ["MI"])["MI"] == pytest.approx(4.0)
    # CDDFuse (sklearn): no merging, natural log: ln 2 per pair.
    assert compute(f, f, f, "cddfuse", ["MI"])["MI"] == pytest.approx(2 * math.log(2))
    g = _img([[10, 20], [10, 20]])
    assert compute(g, g, g, "paper", ["MI"])["MI"] == pytest.approx(2.0)


def test_cc_scd_match_numpy_correlations() -> None:
    a, b, f = _texture(1), _texture(2), _texture(3)
    fa, fb, ff = (x.astype(float) for x in (a, b, f))

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])

    cc = (corr(fa, ff) + corr(fb, ff)) / 2
    scd = corr(ff - fb, fa) + corr(ff - fa, fb)
    for c in CONVENTIONS:
        got = compute(a, b, f, c, ["CC", "SCD"])
        assert got["CC"] == pytest.approx(cc, rel=1e-5)
        assert got["SCD"] == pytest.approx(scd, rel=1e-5)


def test_mse_and_psnr_definitions() -> None:
    z = np.zeros((4, 4), U8)
    w = np.full((4, 4), 255, U8)
    paper = compute(z, z, w, "paper", ["MSE", "PSNR"])
    assert paper["MSE"] == pytest.approx(1.0)  # on [0, 1]
    assert paper["PSNR"] == pytest.approx(20 * math.log10(255))  # 255 peak on a [0, 1] MSE
    cdd = compute(z, z, w, "cddfuse", ["MSE", "PSNR"])
    assert cdd["MSE"] == pytest.approx(255.0**2)
    assert cdd["PSNR"] == pytest.approx(0.0, abs=1e-6)  # 10 log10(max(F)^2 / MSE)
    assert compute(w, w, w, "paper", ["PSNR"])["PSNR"] == math.inf


def test_vif_and_ssim_of_a_perfect_copy() -> None:
    a = _texture(4, (64, 72))
    for c in CONVENTIONS:
        # fused == both sources: each pair's VIF is 1 (up to the 1e-10 guards), summed.
        assert compute(a, a, a, c, ["VIF"])["VIF"] == pytest.approx(2.0, abs=1e-6)
    assert compute(a, a, a, "cddfuse", ["SSIM"])["SSIM"] == pytest.approx(2.0, abs=1e-6)
    # A flat source has 0/0 per pair: MATLAB keeps NaN, CDDFuse replaces it by 1.
    flat = np.full_like(a, 77)
    assert math.isnan(compute(flat, flat, a, "paper", ["VIF"])["VIF"])
    assert compute(flat, flat, a, "cddfuse", ["VIF"])["VIF"] == 2.0


def _qabf_transliteration(a: np.ndarray, b: np.ndarray, f: np.ndarray, scale: float) -> float:
    """Straight per-pixel Qabf, written independently of the package, for cross-checking."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x / scale
        sx, sy = convolve2d(x, h3, mode="same"), convolve2d(x, h1, mode="same")
        ang = np.full(x.shape, math.pi / 2)
        for i, j in zip(*np.nonzero(sx), strict=True):
            ang[i, j] = math.atan(sy[i, j] / sx[i, j])
        return np.sqrt(sx**2 + sy**2), ang

    def q(ga: np.ndarray, aa: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
        out = np.zeros_like(ga)
        for i, j in np.ndindex(ga.shape):
            x, y = ga[i, j], gf[i, j]
            g = y / x if x > y else (y if x == y else x / y)
            o = 1 - abs(aa[i, j] - af[i, j]) / (math.pi / 2)
            out[i, j] = (
                0.9994 / (1 + math.exp(-15 * (g - 0.5))) * 0.9879 / (1 + math.exp(-22 * (o - 0.8)))
            )
        return out

    (ga, aa), (gb, ab), (gf, af) = grad(a), grad(b), grad(f)
    return float(np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def test_qabf_matches_an_independent_transliteration() -> None:
    # Low-contrast textures: on [0, 1] their gradients are below 0.5, where Q_g(gF) is ~0.
    a, b = _texture(5, (20, 24)) // 10, _texture(6, (20, 24)) // 10
    a[:, 12:] = 0
    b[:, :12] = 0
    f = np.maximum(a, b)  # copies each source's half exactly: exercises the gA == gF rule
    paper = compute(a, b, f, "paper", ["Qabf"])["Qabf"]
    flt = compute(a, b, f, "float", ["Qabf"])["Qabf"]
    assert paper == pytest.approx(_qabf_transliteration(a, b, f, 255.0), rel=1e-12)
    assert flt == pytest.approx(_qabf_transliteration(a, b, f, 1.0), rel=1e-12)
    assert compute(a, b, f, "cddfuse", ["Qabf"])["Qabf"] == pytest.approx(flt, rel=1e-5)
    # The equality rule is not scale-invariant: exact copies score much lower on [0, 1].
    assert paper < flt - 0.3


# ------------------------------------------------------------------------ gray conversion


def test_to_gray_u8_per_convention() -> None:
    # Pixels on either side of a .5 boundary under the two weightings.
    rgb = np.array([[[207, 7, 250], [38, 82, 193]]], dtype=U8)
    np.testing.assert_array_equal(to_gray_u8(rgb, "paper"), [[94, 82]])  # MATLAB rgb2gray
    np.testing.assert_array_equal(to_gray_u8(rgb, "float"), [[94, 82]])
    np.testing.assert_array_equal(to_gray_u8(rgb, "cddfuse"), [[95, 81]])  # cv2 + round
    equal = np.repeat(_texture(7, (5, 6))[..., None], 3, axis=2)
    for c in CONVENTIONS:
        np.testing.assert_array_equal(to_gray_u8(equal, c), equal[..., 0])
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, U8)], axis=2)
    np.testing.assert_array_equal(to_gray_u8(rgba, "paper"), [[94, 82]])
    with pytest.raises(MetricInputError):
        to_gray_u8(rgb.astype(np.float32))
    with pytest.raises(MetricInputError):
        to_gray_u8(rgb, "matlab")


# ------------------------------------------------------------------------ validation / API


def test_metric_input_error_is_a_moefusion_error() -> None:
    assert issubclass(MetricInputError, MoEFusionError)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.full((8, 8), 0.5), r"\[0, 1\]"),
        (np.full((8, 8), 7.5), "whole grey levels"),
        (np.full((8, 8), 300.0), r"\[0, 255\]"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((8, 8), np.int32), "dtype int32"),
        (np.zeros((8, 8), bool), "dtype bool"),
        (np.zeros((8, 8, 3), U8), "2-D"),
        ([[0, 1], [2, 3]], "numpy array or torch tensor"),
        (np.zeros((8, 9), U8), "sizes differ"),
    ],
)
def test_invalid_inputs_are_rejected(bad: object, message: str) -> None:
    good = np.zeros((8, 8), U8)
    with pytest.raises(MetricInputError, match=message):
        compute(good, good, bad)


def test_unknown_names_and_small_images() -> None:
    a = _texture(8, (8, 8))
    with pytest.raises(MetricInputError, match="unknown metric convention"):
        compute(a, a, a, "tang")
    with pytest.raises(MetricInputError, match="SSIM"):
        compute(a, a, a, "paper", ["SSIM"])
    with pytest.raises(MetricInputError, match="VIF needs images of at least 41x41"):
        compute(a, a, a, "paper", ["VIF"])
    with pytest.raises(MetricInputError, match="at least 2x2"):
        compute(a[:1], a[:1], a[:1], "paper", ["EN"])


def test_torch_and_float_inputs_equal_uint8() -> None:
    a, b, f = _texture(9), _texture(10), _texture(11)
    want = compute(a, b, f, "paper")
    assert set(want) == set(METRICS) - {"SSIM"}
    assert compute(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(f)) == want
    got = compute(a.astype(np.float32), torch.from_numpy(b).double(), f.astype(np.float64))
    assert got == want
    assert set(compute(a, b, f, "cddfuse")) == set(METRICS)


def test_compute_batch() -> None:
    a, b, f = _texture(12), _texture(13), _texture(14)
    batch = compute_batch(np.stack([a, b]), [b, a], [f, f], "float", ["EN", "Qabf"])
    assert batch == [
        compute(a, b, f, "float", ["EN", "Qabf"]),
        compute(b, a, f, "float", ["EN", "Qabf"]),
    ]
    with pytest.raises(MetricInputError, match="batch lengths differ"):
        compute_batch([a], [b, b], [f], "float")
