"""Tiled fusion: tile layout, blending windows, exactness for local functions, real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moefusion.models import FusionNetwork, MoEFusionConfig, NoisyTopKGate
from moefusion.tiling import (
    axis_weights,
    default_margin,
    fuse_tiled,
    pool_tiled,
    tile_cores,
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


# ------------------------------------------------------------------ shared gate decisions


@pytest.mark.parametrize(
    "height,width,tile,overlap", [(90, 141, 48, 24), (61, 100, 64, 32), (300, 70, 64, 0)]
)
def test_tile_cores_partition_the_image(height: int, width: int, tile: int, overlap: int) -> None:
    tiles, cores = tile_grid(height, width, tile, overlap), tile_cores(height, width, tile, overlap)
    assert len(cores) == len(tiles) > 1
    owner = torch.zeros(height, width, dtype=torch.int64)
    reach = (overlap - 1) // 2
    for t, c in zip(tiles, cores, strict=True):
        assert t.top <= c.top < c.bottom <= t.bottom and t.left <= c.left < c.right <= t.right
        # interior tile edges are at least (overlap - 1) // 2 px from the core
        assert c.top == 0 or c.top - t.top >= reach
        assert c.left == 0 or c.left - t.left >= reach
        assert c.bottom == height or t.bottom - c.bottom >= reach
        assert c.right == width or t.right - c.right >= reach
        owner[c.top : c.bottom, c.left : c.right] += 1
    assert torch.all(owner == 1)


def test_pool_tiled_equals_whole_image_pooling() -> None:
    """Grid averages of a local function's maps, gathered tile by tile, are the whole
    image's ``adaptive_avg_pool2d`` (a grid that does not divide the size: bins overlap)."""
    net = _conv_stack(6, out_channels=3)  # radius 6 <= (32 - 1) // 2
    ir, vi = torch.rand(2, 1, 90, 141), torch.rand(2, 1, 90, 141)
    grid = (7, 9)

    def stats(a: Tensor, b: Tensor, pool) -> dict[str, list[Tensor]]:
        y = net(torch.cat([a, b], 1))
        return {
            "y": [pool(y), pool(y[:, :1])],
            "cl": [pool(y.contiguous(memory_format=torch.channels_last))],
        }

    with torch.no_grad():
        whole = F.adaptive_avg_pool2d(net(torch.cat([ir, vi], 1)), grid)
        pooled = pool_tiled(stats, ir, vi, 64, 32, grid)
    assert len(tile_grid(90, 141, 64, 32)) > 1
    torch.testing.assert_close(pooled["y"][0], whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled["y"][1], whole[:, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled["cl"][0], whole, rtol=0, atol=1e-6)


def _random_gates(module: nn.Module) -> None:
    """Input-dependent routing: gate weights from N(0, 0.05) instead of zeros."""
    for gate in module.modules():
        if isinstance(gate, NoisyTopKGate):
            nn.init.normal_(gate.w_gate, std=0.05)


@pytest.mark.parametrize("combine", ["linear", "log"])
def test_fusion_network_with_shared_gates_is_exact_when_tiled(
    tiny_config: dict, combine: str
) -> None:
    """With input-dependent gates, tiles route on their own; the whole image's decisions,
    made from grid averages gathered tile by tile and given to every tile, reproduce the
    whole-image output (given attention map). ``log`` needs a second pass for MoGE."""
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(
        MoEFusionConfig.from_dict({**tiny_config, "combine": combine})
    )
    fusion = fusion.eval()
    _random_gates(fusion)
    ir, vi, att = (torch.rand(2, 1, 100, 130) for _ in range(3))
    tile, overlap = 80, 40  # margin 10 >= FUSION_RADIUS
    with torch.inference_mode():
        whole = fusion(ir, vi, att)
        per_tile = [
            fusion(
                ir[..., t.top : t.bottom, t.left : t.right],
                vi[..., t.top : t.bottom, t.left : t.right],
                att[..., t.top : t.bottom, t.left : t.right],
            ).gates
            for t in tile_grid(100, 130, tile, overlap)
        ]
        # the test means something: some tile decides differently on its own
        assert any(not torch.equal(g["moge"], whole.gates["moge"]) for g in per_tile)

        decided: dict[str, Tensor] = {}
        passes = 0
        while set(fusion.gate_sizes) - set(decided):
            stats = pool_tiled(
                lambda a, b, pool, known=decided: fusion.gate_statistics(
                    a, b[:, :1], b[:, 1:], pool, known
                ),
                ir, torch.cat([vi, att], 1), tile, overlap, fusion.gate_grid,
            )  # fmt: skip
            decided = fusion.decide_gates(stats, decided)
            passes += 1
        assert passes == (1 if combine == "linear" else 2)
        for name, g in whole.gates.items():
            torch.testing.assert_close(decided[name], g, rtol=0, atol=1e-6)

        def fn(a: Tensor, b: Tensor) -> Tensor:
            out = fusion(a, b[:, :1], b[:, 1:], decided)
            assert all(torch.equal(out.gates[k], decided[k]) for k in decided)
            return out.fused

        tiled = fuse_tiled(fn, ir, torch.cat([vi, att], 1), tile, overlap)
    torch.testing.assert_close(tiled, whole.fused, rtol=0, atol=1e-5)


def test_given_gates_checked_and_own_gates_change_nothing(make_tiny_model) -> None:
    """Whole-image output is unchanged: giving a model its own decisions reproduces it bit
    for bit (fast and plain path); unknown names and wrong shapes are refused."""
    from moefusion.models.inference import FastMoEFusion

    model = make_tiny_model().eval()
    ir, vi = torch.rand(2, 1, 48, 64), torch.rand(2, 1, 48, 64)
    with torch.inference_mode():
        for runner in (model, FastMoEFusion(model)):
            out = runner(ir, vi)
            again = runner(ir, vi, gates=out.gates)
            assert torch.equal(again.fused, out.fused)
            assert all(torch.equal(again.gates[k], v) for k, v in out.gates.items())
            with pytest.raises(ValueError, match="no gate named"):
                runner(ir, vi, gates={"nope": out.gates["moge"]})
            with pytest.raises(ValueError, match=r"\[B, N\]"):
                runner(ir, vi, gates={"moge": out.gates["moge"][:1]})


@pytest.mark.parametrize("optimize", [True, False])
def test_fuser_tiles_share_one_decision_per_gate(
    make_tiny_model, optimize: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Fuser.fuse(tile=...)``: every gate decides once for the whole image (a hook on
    the gates counts the calls: the tiles do not run them) and every tile is fused with
    the same decisions, reported as the result's gates."""
    from moefusion.fuser import Fuser

    fuser = Fuser(make_tiny_model(), device="cpu", optimize=optimize)
    rng = np.random.default_rng(0)
    ir = rng.random((96, 130), dtype=np.float32)
    vi = rng.random((96, 130), dtype=np.float32)
    gates = {n: m for n, m in fuser.model.named_modules() if isinstance(m, NoisyTopKGate)}
    calls = dict.fromkeys(gates, 0)
    seen: list[dict[str, Tensor]] = []
    forward = fuser._forward

    def spy(a: Tensor, b: Tensor, given: dict[str, Tensor] | None = None):
        seen.append(dict(given or {}))
        return forward(a, b, given)

    def counter(name: str):
        def hook(logits: Tensor) -> Tensor:
            calls[name] += 1
            return logits

        return hook

    for name, gate in gates.items():
        gate.logit_filter = counter(name)
    monkeypatch.setattr(fuser, "_forward", spy)
    try:
        res = fuser.fuse(ir, vi, tile=64, overlap=32, return_details=True)
    finally:
        for gate in gates.values():
            gate.logit_filter = None
    assert res.tiles == len(seen) == len(tile_grid(96, 130, 64, 32)) == 8
    assert calls == dict.fromkeys(gates, 1)
    k = fuser.model.config.top_k
    shared = fuser.shared_gates(
        torch.from_numpy(ir)[None, None], torch.from_numpy(vi)[None, None], 64, 32
    )
    assert set(shared) == {"mole_fg", "mole_bg", "moge"}
    for name, g in shared.items():
        for tile_given, tile_out in zip(seen, res.tile_gates, strict=True):
            assert torch.equal(tile_given[name], g)
            np.testing.assert_array_equal(tile_out[name], g[0].numpy())
        np.testing.assert_array_equal(res.gates[name], g[0].numpy())
        assert np.count_nonzero(res.gates[name]) == k


def test_fuser_single_tile_is_the_whole_image(make_tiny_model) -> None:
    """A tile larger than the image: no gate pass, bit for bit the untiled result."""
    from moefusion.fuser import Fuser

    fuser = Fuser(make_tiny_model(), device="cpu")
    rng = np.random.default_rng(1)
    ir, vi = rng.random((40, 56), dtype=np.float32), rng.random((40, 56), dtype=np.float32)
    assert (
        fuser.shared_gates(torch.from_numpy(ir)[None, None], torch.from_numpy(vi)[None, None], 64)
        == {}
    )
    whole = fuser.fuse(ir, vi, return_details=True)
    tiled = fuser.fuse(ir, vi, tile=64, return_details=True)
    assert np.array_equal(whole.fused, tiled.fused) and tiled.tiles == 1
    assert all(np.array_equal(whole.gates[k], v) for k, v in tiled.gates.items())


@pytest.mark.slow
@pytest.mark.parametrize("tile", [256, 512])
def test_release_weights_tiled_tolerance(tile: int) -> None:
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
    tiled = fuser.fuse(pair.ir, pair.vi, tile=tile, overlap=tile // 4, return_details=True)
    assert tiled.tiles == {256: 9, 512: 2}[tile]
    diff = np.abs(tiled.fused - whole)[16:-16, 16:-16] * 255
    # measured with moefusion-cpu-v6 and shared gates: max / mean / p99 0.8 / 0.20 / 0.4
    # (256) and 0.5 / 0.05 / 0.1 (512) levels; before, with per-tile gates, 61.7 / 13.9 /
    # 42.0 and 60.5 / 19.8 / 45.2 (docs/fuse.md, "Whole vs tiled"). What is left comes
    # from the per-tile attention maps.
    assert diff.max() < 3.0 and diff.mean() < 0.5 and np.percentile(diff, 99) < 1.5
    assert abs(tiled.fused.mean() - whole.mean()) * 255 < 0.5
