"""MoLE modality routing and sparse-vs-dense dispatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moefusion.models import (
    DetectorConfig,
    ExpertMixture,
    FusionNetwork,
    LocalExpert,
    MoEFusionConfig,
    NoisyTopKGate,
    combine_dense,
    combine_sparse,
    num_visible_experts,
    prepare_for_export,
    set_dispatch,
)


def tiny_config(**kwargs) -> MoEFusionConfig:
    detector = DetectorConfig(backbone="resnet18", fpn_channels=32, representation_size=64)
    kwargs.setdefault("decoder_channels", (16, 8, 8))
    return MoEFusionConfig(detector=detector, **kwargs)


def capture_expert_inputs(fusion: FusionNetwork) -> dict[tuple[str, int], torch.Tensor]:
    seen: dict[tuple[str, int], torch.Tensor] = {}
    for part in ("foreground", "background"):
        for i, expert in enumerate(getattr(fusion.local, part).experts):

            def hook(module: nn.Module, args: tuple, key=(part, i)) -> None:
                seen[key] = args[0].detach().clone()

            expert.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("n", [4, 5])
def test_experts_see_only_their_modality(n: int) -> None:
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(tiny_config(num_experts=n, top_k=n)).eval()
    seen = capture_expert_inputs(fusion)
    ir, vi, att = torch.rand(2, 1, 24, 30), torch.rand(2, 1, 24, 30), torch.rand(2, 1, 24, 30)
    with torch.no_grad():
        fusion(ir, vi, att)
        enc_vis, _ = fusion.encoder_vis(vi)
        enc_ir, _ = fusion.encoder_ir(ir)
    n_vis = num_visible_experts(n)
    assert n_vis == n // 2
    for (part, i), x in seen.items():
        mask = att if part == "foreground" else 1 - att
        expected = (enc_vis if i < n_vis else enc_ir) * mask
        assert torch.allclose(x, expected), (part, i)
    assert len(seen) == 2 * n


def test_perturbing_infrared_leaves_visible_experts_unchanged() -> None:
    torch.manual_seed(1)
    fusion = FusionNetwork.from_config(tiny_config(num_experts=4, top_k=4)).eval()
    seen = capture_expert_inputs(fusion)
    ir, vi, att = torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        fusion(ir, vi, att)
        before = dict(seen)
        fusion(torch.rand_like(ir), vi, att)
    for (part, i), x in seen.items():
        if i < 2:
            assert torch.equal(x, before[(part, i)]), "visible expert saw infrared data"
        else:
            assert not torch.allclose(x, before[(part, i)]), "infrared expert ignored infrared"


def test_gate_sees_both_modalities() -> None:
    fusion = FusionNetwork.from_config(tiny_config())
    assert fusion.local.foreground.gate.in_channels == 32
    assert fusion.local.background.gate.in_channels == 32


@pytest.mark.parametrize("combine", ["linear", "log"])
def test_sparse_equals_dense(combine: str) -> None:
    torch.manual_seed(0)
    experts = [LocalExpert(4, 3) for _ in range(4)]
    inputs = [torch.rand(5, 4, 6, 7) for _ in range(4)]
    gates = torch.tensor(
        [
            [0.3, 0.7, 0.0, 0.0],
            [0.0, 0.0, 0.4, 0.6],
            [0.5, 0.0, 0.0, 0.5],
            [0.0, 1.0, 0.0, 0.0],
            [0.2, 0.0, 0.8, 0.0],
        ]
    )
    sparse = combine_sparse(experts, inputs, gates, combine)
    dense = combine_dense(experts, inputs, gates, combine)
    assert torch.allclose(sparse, dense, atol=1e-6)
    if combine == "linear":  # sample 3 uses expert 1 only
        assert torch.allclose(sparse[3], experts[1](inputs[1][3:4])[0], atol=1e-6)


def test_sparse_runs_experts_only_on_their_samples() -> None:
    torch.manual_seed(0)
    experts = [LocalExpert(2, 2) for _ in range(3)]
    batch_sizes: dict[int, int] = {}
    for i, e in enumerate(experts):
        e.register_forward_pre_hook(lambda m, a, i=i: batch_sizes.__setitem__(i, a[0].shape[0]))
    gates = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    x = torch.rand(3, 2, 4, 4)
    combine_sparse(experts, [x] * 3, gates)
    assert batch_sizes == {0: 3, 1: 1}  # expert 2 never ran


def test_sparse_gradients_equal_dense() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(4, 4, 2, grid=(2, 2), noisy=False)
    nn.init.normal_(gate.w_gate)
    mixture = ExpertMixture(gate, [LocalExpert(4, 3) for _ in range(4)])
    x = torch.rand(6, 4, 5, 5)
    grads = []
    for mode in ("sparse", "dense"):
        mixture.zero_grad()
        mixture.dispatch = mode
        y, _ = mixture(x, [x] * 4)
        y.square().mean().backward()
        # experts nobody selected get no gradient (sparse) or a zero one (dense)
        grads.append(
            [
                torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in mixture.parameters()
            ]
        )
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_set_dispatch_whole_model_same_output() -> None:
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(tiny_config(num_experts=5, top_k=2)).eval()
    for name, p in fusion.named_parameters():
        if name.endswith("w_gate"):
            nn.init.normal_(p, std=0.05)
    ir, vi, att = torch.rand(3, 1, 16, 20), torch.rand(3, 1, 16, 20), torch.rand(3, 1, 16, 20)
    with torch.no_grad():
        sparse = fusion(ir, vi, att).fused
        dense = set_dispatch(fusion, "dense")(ir, vi, att).fused
    assert all(m.dispatch == "dense" for m in fusion.modules() if isinstance(m, ExpertMixture))
    assert torch.allclose(sparse, dense, atol=1e-5)
    with pytest.raises(ValueError):
        set_dispatch(fusion, "bogus")


def test_prepare_for_export_same_output() -> None:
    torch.manual_seed(0)
    fusion = FusionNetwork.from_config(tiny_config()).eval()
    for name, p in fusion.named_parameters():
        if name.endswith("w_gate"):
            nn.init.normal_(p, std=0.05)
    ir, vi, att = torch.rand(2, 1, 31, 45), torch.rand(2, 1, 31, 45), torch.rand(2, 1, 31, 45)
    with torch.no_grad():
        before = fusion(ir, vi, att)
        after = prepare_for_export(fusion)(ir, vi, att)
    assert all(g.export_friendly for g in fusion.modules() if isinstance(g, NoisyTopKGate))
    assert torch.equal(before.gates["moge"] > 0, after.gates["moge"] > 0)
    assert torch.allclose(before.fused, after.fused, atol=1e-5)
