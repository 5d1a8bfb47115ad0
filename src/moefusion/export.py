"""Export the inference network (attention branch + fusion network) to ONNX or TorchScript.

The exported graph maps ``ir, vi [B,1,H,W]`` float32 in [0, 1] to ``fused [B,1,H,W]``
clamped to [0, 1] (optionally also the attention map), with dynamic batch, height and
width. Before tracing, a copy of the model is prepared with
:func:`~moefusion.models.prepare_for_export`:

- dense expert dispatch: every expert runs and is weighted by the (top-K, so partly
  zero) gates. Same output as the sparse path, which has data-dependent control flow
  (``nonzero``/``index_select`` per routed sample) that tracing would freeze; it costs
  N/K times the expert convolutions;
- gate pooling through a summed-area table, so the adaptive average pooling is correct
  at every input size (ONNX's pooling ops would fix the bin layout to the traced size).

Gates are computed without noise (eval mode). Both formats are produced by tracing
(``torch.jit.trace``; ONNX through PyTorch's TorchScript-based exporter,
``dynamo=False``): ``torch.export`` (the dynamo exporter) cannot express the
pad-to-multiple-of-32 size relations of the detector input with dynamic H and W. The
example input is deliberately *not* a multiple of 32 so that the padding is traced as
a size-dependent operation rather than skipped.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from moefusion.atomic import atomic_path
from moefusion.errors import MoEFusionError
from moefusion.models import MoEFusion, prepare_for_export

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "InferenceWrapper",
    "check_export",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_exported",
]

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_OPSET = 17
#: Opsets the TorchScript-based ONNX exporter can write this graph in (the summed-area
#: gate pooling needs ``CumSum``, opset 11).
MIN_OPSET, MAX_OPSET = 11, 20
#: Trace input ``[B, 1, H, W]``: batch > 1 and sizes that are neither multiples of 32
#: (detector padding) nor of the gate grid, so nothing size-specific is frozen.
TRACE_SHAPE = (2, 1, 77, 123)


class InferenceWrapper(nn.Module):
    """Tensor-in/tensor-out inference model for tracing.

    Args:
        model: a trained :class:`MoEFusion`; a prepared (dense, export-friendly) copy is
            kept, the original is not modified.
        with_attention: also return the attention map.

    Shapes:
        ``forward(ir [B,1,H,W], vi [B,1,H,W])`` -> ``fused [B,1,H,W]`` in [0, 1], or
        ``(fused, attention [B,1,H,W])`` with ``with_attention``.
    """

    def __init__(self, model: MoEFusion, *, with_attention: bool = False) -> None:
        super().__init__()
        self.model = prepare_for_export(copy.deepcopy(model).cpu().eval())
        self.with_attention = with_attention
        self.eval()

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.model(ir, vi)
        fused = out.fused.clamp(0.0, 1.0)
        if self.with_attention:
            return fused, out.attention
        return fused


def _example(shape: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    shape = TRACE_SHAPE if shape is None else shape
    g = torch.Generator().manual_seed(0)
    return torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing warns about every shape check it freezes and about its own deprecation;
    those are expected here (the checks are constant for valid input)."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, FutureWarning, UserWarning, DeprecationWarning):
            warnings.simplefilter("ignore", category)
        yield


@contextlib.contextmanager
def _no_graph_dump() -> Iterator[None]:
    """The TorchScript-based exporter dumps the whole graph (~1,700 lines) to stderr when
    it fails (its ONNX log is always on: ``setup_onnx_logging`` tests a function object
    for truth); silence that log, the one-line error says what went wrong."""
    original = getattr(torch._C, "_jit_onnx_log", None)
    if original is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = original


def check_opset(opset: int) -> None:
    """Raise :class:`MoEFusionError` unless ``opset`` is in ``MIN_OPSET..MAX_OPSET``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MoEFusionError(
            f"ONNX opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} "
            f"(default {DEFAULT_OPSET})"
        )


def check_weights_finite(model: nn.Module) -> None:
    """Refuse to export a model whose parameters or buffers hold NaN or infinite values."""
    bad = [
        name
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise MoEFusionError(
            f"the model has NaN or infinite weights ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); nothing was exported"
        )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception message (the exporter appends whole graphs)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def export_torchscript(model: MoEFusion, path: str | Path, *, with_attention: bool = False) -> Path:
    """Trace the inference model and save it as TorchScript (load with ``torch.jit.load``).

    The file is written to a temporary name beside ``path`` and renamed when complete.
    """
    path = Path(path)
    check_weights_finite(model)
    wrapper = InferenceWrapper(model, with_attention=with_attention)
    try:
        with _quiet_tracing(), torch.no_grad(), atomic_path(path) as tmp:
            traced = torch.jit.trace(wrapper, _example(), check_trace=False)
            torch.jit.save(traced, str(tmp))
    except (RuntimeError, ValueError, OSError) as exc:
        raise MoEFusionError(f"TorchScript export failed: {_first_line(exc)}") from exc
    return path


def export_onnx(
    model: MoEFusion,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    with_attention: bool = False,
) -> Path:
    """Export to ONNX with dynamic batch, height and width (inputs ``ir``, ``vi``;
    outputs ``fused`` and, with ``with_attention``, ``attention``).

    The file is written to a temporary name beside ``path`` and renamed when complete.
    """
    path = Path(path)
    check_opset(opset)
    check_weights_finite(model)
    wrapper = InferenceWrapper(model, with_attention=with_attention)
    outputs = ["fused", "attention"] if with_attention else ["fused"]
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with _quiet_tracing(), _no_graph_dump(), torch.no_grad(), atomic_path(path) as tmp:
            torch.onnx.export(
                wrapper,
                _example(),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["ir", "vi"],
                output_names=outputs,
                dynamic_axes={name: axes for name in ["ir", "vi", *outputs]},
            )
    except Exception as exc:  # the exporter raises many types; report them as one
        raise MoEFusionError(f"ONNX export failed (opset {opset}): {_first_line(exc)}") from exc
    return path


def export_model(
    model: MoEFusion,
    path: str | Path,
    fmt: str,
    *,
    opset: int = DEFAULT_OPSET,
    with_attention: bool = False,
) -> Path:
    """Export in ``fmt`` (one of :data:`EXPORT_FORMATS`)."""
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, with_attention=with_attention)
    if fmt == "torchscript":
        return export_torchscript(model, path, with_attention=with_attention)
    raise MoEFusionError(f"unknown export format {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")


def load_exported(
    path: str | Path, fmt: str
) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    """A function running an exported file on ``[B,1,H,W]`` float32 arrays -> its outputs.

    ONNX runs in onnxruntime on the CPU; TorchScript on the CPU.
    """
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MoEFusionError("onnxruntime is not installed (pip install onnxruntime)") from exc
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(ir: np.ndarray, vi: np.ndarray) -> list[np.ndarray]:
            return list(session.run(None, {"ir": ir, "vi": vi}))

        return run_onnx
    if fmt == "torchscript":
        with _quiet_tracing():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(ir: np.ndarray, vi: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                out = module(torch.from_numpy(ir), torch.from_numpy(vi))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return [o.numpy() for o in outs]

        return run_ts
    raise MoEFusionError(f"unknown export format {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")


def check_export(
    model: MoEFusion,
    path: str | Path,
    fmt: str,
    sizes: Sequence[tuple[int, int]] = ((64, 96), (77, 123)),
) -> float:
    """Largest absolute difference between the exported file and PyTorch on random pairs.

    Compares the fused output (clamped) at each ``(H, W)`` of ``sizes``, batch 1.
    """
    run = load_exported(path, fmt)
    reference = copy.deepcopy(model).cpu().eval()
    worst = 0.0
    for height, width in sizes:
        ir, vi = _example((1, 1, height, width))
        with torch.inference_mode():
            want = reference(ir, vi).fused.clamp(0.0, 1.0).numpy()
        got = run(ir.numpy(), vi.numpy())[0]
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
