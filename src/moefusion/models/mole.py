"""Mixture of Local Experts (paper section 3.2, eqs. 1-2) and the Att-Local ablation (4.5).

MoLE turns the two encoders' last-layer features into 32 channels of local features:

* foreground mixture on ``x_enc * Att`` and background mixture on ``x_enc * (1 - Att)``
  (section 4.6: FG uses Att, BG uses 1 - Att), each with its own gate and N experts;
* in each mixture, experts ``[0, N//2)`` see only the visible features and experts
  ``[N//2, N)`` only the infrared features (the paper's ``E_1..E_{N/2}`` and
  ``E_{N/2+1}..E_N``). For odd N the split is ``floor(N/2)`` visible and ``ceil(N/2)``
  infrared experts (N=5: experts 0-1 visible, 2-4 infrared); ``N >= 2`` guarantees
  each modality at least one expert;
* the gate sees both modalities' masked features concatenated (``x_local``, eq. 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from moefusion.models.experts import BranchOutput, ExpertMixture, LocalExpert
from moefusion.models.gating import NoisyTopKGate


def num_visible_experts(num_experts: int) -> int:
    """Experts ``[0, N//2)`` take the visible features, ``[N//2, N)`` the infrared ones."""
    return num_experts // 2


def route_by_modality(x_vis: Tensor, x_ir: Tensor, num_experts: int) -> list[Tensor]:
    """The input of every expert of a local mixture: N//2 x visible, then infrared."""
    n_vis = num_visible_experts(num_experts)
    return [x_vis] * n_vis + [x_ir] * (num_experts - n_vis)


def build_local_mixture(
    channels: int,
    num_experts: int,
    top_k: int,
    hidden: int = 8,
    grid: tuple[int, int] = (15, 20),
    noisy: bool = True,
    noise_epsilon: float = 1e-2,
    combine: str = "linear",
    input_norm: bool | str = False,
    balance: str = "cv2",
    z_weight: float = 0.0,
) -> ExpertMixture:
    """One MoLE mixture: a gate over ``2*channels`` (both modalities) and N local experts."""
    gate = NoisyTopKGate(
        2 * channels, num_experts, top_k, grid, noisy, noise_epsilon, input_norm, balance, z_weight
    )
    experts = [LocalExpert(channels, hidden) for _ in range(num_experts)]
    return ExpertMixture(gate, experts, combine)


class MixtureOfLocalExperts(nn.Module):
    """MoLE: a foreground and a background mixture of modality-specific local experts.

    Args:
        foreground: mixture applied to the features times Att.
        background: mixture applied to the features times (1 - Att).
        load_weight: coefficient of each mixture's load-balancing loss (release: 0.01).

    Shapes:
        ``forward(x_vis [B, C, H, W], x_ir [B, C, H, W], attention [B, 1, H, W])`` ->
        :class:`BranchOutput` with ``features [B, 2C, H, W]`` = concat(fg, bg), gates
        ``"mole_fg"`` and ``"mole_bg"`` ``[B, N]``, and
        ``load_loss = load_weight * (loss_fg + loss_bg)``. ``gates`` (optional,
        ``{"mole_fg", "mole_bg"} -> [B, N]``, either or both): decisions to use instead
        of running that gate (its load loss is then 0).
    """

    def __init__(
        self, foreground: ExpertMixture, background: ExpertMixture, load_weight: float = 0.01
    ) -> None:
        super().__init__()
        self.foreground = foreground
        self.background = background
        self.load_weight = load_weight

    @property
    def num_experts(self) -> int:
        return self.foreground.num_experts

    def forward(
        self,
        x_vis: Tensor,
        x_ir: Tensor,
        attention: Tensor,
        gates: Mapping[str, Tensor] | None = None,
    ) -> BranchOutput:
        fixed = gates or {}
        fg_vis, fg_ir = x_vis * attention, x_ir * attention
        inverse = 1.0 - attention
        bg_vis, bg_ir = x_vis * inverse, x_ir * inverse

        # the gates see concat(vis, ir); passing the parts lets them pool before concatenating
        y_fg, gate_fg = self.foreground(
            [fg_vis, fg_ir],
            route_by_modality(fg_vis, fg_ir, self.foreground.num_experts),
            fixed.get("mole_fg"),
        )
        y_bg, gate_bg = self.background(
            [bg_vis, bg_ir],
            route_by_modality(bg_vis, bg_ir, self.background.num_experts),
            fixed.get("mole_bg"),
        )
        load_loss = gate_fg.auxiliary_loss(self.load_weight) + gate_bg.auxiliary_loss(
            self.load_weight
        )
        return BranchOutput(
            features=torch.cat([y_fg, y_bg], dim=1),
            gates={"mole_fg": gate_fg.gates, "mole_bg": gate_bg.gates},
            load_loss=load_loss,
        )


class AttentionLocal(nn.Module):
    """Att-Local ablation: attention priors as local features, no experts, no gate.

    ``features = Conv1x1(concat(x_vis*Att, x_ir*Att, x_vis*(1-Att), x_ir*(1-Att)))``, a
    4C -> 2C projection (with bias) that keeps MoLE's output width, as the paper's
    "followed the Att-Local module with a 1x1 convolution layer".

    Shapes:
        ``forward(x_vis [B, C, H, W], x_ir [B, C, H, W], attention [B, 1, H, W])`` ->
        :class:`BranchOutput` with ``features [B, 2C, H, W]``, no gates, zero load loss.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.project = nn.Conv2d(4 * channels, 2 * channels, kernel_size=1)

    def forward(self, x_vis: Tensor, x_ir: Tensor, attention: Tensor) -> BranchOutput:
        inverse = 1.0 - attention
        priors = torch.cat(
            [x_vis * attention, x_ir * attention, x_vis * inverse, x_ir * inverse], 1
        )
        features = self.project(priors)
        return BranchOutput(features=features, gates={}, load_loss=features.new_zeros(()))
