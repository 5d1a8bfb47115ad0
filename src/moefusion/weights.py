"""Inference weights as one safetensors file that carries its own model config.

The file holds :meth:`MoEFusion.inference_state_dict` (fusion network plus the attention
branch: both backbones, FPNs, cross-modal mixing and spatial attention; no RPN/RoI
heads) and, in its metadata, the model config as JSON under ``"moefusion_config"``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moefusion.atomic import atomic_path
from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion, MoEFusionConfig

#: How many offending tensor names an error lists.
_LISTED = 3

CONFIG_KEY = "moefusion_config"
BUNDLED_WEIGHTS = "moefusion-cpu-v6.safetensors"
#: The resolved run config the bundled weights were trained with, shipped beside them.
BUNDLED_RUN_CONFIG = BUNDLED_WEIGHTS.removesuffix(".safetensors") + ".config.yaml"


def save_weights(
    model: MoEFusion, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s inference weights and config to ``path`` (safetensors).

    Written to a temporary file beside ``path`` and renamed when complete.

    Raises:
        MoEFusionError: a weight is NaN or infinite (such a file could only fuse garbage).
    """
    path = Path(path)
    # own copies: safetensors refuses tensors that share memory (a model from
    # load_weights keeps its parameters in one buffer)
    state = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.inference_state_dict().items()
    }
    check_finite(state, f"model to be saved as {path}")
    zero_subnormals(state)
    meta = {CONFIG_KEY: json.dumps(model.config.to_dict()), "format": "moefusion-inference-v1"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def zero_subnormals(state: Mapping[str, torch.Tensor]) -> int:
    """Set the subnormal entries of ``state``'s float tensors to 0, in place; returns how many.

    Weight decay leaves some weights of rarely chosen experts and gates below float32's
    smallest normal magnitude (1.2e-38). On x86 CPUs every multiply with such a value
    takes a slow microcode path: the bundled v4 weights held 15 429 of them and fused a
    640x480 pair in 7.3 s instead of 0.83 s with those entries at 0 (docs/fuse.md). At that
    magnitude the product with any image value is far below float32's resolution of the
    sums it enters, so zeroing them does not change the fused images (tested).
    """
    count = 0
    with torch.no_grad():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                tiny = value.abs() < torch.finfo(value.dtype).tiny
                tiny &= value != 0
                if bool(tiny.any()):
                    count += int(tiny.sum())
                    value.masked_fill_(tiny, 0.0)
    return count


def check_finite(state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise :class:`MoEFusionError` naming the tensors that hold NaN or infinite values."""
    floats = [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats:
        return
    # one call over all tensors (a norm is finite unless some value is NaN/inf, or it
    # overflows); the per-tensor search only when that fails
    with torch.no_grad():
        norms = torch._foreach_norm([v.detach() for v in floats])
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return
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

    A Lightning training checkpoint (``.ckpt``, a zip archive) is accepted too, so a run
    can be fused from before it has finished: its model is rebuilt from the config it
    stores (:func:`load_checkpoint_model`), with the same finiteness check and subnormal
    clean-up as a weights file. Unpickling runs code: load only your own checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise MoEFusionError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        model = load_checkpoint_model(path)
        state = model.state_dict()
        check_finite(state, f"checkpoint {path}")
        zero_subnormals(state)
        return model.to(device).eval()
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
    with torch.device("meta"), _skip_init():
        model = MoEFusion(config, with_heads=False, lean_backbones=True)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise MoEFusionError(
            f"cannot read weights file {path} (truncated or corrupt?): {exc}"
        ) from exc
    check_finite(state, f"weights file {path}")
    zero_subnormals(state)
    try:
        _assign(model, state, path)
        _materialize(model)
    except MoEFusionError as exc:
        raise MoEFusionError(f"weights file {path}: {exc}") from exc
    return model.to(device).eval()


_init_lock = threading.Lock()
_init_local = threading.local()


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Module construction without the default initialisation (``reset_parameters`` of
    convolutions, linears and batch norms) in this thread: for a model built on the
    meta device whose weights are then loaded, initialising is only Python overhead.
    Other threads constructing modules meanwhile initialise them as usual."""
    classes = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase)

    def skipping(original: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
        def reset_parameters(self: nn.Module) -> None:
            if not getattr(_init_local, "skip", False):
                original(self)

        return reset_parameters

    with _init_lock:
        saved = [(c, c.__dict__["reset_parameters"]) for c in classes]
        for c, method in saved:
            c.reset_parameters = skipping(method)  # type: ignore[method-assign]
        _init_local.skip = True
        try:
            yield
        finally:
            _init_local.skip = False
            for c, method in saved:
                c.reset_parameters = method  # type: ignore[method-assign]


def _assign(model: MoEFusion, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Make ``state``'s tensors ``model``'s parameters and buffers (``load_state_dict(...,
    assign=True)`` for a meta-device model, with the checks it needs and without its
    per-module overhead): every key must exist with the same shape, none may be missing.

    safetensors' tensors sit at arbitrary (4-byte) offsets; some CPU kernels round
    differently on such data, so the float tensors are copied to 64-byte aligned places
    (:func:`_aligned_copies`), and the results are bit for bit those of a model whose
    parameters were copied into.
    """
    modules = dict(model.named_modules())
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for leaf, t in module._parameters.items():
            if t is not None:
                slots[prefix + leaf] = (module, leaf, True)
        for leaf, t in module._buffers.items():
            if t is not None and leaf not in module._non_persistent_buffers_set:
                slots[prefix + leaf] = (module, leaf, False)
    unexpected = [k for k in state if k not in slots]
    missing = [k for k in slots if k not in state]
    if unexpected or missing:
        raise MoEFusionError(
            f"weights do not match the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    wrong = []
    for k, v in state.items():
        module, leaf, _ = slots[k]
        own = (module._parameters if slots[k][2] else module._buffers)[leaf]
        assert own is not None
        if tuple(own.shape) != tuple(v.shape):
            wrong.append(f"{k} is {list(v.shape)} but the model needs {list(own.shape)}")
    if wrong:
        more = f" (+{len(wrong) - _LISTED} more)" if len(wrong) > _LISTED else ""
        raise MoEFusionError(
            f"the file does not match the model config in its own metadata: "
            f"{len(wrong)} tensor(s) have the wrong shape ({'; '.join(wrong[:_LISTED])}{more})"
        )
    floats = [k for k, v in state.items() if v.dtype == torch.float32]
    copies = dict(zip(floats, _aligned_copies([state[k] for k in floats]), strict=True))
    for k, v in state.items():
        module, leaf, is_param = slots[k]
        value = copies.get(k, v)  # the rest: BatchNorm counters, unused at inference
        if is_param:
            old = module._parameters[leaf]
            assert old is not None
            module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
        else:
            module._buffers[leaf] = value


#: alignment of every copied tensor, in float32 elements (64 bytes, a cache line)
_ALIGN = 16


def _aligned_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of float32 ``tensors`` in one buffer, each starting on a 64-byte boundary
    (one concatenation instead of a copy per tensor)."""
    if not tensors:
        return []
    pad = torch.zeros(_ALIGN)
    pieces: list[torch.Tensor] = []
    offsets = []
    offset = 0
    for t in tensors:
        n = t.numel()
        offsets.append(offset)
        pieces.append(t.reshape(-1))
        extra = -n % _ALIGN
        if extra:
            pieces.append(pad[:extra])
        offset += n + extra
    flat = torch.cat(pieces)
    return [flat[o : o + t.numel()].view(t.shape) for o, t in zip(offsets, tensors, strict=True)]


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
