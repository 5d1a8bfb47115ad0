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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from moefusion.errors import ConfigError
from moefusion.models.attention import HEAD_PREFIXES, AttentionDetectors, Target
from moefusion.models.config import MoEFusionConfig
from moefusion.models.encoder import DenseEncoder
from moefusion.models.experts import BranchOutput, GlobalExpert
from moefusion.models.gating import NoisyTopKGate
from moefusion.models.moge import MixtureOfGlobalExperts, SingleDecoder, build_global_mixture
from moefusion.models.mole import (
    AttentionLocal,
    MixtureOfLocalExperts,
    build_local_mixture,
    route_by_modality,
)


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
        ``forward(ir [B,1,H,W], vi [B,1,H,W], attention [B,1,H,W] | None, gates)`` ->
        :class:`FusionOutput`. Any H, W (the gates pool to a fixed grid). ``gates``
        (optional): ``{name: [B, N]}`` for some or all of :attr:`gate_sizes`, decisions
        that replace those gates' own (the gate does not run and adds no load loss);
        tiled fusion passes the whole frame's gates to every tile this way. The output's
        ``gates`` then holds the given weights.
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
    def gate_sizes(self) -> dict[str, int]:
        """``{gate name: N}`` for the gates this variant has, the keys of
        :attr:`FusionOutput.gates` (``mole_fg``, ``mole_bg``, ``moge``, or some of them)."""
        sizes: dict[str, int] = {}
        if isinstance(self.local, MixtureOfLocalExperts):
            sizes["mole_fg"] = self.local.foreground.num_experts
            sizes["mole_bg"] = self.local.background.num_experts
        if isinstance(self.global_stage, MixtureOfGlobalExperts):
            sizes["moge"] = self.global_stage.mixture.num_experts
        return sizes

    def check_gates(self, gates: Mapping[str, Tensor], batch: int) -> None:
        """Check given gate decisions: names of this variant's gates, ``[batch, N]`` each.

        Raises:
            ValueError: a name this variant has no gate for, or a wrong shape.
        """
        sizes = self.gate_sizes
        unknown = sorted(set(gates) - set(sizes))
        if unknown:
            have = ", ".join(sizes) or "none"
            raise ValueError(f"no gate named {', '.join(unknown)} in this variant (it has {have})")
        for name, g in gates.items():
            if tuple(g.shape) != (batch, sizes[name]):
                raise ValueError(
                    f"gates {name!r} must be [B, N] = {(batch, sizes[name])}, got {tuple(g.shape)}"
                )

    @property
    def gate_grid(self) -> tuple[int, int]:
        """The ``(H_g, W_g)`` grid all of this network's gates pool their input to.

        Raises:
            ValueError: the gates pool to different grids (never for a network built by
                :meth:`from_config`, whose gates share ``config.gate_grid``), or there is
                no gate.
        """
        grids = {m.grid for m in self.modules() if isinstance(m, NoisyTopKGate)}
        if len(grids) != 1:
            raise ValueError(f"the gates must share one pooling grid, found {sorted(grids)}")
        return grids.pop()

    def gate_statistics(
        self,
        ir: Tensor,
        vi: Tensor,
        attention: Tensor | None,
        pool: Callable[[Tensor], Tensor],
        known: Mapping[str, Tensor] | None = None,
        *,
        encoded: tuple[Tensor, Sequence[Tensor], Tensor, Sequence[Tensor]] | None = None,
        run: Callable[[nn.Module, Tensor], Tensor] | None = None,
    ) -> dict[str, list[Tensor]]:
        """What the gates not in ``known`` decide from, pooled by ``pool``.

        The gates only see their input averaged over a grid (:attr:`gate_grid`), so the
        whole image's decisions can be made from grid averages accumulated tile by tile
        (:func:`moefusion.tiling.pool_tiled`); :meth:`decide_gates` makes them. The
        MoGE gate's input holds MoLE's output, which depends on the MoLE gates: with
        ``combine="linear"`` every local expert's output is pooled on its own
        (``mole_fg_experts``, ``mole_bg_experts``) and weighted once the MoLE gates are
        decided (pooling is linear), so one pass decides every gate; with ``"log"`` the
        MoGE gate needs a second pass with the MoLE gates in ``known``.

        Args:
            ir, vi: ``[B, 1, h, w]`` images (a tile).
            attention: ``[B, 1, h, w]`` the attention map (None for w/o MoLE).
            pool: ``[B, C, h, w] -> [B, C, H_g, W_g]``; adaptive average pooling to
                :attr:`gate_grid` for a whole image, the bin sums of a tile's share of
                the image when tiled.
            known: gates already decided (``{name: [B, N]}``); their inputs are skipped.
            encoded: ``(x_enc_vis, x_dense_vis parts, x_enc_ir, x_dense_ir parts)`` when
                the caller has already run the encoders (the parts concatenate to
                ``x_dense``); else they are run here.
            run: ``run(expert, x)`` for the local experts (default ``expert(x)``).

        Returns:
            ``{key: [pool(map), ...]}``, keys among ``mole_fg``, ``mole_bg`` (the gate
            inputs' parts), ``moge_dense`` (both ``x_dense``), ``moge_local`` (the
            Att-Local features), ``mole_fg_output``, ``mole_bg_output`` (a mixture's
            output, its gate known) and ``mole_fg_experts``, ``mole_bg_experts`` (one
            pooled output per expert, its gate open); ``{}`` when ``known`` holds every
            gate.
        """
        known = known or {}
        sizes = self.gate_sizes
        if not set(sizes) - set(known):
            return {}
        if encoded is None:
            enc_vis, dense_vis = self.encoder_vis(vi)
            enc_ir, dense_ir = self.encoder_ir(ir)
            encoded = (enc_vis, [dense_vis], enc_ir, [dense_ir])
        enc_vis, dense_vis_parts, enc_ir, dense_ir_parts = encoded
        stats: dict[str, list[Tensor]] = {}
        local = self.local
        want_moge = "moge" in sizes and "moge" not in known
        if local is not None and attention is None:
            raise ValueError("this fusion variant needs the attention map")
        if isinstance(local, MixtureOfLocalExperts):
            assert attention is not None
            inverse = 1.0 - attention
            mixtures = (
                ("mole_fg", local.foreground, attention),
                ("mole_bg", local.background, inverse),
            )
            # a non-linear mixture whose gate is still open: MoGE waits for a second pass
            if any(n not in known and m.combine != "linear" for n, m, _ in mixtures):
                want_moge = False
            for name, mixture, mask in mixtures:
                x_vis, x_ir = enc_vis * mask, enc_ir * mask
                if name not in known:
                    stats[name] = [pool(x_vis), pool(x_ir)]
                if not want_moge:
                    continue
                inputs = route_by_modality(x_vis, x_ir, mixture.num_experts)
                if name in known:
                    y, _ = mixture([x_vis, x_ir], inputs, known[name])
                    stats[f"{name}_output"] = [pool(y)]
                else:
                    outs = (
                        e(x) if run is None else run(e, x)
                        for e, x in zip(mixture.experts, inputs, strict=True)
                    )
                    stats[f"{name}_experts"] = [pool(y) for y in outs]
        elif local is not None and want_moge:
            stats["moge_local"] = [pool(local(enc_vis, enc_ir, attention).features)]
        if want_moge:
            stats["moge_dense"] = [pool(p) for p in (*dense_vis_parts, *dense_ir_parts)]
        return stats

    def decide_gates(
        self, stats: Mapping[str, Sequence[Tensor]], known: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The gate decisions from :meth:`gate_statistics` output (pooled means).

        Each gate is run on its pooled input (pooling a ``[B, C, H_g, W_g]`` map to the
        grid is the identity, so the gate sees exactly the average it would compute
        itself, and eval-mode hooks such as temporal smoothing apply once).

        Returns:
            ``known`` plus every gate decided now, ``{name: [B, N]}``.
        """
        decided = dict(known or {})
        local = self.local
        if isinstance(local, MixtureOfLocalExperts):
            for name, mixture in (("mole_fg", local.foreground), ("mole_bg", local.background)):
                if name not in decided and name in stats:
                    decided[name] = mixture.gate(list(stats[name])).gates
        glob = self.global_stage
        if (
            isinstance(glob, MixtureOfGlobalExperts)
            and "moge" not in decided
            and "moge_dense" in stats
        ):
            parts = list(stats["moge_dense"])
            if "moge_local" in stats:
                parts += list(stats["moge_local"])
            elif isinstance(local, MixtureOfLocalExperts):
                for name in ("mole_fg", "mole_bg"):
                    if f"{name}_output" in stats:
                        parts += list(stats[f"{name}_output"])
                        continue
                    # linear mixture: the pooled output is the gate-weighted pooled outputs
                    gates = decided[name]
                    pooled = stats[f"{name}_experts"]
                    y = gates[:, 0].view(-1, 1, 1, 1) * pooled[0]
                    for i in range(1, len(pooled)):
                        y = y + gates[:, i].view(-1, 1, 1, 1) * pooled[i]
                    parts.append(y)
            decided["moge"] = glob.mixture.gate(parts).gates
        return decided

    @property
    def requires_attention(self) -> bool:
        """Whether :meth:`forward` uses the attention map (False for w/o MoLE)."""
        return self.local is not None

    def forward(
        self,
        ir: Tensor,
        vi: Tensor,
        attention: Tensor | None = None,
        gates: Mapping[str, Tensor] | None = None,
    ) -> FusionOutput:
        if ir.shape != vi.shape or ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(
                f"ir and vi must both be [B, 1, H, W]; got {tuple(ir.shape)} and {tuple(vi.shape)}"
            )
        if gates:
            self.check_gates(gates, ir.shape[0])
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
            # only a MoLE mixture takes gates (check_gates refused others' names)
            local_gates = {k: v for k, v in (gates or {}).items() if k.startswith("mole")}
            if local_gates:
                local_out = self.local(enc_vis, enc_ir, attention, local_gates)
            else:
                local_out = self.local(enc_vis, enc_ir, attention)
            parts.append(local_out)
            x_f = torch.cat([dense_vis, dense_ir, local_out.features], dim=1)
        else:
            x_f = torch.cat([dense_vis, dense_ir], dim=1)
        if gates and "moge" in gates:  # only a MoGE mixture takes gates (as above)
            global_out = self.global_stage(x_f, {"moge": gates["moge"]})
        else:
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

    ``forward(ir [B,1,H,W], vi [B,1,H,W], targets=None, *, gates=None) -> MoEFusionOutput``:
    images in [0, 1]; ``targets`` as :meth:`AttentionDetectors.forward`; ``gates`` as
    :meth:`FusionNetwork.forward` (given decisions, e.g. the whole frame's for a tile).
    The fused image is NOT clamped (in training the loss sees the raw output); callers
    clamp to [0, 1] before saving or measuring.
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
        self,
        ir: Tensor,
        vi: Tensor,
        targets: Sequence[Target] | None = None,
        *,
        gates: Mapping[str, Tensor] | None = None,
    ) -> MoEFusionOutput:
        attention, det_losses = self.attention(ir, vi, targets)
        out = self.fusion(ir, vi, attention, gates)
        return MoEFusionOutput(
            fused=out.fused,
            attention=attention,
            gates=out.gates,
            load_loss=out.load_loss,
            det_losses=det_losses,
        )

    def gate_statistics(
        self,
        ir: Tensor,
        vi: Tensor,
        pool: Callable[[Tensor], Tensor],
        known: Mapping[str, Tensor] | None = None,
    ) -> dict[str, list[Tensor]]:
        """:meth:`FusionNetwork.gate_statistics` of a pair (``[B, 1, h, w]`` each), with
        the attention map computed here (eval mode, no targets)."""
        attention = self.attention(ir, vi)[0] if self.fusion.requires_attention else None
        return self.fusion.gate_statistics(ir, vi, attention, pool, known)

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
