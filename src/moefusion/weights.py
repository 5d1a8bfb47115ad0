"""Inference weights as one safetensors file that carries its own model config.

The file holds :meth:`MoEFusion.inference_state_dict` (fusion network plus the attention
branch: both backbones, FPNs, cross-modal mixing and spatial attention; no RPN/RoI
heads) and, in its metadata, the model config as JSON under ``"moefusion_config"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion, MoEFusionConfig

CONFIG_KEY = "moefusion_config"
BUNDLED_WEIGHTS = "moefusion-cpu-v1.safetensors"


def save_weights(
    model: MoEFusion, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s inference weights and config to ``path`` (safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.inference_state_dict().items()}
    meta = {CONFIG_KEY: json.dumps(model.config.to_dict()), "format": "moefusion-inference-v1"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    save_file(state, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise MoEFusionError(f"cannot read weights file {path}: {exc}") from exc


def load_weights(path: str | Path, *, device: str | torch.device = "cpu") -> MoEFusion:
    """Build the model described by the file's metadata and load its weights (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise MoEFusionError(f"weights file not found: {path}")
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise MoEFusionError(
            f"{path} has no moefusion model config in its metadata; "
            "was it written by moefusion (train/export)?"
        )
    config = MoEFusionConfig.from_dict(json.loads(meta[CONFIG_KEY]))
    model = MoEFusion(config, with_heads=False)
    model.load_inference_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()


def bundled_weights_path() -> Path | None:
    """The weights shipped inside the package, or None when this build has none."""
    resource = resources.files("moefusion") / "pretrained" / BUNDLED_WEIGHTS
    return Path(str(resource)) if resource.is_file() else None


def load_checkpoint_model(ckpt_path: str | Path) -> MoEFusion:
    """The model of a Lightning training checkpoint (``.ckpt``), in eval mode."""
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    try:
        config = ckpt["hyper_parameters"]["config"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as exc:
        raise MoEFusionError(f"{ckpt_path} is not a moefusion training checkpoint") from exc
    model = MoEFusion(MoEFusionConfig.from_dict(config["model"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()
