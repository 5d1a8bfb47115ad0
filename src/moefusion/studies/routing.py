"""Does routing adapt to the scene? A permutation test on which experts the gates select.

Each fused pair gives, per mixture, a 0/1 selection vector over the N experts (1 for
the K experts its gate selected). For groups of pairs (day and night, or datasets) the
statistic is how far each group's selection frequencies lie from the pooled ones,

    T = sum_g n_g * sum_e |p_g(e) - p(e)| / K,

(``p_g(e)``: share of group g's pairs that selected expert e; for two groups of equal
size this is ``n * TV``, with ``n`` all pairs and ``TV`` the total-variation distance
between the two groups' routing distributions ``p_g / K``). Under the null hypothesis "routing does not depend on the group" the
group labels are exchangeable, so the p-value is the share of label permutations with
a statistic at least as large, ``(1 + #{T_perm >= T}) / (1 + permutations)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moefusion.data import Pair
    from moefusion.fuser import Fuser


@dataclass(frozen=True)
class RoutingTest:
    """Result of :func:`permutation_test`.

    Attributes:
        statistic: ``T`` of the observed labels.
        p_value: permutation p-value in (0, 1].
        groups: group names, in first-appearance order.
        counts: pairs per group.
        frequencies: ``[groups, N]`` share of each group's pairs that selected each expert.
        permutations: permutations drawn.
    """

    statistic: float
    p_value: float
    groups: tuple[str, ...]
    counts: tuple[int, ...]
    frequencies: np.ndarray
    permutations: int

    def significant(self, level: float = 0.05) -> bool:
        return self.p_value < level


def selections(gates: np.ndarray) -> np.ndarray:
    """``[n, N]`` gate weights -> ``[n, N]`` 0/1 matrix of the selected (non-zero) experts."""
    gates = np.asarray(gates, dtype=np.float64)
    if gates.ndim != 2:
        raise ValueError(f"gates must be [pairs, experts], got shape {gates.shape}")
    return (gates > 0).astype(np.float64)


def gates_of(fuser: Fuser, pairs: Sequence[Pair], desc: str | None = None) -> dict[str, np.ndarray]:
    """Fuse every pair and stack its gate weights: ``{mixture: [len(pairs), N]}``.

    ``desc`` shows a progress bar with that label (on stderr); ``None``: no bar.
    """
    # imported here: the statistics above need only numpy
    from tqdm import tqdm

    from moefusion.data import load_pair

    rows: dict[str, list[np.ndarray]] = {}
    for p in tqdm(pairs, desc=desc, leave=False, disable=desc is None):
        loaded = load_pair(p.ir, p.vi)
        for name, g in fuser.fuse(loaded.ir, loaded.vi, return_details=True).gates.items():
            rows.setdefault(name, []).append(g)
    return {k: np.stack(v) for k, v in rows.items()}


def _statistic(selected: np.ndarray, codes: np.ndarray, n_groups: int, k: float) -> float:
    pooled = selected.mean(axis=0)
    total = 0.0
    for g in range(n_groups):
        rows = selected[codes == g]
        total += len(rows) * np.abs(rows.mean(axis=0) - pooled).sum() / k
    return float(total)


def permutation_test(
    gates: np.ndarray, labels: Sequence[str], *, permutations: int = 10000, seed: int = 0
) -> RoutingTest:
    """Test whether the experts selected in ``gates`` (``[n, N]``) depend on ``labels``.

    Raises:
        ValueError: fewer than two groups, a group without pairs, or mismatched lengths.
    """
    selected = selections(gates)
    if len(labels) != len(selected):
        raise ValueError(f"{len(labels)} labels for {len(selected)} pairs")
    groups = tuple(dict.fromkeys(str(x) for x in labels))
    if len(groups) < 2:
        raise ValueError("a permutation test needs at least two groups")
    codes = np.array([groups.index(str(x)) for x in labels])
    k = float(selected.sum(axis=1).max()) or 1.0
    observed = _statistic(selected, codes, len(groups), k)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        # a small tolerance: permutations that merely reorder ties must count as equal
        if _statistic(selected, rng.permutation(codes), len(groups), k) >= observed - 1e-12:
            exceed += 1
    frequencies = np.stack([selected[codes == g].mean(axis=0) for g in range(len(groups))])
    return RoutingTest(
        statistic=observed,
        p_value=(1 + exceed) / (1 + permutations),
        groups=groups,
        counts=tuple(int((codes == g).sum()) for g in range(len(groups))),
        frequencies=frequencies,
        permutations=permutations,
    )


@dataclass(frozen=True)
class GateLogits:
    """A gate's clean logits over pairs, and the noise it would add in training.

    Attributes:
        k: experts kept per pair.
        clean: ``[n, N]`` clean logits ``s . W_gate`` (what inference routes on).
        noise_std: ``[n, N]`` training-time noise standard deviation
            ``softplus(s . W_noise) + epsilon`` for the same inputs; 0 for a gate
            without training noise (``noisy=False``, deviation 33).
        weights: ``[n, N]`` the gate weights fusion used (0 for unselected experts, and
            for a selected one whose softmax weight underflowed); ``None`` when not recorded.
    """

    k: int
    clean: np.ndarray
    noise_std: np.ndarray
    weights: np.ndarray | None = None

    def usage(self) -> np.ndarray:
        """``[N]`` share of pairs on which each expert got a non-zero weight (as
        :func:`selections` of the fused gates)."""
        if self.weights is None:
            raise ValueError("these gate logits were recorded without the gate weights")
        return selections(self.weights).mean(axis=0)

    def margins(self) -> np.ndarray:
        """``[n]`` gap between the K-th and the (K+1)-th largest clean logit of each pair:
        how far each pair is from selecting another expert set at inference."""
        ordered = -np.sort(-self.clean, axis=1)
        if self.k >= ordered.shape[1]:
            return np.full(len(ordered), np.inf)
        return ordered[:, self.k - 1] - ordered[:, self.k]

    def spread(self) -> float:
        """How much the clean logits depend on the input: the standard deviation of
        each expert's logit across pairs, averaged over experts."""
        return float(self.clean.std(axis=0).mean())


def gate_logits_of(
    fuser: Fuser, pairs: Sequence[Pair], desc: str | None = None
) -> dict[str, GateLogits]:
    """Fuse every pair and record each gate's clean logits and training noise scale.

    Reads the gates' inputs with forward hooks (removed afterwards), so the fused images
    and the routing are those of a plain :meth:`Fuser.fuse`. Untiled fusion only.

    Returns:
        ``{"mole_fg" | "mole_bg" | "moge": GateLogits}``, the gates the variant has, with
        the gate weights the fusion used (``GateLogits.usage``).
    """
    import torch
    from tqdm import tqdm

    from moefusion.data import load_pair
    from moefusion.models.moge import MixtureOfGlobalExperts
    from moefusion.models.mole import MixtureOfLocalExperts

    fusion = fuser.model.fusion
    gates = {}
    if isinstance(fusion.local, MixtureOfLocalExperts):
        gates["mole_fg"] = fusion.local.foreground.gate
        gates["mole_bg"] = fusion.local.background.gate
    if isinstance(fusion.global_stage, MixtureOfGlobalExperts):
        gates["moge"] = fusion.global_stage.mixture.gate
    rows: dict[str, list[tuple[np.ndarray, ...]]] = {name: [] for name in gates}

    def record(name: str):
        def hook(gate, inputs, output) -> None:
            with torch.no_grad():
                s = gate.flatten_input(inputs[0])
                clean = gate.routing_logits(s @ gate.w_gate)
                std = gate.noise_std(s) if gate.noisy else torch.zeros_like(clean)
            arrays = (clean, std, output.gates)
            rows[name].append(tuple(a.float().cpu().numpy() for a in arrays))

        return hook

    handles = [g.register_forward_hook(record(n)) for n, g in gates.items()]
    try:
        for p in tqdm(pairs, desc=desc, leave=False, disable=desc is None):
            loaded = load_pair(p.ir, p.vi)
            fuser.fuse(loaded.ir, loaded.vi, tile=None)
    finally:
        for h in handles:
            h.remove()
    return {
        name: GateLogits(
            k=gates[name].k,
            clean=np.concatenate([c for c, _, _ in r]),
            noise_std=np.concatenate([s for _, s, _ in r]),
            weights=np.concatenate([w for _, _, w in r]),
        )
        for name, r in rows.items()
        if r
    }
