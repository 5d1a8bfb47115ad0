"""What the model does on one pair: attention, every expert's output, every gate.

:func:`inspect_pair` runs the network once, in eval mode, and also runs every expert of
every mixture (not only the K the gate selects), so a reader can see what each expert
learned (the paper's Fig. 6 for MoLE) and what each global expert would have decoded on
its own. :func:`save_inspection` draws the figures.

Only the experts' outputs are extra work; the fused image is the model's own output
(that of :meth:`moefusion.Fuser.fuse` on the same pair, untiled, up to float rounding:
the Fuser runs a folded copy of the network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moefusion.atomic import atomic_write_text
from moefusion.errors import PairError
from moefusion.figures import write_figure
from moefusion.models import MoEFusion
from moefusion.models.experts import ExpertMixture
from moefusion.models.moge import MixtureOfGlobalExperts
from moefusion.models.mole import MixtureOfLocalExperts, num_visible_experts, route_by_modality

#: Display names of the mixtures.
MIXTURE_TITLES: dict[str, str] = {
    "mole_fg": "MoLE foreground",
    "mole_bg": "MoLE background",
    "moge": "MoGE",
}


@dataclass
class Inspection:
    """One pair seen through the model (all arrays float32, ``H x W`` unless noted).

    Attributes:
        ir, vi: the gray inputs in [0, 1].
        fused: the fused image, clamped to [0, 1].
        attention: the attention map that guided MoLE, in [0, 1].
        gates: ``{mixture: [N]}`` gate weights (zero for experts not selected).
        local_experts: ``{"mole_fg" | "mole_bg": [N, H, W]}`` each local expert's output
            feature map, reduced to one channel as the mean absolute activation; empty
            for variants without MoLE.
        local_modality: ``"visible"``/``"infrared"`` per local expert (its input).
        global_experts: ``[N, H, W]`` each global expert's decoded image (not clamped:
            with ``combine: linear`` the gate-weighted sum of these is the fused image
            before clamping); empty for variants without MoGE.
    """

    ir: np.ndarray
    vi: np.ndarray
    fused: np.ndarray
    attention: np.ndarray
    gates: dict[str, np.ndarray]
    local_experts: dict[str, np.ndarray] = field(default_factory=dict)
    local_modality: list[str] = field(default_factory=list)
    global_experts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))

    def selected(self, mixture: str) -> list[int]:
        """Indices of the experts the gate of ``mixture`` selected (non-zero weight)."""
        return [int(i) for i in np.flatnonzero(self.gates[mixture] > 0)]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly gates, selections and attention statistics."""
        return {
            "gates": {k: [round(float(x), 6) for x in v] for k, v in self.gates.items()},
            "selected": {k: self.selected(k) for k in self.gates},
            "local_expert_modality": self.local_modality,
            "attention_mean": round(float(self.attention.mean()), 6),
            "size": [int(self.ir.shape[1]), int(self.ir.shape[0])],
        }


def _every_expert(mixture: ExpertMixture, inputs: list[Tensor]) -> Tensor:
    return torch.stack([expert(x)[0] for expert, x in zip(mixture.experts, inputs, strict=True)])


@torch.inference_mode()
def inspect_pair(model: MoEFusion, ir: np.ndarray, vi: np.ndarray) -> Inspection:
    """Run ``model`` on one gray pair (``H x W`` float in [0, 1]) and every expert on it.

    Raises:
        PairError: the two images differ in size or are not ``H x W``.
    """
    if ir.shape != vi.shape or ir.ndim != 2:
        raise PairError(
            f"infrared is {ir.shape[::-1]} but visible is {vi.shape[::-1]}: inspect needs "
            "one aligned gray pair of the same size"
        )
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ir_t = torch.from_numpy(np.ascontiguousarray(ir, np.float32))[None, None].to(device)
        vi_t = torch.from_numpy(np.ascontiguousarray(vi, np.float32))[None, None].to(device)
        out = model(ir_t, vi_t)
        fusion = model.fusion
        enc_vis, dense_vis = fusion.encoder_vis(vi_t)
        enc_ir, dense_ir = fusion.encoder_ir(ir_t)
        result = Inspection(
            ir=np.asarray(ir, np.float32),
            vi=np.asarray(vi, np.float32),
            fused=out.fused.clamp(0, 1)[0, 0].float().cpu().numpy(),
            attention=out.attention[0, 0].float().cpu().numpy(),
            gates={k: v[0].float().cpu().numpy() for k, v in out.gates.items()},
        )
        local = fusion.local
        if isinstance(local, MixtureOfLocalExperts):
            att = out.attention
            for name, mixture, mask in (
                ("mole_fg", local.foreground, att),
                ("mole_bg", local.background, 1.0 - att),
            ):
                inputs = route_by_modality(enc_vis * mask, enc_ir * mask, mixture.num_experts)
                maps = _every_expert(mixture, inputs).abs().mean(dim=1)
                result.local_experts[name] = maps.float().cpu().numpy()
            n_vis = num_visible_experts(local.num_experts)
            result.local_modality = ["visible"] * n_vis + ["infrared"] * (local.num_experts - n_vis)
        if isinstance(fusion.global_stage, MixtureOfGlobalExperts):
            parts = [dense_vis, dense_ir]
            if local is not None:
                parts.append(local(enc_vis, enc_ir, out.attention).features)
            x_f = torch.cat(parts, dim=1)
            mixture = fusion.global_stage.mixture
            decoded = _every_expert(mixture, [x_f] * mixture.num_experts)[:, 0]
            result.global_experts = decoded.float().cpu().numpy()
        return result
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- figures
def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    return write_figure(fig, path, dpi=100)


def _panel_size(image: np.ndarray) -> tuple[float, float]:
    h, w = image.shape[:2]
    return 3.2, 3.2 * h / max(w, 1) + 0.45


def attention_figure(ins: Inspection, path: Path) -> Path:
    """Infrared, visible, and the attention map as a heat-map over the infrared image."""
    w, h = _panel_size(ins.ir)
    fig, axes = _figure(1, 3, w, h)
    axes[0, 0].imshow(ins.ir, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("infrared")
    axes[0, 1].imshow(ins.vi, cmap="gray", vmin=0, vmax=1)
    axes[0, 1].set_title("visible")
    axes[0, 2].imshow(ins.ir, cmap="gray", vmin=0, vmax=1)
    heat = axes[0, 2].imshow(ins.attention, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0, 2].set_title(f"attention (mean {ins.attention.mean():.2f})")
    fig.colorbar(heat, ax=axes[0, 2], fraction=0.046)
    return _save(fig, path)


def gates_figure(ins: Inspection, path: Path) -> Path:
    """The gate weights of every mixture as bars (selected experts in colour)."""
    from matplotlib.figure import Figure

    names = list(ins.gates)
    fig = Figure(figsize=(3.4 * max(1, len(names)), 3.0))
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        weights = ins.gates[name]
        colors = ["tab:orange" if x > 0 else "lightgray" for x in weights]
        ax.bar(range(1, len(weights) + 1), weights, color=colors)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, len(weights) + 1), [f"E{i}" for i in range(1, len(weights) + 1)])
        ax.set_title(MIXTURE_TITLES.get(name, name))
        for i, x in enumerate(weights, start=1):
            ax.text(i, min(x + 0.03, 0.95), f"{x:.2f}", ha="center", fontsize=8)
    if not names:
        axes[0].text(0.5, 0.5, "this variant has no gates", ha="center")
        axes[0].axis("off")
    return _save(fig, path)


def local_experts_figure(ins: Inspection, path: Path) -> Path | None:
    """Each MoLE expert's foreground and background output (paper Fig. 6); None without MoLE."""
    if not ins.local_experts:
        return None
    n = len(ins.local_modality)
    w, h = _panel_size(ins.ir)
    fig, axes = _figure(2, n, w * 0.8, h * 0.8)
    for row, name in enumerate(("mole_fg", "mole_bg")):
        maps = ins.local_experts[name]
        top = float(np.percentile(maps, 99.5)) or 1.0  # one scale per mixture
        for i in range(n):
            ax = axes[row, i]
            ax.imshow(maps[i], cmap="inferno", vmin=0, vmax=top)
            chosen = "*" if ins.gates[name][i] > 0 else ""
            ax.set_title(
                f"{'FG' if row == 0 else 'BG'} E{i + 1}{chosen} ({ins.local_modality[i][:3]}) "
                f"g={ins.gates[name][i]:.2f}",
                fontsize=8,
            )
    return _save(fig, path)


def global_experts_figure(ins: Inspection, path: Path) -> Path | None:
    """Each MoGE expert's own decoded image next to the fused one; None without MoGE."""
    if ins.global_experts.size == 0:
        return None
    n = ins.global_experts.shape[0]
    w, h = _panel_size(ins.ir)
    fig, axes = _figure(1, n + 1, w * 0.8, h * 0.8)
    for i in range(n):
        chosen = "*" if ins.gates["moge"][i] > 0 else ""
        axes[0, i].imshow(np.clip(ins.global_experts[i], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"MoGE E{i + 1}{chosen} g={ins.gates['moge'][i]:.2f}", fontsize=8)
    axes[0, n].imshow(ins.fused, cmap="gray", vmin=0, vmax=1)
    axes[0, n].set_title("fused", fontsize=8)
    return _save(fig, path)


def save_inspection(ins: Inspection, out: Path) -> dict[str, Path]:
    """Write ``attention.png``, ``gates.png``, ``mole_experts.png``, ``moge_experts.png``
    (the last two when the variant has them) and ``inspection.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {
        "attention": attention_figure(ins, out / "attention.png"),
        "gates": gates_figure(ins, out / "gates.png"),
        "mole_experts": local_experts_figure(ins, out / "mole_experts.png"),
        "moge_experts": global_experts_figure(ins, out / "moge_experts.png"),
        "json": atomic_write_text(
            out / "inspection.json", json.dumps(ins.summary(), indent=1) + "\n"
        ),
    }
    return {k: v for k, v in paths.items() if v is not None}


#: The files :func:`save_inspection` may write.
OUTPUT_FILES: tuple[str, ...] = (
    "attention.png",
    "gates.png",
    "mole_experts.png",
    "moge_experts.png",
    "inspection.json",
)
