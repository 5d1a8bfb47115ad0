"""Noisy top-K gating (Shazeer et al., 2017), the multi-modal gate of paper eqs. 1 and 3.

``G(s) = softmax(topK(s . W))``: the logits of the K best experts are normalised by a
softmax, the others get weight 0. During training Gaussian noise with a learned,
input-dependent standard deviation ``softplus(s . W_noise) + epsilon`` is added to the
logits before the top-K selection, which lets the load-balancing loss see a smooth
"probability of being selected" (:func:`prob_in_top_k`).

Any input size: the paper (and the authors' release) flattens the whole feature map,
which ties ``W`` to one image size (640x480 in the release). Here the gate input is
first average-pooled to a fixed grid ``(H_g, W_g)`` with ``adaptive_avg_pool2d`` and
then flattened, so ``D = C * H_g * W_g`` whatever ``H, W`` are, and trained weights work
at any resolution. The default grid (15, 20) is 480x640 / 32: at the training size it
is an exact 32x32 block average that keeps the 4:3 layout, coarse enough that ``W``
stays small (32*300 inputs for MoLE, 160*300 for MoGE instead of the release's 614 400
and 768 000) but fine enough to say where the bright/attended regions of the image are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moefusion.models.config import BALANCE_LOSSES, GATE_INPUT_SCALES


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``var(x) / (mean(x)^2 + eps)`` of a 1-D tensor.

    Uses the unbiased variance, as Shazeer et al.'s reference code; a tensor with a
    single element gives 0 (no variation can be measured).

    Shapes:
        ``x [N]`` -> scalar.
    """
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + eps)


#: Gate weight from which an expert counts as *used* on a sample (fit report, quality
#: report, ``scripts/expert_usage.py``). Selected is not enough: under a saturated
#: softmax the third of K = 3 experts gets a weight like 1e-5, is selected on every
#: sample and adds nothing (stop 22, docs/training.md, "Selected is not used").
USED_WEIGHT = 0.05


def expert_usage(gates: Tensor, min_weight: float = USED_WEIGHT) -> Tensor:
    """Share of the samples on which each expert gets at least ``min_weight`` of the
    gate weight. ``[B, N] -> [N]``, each in [0, 1]; the shares sum to at most K."""
    if gates.ndim != 2:
        raise ValueError(f"gates must be [samples, experts], got shape {tuple(gates.shape)}")
    return (gates >= min_weight).float().mean(0)


def gates_to_load(gates: Tensor) -> Tensor:
    """Hard load: how many samples each expert received. ``[B, N] -> [N]`` (no gradient)."""
    return (gates > 0).sum(0).to(gates.dtype)


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def prob_in_top_k(
    clean_logits: Tensor, noisy_logits: Tensor, noise_std: Tensor, top_values: Tensor, k: int
) -> Tensor:
    """Probability that each expert is in the top K if its noise were redrawn.

    For expert ``i`` the others' noisy logits are fixed; ``i`` is in the top K iff its
    noisy logit beats the K-th best of the others: the (K+1)-th best overall when
    ``i`` is currently selected, the K-th best when it is not. With Gaussian noise that
    is ``Phi((clean_i - threshold) / std_i)``, differentiable in the gate weights.

    Shapes:
        ``clean_logits, noisy_logits, noise_std [B, N]``; ``top_values [B, >= K+1]``
        (noisy logits sorted descending) -> ``[B, N]``.
    """
    threshold_if_in = top_values[:, k : k + 1]
    threshold_if_out = top_values[:, k - 1 : k]
    is_in = noisy_logits > threshold_if_in
    prob_if_in = _normal_cdf((clean_logits - threshold_if_in) / noise_std)
    prob_if_out = _normal_cdf((clean_logits - threshold_if_out) / noise_std)
    return torch.where(is_in, prob_if_in, prob_if_out)


def adaptive_avg_pool2d_cumsum(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Same bins and values as ``F.adaptive_avg_pool2d(x, grid)``, from a summed-area table.

    Bin ``i`` of ``n`` over a length ``L`` covers ``[floor(i*L/n), ceil((i+1)*L/n))``. Built
    only from ``arange``/``cumsum``/``index_select``, it stays correct for every input size
    when exported with dynamic shapes (ONNX has no size-independent adaptive pooling).
    Sums are taken in float64 so that large images keep float32 accuracy. Slower than
    the native op: used only by gates with ``export_friendly=True``.

    Shapes:
        ``[B, C, H, W] -> [B, C, H_g, W_g]``.
    """
    height, width = x.shape[-2:]

    def edges(length: int, bins: int) -> tuple[Tensor, Tensor]:
        i = torch.arange(bins, device=x.device)
        start = torch.div(i * length, bins, rounding_mode="floor")
        end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode="floor")
        return start, end

    hs, he = edges(height, grid[0])
    ws, we = edges(width, grid[1])
    table = F.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # [B, C, H+1, W+1]
    rows = table.index_select(2, he) - table.index_select(2, hs)
    sums = rows.index_select(3, we) - rows.index_select(3, ws)
    area = (he - hs).view(-1, 1) * (we - ws).view(1, -1)
    return (sums / area).to(x.dtype)


def top_k_softmax(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Softmax over the K largest logits of each row, zeros elsewhere.

    Shapes:
        ``logits [B, N]`` -> ``(gates [B, N], indices [B, K])``.
    """
    top_logits, top_indices = logits.topk(k, dim=1)
    top_gates = torch.softmax(top_logits, dim=1)
    gates = torch.zeros_like(logits).scatter(1, top_indices, top_gates)
    return gates, top_indices


@dataclass
class GateOutput:
    """What a gate decided for a batch.

    Attributes:
        gates: ``[B, N]``, K non-zeros per row that sum to 1.
        load: ``[N]`` samples per expert: soft (differentiable) count in noisy training,
            hard count of ``gates > 0`` otherwise.
        importance: ``[N]`` ``gates.sum(0)``.
        logits: ``[B, N]`` clean logits ``s . W_gate``.
        indices: ``[B, K]`` selected experts, best first.
        probs: ``[B, N]`` softmax over all N routing logits (noisy in training), the
            input of the ``"switch"`` balancing loss; None if not computed.
        balance: which balancing loss :meth:`balancing_loss` returns, ``"cv2"``,
            ``"switch"`` or ``"bias"`` (none: the gate balances by its selection bias).
        z_weight: coefficient of the router z-loss in :meth:`auxiliary_loss` (0: none).
    """

    gates: Tensor
    load: Tensor
    importance: Tensor
    logits: Tensor
    indices: Tensor
    probs: Tensor | None = None
    balance: str = "cv2"
    z_weight: float = 0.0

    def balancing_loss(self) -> Tensor:
        """The unweighted balancing loss, a scalar.

        ``"cv2"`` (Shazeer et al., the paper and the release): ``cv^2(importance) +
        cv^2(load)``. ``"switch"`` (Fedus et al.'s Switch Transformer loss, for top-K):
        ``N / K * sum_i f_i * P_i`` with ``f_i`` the share of samples that selected expert
        ``i`` (no gradient) and ``P_i`` the mean softmax probability of ``i`` over all N
        experts; 1 when both are uniform. Unlike ``cv2`` it has a gradient for experts
        that no sample selected, so a gate whose logits are far apart can still move.
        ``"bias"``: 0 (the gate balances itself, see :class:`NoisyTopKGate`).
        """
        if self.balance == "bias":
            return self.gates.new_zeros((), dtype=torch.float32)
        if self.balance == "cv2":
            return cv_squared(self.importance) + cv_squared(self.load)
        if self.probs is None:
            raise ValueError("the switch balancing loss needs GateOutput.probs")
        n = self.gates.shape[1]
        k = self.indices.shape[1]
        share = (self.gates > 0).float().mean(0)
        return n / k * (share * self.probs.float().mean(0)).sum()

    def z_loss(self) -> Tensor:
        """Router z-loss (Zoph et al., ST-MoE): ``mean_b logsumexp(logits_b)^2`` of the
        clean logits, a scalar. It keeps the logits small, so the top-K softmax does
        not saturate (one expert at weight 1, the other's underflowing to 0) and the
        balancing loss keeps a gradient."""
        return torch.logsumexp(self.logits.float(), dim=1).square().mean()

    def auxiliary_loss(self, load_weight: float) -> Tensor:
        """``load_weight * balancing_loss() + z_weight * z_loss()``: what the gate adds
        to the training loss (the z term only where ``z_weight > 0``)."""
        loss = load_weight * self.balancing_loss()
        if self.z_weight > 0:
            loss = loss + self.z_weight * self.z_loss()
        return loss

    @classmethod
    def fixed(cls, gates: Tensor) -> GateOutput:
        """The output of a gate whose decisions were made elsewhere (shared gates of
        tiled fusion, :meth:`ExpertMixture.forward` with ``gates``).

        ``gates`` stand in for the logits (no gate ran), ``indices`` are the experts
        with the largest weights (as many as the row with the most non-zeros), and the
        auxiliary loss is 0 (``balance="bias"``, no z-loss): there is nothing to balance
        or to train in a decision that was given.

        Shapes:
            ``gates [B, N]`` -> :class:`GateOutput` with ``gates [B, N]`` (the same tensor).
        """
        if gates.dim() != 2:
            raise ValueError(f"gates must be [B, N], got {tuple(gates.shape)}")
        k = max(1, int((gates > 0).sum(1).max())) if gates.numel() else 1
        return cls(
            gates=gates,
            load=gates_to_load(gates),
            importance=gates.sum(0),
            logits=gates,
            indices=gates.topk(min(k, gates.shape[1]), dim=1).indices,
            balance="bias",
        )


class NoisyTopKGate(nn.Module):
    """Noisy top-K gate over a feature map of any size.

    Args:
        in_channels: C of the gate input.
        num_experts: N.
        k: K experts kept per sample (1 <= K <= N).
        grid: (H_g, W_g) the input is average-pooled to before flattening.
        noisy: add trainable Gaussian noise to the logits in training mode.
        noise_epsilon: minimum noise standard deviation.
        input_norm: standardise the flattened input of each sample (zero mean, unit
            variance over its ``D = C*H_g*W_g`` values, no learned scale) before ``W``:
            the logits then see the pattern of the features, not their overall
            magnitude. ``True`` or ``"variance"``; ``"norm"`` also divides by
            ``sqrt(D)`` (unit L2 norm), so that an Adam step, which moves every weight by
            about the learning rate, moves a logit by at most ``lr * sqrt(D)`` instead of
            ``lr * D``. Off in the paper and the release (docs/architecture.md,
            deviations 28 and 32).
        balance: balancing loss of :class:`GateOutput`, ``"cv2"`` (paper, release),
            ``"switch"`` (deviation 29) or ``"bias"`` (deviation 31: no loss; a buffer
            ``selection_bias [N]`` is added to the logits before the top-K selection and
            softmax, and after every training forward each expert's entry moves by
            ``bias_rate`` up if it got fewer samples than the mean in the batch and down
            if more: auxiliary-loss-free balancing, Wang et al. 2024).
        z_weight: coefficient of the router z-loss (:meth:`GateOutput.z_loss`); 0 in
            the paper and the release (deviation 30).
        bias_rate: step of the ``"bias"`` update (ignored by the other kinds).

    ``W_gate`` and ``W_noise`` (``[C*H_g*W_g, N]``) start at zero as in the release: every
    expert starts with the same logit, so the first routing decisions come from the
    noise alone.

    ``logit_filter`` (default None) is an inference hook: in eval mode, a callable
    ``[B, N] -> [B, N]`` applied to the clean logits before the top-K selection (the
    temporal smoother of video fusion, :class:`moefusion.temporal.GateSmoother`, sets
    it for the length of a video). It is not part of the state dict.

    Shapes:
        input ``[B, C, H, W]`` (any H, W), or a sequence of maps that concatenate to it
        -> :class:`GateOutput` with ``gates [B, N]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_experts: int,
        k: int,
        grid: tuple[int, int] = (15, 20),
        noisy: bool = True,
        noise_epsilon: float = 1e-2,
        input_norm: bool | str = False,
        balance: str = "cv2",
        z_weight: float = 0.0,
        bias_rate: float = 0.01,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be in [1, {num_experts}], got {k}")
        if balance not in BALANCE_LOSSES:
            raise ValueError(f"balance must be one of {', '.join(BALANCE_LOSSES)}, got {balance!r}")
        if not z_weight >= 0:
            raise ValueError(f"z_weight must be >= 0, got {z_weight}")
        self.in_channels = in_channels
        self.num_experts = num_experts
        self.k = k
        self.grid = (int(grid[0]), int(grid[1]))
        self.noisy = noisy
        self.noise_epsilon = noise_epsilon
        if input_norm is True:
            input_norm = "variance"
        if input_norm is not False and input_norm not in GATE_INPUT_SCALES:
            names = " or ".join(repr(k) for k in GATE_INPUT_SCALES)
            raise ValueError(f"input_norm must be False, True or {names}, got {input_norm!r}")
        self.input_norm: str | bool = input_norm
        self.balance = balance
        self.z_weight = float(z_weight)
        # pooling implementation: native op, or a summed-area table for export
        self.export_friendly = False
        # eval-mode hook on the clean logits before top-K (temporal smoothing of videos)
        self.logit_filter: Callable[[Tensor], Tensor] | None = None
        in_features = in_channels * self.grid[0] * self.grid[1]
        self.w_gate = nn.Parameter(torch.zeros(in_features, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_features, num_experts))
        self.bias_rate = float(bias_rate)
        # only the "bias" gates hold it, so every other weights file keeps its keys
        self.selection_bias: Tensor | None
        if balance == "bias":
            self.register_buffer("selection_bias", torch.zeros(num_experts))
        else:
            self.selection_bias = None

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_experts={self.num_experts}, k={self.k}, "
            f"grid={self.grid}, noisy={self.noisy}"
            + (f", input_norm={self.input_norm!r}" if self.input_norm else "")
            + (f", balance={self.balance!r}" if self.balance != "cv2" else "")
            + (f", z_weight={self.z_weight:g}" if self.z_weight else "")
            + (f", bias_rate={self.bias_rate:g}" if self.selection_bias is not None else "")
        )

    def flatten_input(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """``[B, C, H, W] -> s [B, C*H_g*W_g]`` (adaptive average pooling, then flatten;
        standardised per sample with ``input_norm``).

        ``x`` may also be a sequence of maps whose channel concatenation is the input:
        pooling is per channel, so each part is pooled and the small pooled maps are
        concatenated, which avoids copying the full-resolution maps.
        """
        parts = [x] if isinstance(x, Tensor) else list(x)
        channels = sum(p.shape[1] for p in parts)
        if channels != self.in_channels:
            raise ValueError(f"gate expects {self.in_channels} channels, got {channels}")
        pool = adaptive_avg_pool2d_cumsum if self.export_friendly else F.adaptive_avg_pool2d
        pooled = [pool(p, self.grid) for p in parts]
        s = (pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)).flatten(1)
        if not self.input_norm:
            return s
        # eps far below LayerNorm's 1e-5: MoLE gate inputs have a variance near 1e-5
        s = F.layer_norm(s, s.shape[1:], eps=1e-12)
        return s / math.sqrt(s.shape[1]) if self.input_norm == "norm" else s

    def routing_logits(self, clean_logits: Tensor) -> Tensor:
        """The logits the top-K selection and softmax see: ``clean_logits`` plus the
        selection bias of a ``"bias"`` gate, unchanged for the other kinds.

        Shapes:
            ``[B, N] -> [B, N]``.
        """
        if self.selection_bias is None:
            return clean_logits
        return clean_logits + self.selection_bias.to(clean_logits.dtype)

    @torch.no_grad()
    def update_selection_bias(self, gates: Tensor) -> None:
        """One ``"bias"`` step from a batch's gates ``[B, N]``: under-loaded experts up,
        over-loaded ones down, by ``bias_rate`` (the sign of the load's gap to its mean)."""
        if self.selection_bias is None:
            return
        load = gates_to_load(gates).float()
        self.selection_bias.add_(self.bias_rate * torch.sign(load.mean() - load))

    def noise_std(self, s: Tensor) -> Tensor:
        """Training noise scale ``softplus(s . W_noise) + epsilon`` of flattened inputs.

        Shapes:
            ``s [B, C*H_g*W_g]`` (:meth:`flatten_input`) -> ``[B, N]``.
        """
        return F.softplus(s @ self.w_noise) + self.noise_epsilon

    def forward(self, x: Tensor | Sequence[Tensor]) -> GateOutput:
        s = self.flatten_input(x)
        clean_logits = s @ self.w_gate
        if self.logit_filter is not None and not self.training:
            clean_logits = self.logit_filter(clean_logits)
        # selection sees the bias; the clean logits stay unbiased (the z-loss reads them)
        routed = self.routing_logits(clean_logits)
        use_noise = self.noisy and self.training
        if use_noise:
            noise_std = self.noise_std(s)
            logits = routed + torch.randn_like(routed) * noise_std
        else:
            logits = routed

        gates, indices = top_k_softmax(logits, self.k)
        if use_noise and self.k < self.num_experts:
            top_values = logits.topk(self.k + 1, dim=1).values
            load = prob_in_top_k(routed, logits, noise_std, top_values, self.k).sum(0)
        else:
            load = gates_to_load(gates)
        if self.training:
            self.update_selection_bias(gates)
        # the full softmax only where the switch loss will read it
        probs = torch.softmax(logits, dim=1) if self.balance == "switch" else None
        return GateOutput(
            gates=gates,
            load=load,
            importance=gates.sum(0),
            logits=clean_logits,
            indices=indices,
            probs=probs,
            balance=self.balance,
            z_weight=self.z_weight,
        )
