"""Fusing large images in overlapping tiles with smoothly blended seams.

A tile of the output is computed from the same window of both inputs. Near a tile's
*interior* edges (those inside the image) a convolutional network sees zero padding
instead of the neighbouring pixels, so those pixels are wrong. Each tile is therefore
weighted by a separable window that is

- 0 within ``margin`` pixels of an interior edge (the unreliable band is dropped),
- a raised-cosine ramp from ~0 to 1 over the next ``overlap - 2 * margin`` pixels,
- 1 elsewhere, including along the image border (no neighbour exists there),

and the output is ``sum_t w_t * f(tile_t) / sum_t w_t``. Consecutive tiles overlap by at
least ``overlap`` pixels, so every pixel is at least ``(overlap - 1) / 2 >= margin``
pixels away from the interior edges of some tile and gets a positive total weight. A
function whose output at a pixel only depends on inputs within ``margin`` pixels (a
stack of convolutions with that receptive-field radius) is then reproduced *exactly*;
the ramp only matters for functions with global parts (MoE-Fusion's attention branch,
and its gates when each tile decides on its own), where it hides the seams.

Memory: the output accumulator ``[B, C, H, W]`` is the only full-size buffer. Because
tiles lie on a grid and windows are separable, the accumulated weight is the outer
product of two 1-D sums and is never materialised at full resolution.

Shared decisions: :func:`pool_tiled` computes whole-image grid averages
(``adaptive_avg_pool2d``) of feature maps tile by tile, each tile contributing its *core*
(:func:`tile_cores`, a partition of the image with boundaries in the middle of the
overlaps). MoE-Fusion's gates only see such averages, so the whole frame's gate decisions
are made from them and shared with every tile (:class:`moefusion.Fuser`).

Memory planning (:func:`estimate_fuse_bytes`, :func:`available_memory`) decides when an
untiled pass would not fit and ``moefusion fuse`` falls back to :data:`AUTO_TILE` tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AUTO_TILE",
    "BYTES_PER_PIXEL",
    "DEFAULT_OVERLAP_FRACTION",
    "MEMORY_HEADROOM",
    "MIN_TILE",
    "Tile",
    "available_memory",
    "axis_weights",
    "default_margin",
    "default_overlap",
    "estimate_fuse_bytes",
    "fuse_tiled",
    "pool_tiled",
    "tile_cores",
    "tile_grid",
    "tile_starts",
    "validate_tiling",
]

#: The default overlap is this fraction of the tile size.
DEFAULT_OVERLAP_FRACTION = 4
#: Smallest accepted tile side (the attention branch works on stride-32 features).
MIN_TILE = 32

TileFn = Callable[[Tensor, Tensor], Tensor]
#: ``pool(map [B, C, h, w]) -> [B, C, H_g, W_g]`` (see :func:`pool_tiled`).
PoolFn = Callable[[Tensor], Tensor]
#: ``fn(ir_tile, vi_tile, pool) -> {name: [pool(map), ...]}`` (see :func:`pool_tiled`).
StatsFn = Callable[[Tensor, Tensor, PoolFn], dict[str, list[Tensor]]]


@dataclass(frozen=True)
class Tile:
    """One tile: rows ``[top, bottom)`` and columns ``[left, right)`` of the image."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def default_overlap(tile: int) -> int:
    """``tile // 4``: 128 px for 512 px tiles."""
    return tile // DEFAULT_OVERLAP_FRACTION


def default_margin(overlap: int) -> int:
    """``overlap // 4`` px dropped at interior tile edges (16 px for a 64 px overlap).

    MoE-Fusion's fusion network (4 encoder + 2 MoLE + 4 MoGE 3x3 convolutions) has a
    receptive-field radius of 10 px, so its convolutions are exact across seams once the
    margin is >= 10, i.e. for overlaps >= 40 px.
    """
    return overlap // 4


def validate_tiling(tile: int, overlap: int, margin: int | None = None) -> int:
    """Check the tiling parameters and return the margin to use.

    Raises:
        ValueError: ``tile < MIN_TILE``, ``overlap`` outside ``[0, tile // 2]`` or a
            margin that leaves no pixel with a positive weight (``2 * margin >= overlap``
            while ``overlap > 0``).
    """
    if tile < MIN_TILE:
        raise ValueError(f"tile must be >= {MIN_TILE} px, got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be in [0, tile/2] = [0, {tile // 2}], got {overlap}")
    margin = default_margin(overlap) if margin is None else margin
    if margin < 0 or (overlap > 0 and 2 * margin >= overlap):
        raise ValueError(f"margin must be in [0, overlap/2), got {margin} for overlap {overlap}")
    return margin


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``[0, length)``.

    The number of tiles is the smallest that keeps consecutive tiles overlapping by at
    least ``overlap``; starts are then spread evenly (the first at 0, the last at
    ``length - tile``), so all overlaps are about equal instead of one thin last tile.
    """
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major list of tiles covering a ``height x width`` image."""
    rows = tile_starts(height, tile, overlap)
    cols = tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    return [Tile(r, r + th, c, c + tw) for r in rows for c in cols]


def _core_bounds(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` per tile start: boundaries in the middle of each overlap."""
    cuts = [(a + size + b) // 2 for a, b in zip(starts, starts[1:], strict=False)]
    edges = [0, *cuts, length]
    return list(zip(edges, edges[1:], strict=False))


def tile_cores(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The core of every tile of :func:`tile_grid` (same order): the cores partition the
    image, each inside its tile, with their boundaries in the middle of the overlaps, so
    a core pixel is at least ``(overlap - 1) // 2`` px away from its tile's interior edges
    (the convolutions of a network with a smaller receptive-field radius are exact there).
    """
    th, tw = min(tile, height), min(tile, width)
    rows = _core_bounds(tile_starts(height, tile, overlap), th, height)
    cols = _core_bounds(tile_starts(width, tile, overlap), tw, width)
    return [Tile(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]


def _bin_edges(length: int, bins: int) -> tuple[list[int], list[int]]:
    """``adaptive_avg_pool2d``'s bins: ``[floor(i L / n), ceil((i + 1) L / n))``."""
    return (
        [i * length // bins for i in range(bins)],
        [-(-(i + 1) * length // bins) for i in range(bins)],
    )


def _membership(
    lo: int, hi: int, core: tuple[int, int], bins: tuple[list[int], list[int]], device: Any
) -> Tensor:
    """``[n_bins, hi - lo]`` float32: 1 where pixel ``lo + j`` lies in bin ``i`` and in
    ``[core[0], core[1])``, else 0."""
    pos = torch.arange(lo, hi, device=device)
    s = torch.tensor([max(a, core[0]) for a in bins[0]], device=device)[:, None]
    e = torch.tensor([min(b, core[1]) for b in bins[1]], device=device)[:, None]
    return ((pos >= s) & (pos < e)).to(torch.float32)


def _bin_sums(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols.T`` per channel: ``x [B, C, h, w]``, ``rows [H_g, h]``,
    ``cols [W_g, w]`` -> ``[B, C, H_g, W_g]`` float32 (channels-last maps without a copy)."""
    x = x.float()
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        b, c, h, w = x.shape
        y = rows @ x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # [B, H_g, w*C]
        y = cols @ y.view(b, rows.shape[0], w, c)  # [B, H_g, W_g, C]
        return y.permute(0, 3, 1, 2)
    return rows @ x @ cols.T


def pool_tiled(
    fn: StatsFn,
    ir: Tensor,
    vi: Tensor,
    tile: int,
    overlap: int | None,
    grid: tuple[int, int],
) -> dict[str, list[Tensor]]:
    """Whole-image ``adaptive_avg_pool2d(map, grid)`` of maps computed tile by tile.

    ``fn(ir_tile, vi_tile, pool)`` is called once per tile of :func:`tile_grid` and
    returns ``{name: [pool(map_tile), ...]}`` (the same names and list lengths for every
    tile). Here ``pool`` sums each bin over the tile's core (:func:`tile_cores`); the sums
    are added up over the tiles and divided by the bin areas, so the result is the
    whole-image pooling of a map whose value at each pixel is that of the tile owning it
    (exactly the whole image's map where ``fn``'s maps are local within
    ``(overlap - 1) // 2`` px). Memory: one tile's maps at a time; the sums are small.

    Args:
        fn: see above; ``pool`` maps ``[B, C, h, w]`` (the tile's size) to
            ``[B, C, H_g, W_g]`` float32 on the map's device.
        ir, vi: ``[B, C, H, W]`` full-size inputs (any device).
        tile, overlap: as :func:`fuse_tiled` (``overlap`` None: :func:`default_overlap`).
        grid: ``(H_g, W_g)``.

    Returns:
        ``{name: [[B, C, H_g, W_g] float32 on the CPU, ...]}`` bin means.

    Raises:
        ValueError: invalid tiling, or tiles returned different names or counts.
    """
    overlap = default_overlap(tile) if overlap is None else overlap
    validate_tiling(tile, overlap)
    height, width = ir.shape[-2:]
    tiles = tile_grid(height, width, tile, overlap)
    cores = tile_cores(height, width, tile, overlap)
    row_bins = _bin_edges(height, grid[0])
    col_bins = _bin_edges(width, grid[1])
    totals: dict[str, list[Tensor]] | None = None
    for t, c in zip(tiles, cores, strict=True):

        def pool(x: Tensor, t: Tile = t, c: Tile = c) -> Tensor:
            if x.shape[-2:] != (t.height, t.width):
                raise ValueError(f"pool expects a {t.height}x{t.width} map, got {tuple(x.shape)}")
            rows = _membership(t.top, t.bottom, (c.top, c.bottom), row_bins, x.device)
            cols = _membership(t.left, t.right, (c.left, c.right), col_bins, x.device)
            return _bin_sums(x, rows, cols)

        out = fn(
            ir[..., t.top : t.bottom, t.left : t.right],
            vi[..., t.top : t.bottom, t.left : t.right],
            pool,
        )
        sums = {k: [v.detach().cpu().double() for v in vs] for k, vs in out.items()}
        if totals is None:
            totals = sums
            continue
        if {k: len(v) for k, v in sums.items()} != {k: len(v) for k, v in totals.items()}:
            raise ValueError("every tile must return the same names and numbers of maps")
        for k, vs in sums.items():
            totals[k] = [a + b for a, b in zip(totals[k], vs, strict=True)]
    assert totals is not None
    heights = torch.tensor(row_bins[1], dtype=torch.float64) - torch.tensor(row_bins[0])
    widths = torch.tensor(col_bins[1], dtype=torch.float64) - torch.tensor(col_bins[0])
    area = heights[:, None] * widths[None, :]
    return {k: [(v / area).float() for v in vs] for k, vs in totals.items()}


def _ramp(length: int, margin: int, ramp: int) -> Tensor:
    """Weights for distances ``0..length-1`` from an interior edge: 0, cosine ramp, 1."""
    d = torch.arange(length, dtype=torch.float64)
    # d = margin maps to a small positive weight, d = margin + ramp - 1 to just below 1
    phase = ((d - margin + 1) / (ramp + 1)).clamp(0.0, 1.0)
    w = 0.5 - 0.5 * torch.cos(math.pi * phase)
    return torch.where(d < margin, torch.zeros_like(w), w)


def axis_weights(start: int, size: int, length: int, overlap: int, margin: int) -> Tensor:
    """1-D window ``[size]`` of a tile at ``start`` on an axis of ``length`` pixels.

    Edges at ``0`` or ``length`` are image borders and keep weight 1; the others get
    the margin + raised-cosine ramp (see the module docstring).
    """
    ramp_len = max(overlap - 2 * margin, 0)
    w = torch.ones(size, dtype=torch.float64)
    if overlap == 0:
        return w
    edge = _ramp(size, margin, ramp_len)
    if start > 0:
        w = w * edge
    if start + size < length:
        w = w * edge.flip(0)
    return w


def fuse_tiled(
    fn: TileFn,
    ir: Tensor,
    vi: Tensor,
    tile: int,
    overlap: int | None = None,
    *,
    margin: int | None = None,
    out_channels: int = 1,
) -> Tensor:
    """Apply ``fn`` tile by tile and blend the tiles into one image.

    Args:
        fn: ``fn(ir_tile [B,C1,h,w], vi_tile [B,C2,h,w]) -> [B, out_channels, h, w]``;
            called once per tile, with views of the inputs (``fn`` may move them to
            another device; its output is copied back to the inputs' device).
        ir, vi: full-size inputs, ``[B, 1, H, W]`` for MoE-Fusion (any channel counts
            C1, C2 are accepted, e.g. to carry an extra map along); any device, CPU for
            big images.
        tile: tile side in pixels (tiles are ``min(tile, H) x min(tile, W)``).
        overlap: minimum overlap of consecutive tiles; default :func:`default_overlap`.
        margin: pixels dropped at interior tile edges; default :func:`default_margin`.
        out_channels: C of ``fn``'s output.

    Returns:
        ``[B, out_channels, H, W]`` float32 on the inputs' device. Equals ``fn(ir, vi)``
        exactly (up to float rounding) when ``fn`` is local within ``margin`` pixels.

    Raises:
        ValueError: invalid tiling parameters or mismatched input shapes.
    """
    if ir.dim() != 4 or vi.dim() != 4 or ir.shape[0] != vi.shape[0] or ir.shape[2:] != vi.shape[2:]:
        raise ValueError(
            "ir and vi must be [B, C, H, W] with the same B, H, W; "
            f"got {tuple(ir.shape)} and {tuple(vi.shape)}"
        )
    overlap = default_overlap(tile) if overlap is None else overlap
    margin = validate_tiling(tile, overlap, margin)
    batch, _, height, width = ir.shape
    tiles = tile_grid(height, width, tile, overlap)
    if len(tiles) == 1:
        return fn(ir, vi).to(device=ir.device, dtype=torch.float32)

    acc = torch.zeros(batch, out_channels, height, width, dtype=torch.float32, device=ir.device)
    row_sum = torch.zeros(height, dtype=torch.float64)
    col_sum = torch.zeros(width, dtype=torch.float64)
    row_done: set[int] = set()
    col_done: set[int] = set()
    for t in tiles:
        wy = axis_weights(t.top, t.height, height, overlap, margin)
        wx = axis_weights(t.left, t.width, width, overlap, margin)
        # every row band (and column band) appears once per grid column (row): count once
        if t.top not in row_done:
            row_sum[t.top : t.bottom] += wy
            row_done.add(t.top)
        if t.left not in col_done:
            col_sum[t.left : t.right] += wx
            col_done.add(t.left)
        y = fn(
            ir[..., t.top : t.bottom, t.left : t.right], vi[..., t.top : t.bottom, t.left : t.right]
        )
        if y.shape != (batch, out_channels, t.height, t.width):
            raise ValueError(
                f"tile function returned {tuple(y.shape)}, expected "
                f"{(batch, out_channels, t.height, t.width)}"
            )
        window = (wy[:, None] * wx[None, :]).to(torch.float32)
        acc[..., t.top : t.bottom, t.left : t.right] += y.to(acc.device, torch.float32) * window.to(
            acc.device
        )
    # normalise in place by the separable weight sum: no full-size weight map is built
    inv_cols = (1.0 / col_sum).to(torch.float32).to(acc.device)
    inv_rows = (1.0 / row_sum).to(torch.float32).to(acc.device)
    acc.mul_(inv_rows.view(-1, 1)).mul_(inv_cols)
    return acc


# ---------------------------------------------------------------------- memory planning

#: Tile side that ``moefusion fuse`` falls back to when an untiled pair would not fit.
AUTO_TILE = 1024
#: Measured peak memory per pixel of one untiled forward pass of the bundled (``cpu``
#: config) network: about 1.1 kB on the CPU, rounded up.
BYTES_PER_PIXEL = 1200
#: Share of the available memory an untiled pass may plan to use.
MEMORY_HEADROOM = 0.8


def estimate_fuse_bytes(
    height: int, width: int, batch: int = 1, model: Any = None, device: Any = None
) -> int:
    """Rough peak memory (bytes) of fusing ``batch`` untiled ``height x width`` pairs.

    Activations dominate and grow linearly with the pixel count; wider models than the
    bundled one (``encoder_growth``, ``decoder_channels``) scale it up proportionally.
    """
    factor = 1.0
    cfg = getattr(model, "config", None)
    if cfg is not None:
        growth = float(getattr(cfg, "encoder_growth", 8) or 8)
        decoder = getattr(cfg, "decoder_channels", None) or (16, 16, 8)
        factor = max(1.0, growth / 8.0, float(sum(decoder)) / 40.0)
    return int(BYTES_PER_PIXEL * factor * height * width * max(1, batch))


def _cgroup_limit() -> int | None:
    """Memory left under a cgroup (container) limit, if there is one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                continue
            return max(0, int(raw) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes an untiled pass may use on ``device`` (with headroom), or None if unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
        except (RuntimeError, AssertionError):
            return None
        return int(free * MEMORY_HEADROOM)
    have: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        have = None
    limit = _cgroup_limit()
    if limit is not None:
        have = limit if have is None else min(have, limit)
    return None if have is None else int(have * MEMORY_HEADROOM)
