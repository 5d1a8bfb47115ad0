"""MoE-Fusion (paper Fig. 2): encoders -> MoLE -> MoGE, guided by the auxiliary detectors.

Data path (``full`` variant, default widths)::

    vi, ir [B,1,H,W] ─ DenseEncoder (per modality) ─> x_enc 16 ch, x_dense 64 ch
    ir, vi ─ AttentionDetectors ─> Att [B,1,H,W] (detached)
    MoLE(x_enc_vis, x_enc_ir, Att) ─> y_local 32 ch (16 fg + 16 bg)
    x_f = concat(x_dense_vis, x_dense_ir, y_local)  160 ch
    MoGE(x_f) ─> fused [B,1,H,W]

The fused image is not clamped: callers clamp to [0, 1] when saving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from moefusion.errors import ConfigError
from moefusion.models.attention import HEAD_PREFIXES, AttentionDetectors, Target
from moefusion.models.config import MoEFusionConfig
from moefusion.models.encoder import DenseEncoder
from moefusion.models.experts import BranchOutput, GlobalExpert
from moefusion.models.moge import MixtureOfGlobalExperts, SingleDecoder, build_global_mixture
from moefusion.models.mole import AttentionLocal, MixtureOfLocalExperts, build_local_mixture


@dataclass
class FusionOutput:
    """Output of :class:`FusionNetwork`.

    Attributes:
        fused: ``[B, 1, H, W]``, not clamped.
        gates: ``{"mole_fg", "mole_bg", "moge"} -> [B, N]``, only the gates the variant has.
        load_loss: scalar, already weighted (0.01 per MoLE gate + 0.02 for MoGE by default).
    """

    fused: Tensor
    gates: dict[str, Tensor]
    load_loss: Tensor


@dataclass
class MoEFusionOutput:
    """Output of :class:`MoEFusion`.

    Attributes:
        fused: ``[B, 1, H, W]``, not clamped.
        attention: ``[B, 1, H, W]`` the map that guided MoLE, in (0, 1).
        gates: as :attr:`FusionOutput.gates`.
        load_loss: weighted load-balancing loss (scalar).
        det_losses: both detectors' losses (``vis_*``, ``ir_*``); empty without labelled samples.
    """

    fused: Tensor
    attention: Tensor
    gates: dict[str, Tensor]
    load_loss: Tensor
    det_losses: dict[str, Tensor] = field(default_factory=dict)


class FusionNetwork(nn.Module):
    """The fusion branch: two encoders, a local stage and a global stage.

    Args:
        encoder_vis, encoder_ir: per-modality :class:`DenseEncoder` (separate weights).
        local: ``local(x_enc_vis, x_enc_ir, attention) -> BranchOutput`` (MoLE or
            Att-Local), or ``None`` for the w/o-MoLE ablation (``x_f`` is then the two
            dense features only and the attention is not used).
        global_stage: ``global_stage(x_f) -> BranchOutput`` with the fused image (MoGE or
            a single decoder).

    Shapes:
        ``forward(ir [B,1,H,W], vi [B,1,H,W], attention [B,1,H,W] | None)`` ->
        :class:`FusionOutput`. Any H, W (the gates pool to a fixed grid).
    """

    def __init__(
        self,
        encoder_vis: nn.Module,
        encoder_ir: nn.Module,
        local: nn.Module | None,
        global_stage: nn.Module,
    ) -> None:
        super().__init__()
        self.encoder_vis = encoder_vis
        self.encoder_ir = encoder_ir
        self.local = local
        self.global_stage = global_stage

    @classmethod
    def from_config(cls, config: MoEFusionConfig) -> FusionNetwork:
        """Assemble the variant named by ``config.variant`` (see ``docs/architecture.md``)."""
        g = config.encoder_growth
        gate_kwargs = {
            "grid": tuple(config.gate_grid),
            "noise_epsilon": config.noise_epsilon,
            "combine": config.combine,
        }

        def gate_of(mixture: str) -> dict[str, Any]:
            normed = mixture in config.gate_input_norm
            return {
                **gate_kwargs,
                "noisy": mixture in config.noisy_gating,
                "input_norm": config.gate_input_scale[mixture] if normed else False,
                "balance": config.balance_loss[mixture],
                "z_weight": config.router_z_weight[mixture],
            }

        local: nn.Module | None
        if config.variant in ("full", "no_moge"):
            mixtures = [
                build_local_mixture(
                    g,
                    config.num_experts,
                    config.k_of("mole"),
                    config.local_hidden,
                    **gate_of("mole"),
                )
                for _ in range(2)
            ]
            local = MixtureOfLocalExperts(*mixtures, load_weight=config.mole_load_weight)
        elif config.variant == "att_local":
            local = AttentionLocal(g)
        else:  # no_mole
            local = None
        # x_f = [x_dense_vis, x_dense_ir] (+ the local features, g channels per modality).
        # The widths come from an encoder built on the meta device: no parameters, no draw
        # from the random generator, so the initialisation order stays as it was.
        with torch.device("meta"):
            probe = DenseEncoder(1, g)
        fused_channels = 2 * probe.dense_channels
        if local is not None:
            fused_channels += 2 * probe.out_channels
        global_stage: nn.Module
        if config.variant == "no_moge":
            global_stage = SingleDecoder(GlobalExpert(fused_channels, config.decoder_channels))
        else:
            mixture = build_global_mixture(
                fused_channels,
                config.num_experts,
                config.k_of("moge"),
                config.decoder_channels,
                **gate_of("moge"),
            )
            global_stage = MixtureOfGlobalExperts(mixture, load_weight=config.moge_load_weight)
        return cls(DenseEncoder(1, g), DenseEncoder(1, g), local, global_stage)

    @property
    def requires_attention(self) -> bool:
        """Whether :meth:`forward` uses the attention map (False for w/o MoLE)."""
        return self.local is not None

    def forward(self, ir: Tensor, vi: Tensor, attention: Tensor | None = None) -> FusionOutput:
        if ir.shape != vi.shape or ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(
                f"ir and vi must both be [B, 1, H, W]; got {tuple(ir.shape)} and {tuple(vi.shape)}"
            )
        enc_vis, dense_vis = self.encoder_vis(vi)
        enc_ir, dense_ir = self.encoder_ir(ir)
        parts: list[BranchOutput] = []
        if self.local is not None:
            if attention is None:
                raise ValueError("this fusion variant needs the attention map")
            if attention.shape != (ir.shape[0], 1, *ir.shape[-2:]):
                raise ValueError(
                    f"attention must be [B, 1, H, W] = {tuple(ir.shape)}, got {tuple(attention.shape)}"
                )
            local_out = self.local(enc_vis, enc_ir, attention)
            parts.append(local_out)
            x_f = torch.cat([dense_vis, dense_ir, local_out.features], dim=1)
        else:
            x_f = torch.cat([dense_vis, dense_ir], dim=1)
        global_out = self.global_stage(x_f)
        parts.append(global_out)
        gates = {name: g for part in parts for name, g in part.gates.items()}
        load_loss = sum((p.load_loss for p in parts[1:]), parts[0].load_loss)
        return FusionOutput(fused=global_out.features, gates=gates, load_loss=load_loss)


class MoEFusion(nn.Module):
    """MoE-Fusion: auxiliary detectors (attention) + fusion network.

    Args:
        config: model configuration.
        with_heads: build the detectors' RPN/RoI heads (training, :meth:`detect`);
            inference-only models may leave them out.
        lean_backbones: torchvision-free backbones for a model whose weights are then
            loaded (see :class:`AttentionDetectors`; needs ``with_heads=False``).

    Attributes:
        config: the :class:`MoEFusionConfig`.
        fusion: the :class:`FusionNetwork`.
        attention: the :class:`AttentionDetectors`.

    ``forward(ir [B,1,H,W], vi [B,1,H,W], targets=None) -> MoEFusionOutput``: images in
    [0, 1]; ``targets`` as :meth:`AttentionDetectors.forward`. The fused image is NOT
    clamped (in training the loss sees the raw output); callers clamp to [0, 1] before
    saving or measuring.
    """

    def __init__(
        self, config: MoEFusionConfig, *, with_heads: bool = True, lean_backbones: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.attention = AttentionDetectors(
            config.detector,
            detach=config.detach_attention,
            with_heads=with_heads,
            lean_backbones=lean_backbones,
        )
        self.fusion = FusionNetwork.from_config(config)

    def forward(
        self, ir: Tensor, vi: Tensor, targets: Sequence[Target] | None = None
    ) -> MoEFusionOutput:
        attention, det_losses = self.attention(ir, vi, targets)
        out = self.fusion(ir, vi, attention)
        return MoEFusionOutput(
            fused=out.fused,
            attention=attention,
            gates=out.gates,
            load_loss=out.load_loss,
            det_losses=det_losses,
        )

    def inference_state_dict(self) -> dict[str, Tensor]:
        """State without the detectors' RPN/RoI heads (what a fusion release needs)."""
        prefixes = tuple(f"attention.{p}" for p in HEAD_PREFIXES)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def load_inference_state_dict(self, state: Mapping[str, Any], *, assign: bool = False) -> None:
        """Load :meth:`inference_state_dict` output (heads, if built, keep their values).
        ``assign``: take the tensors themselves instead of copying into the parameters
        (``load_state_dict(assign=True)``; a model built on the meta device needs it).

        Raises:
            ConfigError: a non-head key is missing or an unexpected key is present.
        """
        prefixes = tuple(f"attention.{p}" for p in HEAD_PREFIXES)
        result = self.load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
        if missing or result.unexpected_keys:
            raise ConfigError(
                "weights do not match the model config: "
                f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
            )


def build_model(
    config: MoEFusionConfig | Mapping[str, Any] | None = None, *, with_heads: bool = True
) -> MoEFusion:
    """Build :class:`MoEFusion` from a config or a (nested, YAML-style) dict."""
    if config is None:
        config = MoEFusionConfig()
    elif not isinstance(config, MoEFusionConfig):
        config = MoEFusionConfig.from_dict(config)
    return MoEFusion(config, with_heads=with_heads)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, height: int = 480, width: int = 640) -> dict[str, int]:
    """Multiply-accumulates of one inference on a ``height x width`` pair, per top-level child.

    Counts ``nn.Conv2d`` and ``nn.Linear`` layers with forward hooks during one eval-mode
    forward of batch 1 (:class:`MoEFusion` without targets: attention branch without
    RPN/RoI heads; :class:`FusionNetwork` with a random attention map). Only the layers
    that actually run are counted, so with sparse dispatch that is the K active experts
    of each mixture. Keys are the names of ``model``'s direct children plus ``"total"``.
    """
    counts: dict[str, int] = {}
    handles = []

    def hook_for(owner: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_output = module.in_channels // module.groups * kh * kw
            else:
                per_output = module.in_features  # type: ignore[assignment]
            counts[owner] = counts.get(owner, 0) + output.numel() * int(per_output)

        return hook

    for child_name, child in model.named_children():
        for module in child.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(hook_for(child_name)))
    param = next(model.parameters())
    ir = torch.rand(1, 1, height, width, device=param.device)
    vi = torch.rand(1, 1, height, width, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, FusionNetwork):
                model(ir, vi, torch.rand_like(ir))
            else:
                model(ir, vi)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    counts["total"] = sum(counts.values())
    return counts


def macs_per_pixel(model: nn.Module, height: int = 480, width: int = 640) -> float:
    """Total multiply-accumulates per input pixel of one inference (see :func:`count_macs`)."""
    return count_macs(model, height, width)["total"] / float(height * width)
