"""Tiled fusion: tile layout, blending windows, exactness for local functions, real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from moefusion.models import FusionNetwork, MoEFusionConfig, NoisyTopKGate
from moefusion.tiling import (
    axis_weights,
    default_margin,
    fuse_tiled,
    tile_grid,
    tile_starts,
    validate_tiling,
)

#: 4 encoder + 2 MoLE-expert + 4 MoGE-expert 3x3 convolutions.
FUSION_RADIUS = 10


def _conv_stack(radius: int, in_channels: int = 2, out_channels: int = 1) -> nn.Module:
    """``radius`` 3x3 zero-padded convolutions: output depends on inputs within ``radius`` px."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(radius):
        last = i == radius - 1
        layers.append(nn.Conv2d(c, out_channels if last else 4, 3, padding=1))
        if not last:
            layers.append(nn.Tanh())
        c = 4
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize(
    "length,tile,overlap",
    [(100, 100, 25), (50, 64, 16), (233, 64, 16), (1000, 256, 64), (97, 32, 16)],
)
def test_tile_starts_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + size - b >= overlap  # consecutive tiles overlap by at least `overlap`
    n = len(starts)
    if n > 2:  # the smallest count: one tile fewer could not keep the overlap
        assert (length - size) / (n - 2) > size - overlap
    assert (n > 1) == (length > tile)


def test_axis_weights_borders_and_margin() -> None:
    overlap, margin = 32, 8
    inner = axis_weights(40, 64, 200, overlap, margin)
    assert torch.all(inner[:margin] == 0) and torch.all(inner[-margin:] == 0)
    assert inner[margin] > 0 and torch.all(inner[overlap:-overlap] == 1)
    assert torch.all(torch.diff(inner[:overlap]) >= 0)  # monotone ramp
    first = axis_weights(0, 64, 200, overlap, margin)
    assert first[0] == 1 and first[-1] == 0  # image border keeps weight 1
    assert torch.all(axis_weights(0, 200, 200, overlap, margin) == 1)


def test_validate_tiling() -> None:
    assert validate_tiling(256, 64) == default_margin(64) == 16
    with pytest.raises(ValueError, match="tile"):
        validate_tiling(16, 4)
    with pytest.raises(ValueError, match="overlap"):
        validate_tiling(64, 40)
    with pytest.raises(ValueError, match="margin"):
        validate_tiling(64, 16, margin=8)


@pytest.mark.parametrize("overlap", [0, 8, 24])
def test_weights_normalise_to_identity(overlap: int) -> None:
    """A function returning its input is reproduced exactly: weights are normalised
    everywhere (no pixel with zero total weight), also without overlap."""
    ir = torch.rand(2, 1, 70, 131, dtype=torch.float64)
    out = fuse_tiled(lambda a, b: a, ir, ir.clone(), 48, overlap)
    torch.testing.assert_close(out, ir.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "shape,tile,overlap", [((1, 90, 141), 48, 24), ((2, 61, 100), 64, 32), ((1, 64, 64), 32, 16)]
)
def test_local_function_tiled_equals_whole(
    shape: tuple[int, int, int], tile: int, overlap: int
) -> None:
    """A conv stack of radius == margin: tiled == whole everywhere, to float rounding."""
    margin = default_margin(overlap)
    net = _conv_stack(margin, out_channels=2)
    batch, h, w = shape
    ir = torch.rand(batch, 1, h, w)
    vi = torch.rand(batch, 1, h, w)

    def fn(a: Tensor, b: Tensor) -> Tensor:
        return net(torch.cat([a, b], 1))

    with torch.no_grad():
        whole = fn(ir, vi)
        tiled = fuse_tiled(fn, ir, vi, tile, overlap, out_channels=2)
    assert len(tile_grid(h, w, tile, overlap)) > 1
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_receptive_field_beyond_margin_is_not_exact() -> None:
    """Sanity check of the test above: with a margin smaller than the radius, seams show."""
    net = _conv_stack(6)
    ir = torch.rand(1, 1, 80, 80)
    vi = torch.rand_like(ir)

    def fn(a: Tensor, b: Tensor) -> Tensor:
        return net(torch.cat([a, b], 1))

    with torch.no_grad():
        diff = (fuse_tiled(fn, ir, vi, 48, 16) - fn(ir, vi)).abs().max()
    assert diff > 1e-5


def test_fusion_network_is_exact_when_tiled(tiny_config: dict) -> None:
    """The real fusion network with fixed (zero-weight) gates and a given attention map
    is local with radius 10: tiles with margin >= 10 reproduce the whole-image output."""
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(MoEFusionConfig.from_dict(tiny_config)).eval()
    # zero gate weights (their initial value): equal logits, the same experts everywhere
    assert all(torch.all(g.w_gate == 0) for g in fusion.modules() if isinstance(g, NoisyTopKGate))
    ir, vi, att = (torch.rand(1, 1, 100, 130) for _ in range(3))

    def fn(a: Tensor, b: Tensor) -> Tensor:
        return fusion(a, b[:, :1], b[:, 1:]).fused

    overlap = 40  # margin 10 >= FUSION_RADIUS
    assert default_margin(overlap) >= FUSION_RADIUS
    with torch.inference_mode():
        whole = fn(ir, torch.cat([vi, att], 1))
        tiled = fuse_tiled(fn, ir, torch.cat([vi, att], 1), 80, overlap)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_full_model_tiled_close_to_whole(make_tiny_model) -> None:
    """With gates and attention per tile the full model is only approximately local.

    Random-init tiny model with random gate weights, so routing differs between tiles:
    the interior (16 px from the image border) stays within 0.05 of the whole-image
    result (docs/fuse.md reports the difference measured with trained weights)."""
    model = make_tiny_model().eval()  # seed 0, random gates
    ir, vi = torch.rand(1, 1, 96, 128), torch.rand(1, 1, 96, 128)

    def fn(a: Tensor, b: Tensor) -> Tensor:
        return model(a, b).fused

    with torch.inference_mode():
        whole = fn(ir, vi).clamp(0, 1)
        tiled = fuse_tiled(fn, ir, vi, 64, 32).clamp(0, 1)
    diff = (tiled - whole).abs()[..., 16:-16, 16:-16]
    assert tiled.shape == whole.shape
    assert float(diff.max()) < 0.05
    assert np.isfinite(tiled.numpy()).all()


@pytest.mark.slow
def test_release_weights_tiled_tolerance() -> None:
    """docs/fuse.md's measured whole-vs-tiled difference, with the bundled weights."""
    from moefusion.data import load_pair
    from moefusion.fuser import Fuser
    from moefusion.weights import bundled_weights_path

    if bundled_weights_path() is None:
        pytest.skip("this build has no bundled weights")
    samples = Path(__file__).resolve().parents[1] / "samples"
    pair = load_pair(samples / "ir" / "00095D.png", samples / "vi" / "00095D.png")
    fuser = Fuser.pretrained(device="cpu")
    whole = fuser.fuse(pair.ir, pair.vi)
    tiled = fuser.fuse(pair.ir, pair.vi, tile=512, overlap=128)
    diff = np.abs(tiled - whole)[16:-16, 16:-16] * 255
    # measured with moefusion-cpu-v6: max 60.5, mean 19.8, p99 45.2 levels (v5: mean 3.9,
    # p99 11.9; v2: mean 2.06, p99 12.7): tiles route on their own, and on this pair one
    # tile's MoGE choice brightens it (docs/fuse.md, "Whole vs tiled")
    assert diff.mean() < 22.0 and np.percentile(diff, 99) < 50.0
    assert diff.mean() > 0  # two tiles: the gates do see different content
