"""Noisy top-K gate: cv^2, load-balancing loss, zero init, noise only in training, any size."""

from __future__ import annotations

import math

import pytest
import torch

from moefusion.models import (
    GateOutput,
    NoisyTopKGate,
    adaptive_avg_pool2d_cumsum,
    cv_squared,
    gates_to_load,
    prob_in_top_k,
    top_k_softmax,
)


def test_cv_squared_by_hand() -> None:
    # mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert cv_squared(x).item() == pytest.approx((5 / 3) / 6.25, rel=1e-6)
    assert cv_squared(torch.tensor([3.0, 3.0, 3.0])).item() == pytest.approx(0.0)
    assert cv_squared(torch.tensor([7.0])).item() == 0.0


def test_balancing_loss_hand_made_gates() -> None:
    gates = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0]])
    load = gates_to_load(gates)
    assert load.tolist() == [1.0, 2.0, 1.0, 0.0]
    # importance = [0.5, 0.75, 0.75, 0]: mean 0.5, var (0 + 0.0625 + 0.0625 + 0.25)/3 = 0.125
    # load = [1, 2, 1, 0]: mean 1, var (0 + 1 + 0 + 1)/3 = 2/3
    expected = 0.125 / 0.25 + (2 / 3) / 1.0
    out = GateOutput(
        gates=gates,
        load=load,
        importance=gates.sum(0),
        logits=torch.zeros_like(gates),
        indices=torch.zeros(2, 2, dtype=torch.long),
    )
    assert out.balancing_loss().item() == pytest.approx(expected, rel=1e-6)


def test_top_k_softmax() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    gates, idx = top_k_softmax(logits, 2)
    e = torch.exp(torch.tensor([2.0, 1.0]))
    assert idx.tolist() == [[1, 2]]
    assert torch.allclose(gates, torch.tensor([[0.0, e[0] / e.sum(), e[1] / e.sum(), 0.0]]))


def test_prob_in_top_k_by_hand() -> None:
    clean = torch.tensor([[1.0, 0.0, -1.0]])
    noisy = torch.tensor([[1.2, 0.1, -2.0]])
    std = torch.ones(1, 3)
    top = noisy.topk(3, dim=1).values  # [1.2, 0.1, -2.0]
    p = prob_in_top_k(clean, noisy, std, top, k=1)
    normal = torch.distributions.Normal(0.0, 1.0)
    # expert 0 is in: threshold = 2nd best = 0.1; others are out: threshold = best = 1.2
    expected = normal.cdf(torch.tensor([1.0 - 0.1, 0.0 - 1.2, -1.0 - 1.2]))
    assert torch.allclose(p[0], expected, atol=1e-6)


def test_zero_init_gives_uniform_gates() -> None:
    gate = NoisyTopKGate(3, num_experts=4, k=2, grid=(2, 2)).eval()
    assert torch.count_nonzero(gate.w_gate) == 0 and torch.count_nonzero(gate.w_noise) == 0
    out = gate(torch.rand(5, 3, 10, 12))
    assert out.gates.shape == (5, 4)
    nonzero = out.gates[out.gates > 0]
    assert nonzero.numel() == 10
    assert torch.allclose(nonzero, torch.full_like(nonzero, 0.5))


def test_noise_only_in_training() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(2, num_experts=6, k=2, grid=(3, 3), noisy=True)
    x = torch.rand(16, 2, 9, 9)
    gate.eval()
    assert torch.equal(gate(x).gates, gate(x).gates)
    gate.train()
    assert not torch.equal(gate(x).gates, gate(x).gates)
    quiet = NoisyTopKGate(2, num_experts=6, k=2, grid=(3, 3), noisy=False).train()
    torch.nn.init.normal_(quiet.w_gate)
    assert torch.equal(quiet(x).gates, quiet(x).gates)


def test_soft_load_in_training_hard_load_in_eval() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(2, num_experts=4, k=2, grid=(2, 2))
    torch.nn.init.normal_(gate.w_gate, std=0.1)
    x = torch.rand(8, 2, 6, 6)
    out = gate.train()(x)
    assert out.load.requires_grad
    assert out.load.shape == (4,)
    assert torch.isfinite(out.load).all()
    assert out.load.min().item() >= 0.0 and out.load.max().item() <= 8.0
    loss = out.balancing_loss()
    loss.backward()
    assert gate.w_gate.grad is not None and gate.w_noise.grad is not None
    eval_out = gate.eval()(x)
    assert torch.equal(eval_out.load, gates_to_load(eval_out.gates))


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (123, 77), (480, 640)])
def test_gate_accepts_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(4, num_experts=4, k=2, grid=(15, 20))
    torch.nn.init.normal_(gate.w_gate, std=0.01)
    assert gate.w_gate.shape == (4 * 15 * 20, 4)
    out = gate.eval()(torch.rand(2, 4, *size))
    assert out.gates.shape == (2, 4)
    assert torch.allclose(out.gates.sum(1), torch.ones(2))
    assert ((out.gates > 0).sum(1) == 2).all()


def test_k_equals_n_uses_all_experts() -> None:
    gate = NoisyTopKGate(1, num_experts=3, k=3, grid=(1, 1)).train()
    out = gate(torch.rand(4, 1, 5, 5))
    assert ((out.gates > 0).sum(1) == 3).all()
    assert out.load.tolist() == [4.0, 4.0, 4.0]


def test_invalid_k() -> None:
    with pytest.raises(ValueError):
        NoisyTopKGate(1, num_experts=3, k=4)


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (123, 77), (480, 640)])
def test_export_friendly_pooling_matches_native(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    native = torch.nn.functional.adaptive_avg_pool2d(x, (15, 20))
    assert torch.allclose(adaptive_avg_pool2d_cumsum(x, (15, 20)), native, atol=1e-5)


def test_input_norm_routes_on_pattern_not_magnitude() -> None:
    torch.manual_seed(0)
    plain = NoisyTopKGate(3, 4, 2, grid=(3, 4), noisy=False)
    normed = NoisyTopKGate(3, 4, 2, grid=(3, 4), noisy=False, input_norm=True)
    with torch.no_grad():
        plain.w_gate.normal_()
        normed.w_gate.copy_(plain.w_gate)
    x = torch.rand(2, 3, 12, 16)
    s = normed.flatten_input(x)
    torch.testing.assert_close(s.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    # a tiny input (MoLE gate inputs are ~3e-3) is standardised as well as a large one
    small = normed.flatten_input(x * 1e-3)
    torch.testing.assert_close(small, s, atol=1e-3, rtol=0)
    # same logits for a rescaled and shifted input; without the norm they scale with it
    torch.testing.assert_close(normed(3 * x + 1).logits, normed(x).logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(plain(3 * x).logits, 3 * plain(x).logits, atol=1e-4, rtol=1e-5)
    # a constant input gives zero logits, not NaN
    assert torch.equal(normed(torch.ones(1, 3, 12, 16)).logits, torch.zeros(1, 4))
    assert "input_norm='variance'" in repr(normed) and "input_norm" not in repr(plain)


def test_config_switches_every_gate_input_norm() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4]}
    v = "variance"
    for setting, expected in ((False, [False] * 3), (True, [v] * 3), (["mole"], [v, v, False]), (["moge"], [False, False, v])):  # fmt: skip
        model = MoEFusion(MoEFusionConfig.from_dict({**small, "gate_input_norm": setting}))
        gates = [m for m in model.modules() if isinstance(m, NoisyTopKGate)]  # fg, bg, moge
        assert [g.input_norm for g in gates] == expected, setting
    assert MoEFusionConfig().gate_input_norm == ()
    with pytest.raises(Exception, match="unknown mixture"):
        MoEFusionConfig.from_dict({**small, "gate_input_norm": ["mle"]})


def test_switch_balance_loss_by_hand() -> None:
    gates = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0]])
    common = {"load": gates_to_load(gates), "importance": gates.sum(0), "logits": gates}
    indices = torch.tensor([[0, 1], [0, 1]])
    uniform = GateOutput(
        gates=gates, indices=indices, probs=torch.full((2, 4), 0.25), balance="switch", **common
    )
    # f = [1, 1, 0, 0], P = 1/4 each: N/K * (1/4 + 1/4) = 1
    assert uniform.balancing_loss().item() == pytest.approx(1.0)
    peaked = GateOutput(
        gates=gates,
        indices=indices,
        probs=torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]),
        balance="switch",
        **common,
    )
    assert peaked.balancing_loss().item() == pytest.approx(2.0)  # 4/2 * (0.5 + 0.5)
    with pytest.raises(ValueError, match="needs GateOutput.probs"):
        GateOutput(gates=gates, indices=indices, balance="switch", **common).balancing_loss()
    with pytest.raises(ValueError, match="balance must be one of cv2, switch"):
        NoisyTopKGate(3, 4, 2, balance="nope")


def test_switch_loss_moves_experts_no_sample_selected() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 6, 8)
    grads = {}
    for balance in ("cv2", "switch"):
        gate = NoisyTopKGate(3, 4, 2, grid=(3, 4), noisy=False, balance=balance)
        with torch.no_grad():
            gate.w_gate.zero_()
            gate.w_gate[:, :2] = 1.0  # every sample selects experts 0 and 1
        out = gate(x)
        assert set(out.indices.flatten().tolist()) == {0, 1}
        out.balancing_loss().backward()
        grads[balance] = gate.w_gate.grad[:, 2:].abs().sum().item()
    assert grads["cv2"] == 0.0  # cv^2 of top-K gates never reaches the unselected experts
    assert grads["switch"] > 0.0


def test_config_sets_the_balance_loss_of_every_gate() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4], "balance_loss": "switch"}
    model = MoEFusion(MoEFusionConfig.from_dict(small)).train()
    assert all(m.balance == "switch" for m in model.modules() if isinstance(m, NoisyTopKGate))
    per_mixture = MoEFusion(
        MoEFusionConfig.from_dict({**small, "balance_loss": {"mole": "switch"}})
    )
    kinds = [m.balance for m in per_mixture.modules() if isinstance(m, NoisyTopKGate)]
    assert kinds == ["switch", "switch", "cv2"]
    out = model.fusion(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    assert torch.isfinite(out.load_loss) and out.load_loss.item() > 0
    with pytest.raises(Exception, match="balance_loss must be one of cv2, switch, bias"):
        MoEFusionConfig.from_dict({**small, "balance_loss": "x"})


def test_router_z_loss_by_hand_and_in_the_auxiliary_loss() -> None:
    gates = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    common = {"gates": gates, "load": gates_to_load(gates), "importance": gates.sum(0)}
    out = GateOutput(logits=logits, indices=torch.tensor([[0, 1]]), z_weight=0.5, **common)
    # logsumexp of four zeros = log 4
    assert out.z_loss().item() == pytest.approx(math.log(4) ** 2)
    base = out.balancing_loss().item()
    assert out.auxiliary_loss(0.1).item() == pytest.approx(0.1 * base + 0.5 * math.log(4) ** 2)
    off = GateOutput(logits=logits, indices=torch.tensor([[0, 1]]), **common)
    assert off.auxiliary_loss(0.1).item() == pytest.approx(0.1 * base)
    with pytest.raises(ValueError, match="z_weight must be >= 0"):
        NoisyTopKGate(3, 4, 2, z_weight=-1.0)


def test_router_z_loss_shrinks_saturated_logits() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 6, 8)
    gate = NoisyTopKGate(3, 4, 2, grid=(3, 4), noisy=False, z_weight=1.0)
    with torch.no_grad():
        gate.w_gate[:, 0] = 5.0  # expert 0 takes (nearly) the whole weight
    out = gate(x)
    assert out.gates[:, 0].min().item() > 0.99
    out.auxiliary_loss(0.0).backward()
    # descending the z-loss lowers the dominant logit
    assert gate.w_gate.grad[:, 0].sum().item() > 0


def test_config_sets_the_router_z_weight_per_mixture() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4]}
    assert MoEFusionConfig().router_z_weight == {"mole": 0.0, "moge": 0.0}
    model = MoEFusion(MoEFusionConfig.from_dict({**small, "router_z_weight": {"moge": 1e-3}}))
    weights = [m.z_weight for m in model.modules() if isinstance(m, NoisyTopKGate)]
    assert weights == [0.0, 0.0, 1e-3]  # fg, bg, moge
    every = MoEFusionConfig.from_dict({**small, "router_z_weight": 0.01}).router_z_weight
    assert every == {"mole": 0.01, "moge": 0.01}
    # the z term reaches the model's load loss
    torch.manual_seed(0)
    args = (torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    plain = MoEFusion(MoEFusionConfig.from_dict(small)).train()
    heavy = MoEFusion(MoEFusionConfig.from_dict({**small, "router_z_weight": 100.0})).train()
    heavy.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for m in (plain, heavy):
            for g in (g for g in m.modules() if isinstance(g, NoisyTopKGate)):
                g.w_gate.fill_(0.1)
    torch.manual_seed(1)
    low = plain.fusion(*args).load_loss.item()
    torch.manual_seed(1)
    high = heavy.fusion(*args).load_loss.item()
    assert high > low + 100.0  # three gates, each z-loss >= log(4)^2 ~ 1.9
    with pytest.raises(Exception, match="router_z_weight must be >= 0"):
        MoEFusionConfig.from_dict({**small, "router_z_weight": -1})
    with pytest.raises(Exception, match="unknown mixture"):
        MoEFusionConfig.from_dict({**small, "router_z_weight": {"gates": 1.0}})


def _biased_gate(rate: float = 0.01) -> NoisyTopKGate:
    gate = NoisyTopKGate(3, 4, 2, grid=(3, 4), noisy=False, balance="bias", bias_rate=rate)
    with torch.no_grad():
        gate.w_gate.zero_()
        gate.w_gate[:, :2] = 1.0  # without the bias every sample selects experts 0 and 1
    return gate


def test_bias_balance_steps_by_the_load_gap_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 6, 8)
    gate = _biased_gate(rate=0.25)
    out = gate(x)  # training mode
    assert set(out.indices.flatten().tolist()) == {0, 1}
    # loads 8, 8, 0, 0 against a mean of 4
    assert gate.selection_bias.tolist() == [-0.25, -0.25, 0.25, 0.25]
    assert out.balancing_loss().item() == 0.0
    assert out.auxiliary_loss(1.0).item() == 0.0
    # the clean logits stay unbiased; selection and weights see the bias
    assert torch.equal(out.logits, gate.flatten_input(x) @ gate.w_gate)
    with torch.no_grad():
        gate.selection_bias.copy_(torch.tensor([0.0, -100.0, 100.0, 0.0]))
    gate.eval()
    before = gate.selection_bias.clone()
    assert set(gate(x).indices.flatten().tolist()) == {0, 2}
    assert torch.equal(gate.selection_bias, before)  # eval never moves it


def test_bias_balance_spreads_a_lopsided_gate_over_every_expert() -> None:
    torch.manual_seed(0)
    gate = _biased_gate(rate=0.01)
    with torch.no_grad():
        gate.w_gate.normal_(0, 0.1)  # input-dependent logits...
        gate.w_gate[:, 0] += 0.5  # ...with expert 0 far ahead
    data = torch.rand(64, 3, 6, 8)
    shares = []
    for step in range(3000):
        out = gate(data[torch.randint(0, 64, (4,))])
        if step >= 2500:
            shares.append((out.gates > 0).float().mean(0))
    share = torch.stack(shares).mean(0)
    assert share.min().item() > 0.35 and share.max().item() < 0.65  # 0.5 is balanced
    assert gate.selection_bias[0].item() < -0.5  # the favourite was pushed down


def test_only_bias_gates_hold_a_selection_bias() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4]}
    plain = MoEFusion(MoEFusionConfig.from_dict(small))
    assert not any("selection_bias" in k for k in plain.state_dict())
    biased = MoEFusion(MoEFusionConfig.from_dict({**small, "balance_loss": {"moge": "bias"}}))
    keys = [k for k in biased.state_dict() if "selection_bias" in k]
    assert len(keys) == 1 and "global" in keys[0]
    # the buffer travels with the weights: a trained bias survives a save/load
    with torch.no_grad():
        biased.fusion.global_stage.mixture.gate.selection_bias.fill_(0.5)
    again = MoEFusion(MoEFusionConfig.from_dict({**small, "balance_loss": {"moge": "bias"}}))
    again.load_state_dict(biased.state_dict())
    assert again.fusion.global_stage.mixture.gate.selection_bias.tolist() == [0.5] * 4


def test_unit_norm_gate_input_bounds_the_logit_step() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 6, 8) * 5 + 2
    variance = NoisyTopKGate(3, 4, 2, grid=(3, 4), input_norm=True)
    norm = NoisyTopKGate(3, 4, 2, grid=(3, 4), input_norm="norm")
    assert variance.input_norm == "variance"
    s_var, s_norm = variance.flatten_input(x), norm.flatten_input(x)
    d = s_var.shape[1]  # 3 * 3 * 4
    assert torch.allclose(s_var.pow(2).mean(1), torch.ones(4), atol=1e-5)
    assert torch.allclose(s_norm.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(s_norm * math.sqrt(d), s_var, atol=1e-5)
    # a sign step of size lr on every weight moves a logit by |s|_1 * lr <= sqrt(D) * lr
    lr = 1e-3
    step = lr * s_norm.sign()
    assert (s_norm * step).sum(1).max().item() <= math.sqrt(d) * lr + 1e-9
    with pytest.raises(ValueError, match="input_norm must be"):
        NoisyTopKGate(3, 4, 2, input_norm="l1")


def test_config_sets_the_gate_input_scale() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4], "gate_input_norm": ["moge"]}
    model = MoEFusion(MoEFusionConfig.from_dict({**small, "gate_input_scale": "norm"}))
    kinds = [m.input_norm for m in model.modules() if isinstance(m, NoisyTopKGate)]
    assert kinds == [False, False, "norm"]  # fg, bg, moge
    default = MoEFusion(MoEFusionConfig.from_dict(small))
    assert [m.input_norm for m in default.modules() if isinstance(m, NoisyTopKGate)][
        2
    ] == "variance"
    both = {**small, "gate_input_norm": True, "gate_input_scale": {"moge": "norm"}}
    kinds = [
        m.input_norm
        for m in MoEFusion(MoEFusionConfig.from_dict(both)).modules()
        if isinstance(m, NoisyTopKGate)
    ]
    assert kinds == ["variance", "variance", "norm"]
    with pytest.raises(Exception, match="gate_input_scale must be one of variance, norm"):
        MoEFusionConfig.from_dict({**small, "gate_input_scale": "l2"})


def test_config_sets_the_gate_noise_per_mixture() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import MoEFusionConfig

    def model_with(**overrides: object) -> MoEFusion:
        small = {"encoder_growth": 4, "decoder_channels": [8, 4]}
        return MoEFusion(MoEFusionConfig.from_dict(small | overrides))

    def noise_of(model: MoEFusion) -> list[bool]:
        return [m.noisy for m in model.modules() if isinstance(m, NoisyTopKGate)]

    assert noise_of(model_with()) == [True, True, True]  # fg, bg, moge: the paper
    assert noise_of(model_with(noisy_gating=False)) == [False, False, False]
    quiet_mole = model_with(noisy_gating=["moge"])
    assert noise_of(quiet_mole) == [False, False, True]
    # in training, the noise-free MoLE gate routes a batch the same way twice, MoGE does not
    torch.manual_seed(0)
    fg, moge = quiet_mole.fusion.local.foreground.gate, quiet_mole.fusion.global_stage.mixture.gate
    for gate in (fg, moge):
        torch.nn.init.normal_(gate.w_gate, std=0.01)
    x_fg, x_moge = torch.rand(8, fg.in_channels, 15, 20), torch.rand(8, moge.in_channels, 15, 20)
    assert torch.equal(fg.train()(x_fg).gates, fg(x_fg).gates)
    assert not torch.equal(moge.train()(x_moge).gates, moge(x_moge).gates)
    with pytest.raises(Exception, match="noisy_gating: unknown mixture"):
        MoEFusionConfig.from_dict({"noisy_gating": ["mole", "global"]})


def test_config_sets_the_mole_top_k_apart_from_the_moge_one() -> None:
    from moefusion.models import MoEFusion
    from moefusion.models.config import ConfigError, MoEFusionConfig

    small = {"encoder_growth": 4, "decoder_channels": [8, 4]}
    paper = MoEFusionConfig.from_dict(small)
    assert (paper.k_of("mole"), paper.k_of("moge")) == (2, 2)
    config = MoEFusionConfig.from_dict(small | {"mole_top_k": 3})
    assert (config.k_of("mole"), config.k_of("moge")) == (3, 2)
    assert MoEFusionConfig.from_dict(config.to_dict()).mole_top_k == 3
    model = MoEFusion(config).eval()
    torch.manual_seed(0)
    gates = {
        "fg": model.fusion.local.foreground.gate,
        "bg": model.fusion.local.background.gate,
        "moge": model.fusion.global_stage.mixture.gate,
    }
    selected = {}
    for name, gate in gates.items():
        torch.nn.init.normal_(gate.w_gate, std=0.1)
        out = gate(torch.rand(6, gate.in_channels, 15, 20)).gates
        selected[name] = (out > 0).sum(1).tolist()
        assert torch.allclose(out.sum(1), torch.ones(6))
    assert selected == {"fg": [3] * 6, "bg": [3] * 6, "moge": [2] * 6}
    with pytest.raises(ConfigError, match="mole_top_k must be in"):
        MoEFusionConfig.from_dict({"mole_top_k": 5})
    with pytest.raises(ConfigError, match="unknown mixture"):
        paper.k_of("global")


def test_expert_usage_counts_weight_not_selection() -> None:
    """A selected expert with a weight under USED_WEIGHT (a saturated top-K softmax) is
    not counted as used; one at the threshold is."""
    from moefusion.models.gating import USED_WEIGHT, expert_usage

    logits = torch.tensor([[12.0, 0.0, -1.0, -30.0], [0.0, 0.0, -40.0, -50.0]])
    gates, _ = top_k_softmax(logits, 3)
    assert bool((gates > 0).all(dim=0)[:3].all())  # experts 0-2 are selected on both rows
    assert torch.equal(expert_usage(gates), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    edge = torch.tensor([[1.0 - USED_WEIGHT, USED_WEIGHT, 0.0, 0.0]])
    assert torch.equal(expert_usage(edge), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="samples, experts"):
        expert_usage(torch.ones(4))
