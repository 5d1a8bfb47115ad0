"""Mixture of Global Experts (paper section 3.3, eqs. 3-4) and the w/o-MoGE ablation (4.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from moefusion.models.experts import BranchOutput, ExpertMixture, GlobalExpert
from moefusion.models.gating import NoisyTopKGate


def build_global_mixture(
    in_channels: int,
    num_experts: int,
    top_k: int,
    hidden: Sequence[int] = (64, 32, 16),
    grid: tuple[int, int] = (15, 20),
    noisy: bool = True,
    noise_epsilon: float = 1e-2,
    combine: str = "linear",
    input_norm: bool | str = False,
    balance: str = "cv2",
    z_weight: float = 0.0,
) -> ExpertMixture:
    """The MoGE mixture: a gate on ``x_f`` and N decoders, all of them seeing ``x_f``."""
    gate = NoisyTopKGate(
        in_channels, num_experts, top_k, grid, noisy, noise_epsilon, input_norm, balance, z_weight
    )
    experts = [GlobalExpert(in_channels, hidden) for _ in range(num_experts)]
    return ExpertMixture(gate, experts, combine)


class MixtureOfGlobalExperts(nn.Module):
    """MoGE: N decoders on the global fusion feature ``x_f``, gated by ``G_global(x_f)``.

    Args:
        mixture: gate + global experts (see :func:`build_global_mixture`).
        load_weight: coefficient of the load-balancing loss (release: 0.02).

    Shapes:
        ``forward(x_f [B, C_f, H, W])`` -> :class:`BranchOutput` with the fused image
        ``features [B, 1, H, W]`` (no final activation, not clamped), gate ``"moge"``
        ``[B, N]`` and ``load_loss = load_weight * (cv^2(importance) + cv^2(load))``.
        ``gates`` (optional, ``{"moge": [B, N]}``): decisions to use instead of running
        the gate (the load loss is then 0).
    """

    def __init__(self, mixture: ExpertMixture, load_weight: float = 0.02) -> None:
        super().__init__()
        self.mixture = mixture
        self.load_weight = load_weight

    def forward(self, x_f: Tensor, gates: Mapping[str, Tensor] | None = None) -> BranchOutput:
        fixed = (gates or {}).get("moge")
        fused, gate_out = self.mixture(x_f, [x_f] * self.mixture.num_experts, fixed)
        return BranchOutput(
            features=fused,
            gates={"moge": gate_out.gates},
            load_loss=gate_out.auxiliary_loss(self.load_weight),
        )


class SingleDecoder(nn.Module):
    """w/o-MoGE ablation: one decoder with the shape of a single global expert, no gate.

    Shapes:
        ``forward(x_f [B, C_f, H, W])`` -> :class:`BranchOutput` with ``features [B, 1, H, W]``,
        no gates and zero load loss.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, x_f: Tensor) -> BranchOutput:
        fused = self.decoder(x_f)
        return BranchOutput(features=fused, gates={}, load_loss=fused.new_zeros(()))
