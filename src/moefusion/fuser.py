"""The Python fusion API: :class:`Fuser` turns image pairs into fused images.

Example::

    from moefusion import Fuser

    fuser = Fuser.from_file("weights.safetensors")         # or Fuser.pretrained()
    fused = fuser.fuse(ir_array, vi_array)                  # HxW float32 in [0, 1]
    rgb = fuser.fuse_color(ir_array, vi_rgb_array)          # HxWx3 float32 in [0, 1]
    res = fuser.fuse(ir, vi, return_details=True)           # FusionResult (gates, attention)
    many = fuser.fuse([ir1, ir2], [vi1, vi2], batch_size=2) # list of HxW arrays

Inputs may be numpy arrays (``HxW``, ``HxWx1``, ``HxWx3`` RGB or ``HxWx4`` RGBA; uint8,
uint16 or float in [0, 1]), PIL images (EXIF orientation applied) or torch tensors
(``[H,W]``, ``[C,H,W]`` or a batch ``[B,C,H,W]``, C in 1/3/4, float in [0, 1] or uint8).
Colour becomes gray with the BT.601 luma (as :func:`moefusion.data.to_gray`), alpha is
dropped and 16-bit data is normalised with ``high_bit`` (see
:func:`moefusion.data.to_unit_float`). Float values outside [0, 1] (e.g. 0-255 data
kept as float) are clipped, with a warning. PIL images are decoded by
:func:`moefusion.data.decode_pil`, the decoder the command line uses for files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from moefusion.data import colorize, decode_pil, same_size_batches, to_gray, to_unit_float

# one device resolver for the API and the commands (re-exported for `from moefusion.fuser`)
from moefusion.devices import resolve_device
from moefusion.errors import MoEFusionError, PairError
from moefusion.models import MoEFusion
from moefusion.models.inference import FastMoEFusion, check_precision
from moefusion.tiling import (
    AUTO_TILE,
    available_memory,
    default_overlap,
    estimate_fuse_bytes,
    fuse_tiled,
    pool_tiled,
    tile_grid,
    validate_tiling,
)

__all__ = [
    "AUTO_TILE",
    "FusionResult",
    "Fuser",
    "ImageInput",
    "available_memory",
    "estimate_fuse_bytes",
    "resolve_device",
    "to_unit_image",
]

#: One image as accepted by :meth:`Fuser.fuse`.
ImageInput = np.ndarray | Image.Image | Tensor


@dataclass
class FusionResult:
    """One fused pair with what the network decided.

    Attributes:
        fused: ``HxW`` float32 in [0, 1] (clamped).
        gates: ``{"mole_fg", "mole_bg", "moge"} -> [N]`` float32 gate weights (only the
            gates the model variant has): K non-zeros summing to 1. Tiled: the whole
            image's decisions, shared by every tile (see :meth:`Fuser.fuse`).
        attention: ``HxW`` float32 attention map in (0, 1) that guided the local experts.
        color: ``HxWx3`` float32 RGB (the visible image's colour with the fused
            luminance) when colour was requested, else None.
        tiles: number of tiles the pair was fused in (1 = whole image).
        tile_gates: per-tile gates (tiled runs only), in row-major tile order; each
            equals ``gates`` (the tiles share the whole image's decisions).
    """

    fused: np.ndarray
    gates: dict[str, np.ndarray]
    attention: np.ndarray
    color: np.ndarray | None = None
    tiles: int = 1
    tile_gates: list[dict[str, np.ndarray]] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs


def _tensor_to_array(t: Tensor) -> np.ndarray:
    """``[H,W]`` or ``[C,H,W]`` tensor -> ``HxW`` / ``HxWxC`` array (same dtype family)."""
    t = t.detach().cpu()
    if t.dim() == 3:
        t = t.permute(1, 2, 0)
    elif t.dim() != 2:
        raise MoEFusionError(f"expected a [H,W] or [C,H,W] tensor, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint16:
        return t.to(torch.int32).numpy().astype(np.uint16)
    if t.dtype.is_floating_point:
        return t.float().numpy()
    if t.dtype == torch.uint8:
        return t.numpy()
    raise MoEFusionError(f"unsupported tensor dtype {t.dtype}: use float in [0, 1] or uint8")


def to_unit_image(image: ImageInput, *, high_bit: str = "percentile") -> np.ndarray:
    """Any accepted single image -> float32 in [0, 1], ``HxW`` or ``HxWx3`` (RGB).

    Float input already in [0, 1] as float32 is returned without a copy (large tiled
    inputs stay single).

    Raises:
        MoEFusionError: unsupported type, shape or dtype.
    """
    if isinstance(image, Image.Image):
        arr = decode_pil(image)
    elif isinstance(image, Tensor):
        arr = _tensor_to_array(image)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise MoEFusionError(
            f"unsupported image type {type(image).__name__}: use a numpy array, PIL image or tensor"
        )
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., 0] if arr.shape[2] == 1 else arr[..., :3]
    elif arr.ndim != 2:
        raise MoEFusionError(
            f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {tuple(arr.shape)}"
        )
    if arr.dtype == np.float32 and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise MoEFusionError("image contains NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            hint = " (0-255 data? pass uint8, or divide by 255)" if hi > 1.5 else ""
            warnings.warn(
                f"float image values span [{lo:g}, {hi:g}] but are read as [0, 1]: values "
                f"outside are clipped{hint}",
                UserWarning,
                stacklevel=4,
            )
    return to_unit_float(arr, high_bit=high_bit)


def _split_batch(x: Any) -> list[Any] | None:
    """The items of a batched input (list/tuple or ``[B,C,H,W]`` tensor), else None."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, Tensor) and x.dim() == 4:
        return list(x.unbind(0))
    return None


@dataclass
class _Prepared:
    ir: np.ndarray  # HxW float32
    vi: np.ndarray  # HxW float32
    vi_rgb: np.ndarray | None  # HxWx3 float32 when colour is wanted


# ------------------------------------------------------------------------------ fuser


class Fuser:
    """Inference wrapper around a :class:`~moefusion.models.MoEFusion`.

    Args:
        model: the network (put in eval mode: no gate noise, BatchNorm statistics frozen).
        device: ``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"`` (CUDA) for the
            attention branch, the local experts and the first global-expert layer
            (:mod:`moefusion.models.inference`; within one grey level of fp32 on the
            samples, faster where the hardware has fast half-precision arithmetic).
        optimize: run :class:`~moefusion.models.inference.FastMoEFusion` (BatchNorm
            folded, concatenation-free encoders: the model's results up to float
            rounding); False runs ``model`` itself (the plain reference path, fp32 only).
            The attention branch's weights are read once, here.

    All calls run under :func:`torch.inference_mode`.
    """

    def __init__(
        self,
        model: MoEFusion,
        device: str | torch.device = "auto",
        *,
        precision: str = "fp32",
        optimize: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.precision = check_precision(precision, self.device)
        if not optimize and precision != "fp32":
            raise MoEFusionError("precision other than fp32 needs optimize=True")
        self._runner: torch.nn.Module = (
            FastMoEFusion(self.model, precision).eval() if optimize else self.model
        )

    # -------------------------------------------------------------- constructors
    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "auto", **kwargs: Any
    ) -> Fuser:
        """Load safetensors weights written by ``save_weights`` / ``moefusion train``
        (``kwargs``: ``precision``, ``optimize``)."""
        from moefusion.weights import load_weights

        dev = resolve_device(device)
        return cls(load_weights(path, device=dev), dev, **kwargs)

    @classmethod
    def pretrained(cls, device: str | torch.device = "auto", **kwargs: Any) -> Fuser:
        """The weights bundled with this package (``kwargs`` as :meth:`from_file`).

        Raises:
            MoEFusionError: this build ships no weights.
        """
        from moefusion.weights import bundled_weights_path

        path = bundled_weights_path()
        if path is None:
            raise MoEFusionError(
                "this moefusion build has no bundled weights; use Fuser.from_file(PATH) "
                "with a .safetensors file written by `moefusion train` or save_weights()"
            )
        return cls.from_file(path, device, **kwargs)

    # ---------------------------------------------------------------------- API
    def fuse(
        self,
        ir: ImageInput | Sequence[ImageInput],
        vi: ImageInput | Sequence[ImageInput],
        *,
        return_details: bool = False,
        color: bool = False,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int = 1,
        high_bit: str = "percentile",
    ) -> Any:
        """Fuse one pair, or a batch of pairs.

        Args:
            ir, vi: one image each, or equally long lists (or ``[B,C,H,W]`` tensors).
            return_details: return :class:`FusionResult` objects instead of arrays.
            color: return the colourised RGB fused image (the visible image's YCbCr
                with Y replaced by the fused image) instead of the gray one.
            tile: fuse in overlapping ``tile x tile`` tiles (bounded memory for large
                images; see :mod:`moefusion.tiling`). None: the whole image at once.
                The gates decide once for the whole image, from their pooled inputs
                gathered in a first pass over the tiles, and every tile is fused with
                those decisions (:meth:`shared_gates`); only the attention map stays
                per tile.
            overlap: tile overlap in pixels (default ``tile // 4``).
            batch_size: pairs of the same size run through the network together.
            high_bit: normalisation of 16-bit inputs (see ``to_unit_float``).

        Returns:
            one pair: ``HxW`` float32 in [0, 1] (``HxWx3`` with ``color``), or a
            :class:`FusionResult` with ``return_details``; a batch: a list of those.

        Raises:
            MoEFusionError: unsupported inputs, pair size mismatch, bad tiling options.
        """
        ir_items, vi_items = _split_batch(ir), _split_batch(vi)
        batched = ir_items is not None or vi_items is not None
        if batched:
            if ir_items is None or vi_items is None or len(ir_items) != len(vi_items):
                raise MoEFusionError("ir and vi must both be single images or equally long batches")
        else:
            ir_items, vi_items = [ir], [vi]
        assert ir_items is not None and vi_items is not None
        if batch_size < 1:
            raise MoEFusionError(f"batch_size must be >= 1, got {batch_size}")
        if tile is not None:
            try:
                validate_tiling(tile, default_overlap(tile) if overlap is None else overlap)
            except ValueError as exc:
                raise MoEFusionError(str(exc)) from exc

        prepared = [
            self._prepare(a, b, i, color=color, high_bit=high_bit)
            for i, (a, b) in enumerate(zip(ir_items, vi_items, strict=True))
        ]
        results = self._fuse_prepared(
            prepared, tile=tile, overlap=overlap, batch_size=batch_size, details=return_details
        )
        outputs: list[Any] = []
        for prep, res in zip(prepared, results, strict=True):
            if color:
                assert prep.vi_rgb is not None
                res.color = colorize(res.fused, prep.vi_rgb)
            if return_details:
                outputs.append(res)
            else:
                outputs.append(res.color if color else res.fused)
        return outputs if batched else outputs[0]

    def fuse_color(
        self,
        ir: ImageInput | Sequence[ImageInput],
        vi: ImageInput | Sequence[ImageInput],
        **kwargs: Any,
    ) -> Any:
        """:meth:`fuse` with ``color=True``: ``HxWx3`` float32 RGB in [0, 1]."""
        return self.fuse(ir, vi, color=True, **kwargs)

    def fuse_arrays(
        self,
        ir: Sequence[np.ndarray],
        vi: Sequence[np.ndarray],
        *,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int = 1,
        details: bool = False,
    ) -> list[FusionResult]:
        """Lower-level :meth:`fuse` for pre-normalised ``HxW`` float32 [0, 1] gray arrays.

        Used by the CLI, which decodes files itself. Results always come as
        :class:`FusionResult`; without ``details`` their ``gates`` and ``attention`` are
        empty (``{}`` and a ``0x0`` array) to save the copies.
        """
        prepared = [
            _Prepared(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), None)
            for a, b in zip(ir, vi, strict=True)
        ]
        for i, p in enumerate(prepared):
            self._check_pair(p, i)
        return self._fuse_prepared(
            prepared, tile=tile, overlap=overlap, batch_size=batch_size, details=details
        )

    def temporal_smoothing(self, factor: float) -> Any:
        """A context manager: inside its ``with`` block, every gate's logits are an
        exponential moving average over successive frames (one row of one call = one
        frame; factor 0: no smoothing). It yields the
        :class:`moefusion.temporal.GateSmoother` (``reset()`` at a cut)."""
        from moefusion.temporal import GateSmoother

        return GateSmoother(factor).attached(self.model)

    def untiled_memory(self, height: int, width: int, batch: int = 1) -> tuple[int, int | None]:
        """``(bytes an untiled pass of batch x height x width needs, bytes available on the
        device or None if unknown)``; see :func:`~moefusion.tiling.estimate_fuse_bytes`."""
        need = estimate_fuse_bytes(height, width, batch, self.model, self.device)
        return need, available_memory(self.device)

    def auto_tile(self, height: int, width: int, batch: int = 1) -> int | None:
        """:data:`~moefusion.tiling.AUTO_TILE` when ``batch`` untiled ``height x width``
        pairs would not fit in the available memory (and the image is larger than one
        tile), else None: fuse untiled."""
        need, have = self.untiled_memory(height, width, batch)
        if have is None or need <= have or min(height, width) <= AUTO_TILE:
            return None
        return AUTO_TILE

    # --------------------------------------------------------------- internals
    @staticmethod
    def _check_pair(p: _Prepared, index: int) -> None:
        if p.ir.shape != p.vi.shape or p.ir.ndim != 2:
            raise PairError(
                f"pair {index}: infrared is {_size(p.ir)} but visible is {_size(p.vi)} "
                "(width x height); resize one of them first"
            )

    def _prepare(
        self, ir: ImageInput, vi: ImageInput, index: int, *, color: bool, high_bit: str
    ) -> _Prepared:
        ir01 = to_unit_image(ir, high_bit=high_bit)
        vi01 = to_unit_image(vi, high_bit=high_bit)
        ir_gray = to_gray(ir01) if ir01.ndim == 3 else ir01
        vi_gray = to_gray(vi01) if vi01.ndim == 3 else vi01
        rgb = None
        if color:
            rgb = vi01 if vi01.ndim == 3 else np.repeat(vi01[..., None], 3, axis=2)
        p = _Prepared(ir_gray, vi_gray, rgb)
        self._check_pair(p, index)
        return p

    def _fuse_prepared(
        self,
        prepared: Sequence[_Prepared],
        *,
        tile: int | None,
        overlap: int | None,
        batch_size: int,
        details: bool,
    ) -> list[FusionResult]:
        """Fuse checked pairs, batching same-size neighbours, in input order."""
        results: list[FusionResult | None] = [None] * len(prepared)
        for chunk in same_size_batches([p.ir.shape for p in prepared], batch_size):
            out = self._run_batch(
                [prepared[i] for i in chunk], tile=tile, overlap=overlap, details=details
            )
            for i, r in zip(chunk, out, strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _forward(
        self, ir: Tensor, vi: Tensor, gates: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if gates:
            out = self._runner(ir.to(self.device), vi.to(self.device), gates=gates)
        else:
            out = self._runner(ir.to(self.device), vi.to(self.device))
        return out.fused, out.attention, out.gates

    @torch.inference_mode()
    def shared_gates(
        self, ir: Tensor, vi: Tensor, tile: int, overlap: int | None = None
    ) -> dict[str, Tensor]:
        """The whole image's gate decisions, computed with one tile's memory.

        The gates see only their input averaged over a fixed grid: a first pass over the
        tiles of :func:`~moefusion.tiling.tile_grid` accumulates those averages
        (:func:`~moefusion.tiling.pool_tiled`, each pixel taken from the tile whose core
        holds it), then every gate decides once (:meth:`FusionNetwork.decide_gates
        <moefusion.models.FusionNetwork.decide_gates>`; a ``"log"``-combined model needs a
        second pass for MoGE). The pass runs the attention branch, the encoders and the
        local experts, not the global experts. The decisions equal the untiled ones up
        to the attention map, which each tile computes from its own content.

        Args:
            ir, vi: ``[B, 1, H, W]`` float32 in [0, 1] (any device).
            tile, overlap: as :meth:`fuse`.

        Returns:
            ``{name: [B, N]}`` on the fuser's device, every gate of the model; ``{}`` when
            the image is a single tile (it is then fused whole, as without ``tile``).
        """
        overlap = default_overlap(tile) if overlap is None else overlap
        height, width = ir.shape[-2:]
        if len(tile_grid(height, width, tile, overlap)) == 1:
            return {}
        fusion = self.model.fusion
        runner = self._runner
        wanted = set(fusion.gate_sizes)
        decided: dict[str, Tensor] = {}
        while wanted - set(decided):

            def stats(
                a: Tensor, b: Tensor, pool: Any, known: dict[str, Tensor] = decided
            ) -> dict[str, list[Tensor]]:
                return runner.gate_statistics(  # type: ignore[operator]
                    a.to(self.device), b.to(self.device), pool, known
                )

            pooled = pool_tiled(stats, ir, vi, tile, overlap, fusion.gate_grid)
            moved = {k: [t.to(self.device) for t in v] for k, v in pooled.items()}
            now = fusion.decide_gates(moved, decided)
            if len(now) == len(decided):
                raise MoEFusionError(f"could not decide the gates {sorted(wanted - set(now))}")
            decided = now
        return decided

    @torch.inference_mode()
    def _run_batch(
        self,
        batch: Sequence[_Prepared],
        *,
        tile: int | None,
        overlap: int | None,
        details: bool,
    ) -> list[FusionResult]:
        # from_numpy + [None, None] are views: a single big image is never copied here
        if len(batch) == 1:
            # (negative strides, e.g. a flipped view, are the one layout torch cannot wrap)
            ir = torch.from_numpy(np.ascontiguousarray(batch[0].ir))[None, None]
            vi = torch.from_numpy(np.ascontiguousarray(batch[0].vi))[None, None]
        else:
            ir = torch.from_numpy(np.stack([p.ir for p in batch]))[:, None]
            vi = torch.from_numpy(np.stack([p.vi for p in batch]))[:, None]
        n = len(batch)
        tile_gates: list[dict[str, Tensor]] = []

        if tile is None:
            fused, attention, gates = self._forward(ir, vi)
            fused = fused.clamp(0.0, 1.0).float().cpu()
            attention = attention.float().cpu()
            gates = {k: v.float().cpu() for k, v in gates.items()}
            num_tiles = 1
        else:
            shared = self.shared_gates(ir, vi, tile, overlap)

            def run_tile(ir_t: Tensor, vi_t: Tensor) -> Tensor:
                f, a, g = self._forward(ir_t, vi_t, shared)
                tile_gates.append({k: v.float().cpu() for k, v in g.items()})
                return torch.cat([f, a], dim=1).float().cpu() if details else f.float().cpu()

            blended = fuse_tiled(run_tile, ir, vi, tile, overlap, out_channels=2 if details else 1)
            fused = blended[:, :1].clamp_(0.0, 1.0)
            attention = blended[:, 1:2] if details else blended[:, :0]
            if shared:
                gates = {k: v.float().cpu() for k, v in shared.items()}
            else:  # a single tile: the whole image's own gates
                gates = tile_gates[0] if tile_gates else {}
            num_tiles = len(tile_gates)

        results = []
        for b in range(n):
            res = FusionResult(
                fused=fused[b, 0].numpy(),
                gates={k: v[b].numpy() for k, v in gates.items()} if details else {},
                attention=attention[b, 0].numpy() if details else np.zeros((0, 0), np.float32),
                tiles=num_tiles,
            )
            if details and tile is not None:
                res.tile_gates = [{k: v[b].numpy() for k, v in g.items()} for g in tile_gates]
            results.append(res)
        return results


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}" if a.ndim >= 2 else str(a.shape)
