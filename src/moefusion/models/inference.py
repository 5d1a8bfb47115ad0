"""A faster inference forward of :class:`~moefusion.models.MoEFusion` (what ``Fuser`` runs).

:class:`FastMoEFusion` computes what ``MoEFusion.forward`` computes in eval mode without
targets, with these changes (``docs/fuse.md``, "Speed", has the measurements):

* **BatchNorm folded** into the preceding convolution in the attention branch (the
  detectors' backbones and the spatial attention): one pass over each feature map
  instead of two. Folded once, from the weights the model has when the runner is made
  (the runner's attention branch is a copy of the module tree that shares the other
  parameters with the model).
* **Dense encoders without concatenations**: the convolution of a dense layer over
  ``concat(f_0, ..., f_k)`` is the sum of convolutions over each ``f_j``, so every new
  feature map is convolved once with the weights of *all* later layers stacked (one
  wider convolution, which the CPU kernels run at about twice the rate of the 8-channel
  ones) and the layers' inputs are never concatenated; the fusion feature ``x_f`` is
  assembled in one concatenation of all the parts.
* **Float32 accumulation of the experts** (the gate-weighted sum), whatever the experts'
  precision.
* ``precision="bf16"`` / ``"fp16"``: the attention branch, the local experts and the
  first layer of the global experts run in half precision (autocast); the encoders, the
  gates (routing decisions) and the other decoder layers stay float32. On the samples
  this keeps the fused images within one grey level of float32, where half precision
  everywhere (the encoders see the image itself) differs by up to 4.

In float32 the results equal the model's up to float rounding (different summation
order; ``tests/test_fast_inference.py``). The fusion branch is the model's own modules
(read at every call); only the folded attention branch is a copy. Other variants than
``full`` with linear combination, and training mode, use the model's own forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moefusion.errors import MoEFusionError
from moefusion.models.encoder import DenseEncoder
from moefusion.models.experts import ExpertMixture, GlobalExpert, LocalExpert, combine_sparse
from moefusion.models.gating import GateOutput
from moefusion.models.moefusion import MoEFusion, MoEFusionOutput
from moefusion.models.moge import MixtureOfGlobalExperts
from moefusion.models.mole import MixtureOfLocalExperts, route_by_modality

__all__ = ["PRECISIONS", "FastMoEFusion", "check_precision", "fold_batchnorm"]

#: ``fp32`` (default), or half precision for the attention branch, the local experts and
#: the first global-expert layer: ``bf16`` (CPU with AVX-512 BF16 / AMX, or CUDA) or
#: ``fp16`` (CUDA only).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if the device can run it.

    Raises:
        MoEFusionError: unknown precision, fp16 on a device other than CUDA, or bf16 on
            one other than the CPU or CUDA.
    """
    if precision not in PRECISIONS:
        raise MoEFusionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise MoEFusionError(f"fp16 needs a CUDA device (got {device}); use bf16 on the CPU")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise MoEFusionError(f"bf16 runs on the CPU or CUDA, not on {device}; use fp32")
    return precision


# ------------------------------------------------------------------ BatchNorm folding
def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` with ``bn(x) = x * scale + shift`` (eval statistics), or None
    when ``bn`` is not a foldable batch norm."""
    is_bn = isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats
    if not (is_bn or type(bn).__name__ == "FrozenBatchNorm2d"):
        return None
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        return None
    scale = (var + float(bn.eps)).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _folded(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d | None:
    with torch.no_grad():
        affine = _bn_scale_shift(bn)
        if affine is None or conv.out_channels != affine[0].numel():
            return None
        scale, shift = affine
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias * scale + shift
    fused = copy.copy(conv)  # same hyper-parameters; own parameters and hooks below
    for name, value in vars(conv).items():
        if name.startswith("_") and isinstance(value, dict):
            setattr(fused, name, type(value)())
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


#: ordered containers whose forward runs their children one after the other
_SEQUENTIAL_NAMES = ("IntermediateLayerGetter", "IntermediateBody")


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm (or FrozenBatchNorm) that directly follows a Conv2d
    into it, in place; the BatchNorm becomes ``nn.Identity``. Returns ``module``.

    Recognised: consecutive children of an ``nn.Sequential`` (or of torchvision's
    ``IntermediateLayerGetter``), and ``conv{i}``/``bn{i}`` children of ResNet blocks.
    """
    for parent in list(module.modules()):
        names = list(parent._modules)
        ordered = isinstance(parent, nn.Sequential) or type(parent).__name__ in _SEQUENTIAL_NAMES
        pairs: list[tuple[str, str]] = []
        if ordered:
            pairs = list(zip(names, names[1:], strict=False))
        else:
            pairs = [(n, "bn" + n[4:]) for n in names if n.startswith("conv") and n[4:].isdigit()]
        for conv_name, bn_name in pairs:
            conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
            if not isinstance(conv, nn.Conv2d) or bn is None:
                continue
            fused = _folded(conv, bn)
            if fused is not None:
                parent._modules[conv_name] = fused
                parent._modules[bn_name] = nn.Identity()
    return module


def _clone_tree(module: nn.Module, skip: Sequence[str] = ()) -> nn.Module:
    """A copy of the module tree that shares the parameters and buffers (new module
    objects, so that :func:`fold_batchnorm` can replace children without touching
    ``module``); children named in ``skip`` become None. Much cheaper than deepcopy."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {
        name: None if child is None or name in skip else _clone_tree(child)
        for name, child in module._modules.items()
    }
    return clone


# -------------------------------------------------------------------- fusion branch
def _half(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _conv(layer: nn.Module) -> nn.Conv2d:
    conv = layer[0] if isinstance(layer, nn.Sequential) else layer
    assert isinstance(conv, nn.Conv2d)
    return conv


def dense_encode(encoder: DenseEncoder, x: Tensor) -> list[Tensor]:
    """The stem and dense-layer outputs ``[f_0, ..., f_L]`` of ``encoder(x)``: ``x_enc`` is
    ``f_L`` and ``x_dense`` their concatenation.

    Dense layer ``k`` computes ``relu(b_k + sum_{j<=k} W_kj * f_j)``; here each ``f_j`` is
    convolved once with ``[W_jj; W_(j+1)j; ...]`` (its weights in every later layer),
    and the partial sums are added up as the layers complete.
    """
    stem = _conv(encoder.stem)
    f0 = F.relu(F.conv2d(x, stem.weight, stem.bias, padding=1))
    if encoder.channels_last:
        f0 = f0.contiguous(memory_format=torch.channels_last)
    convs = [_conv(layer) for layer in encoder.dense.layers]
    g, count = f0.shape[1], len(convs)
    feats = [f0]
    pending: list[Tensor | None] = [None] * count
    for j in range(count):
        weight = torch.cat([convs[k].weight[:, j * g : (j + 1) * g] for k in range(j, count)])
        # the biases enter once, with f_0's convolution
        bias = torch.cat([c.bias for c in convs]) if j == 0 else None  # type: ignore[misc]
        out = F.conv2d(feats[j], weight, bias, padding=1)
        for i, k in enumerate(range(j, count)):
            part = out[:, i * g : (i + 1) * g]
            pending[k] = part if pending[k] is None else pending[k] + part
        current, pending[j] = pending[j], None
        assert current is not None
        feats.append(F.relu_(current) if j > 0 else F.relu(current))
        del current, out
    return feats


def _supported_encoder(encoder: nn.Module) -> bool:
    if not isinstance(encoder, DenseEncoder):
        return False
    layers = [encoder.stem, *encoder.dense.layers]
    return all(
        isinstance(layer, nn.Sequential)
        and len(layer) == 2
        and isinstance(layer[0], nn.Conv2d)
        and layer[0].kernel_size == (3, 3)
        and layer[0].padding == (1, 1)
        and layer[0].stride == (1, 1)
        and layer[0].groups == 1
        and layer[0].bias is not None
        and isinstance(layer[1], nn.ReLU)
        for layer in layers
    )


def _combine(
    experts: Sequence[nn.Module],
    inputs: Sequence[Tensor],
    gates: Tensor,
    run: Callable[[nn.Module, Tensor], Tensor],
) -> Tensor:
    """``sum_i g_i E_i(x_i)`` over the experts with non-zero weight: ``combine_sparse``
    (linear) with ``run`` for the experts, accumulated in float32."""
    return combine_sparse(experts, inputs, gates, "linear", lambda e, x: run(e, x).float())


class FastMoEFusion(nn.Module):
    """Inference forward of ``model`` (eval mode, no targets); see the module docstring.

    Args:
        model: the network; its fusion branch is used as is, its attention branch is
            copied with BatchNorm folded (later changes to the model's attention
            weights are not seen: make a new runner).
        precision: one of :data:`PRECISIONS`.

    ``forward(ir [B,1,H,W], vi [B,1,H,W], gates=None) -> MoEFusionOutput`` (``det_losses``
    empty); ``gates`` (``{name: [B, N]}``, some or all of the model's gates) replace
    those gates' decisions, as in :meth:`FusionNetwork.forward`.
    """

    def __init__(self, model: MoEFusion, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise MoEFusionError(f"precision must be one of {', '.join(PRECISIONS)}")
        self.config = model.config
        self.precision = precision
        # the detection heads are not run at inference: left out of the copy
        att = _clone_tree(model.attention, skip=("rpn", "roi_heads"))
        self.attention = fold_batchnorm(att.eval())
        self.fusion = model.fusion
        self._fast_fusion = self._supported()

    def _supported(self) -> bool:
        f = self.fusion
        local, glob = f.local, f.global_stage
        if not (
            isinstance(local, MixtureOfLocalExperts) and isinstance(glob, MixtureOfGlobalExperts)
        ):
            return False
        mixtures: list[ExpertMixture] = [local.foreground, local.background, glob.mixture]
        if any(m.combine != "linear" for m in mixtures):
            return False
        if not all(isinstance(e, LocalExpert) for m in mixtures[:2] for e in m.experts):
            return False
        if not all(isinstance(e, GlobalExpert) for e in glob.mixture.experts):
            return False
        return _supported_encoder(f.encoder_vis) and _supported_encoder(f.encoder_ir)

    @property
    def _dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.precision)

    def train(self, mode: bool = True) -> FastMoEFusion:
        if mode:
            raise MoEFusionError("FastMoEFusion is for inference only")
        return super().train(False)

    def forward(
        self, ir: Tensor, vi: Tensor, gates: Mapping[str, Tensor] | None = None
    ) -> MoEFusionOutput:
        device = ir.device
        if gates:
            self.fusion.check_gates(gates, ir.shape[0])
        with _half(self._dtype, device):
            attention, _ = self.attention(ir, vi)
        attention = attention.float()
        given = dict(gates or {})
        if self._fast_fusion and not self.fusion.training:
            fused, out_gates, load_loss = self._fusion(ir, vi, attention, given)
        else:
            out = self.fusion(ir, vi, attention, given)
            fused, out_gates, load_loss = out.fused, out.gates, out.load_loss
        return MoEFusionOutput(
            fused=fused, attention=attention, gates=out_gates, load_loss=load_loss
        )

    def gate_statistics(
        self,
        ir: Tensor,
        vi: Tensor,
        pool: Callable[[Tensor], Tensor],
        known: Mapping[str, Tensor] | None = None,
    ) -> dict[str, list[Tensor]]:
        """:meth:`~moefusion.models.FusionNetwork.gate_statistics` of a pair
        (``[B, 1, h, w]`` each) with this runner's attention branch, encoders and
        precision (the local experts in half precision where :meth:`forward` runs them so)."""
        f = self.fusion
        attention = None
        if f.requires_attention:
            with _half(self._dtype, ir.device):
                attention = self.attention(ir, vi)[0].float()
        if not (self._fast_fusion and not f.training):
            return f.gate_statistics(ir, vi, attention, pool, known)
        feats_vis = dense_encode(f.encoder_vis, vi)  # type: ignore[arg-type]
        feats_ir = dense_encode(f.encoder_ir, ir)  # type: ignore[arg-type]
        half = self._dtype

        def run_local(expert: nn.Module, x: Tensor) -> Tensor:
            with _half(half, x.device):
                return expert(x).float()

        encoded = (feats_vis[-1], feats_vis, feats_ir[-1], feats_ir)
        return f.gate_statistics(ir, vi, attention, pool, known, encoded=encoded, run=run_local)

    def _fusion(
        self, ir: Tensor, vi: Tensor, attention: Tensor, given: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The fusion branch; ``given`` gates replace those gates' decisions."""
        f = self.fusion
        if ir.shape != vi.shape or ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(
                f"ir and vi must both be [B, 1, H, W]; got {tuple(ir.shape)} and {tuple(vi.shape)}"
            )
        half = self._dtype
        feats_vis = dense_encode(f.encoder_vis, vi)  # type: ignore[arg-type]
        feats_ir = dense_encode(f.encoder_ir, ir)  # type: ignore[arg-type]
        enc_vis, enc_ir = feats_vis[-1], feats_ir[-1]

        local = f.local
        assert isinstance(local, MixtureOfLocalExperts)
        inverse = 1.0 - attention
        masked = {
            "fg": (enc_vis * attention, enc_ir * attention),
            "bg": (enc_vis * inverse, enc_ir * inverse),
        }

        def run_local(expert: nn.Module, x: Tensor) -> Tensor:
            with _half(half, x.device):
                return expert(x)

        ys: list[Tensor] = []
        gates: dict[str, Tensor] = {}
        load = []
        for name, mixture in (("fg", local.foreground), ("bg", local.background)):
            x_vis, x_ir = masked[name]
            key = f"mole_{name}"
            if key in given:
                gate = GateOutput.fixed(given[key].to(x_vis.device))
            else:
                gate = mixture.gate([x_vis, x_ir])
            inputs = route_by_modality(x_vis, x_ir, mixture.num_experts)
            ys.append(_combine(mixture.experts, inputs, gate.gates, run_local))
            gates[f"mole_{name}"] = gate.gates
            load.append(gate.auxiliary_loss(local.load_weight))
        load_loss = load[0] + load[1]
        del masked, inverse, enc_vis, enc_ir

        x_f = torch.cat([*feats_vis, *feats_ir, *ys], dim=1)
        del feats_vis, feats_ir, ys  # peak memory (and first-pass page faults) stays lower
        glob = f.global_stage
        assert isinstance(glob, MixtureOfGlobalExperts)
        if "moge" in given:
            gate = GateOutput.fixed(given["moge"].to(x_f.device))
        else:
            gate = glob.mixture.gate(x_f)

        def run_global(expert: nn.Module, x: Tensor) -> Tensor:
            layers = list(expert.layers)  # type: ignore[union-attr]
            with _half(half, x.device):
                h = layers[0](x)
            h = h.float()
            for layer in layers[1:]:
                h = layer(h)
            return h

        fused = _combine(
            glob.mixture.experts, [x_f] * glob.mixture.num_experts, gate.gates, run_global
        )
        gates["moge"] = gate.gates
        load_loss = load_loss + gate.auxiliary_loss(glob.load_weight)
        return fused, gates, load_loss
