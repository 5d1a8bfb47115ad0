"""scripts/expert_usage.py: selection shares per expert, on real sample pairs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "expert_usage", ROOT / "scripts" / "expert_usage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_usage_shares_sum_to_top_k_and_match_the_gates(tiny_weights: Path) -> None:
    from moefusion import Fuser
    from moefusion.data import dataset_pairs, load_pair

    fuser = Fuser.from_file(tiny_weights, device="cpu")
    pairs = dataset_pairs(ROOT / "samples")[:3]
    script = _script()
    shares = script.usage(fuser, pairs, "test")
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
    alone = script.usage(fuser, pairs[:1], "test")["moge"]
    np.testing.assert_array_equal(alone, (np.asarray(gates) > 0).astype(float))
