"""scripts/expert_usage.py: selection shares per expert, on real sample pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_usage_shares_sum_to_top_k_and_match_the_gates(tiny_weights: Path, load_script) -> None:
    from moefusion import Fuser
    from moefusion.data import dataset_pairs, load_pair
    from moefusion.studies.routing import gate_logits_of

    fuser = Fuser.from_file(tiny_weights, device="cpu")
    pairs = dataset_pairs(ROOT / "samples")[:3]
    script = load_script("expert_usage")
    shares = script.usage(gate_logits_of(fuser, pairs))
    assert set(shares) == {"mole_fg", "mole_bg", "moge"}
    k = fuser.model.config.top_k
    for share in shares.values():
        assert share.shape == (fuser.model.config.num_experts,)
        assert np.all((share >= 0) & (share <= 1))
        # each pair selects exactly k experts per gate
        assert np.isclose(share.sum(), k)
    # the shares are the mean of the selections of each pair
    first = load_pair(pairs[0].ir, pairs[0].vi)
    gates = fuser.fuse(first.ir, first.vi, return_details=True).gates["moge"]
    alone = script.usage(gate_logits_of(fuser, pairs[:1]))["moge"]
    np.testing.assert_array_equal(alone, (np.asarray(gates) > 0).astype(float))


def test_gate_margins_and_spread_by_hand() -> None:
    from moefusion.studies.routing import GateLogits

    clean = np.array([[3.0, 1.0, 0.5, 0.0], [0.0, 2.0, 2.0, 1.5]])
    g = GateLogits(k=2, clean=clean, noise_std=np.ones_like(clean))
    # 2nd minus 3rd largest per row
    np.testing.assert_allclose(g.margins(), [0.5, 0.5])
    assert np.isclose(g.spread(), np.mean([1.5, 0.5, 0.75, 0.75]))
    assert np.all(np.isinf(GateLogits(k=4, clean=clean, noise_std=clean).margins()))
    # usage counts non-zero weights, so an underflowed softmax weight is not a use
    weights = np.array([[0.7, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        GateLogits(k=2, clean=clean, noise_std=clean, weights=weights).usage(), [0.5, 1, 0, 0]
    )
    with pytest.raises(ValueError, match="without the gate weights"):
        g.usage()


def test_gate_logits_route_like_the_fused_gates(tiny_weights: Path) -> None:
    from moefusion import Fuser
    from moefusion.data import dataset_pairs
    from moefusion.models.gating import NoisyTopKGate
    from moefusion.studies.routing import gate_logits_of, gates_of, selections

    fuser = Fuser.from_file(tiny_weights, device="cpu")
    pairs = dataset_pairs(ROOT / "samples")[:3]
    logits = gate_logits_of(fuser, pairs)
    gates = gates_of(fuser, pairs)
    assert set(logits) == set(gates) == {"mole_fg", "mole_bg", "moge"}
    for name, g in logits.items():
        assert g.clean.shape == g.noise_std.shape == gates[name].shape
        # the experts selected at inference are the top-k of the recorded clean logits
        top = np.argsort(-g.clean, axis=1)[:, : g.k]
        picked = np.zeros_like(g.clean)
        np.put_along_axis(picked, top, 1.0, axis=1)
        np.testing.assert_array_equal(picked, selections(gates[name]))
        # the recorded weights are the fused gates
        np.testing.assert_allclose(g.weights, gates[name], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(g.usage(), selections(gates[name]).mean(0))
        assert np.all(g.margins() >= 0)
    gate = next(m for m in fuser.model.modules() if isinstance(m, NoisyTopKGate))
    assert np.all(logits["mole_fg"].noise_std >= gate.noise_epsilon)
    # a noise-free gate adds no noise in training, and the table says so
    gate.noisy = False
    assert np.all(gate_logits_of(fuser, pairs[:1])["mole_fg"].noise_std == 0.0)
    # the hooks are gone afterwards
    assert not any(m._forward_hooks for m in fuser.model.modules() if isinstance(m, NoisyTopKGate))
