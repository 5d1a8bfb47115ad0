"""Experts and their gated combination (paper eqs. 2 and 4).

:class:`ExpertMixture` runs a :class:`~moefusion.models.gating.NoisyTopKGate` and combines
the selected experts. Dispatch is sparse by default: expert ``i`` only sees the samples
whose gate row selected it (``index_select``) and its weighted output is scattered back
(``index_add``), so a batch costs K expert evaluations per sample, not N. The dense path
(every expert on every sample, weighted by the same gates; experts with weight 0 add
nothing) gives the same result and has no data-dependent control flow, for export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moefusion.models.encoder import conv3x3
from moefusion.models.gating import GateOutput, NoisyTopKGate

#: Floor for the "log" combination so that log() stays finite.
_LOG_EPS = torch.finfo(torch.float32).eps


@dataclass
class BranchOutput:
    """Output of a fusion-network stage (MoLE, MoGE or their ablation replacements).

    Attributes:
        features: the stage's output (``[B, 32, H, W]`` local features or the fused
            ``[B, 1, H, W]`` image).
        gates: ``{name: [B, N]}`` for every gate of the stage (empty without gates).
        load_loss: weighted load-balancing loss, a scalar (0 without gates).
    """

    features: Tensor
    gates: dict[str, Tensor]
    load_loss: Tensor


class LocalExpert(nn.Module):
    """MoLE expert, "2 convolution layers and 1 ReLU layer": conv3x3 C->h, ReLU, conv3x3 h->C.

    Shapes:
        ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int = 16, hidden: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv3x3(channels, hidden), nn.ReLU(inplace=True), conv3x3(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GlobalExpert(nn.Module):
    """MoGE expert (a decoder): conv3x3 in->c1, ReLU, ..., c_last->1, no final activation.

    With ``hidden=(64, 32, 16)`` this is the paper's "4 convolution layers":
    in->64, ReLU, 64->32, ReLU, 32->16, ReLU, 16->1.

    Shapes:
        ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.
    """

    def __init__(
        self, in_channels: int, hidden: Sequence[int] = (64, 32, 16), out_channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in hidden:
            layers += [conv3x3(prev, width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(conv3x3(prev, out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _broadcast_weights(weights: Tensor, like: Tensor) -> Tensor:
    """``[B] -> [B, 1, ..., 1]`` so that it scales a ``[B, ...]`` tensor."""
    return weights.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def combine_sparse(
    experts: Sequence[nn.Module],
    inputs: Sequence[Tensor],
    gates: Tensor,
    combine: str = "linear",
    run: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> Tensor:
    """Gate-weighted sum of expert outputs, each expert run only on the samples that chose it.

    ``linear``: ``y = sum_i g_i E_i(x_i)`` (paper eqs. 2 and 4).
    ``log``: ``y = log(sum_i g_i exp(E_i(x_i)))`` (the release's combination).

    Args:
        experts: N modules with identical output shapes.
        inputs: N tensors ``[B, ...]``, ``inputs[i]`` is what expert ``i`` sees.
        gates: ``[B, N]``, zero for unselected experts.
        run: ``run(expert, x)`` computes one expert's output (default ``expert(x)``);
            the fast inference path passes its own (half precision, float32 result).

    Shapes:
        -> ``[B, ...]`` the experts' output shape.
    """
    batch = gates.shape[0]
    out: Tensor | None = None
    for i, expert in enumerate(experts):
        index = torch.nonzero(gates[:, i] > 0).squeeze(1)
        n = index.numel()
        if n == 0:
            continue
        full = n == batch  # common case (batch of 1 at inference): skip the gather/scatter
        x = inputs[i] if full else inputs[i].index_select(0, index)
        y = expert(x) if run is None else run(expert, x)
        if combine == "log":
            y = y.exp()
        w = gates[:, i] if full else gates.index_select(0, index)[:, i]
        contribution = _broadcast_weights(w, y) * y
        if full:
            out = contribution if out is None else out + contribution
        else:
            if out is None:
                out = y.new_zeros((batch, *y.shape[1:]))
            out = out.index_add(0, index, contribution)
    if out is None:
        raise ValueError("no expert was selected by any sample (gates are all zero)")
    if combine == "log":
        out = out.clamp_min(_LOG_EPS).log()
    return out


def combine_dense(
    experts: Sequence[nn.Module], inputs: Sequence[Tensor], gates: Tensor, combine: str = "linear"
) -> Tensor:
    """Same as :func:`combine_sparse` but every expert runs on every sample (reference/export)."""
    out: Tensor | None = None
    for i, expert in enumerate(experts):
        y = expert(inputs[i])
        if combine == "log":
            y = y.exp()
        contribution = _broadcast_weights(gates[:, i], y) * y
        out = contribution if out is None else out + contribution
    assert out is not None
    if combine == "log":
        out = out.clamp_min(_LOG_EPS).log()
    return out


class ExpertMixture(nn.Module):
    """A gate plus N experts combined per ``combine``.

    Args:
        gate: decides the K experts and their weights from ``gate_input``.
        experts: N modules with identical output shapes.
        combine: ``"linear"`` or ``"log"``.
        dispatch: ``"sparse"`` (default) or ``"dense"``; change with :func:`set_dispatch`.

    Shapes:
        ``forward(gate_input [B, C_g, H, W] (or parts that concatenate to it),
        expert_inputs: N x [B, C_e, H, W], gates [B, N] | None)`` ->
        ``(y [B, C_out, H, W], GateOutput)``. With ``gates`` the gate does not run: the
        experts are weighted by the given decisions (:meth:`GateOutput.fixed`; the shared
        gates of tiled fusion) and ``gate_input`` is not read.
    """

    def __init__(
        self,
        gate: NoisyTopKGate,
        experts: Sequence[nn.Module],
        combine: str = "linear",
        dispatch: str = "sparse",
    ) -> None:
        super().__init__()
        if len(experts) != gate.num_experts:
            raise ValueError(f"gate has {gate.num_experts} experts, got {len(experts)} modules")
        if combine not in ("linear", "log"):
            raise ValueError(f"combine must be 'linear' or 'log', got {combine!r}")
        self.gate = gate
        self.experts = nn.ModuleList(experts)
        self.combine = combine
        self.dispatch = dispatch

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(
        self,
        gate_input: Tensor | Sequence[Tensor],
        expert_inputs: Sequence[Tensor],
        gates: Tensor | None = None,
    ) -> tuple[Tensor, GateOutput]:
        if len(expert_inputs) != self.num_experts:
            raise ValueError(f"need {self.num_experts} expert inputs, got {len(expert_inputs)}")
        if gates is None:
            gate_out = self.gate(gate_input)
        else:
            batch = expert_inputs[0].shape[0]
            if gates.shape != (batch, self.num_experts):
                raise ValueError(
                    f"gates must be [B, N] = {(batch, self.num_experts)}, got {tuple(gates.shape)}"
                )
            gate_out = GateOutput.fixed(gates.to(expert_inputs[0].device))
        run = combine_dense if self.dispatch == "dense" else combine_sparse
        return run(self.experts, expert_inputs, gate_out.gates, self.combine), gate_out


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Dense dispatch and size-independent gate pooling for tracing/ONNX export.

    The outputs are unchanged (up to float rounding); the graph has no data-dependent
    control flow and its gates pool correctly at any input size. Returns ``model``.
    """
    set_dispatch(model, "dense")
    for module in model.modules():
        if isinstance(module, NoisyTopKGate):
            module.export_friendly = True
    return model


def set_dispatch(model: nn.Module, mode: str) -> nn.Module:
    """Switch every :class:`ExpertMixture` in ``model`` to ``"sparse"`` or ``"dense"`` dispatch.

    Both give the same output; ``dense`` runs all N experts (N/K times the cost) but has
    no data-dependent control flow (ONNX/TorchScript export). Returns ``model``.
    """
    if mode not in ("sparse", "dense"):
        raise ValueError(f"dispatch must be 'sparse' or 'dense', got {mode!r}")
    for module in model.modules():
        if isinstance(module, ExpertMixture):
            module.dispatch = mode
    return model
