"""MoE-Fusion output shapes, gates, variants, gradient flow and size independence."""

from __future__ import annotations

import pytest
import torch

from moefusion.losses import fusion_loss
from moefusion.models import (
    DetectorConfig,
    FusionNetwork,
    MoEFusion,
    MoEFusionConfig,
    build_model,
    count_macs,
    count_parameters,
    macs_per_pixel,
)


def tiny_config(**kwargs) -> MoEFusionConfig:
    detector = DetectorConfig(backbone="resnet18", fpn_channels=32, representation_size=64)
    kwargs.setdefault("decoder_channels", (16, 8, 8))
    return MoEFusionConfig(detector=detector, **kwargs)


def randomize_gates(model: torch.nn.Module, std: float = 0.05) -> None:
    """Zero-initialised gates always pick the same experts; random ones exercise routing."""
    for name, p in model.named_parameters():
        if name.endswith("w_gate"):
            torch.nn.init.normal_(p, std=std)


def pair(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 1, height, width), torch.rand(batch, 1, height, width)


@pytest.fixture(scope="module")
def model() -> MoEFusion:
    torch.manual_seed(0)
    return build_model(tiny_config())


@pytest.mark.parametrize("size", [(123, 77), (64, 96)])
def test_output_shapes_odd_sizes(model: MoEFusion, size: tuple[int, int]) -> None:
    ir, vi = pair(2, *size)
    model.eval()
    with torch.no_grad():
        out = model(ir, vi)
    assert out.fused.shape == (2, 1, *size)
    assert out.attention.shape == (2, 1, *size)
    assert set(out.gates) == {"mole_fg", "mole_bg", "moge"}
    assert all(g.shape == (2, 4) for g in out.gates.values())
    assert out.load_loss.dim() == 0
    assert out.det_losses == {}
    assert out.attention.min().item() >= 0.0 and out.attention.max().item() <= 1.0


def test_fusion_only_480x640() -> None:
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(MoEFusionConfig()).eval()  # paper widths
    ir, vi = pair(1, 480, 640)
    with torch.no_grad():
        out = fusion(ir, vi, torch.rand(1, 1, 480, 640))
    assert out.fused.shape == (1, 1, 480, 640)
    assert torch.isfinite(out.fused).all()


@pytest.mark.parametrize(("n", "k"), [(2, 1), (4, 2), (5, 3), (4, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_gates_exactly_k_nonzero(n: int, k: int, training: bool) -> None:
    torch.manual_seed(n * 10 + k)
    fusion = FusionNetwork.from_config(tiny_config(num_experts=n, top_k=k))
    randomize_gates(fusion)
    fusion.train(training)
    ir, vi = pair(3, 20, 28)
    out = fusion(ir, vi, torch.rand(3, 1, 20, 28))
    assert set(out.gates) == {"mole_fg", "mole_bg", "moge"}
    for gates in out.gates.values():
        assert gates.shape == (3, n)
        assert ((gates > 0).sum(dim=1) == k).all()
        assert torch.allclose(gates.sum(dim=1), torch.ones(3))
    assert out.fused.shape == (3, 1, 20, 28)


@pytest.mark.parametrize(
    ("variant", "gate_names"),
    [
        ("full", {"mole_fg", "mole_bg", "moge"}),
        ("no_mole", {"moge"}),
        ("no_moge", {"mole_fg", "mole_bg"}),
        ("att_local", {"moge"}),
    ],
)
def test_variants_run(variant: str, gate_names: set[str]) -> None:
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(tiny_config(variant=variant)).train()
    ir, vi = pair(2, 17, 23)
    out = fusion(ir, vi, torch.rand(2, 1, 17, 23))
    assert out.fused.shape == (2, 1, 17, 23)
    assert set(out.gates) == gate_names
    assert out.load_loss.dim() == 0 and torch.isfinite(out.load_loss)
    if variant == "no_mole":
        assert not fusion.requires_attention
        assert fusion(ir, vi).fused.shape == (2, 1, 17, 23)  # attention is optional
    out.fused.mean().add(out.load_loss).backward()


def test_variant_structure() -> None:
    no_moge = FusionNetwork.from_config(tiny_config(variant="no_moge"))
    no_mole = FusionNetwork.from_config(tiny_config(variant="no_mole"))
    att_local = FusionNetwork.from_config(tiny_config(variant="att_local"))
    # the w/o-MoGE decoder has the shape of one MoGE expert
    full = FusionNetwork.from_config(tiny_config())
    expert = full.global_stage.mixture.experts[0]
    assert count_parameters(no_moge.global_stage) == count_parameters(expert)
    # w/o MoLE: MoGE on concat(dense_vis, dense_ir) = 128 channels
    assert no_mole.global_stage.mixture.gate.in_channels == 128
    assert full.global_stage.mixture.gate.in_channels == 160
    # Att-Local: one 1x1 conv 64 -> 32 and no local experts
    assert att_local.local.project.in_channels == 64 and att_local.local.project.out_channels == 32


@pytest.mark.parametrize("combine", ["linear", "log"])
def test_gradients_reach_fusion_not_detectors(combine: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(combine=combine)).train()
    ir, vi = pair(2, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}, None]
    out = model(ir, vi, targets)
    assert out.det_losses  # computed, but not back-propagated here
    boxes = [targets[0]["boxes"], None]
    loss = fusion_loss(out.fused, ir, vi, boxes, out.load_loss)["total"]
    loss.backward()
    fusion_grads = [p.grad for p in model.fusion.parameters()]
    assert all(g is not None for g in fusion_grads[:4])
    assert any(g is not None and g.abs().sum() > 0 for g in fusion_grads)
    assert all(p.grad is None for p in model.attention.parameters())
    # the gates are trained by the load loss (and the combination)
    gate = model.fusion.global_stage.mixture.gate
    assert gate.w_gate.grad is not None and gate.w_noise.grad is not None


def test_gradients_reach_detectors_without_detach() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(detach_attention=False)).train()
    ir, vi = pair(1, 64, 64)
    out = model(ir, vi)
    fusion_loss(out.fused, ir, vi, None, out.load_loss)["total"].backward()
    spatial = model.attention.spatial["vis"]["0"][0].weight
    assert spatial.grad is not None and spatial.grad.abs().sum() > 0


def test_same_weights_any_size(model: MoEFusion) -> None:
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for size in [(32, 32), (45, 101), (150, 61)]:
            ir, vi = pair(1, *size)
            assert model(ir, vi).fused.shape == (1, 1, *size)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_batch_consistency(model: MoEFusion) -> None:
    """In eval mode a sample's output does not depend on the rest of the batch."""
    model.eval()
    ir, vi = pair(2, 40, 56)
    with torch.no_grad():
        both = model(ir, vi).fused
        first = model(ir[:1], vi[:1]).fused
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_macs_count_only_active_experts() -> None:
    torch.manual_seed(0)
    h, w = 32, 48
    k1 = FusionNetwork.from_config(tiny_config(top_k=1))
    k2 = FusionNetwork.from_config(tiny_config(top_k=2))
    k1_macs, k2_macs = count_macs(k1, h, w)["total"], count_macs(k2, h, w)["total"]
    c = tiny_config()
    local = 2 * (16 * 8 * 9 + 8 * 16 * 9)  # one expert in each MoLE mixture
    decoder_widths = [160, *c.decoder_channels, 1]
    glob = sum(a * b * 9 for a, b in zip(decoder_widths[:-1], decoder_widths[1:], strict=True))
    gates = 0  # gate Linear layers are not modules; their matmul is negligible
    assert k2_macs - k1_macs == (local + glob) * h * w + gates
    # the encoders: 2 x (1*16 + 16*16 + 32*16 + 48*16) * 9 per pixel
    assert k1_macs == (2 * (16 + 256 + 512 + 768) * 9 + local + glob) * h * w


def test_macs_per_pixel_full_model(model: MoEFusion) -> None:
    counts = count_macs(model, 64, 64)
    assert set(counts) == {"attention", "fusion", "total"}
    assert counts["attention"] > 0 and counts["fusion"] > 0
    assert macs_per_pixel(model, 64, 64) == pytest.approx(counts["total"] / 4096)
    assert count_parameters(model) > count_parameters(model, trainable_only=True) > 0
