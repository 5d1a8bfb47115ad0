"""Inference weights as one safetensors file that carries its own model config.

The file holds :meth:`MoEFusion.inference_state_dict` (fusion network plus the attention
branch: both backbones, FPNs, cross-modal mixing and spatial attention; no RPN/RoI
heads) and, in its metadata, the model config as JSON under ``"moefusion_config"``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moefusion.atomic import atomic_path
from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion, MoEFusionConfig

#: How many offending tensor names an error lists.
_LISTED = 3

CONFIG_KEY = "moefusion_config"
BUNDLED_WEIGHTS = "moefusion-cpu-v2.safetensors"


def save_weights(
    model: MoEFusion, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s inference weights and config to ``path`` (safetensors).

    Written to a temporary file beside ``path`` and renamed when complete.

    Raises:
        MoEFusionError: a weight is NaN or infinite (such a file could only fuse garbage).
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.inference_state_dict().items()}
    check_finite(state, f"model to be saved as {path}")
    meta = {CONFIG_KEY: json.dumps(model.config.to_dict()), "format": "moefusion-inference-v1"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def check_finite(state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise :class:`MoEFusionError` naming the tensors that hold NaN or infinite values."""
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]
    if bad:
        more = f" (+{len(bad) - _LISTED} more)" if len(bad) > _LISTED else ""
        raise MoEFusionError(
            f"{origin}: {len(bad)} weight tensor(s) hold NaN or infinite values "
            f"({', '.join(bad[:_LISTED])}{more}); the weights are corrupt (a diverged "
            "training run?)"
        )


def _check_shapes(model: MoEFusion, state: Mapping[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    wrong = [
        f"{k} is {list(v.shape)} but the model needs {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        more = f" (+{len(wrong) - _LISTED} more)" if len(wrong) > _LISTED else ""
        raise MoEFusionError(
            f"weights file {path} does not match the model config in its own metadata: "
            f"{len(wrong)} tensor(s) have the wrong shape ({'; '.join(wrong[:_LISTED])}{more})"
        )


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise MoEFusionError(
            f"cannot read weights file {path} (truncated or corrupt?): {exc}"
        ) from exc


def load_weights(path: str | Path, *, device: str | torch.device = "cpu") -> MoEFusion:
    """Build the model described by the file's metadata and load its weights (eval mode).

    The model is built on the meta device (no memory, no random initialisation that the
    weights would overwrite) with the torchvision-free backbones of
    :mod:`moefusion.models.backbones` (same keys and outputs as torchvision's, without
    importing torchvision), and the file's tensors become its parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise MoEFusionError(f"weights file not found: {path}")
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise MoEFusionError(
            f"{path} has no moefusion model config in its metadata; "
            "was it written by moefusion (train/export)?"
        )
    try:
        config = MoEFusionConfig.from_dict(json.loads(meta[CONFIG_KEY]))
    except (ValueError, TypeError, KeyError, MoEFusionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MoEFusionError(
            f"weights file {path}: bad model config in its metadata: {msg}"
        ) from exc
    with torch.device("meta"):
        model = MoEFusion(config, with_heads=False, lean_backbones=True)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise MoEFusionError(
            f"cannot read weights file {path} (truncated or corrupt?): {exc}"
        ) from exc
    check_finite(state, f"weights file {path}")
    _check_shapes(model, state, path)
    # safetensors' tensors sit at arbitrary offsets of one buffer; some CPU kernels round
    # differently on unaligned data, so each gets its own (aligned) copy: the outputs are
    # then bit for bit those of a model whose parameters were copied into
    state = {k: v.clone() for k, v in state.items()}
    try:
        model.load_inference_state_dict(state, assign=True)
        _materialize(model)
    except MoEFusionError as exc:
        raise MoEFusionError(f"weights file {path}: {exc}") from exc
    except RuntimeError as exc:  # anything load_state_dict still refuses
        first = str(exc).strip().splitlines()
        raise MoEFusionError(
            f"weights file {path} does not fit the model: {first[-1] if first else exc}"
        ) from exc
    return model.to(device).eval()


def _materialize(model: MoEFusion) -> None:
    """After loading into a meta-device model: recreate its constants; anything else
    still on the meta device was missing from the file."""
    model.attention.reset_constants()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        more = f" (+{len(left) - _LISTED} more)" if len(left) > _LISTED else ""
        raise MoEFusionError(f"missing tensor(s) {', '.join(left[:_LISTED])}{more}")


def bundled_weights_path() -> Path | None:
    """The weights shipped inside the package, or None when this build has none."""
    resource = resources.files("moefusion") / "pretrained" / BUNDLED_WEIGHTS
    return Path(str(resource)) if resource.is_file() else None


def check_training_checkpoint(path: str | Path) -> Path:
    """Make sure ``path`` looks like a complete training checkpoint, cheaply.

    A ``torch.save`` file is a zip archive whose directory sits at its end, so a
    truncated download or an interrupted copy is found without unpickling anything.

    Raises:
        MoEFusionError: missing file, a safetensors (inference weights) file, a truncated
            or corrupt file, or a zip that is not a torch checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise MoEFusionError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise MoEFusionError(f"checkpoint {p} is empty (0 bytes)")
    if p.suffix.lower() == ".safetensors" or _looks_like_safetensors(p):
        raise MoEFusionError(
            f"{p} is a safetensors file (inference weights for fuse/export), not a training "
            "checkpoint; resume from <run>/checkpoints/last.ckpt (or an epochNNN.ckpt)"
        )
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise MoEFusionError(
            f"checkpoint {p} is truncated or corrupt ({exc}); resume from an earlier "
            "epochNNN.ckpt in the same folder"
        ) from exc
    if not any(n.endswith("data.pkl") for n in names):
        raise MoEFusionError(f"{p} is a zip archive but not a PyTorch checkpoint")
    return p


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header size and a JSON '{'."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def load_checkpoint_model(ckpt_path: str | Path) -> MoEFusion:
    """The model of a Lightning training checkpoint (``.ckpt``), in eval mode."""
    check_training_checkpoint(ckpt_path)
    try:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise MoEFusionError(f"cannot read checkpoint {ckpt_path}: {exc}") from exc
    try:
        config = ckpt["hyper_parameters"]["config"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as exc:
        raise MoEFusionError(f"{ckpt_path} is not a moefusion training checkpoint") from exc
    model = MoEFusion(MoEFusionConfig.from_dict(config["model"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()
