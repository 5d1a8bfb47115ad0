"""``moefusion fuse``: fuse infrared/visible pairs (two files or two folders) with trained weights.

Outputs: ``<out>/<stem>.png`` (8-bit gray) and, with ``--color``, ``<out>/color/<stem>.png``
(8-bit RGB) so that ``<out>`` holds only gray images paired by stem (what ``moefusion
evaluate`` expects). Recursive input keeps its relative sub-folders under both.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from moefusion.data import (
    HIGH_BIT_MODES,
    LoadedPair,
    Pair,
    colorize,
    find_pairs,
    image_size,
    load_pair,
    read_image,
    save_gray_u8,
    to_gray,
    to_unit_float,
)
from moefusion.data.io import save_image_atomic
from moefusion.errors import MoEFusionError, PairError

if TYPE_CHECKING:
    from moefusion.figures import FigureRow
    from moefusion.fuser import Fuser, FusionResult

#: Sub-folder of ``--out`` for the colourised images.
COLOR_DIR = "color"
#: How many offending paths an error lists.
_LISTED = 5

Resize = str | tuple[int, int] | None


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Fuse infrared/visible pairs with MoE-Fusion. --ir/--vi are two image files or "
            "two folders whose images are paired by file stem. Writes <out>/<stem>.png "
            "(8-bit gray) and with --color <out>/color/<stem>.png (the visible image's "
            "colour with the fused luminance). Exit code 0 when every pair was fused, 1 "
            "when some failed, 2 for usage errors."
        ),
    )
    p.add_argument("--ir", type=Path, required=True, help="infrared image or folder")
    p.add_argument("--vi", type=Path, required=True, help="visible image or folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (not an input folder)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (.safetensors from `moefusion train`); default: the bundled weights",
    )
    p.add_argument("--color", action="store_true", help="also write colourised RGB images")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--batch-size", type=int, default=1, help="pairs of the same size per forward pass"
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="fuse in overlapping NxN tiles (bounded memory for very large images)",
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="tile overlap in pixels (default: tile/4)"
    )
    p.add_argument("--recursive", action="store_true", help="search input folders recursively")
    p.add_argument(
        "--resize",
        default=None,
        metavar="ir|vi|WxH",
        help="when a pair differs in size: resize the visible image to the infrared one's "
        "size (ir), the infrared to the visible (vi), or both to WxH (bilinear, OpenCV)",
    )
    p.add_argument(
        "--high-bit",
        choices=HIGH_BIT_MODES,
        default="percentile",
        help="normalisation of 16-bit images (default: 1st..99th percentile stretch)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--figure", type=Path, default=None, help="save a side-by-side figure of the first pairs"
    )
    p.add_argument(
        "--save-gates",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every pair's gate weights to FILE (.json or .csv)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


# ------------------------------------------------------------------------------ options


def parse_resize(spec: str | None) -> Resize:
    """``None``, ``"ir"``, ``"vi"`` or ``"WxH"`` -> None, the side, or ``(W, H)``."""
    if spec is None or spec in ("ir", "vi"):
        return spec
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < 2:
        raise MoEFusionError(f"--resize must be ir, vi or WxH (e.g. 640x480), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def resolve_weights(weights: Path | None) -> Path:
    """``--weights`` or the bundled weights; a clear error when neither exists."""
    if weights is not None:
        if not weights.is_file():
            raise MoEFusionError(f"weights file not found: {weights}")
        return weights
    from moefusion import weights as weights_module

    bundled = weights_module.bundled_weights_path()
    if bundled is None:
        raise MoEFusionError(
            "this moefusion build has no bundled weights; pass --weights FILE "
            "(a .safetensors file written by `moefusion train`)"
        )
    return bundled


def _check_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise MoEFusionError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.overlap is not None and args.tile is None:
        raise MoEFusionError("--overlap needs --tile")
    if args.tile is not None:
        from moefusion.tiling import default_overlap, validate_tiling

        try:
            validate_tiling(
                args.tile, default_overlap(args.tile) if args.overlap is None else args.overlap
            )
        except ValueError as exc:
            raise MoEFusionError(f"--tile/--overlap: {exc}") from exc
    if args.save_gates is not None and args.save_gates.suffix.lower() not in (".json", ".csv"):
        raise MoEFusionError(f"--save-gates must end in .json or .csv, got {args.save_gates}")
    if args.figure is not None:
        check_figure_path(args.figure)
    check_not_same_input(args.ir, args.vi)


def check_not_same_input(ir: Path, vi: Path) -> None:
    """Refuse ``--ir X --vi X``: every image would be fused with itself."""
    if ir.exists() and vi.exists() and ir.resolve() == vi.resolve():
        kind = "folder" if ir.is_dir() else "file"
        raise MoEFusionError(
            f"--ir and --vi are the same {kind} ({ir}); give the infrared and the visible "
            "images separately"
        )


def check_figure_path(path: Path) -> None:
    """Refuse a ``--figure`` extension matplotlib cannot write, before any work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    kinds = sorted(FigureCanvasAgg.get_supported_filetypes())
    ext = path.suffix.lower().lstrip(".")
    if ext not in kinds:
        raise MoEFusionError(
            f"--figure {path}: unsupported extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join('.' + k for k in kinds)}"
        )


def check_outputs_writable(out: Path, extra: Sequence[Path]) -> None:
    """Every output location must be writable before the work starts."""
    from moefusion.atomic import check_writable

    check_writable(out, "output folder")
    for p in extra:
        check_writable(p.parent, f"folder of {p}")


# ------------------------------------------------------------------------------ targets


@dataclass
class Job:
    """One pair and where its outputs go."""

    pair: Pair
    gray: Path
    color: Path | None


def plan_jobs(pairs: Sequence[Pair], out: Path, color: bool) -> list[Job]:
    """Output paths per pair: ``out/<stem>.png`` and ``out/color/<stem>.png``.

    The stem is used as is (``a.b`` stays ``a.b.png``; recursive stems keep sub-folders).
    """
    return [
        Job(
            pair=p,
            gray=out / f"{p.stem}.png",
            color=out / COLOR_DIR / f"{p.stem}.png" if color else None,
        )
        for p in pairs
    ]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _listing(paths: Iterable[Path]) -> str:
    items = [str(p) for p in paths]
    more = f" (+{len(items) - _LISTED} more)" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def check_targets(
    jobs: Sequence[Job],
    out: Path,
    input_dirs: Sequence[Path],
    extra: Sequence[Path],
    overwrite: bool,
) -> None:
    """Refuse to write into an input folder, over an input, twice to one file, or over
    existing outputs (without ``overwrite``). Everything is checked before any work."""
    if out.exists() and not out.is_dir():
        raise MoEFusionError(f"--out {out} exists and is not a folder")
    for d in input_dirs:
        if _inside(out, d):
            raise MoEFusionError(
                f"output folder {out} is (inside) input folder {d}; choose another --out"
            )
    targets = [t for j in jobs for t in (j.gray, j.color) if t is not None] + list(extra)
    inputs = {p.resolve() for j in jobs for p in (j.pair.ir, j.pair.vi)}
    for t in extra:
        for d in input_dirs:
            if _inside(t, d):
                raise MoEFusionError(f"{t} is inside input folder {d}; write it elsewhere")
    clobbered = [t for t in targets if t.resolve() in inputs]
    if clobbered:
        raise MoEFusionError(f"output would overwrite input file(s): {_listing(clobbered)}")
    seen: dict[Path, int] = {}
    for t in targets:
        seen[t.resolve()] = seen.get(t.resolve(), 0) + 1
    dupes = [p for p, n in seen.items() if n > 1]
    if dupes:
        raise MoEFusionError(
            f"several outputs map to the same file (stems clash with the '{COLOR_DIR}' "
            f"folder or with each other): {_listing(dupes)}"
        )
    if not overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise MoEFusionError(
                f"{len(existing)} output file(s) already exist: {_listing(existing)}; "
                "pass --overwrite to replace them"
            )


# ------------------------------------------------------------------------------ loading


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ``HxW[x3]`` -> size ``(W, H)``, OpenCV bilinear (``INTER_LINEAR``)."""
    if (img.shape[1], img.shape[0]) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def load_job_pair(pair: Pair, resize: Resize, high_bit: str) -> LoadedPair:
    """Decode a pair, resizing as ``--resize`` says.

    Raises:
        ImageReadError: a file cannot be read.
        PairError: sizes differ and no ``resize`` was given (names both files).
    """
    if resize is None:
        try:
            return load_pair(pair.ir, pair.vi, high_bit=high_bit)
        except PairError as exc:
            raise PairError(f"{exc}; pass --resize ir, vi or WxH to fuse such pairs") from exc
    ir_f = to_unit_float(read_image(pair.ir), high_bit=high_bit)
    vi_f = to_unit_float(read_image(pair.vi), high_bit=high_bit)
    if resize == "ir":
        size = (ir_f.shape[1], ir_f.shape[0])
    elif resize == "vi":
        size = (vi_f.shape[1], vi_f.shape[0])
    else:
        assert isinstance(resize, tuple)
        size = resize
    ir_f, vi_f = _resize(ir_f, size), _resize(vi_f, size)
    vi_rgb = vi_f if vi_f.ndim == 3 else np.repeat(vi_f[..., None], 3, axis=2)
    is_color = vi_f.ndim == 3 and not (
        np.array_equal(vi_f[..., 0], vi_f[..., 1]) and np.array_equal(vi_f[..., 0], vi_f[..., 2])
    )
    return LoadedPair(
        ir=to_gray(ir_f) if ir_f.ndim == 3 else ir_f,
        vi=to_gray(vi_rgb),
        vi_rgb=vi_rgb,
        vi_is_color=is_color,
    )


def _size_key(pair: Pair, resize: Resize, index: int) -> object:
    """Pairs with equal keys decode to the same size (header read only)."""
    if isinstance(resize, tuple):
        return resize
    try:
        return image_size(pair.vi if resize == "vi" else pair.ir)
    except MoEFusionError:
        return ("unreadable", index)  # fails alone at decode time


def _batches(jobs: Sequence[Job], resize: Resize, batch_size: int) -> list[list[Job]]:
    """Same-size jobs in chunks of ``batch_size``, groups in order of first appearance."""
    if batch_size == 1:
        return [[j] for j in jobs]
    groups: dict[object, list[Job]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault(_size_key(j.pair, resize, i), []).append(j)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


# ------------------------------------------------------------------------------ gates log


@dataclass
class GateLog:
    """Every fused pair's gate weights, written as JSON or CSV at the end."""

    weights: str
    records: list[dict] = field(default_factory=list)

    def add(self, job: Job, gates: dict[str, np.ndarray], tiles: int) -> None:
        self.records.append(
            {
                "stem": job.pair.stem,
                "ir": str(job.pair.ir),
                "vi": str(job.pair.vi),
                "tiles": tiles,
                "gates": {k: [round(float(x), 6) for x in v] for k, v in gates.items()},
                # experts that fired (non-zero weight), best first
                "experts": {
                    k: [int(i) for i in np.argsort(-v, kind="stable") if v[i] > 0]
                    for k, v in gates.items()
                },
            }
        )

    def write(self, path: Path) -> Path:
        """Write the log (atomically: a temporary file renamed onto ``path``)."""
        from moefusion.atomic import atomic_open, atomic_write_text

        records = sorted(self.records, key=lambda r: r["stem"])
        if path.suffix.lower() == ".json":
            # one pair per line: diff- and grep-friendly, unlike one number per line
            pairs = ",\n".join("  " + json.dumps(r) for r in records)
            text = f'{{"weights": {json.dumps(self.weights)},\n "pairs": [\n{pairs}\n ]}}\n'
            atomic_write_text(path, text)
            return path
        names = list(records[0]["gates"]) if records else []
        header = ["stem", "ir", "vi", "tiles"]
        for n in names:
            header += [f"{n}_{i}" for i in range(len(records[0]["gates"][n]))]
            header.append(f"{n}_experts")
        with atomic_open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in records:
                row = [r["stem"], r["ir"], r["vi"], r["tiles"]]
                for n in names:
                    row += r["gates"][n] + [" ".join(str(i) for i in r["experts"][n])]
                w.writerow(row)
        return path


# ------------------------------------------------------------------------------ run


def _report(job: Job, exc: BaseException) -> None:
    msg = str(exc).replace("\n", " ") or type(exc).__name__
    tqdm.write(
        f"moefusion fuse: failed {job.pair.stem} (ir {job.pair.ir}, vi {job.pair.vi}): {msg}",
        file=sys.stderr,
    )


# per-pair failures that must not stop the run (decoding, shapes, out of memory, disk)
_PAIR_ERRORS = (MoEFusionError, RuntimeError, ValueError, OSError, MemoryError)


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    resize = parse_resize(args.resize)
    weights = resolve_weights(args.weights)
    from moefusion.fuser import Fuser, resolve_device

    device = resolve_device(args.device)

    pairs = find_pairs(args.ir, args.vi, recursive=args.recursive)
    input_dirs = [args.ir, args.vi] if args.ir.is_dir() else [args.ir.parent, args.vi.parent]
    jobs = plan_jobs(pairs, args.out, args.color)
    extra = [p for p in (args.figure, args.save_gates) if p is not None]
    check_targets(jobs, args.out, input_dirs, extra, args.overwrite)
    check_outputs_writable(args.out, extra)

    fuser = Fuser.from_file(weights, device=device)
    gate_log = GateLog(str(weights)) if args.save_gates is not None else None
    figure_rows: list[FigureRow] = []
    want_figure = args.figure is not None
    state = _RunState()
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="pair", desc="fuse", disable=args.no_progress)
    try:
        _fuse_jobs(fuser, jobs, resize, args, gate_log, figure_rows, state, bar)
    except KeyboardInterrupt:
        bar.close()
        # what was fused so far stays usable: its gates are written, nothing is half-written
        if gate_log is not None and gate_log.records:
            gate_log.write(args.save_gates)
            print(
                f"moefusion fuse: interrupted; gates of the {len(gate_log.records)} pair(s) "
                f"fused so far written to {args.save_gates}",
                file=sys.stderr,
            )
        print(
            f"moefusion fuse: interrupted after {state.done} of {len(jobs)} pair(s)",
            file=sys.stderr,
        )
        raise
    bar.close()
    elapsed = time.perf_counter() - start

    failed = state.failed
    done = len(jobs) - failed
    if gate_log is not None:
        gate_log.write(args.save_gates)
    if want_figure and figure_rows:
        from moefusion.atomic import atomic_path
        from moefusion.figures import save_pair_figure

        with atomic_path(args.figure, keep_suffix=True) as tmp:
            save_pair_figure(figure_rows, tmp)
    rate = done / elapsed if elapsed > 0 else float("inf")
    print(
        f"fused {done}/{len(jobs)} pair(s) into {args.out} in {elapsed:.1f} s "
        f"({rate:.2f} pairs/s)" + (f"; {failed} failed" if failed else "")
    )
    return 0 if failed == 0 else 1


@dataclass
class _RunState:
    done: int = 0
    failed: int = 0
    auto_tile_said: bool = False


def _fuse_jobs(
    fuser: Fuser,
    jobs: Sequence[Job],
    resize: Resize,
    args: argparse.Namespace,
    gate_log: GateLog | None,
    figure_rows: list[FigureRow],
    state: _RunState,
    bar: tqdm,
) -> None:
    want_figure = args.figure is not None
    for batch in _batches(jobs, resize, args.batch_size):
        loaded: list[tuple[Job, LoadedPair]] = []
        for job in batch:
            try:
                loaded.append((job, load_job_pair(job.pair, resize, args.high_bit)))
            except _PAIR_ERRORS as exc:
                _report(job, exc)
                state.failed += 1
                bar.update(1)
        for job, lp, res in _fuse_loaded(fuser, loaded, args, details=gate_log is not None):
            if isinstance(res, BaseException):
                _report(job, res)
                state.failed += 1
                bar.update(1)
                continue
            try:
                _save(job, lp, res.fused, figure_rows if want_figure else None)
                if gate_log is not None:
                    gate_log.add(job, res.gates, res.tiles)
                state.done += 1
            except _PAIR_ERRORS as exc:
                _report(job, exc)
                state.failed += 1
            bar.update(1)


def _auto_tile(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace
) -> tuple[int | None, int | None]:
    """``--tile`` as given, or a tile size when the untiled batch would not fit in memory."""
    if args.tile is not None or not loaded:
        return args.tile, args.overlap
    from moefusion.fuser import AUTO_TILE, available_memory, estimate_fuse_bytes

    height, width = loaded[0][1].ir.shape
    need = estimate_fuse_bytes(height, width, len(loaded), fuser.model, fuser.device)
    have = available_memory(fuser.device)
    if have is None or need <= have or min(height, width) <= AUTO_TILE:
        return None, None
    tqdm.write(
        f"moefusion fuse: {loaded[0][0].pair.stem} ({width}x{height}) needs about "
        f"{need / 2**30:.1f} GiB untiled but {have / 2**30:.1f} GiB is available; "
        f"fusing it in {AUTO_TILE}x{AUTO_TILE} tiles (pass --tile to choose)",
        file=sys.stderr,
    )
    return AUTO_TILE, None


def _fuse_loaded(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace, *, details: bool
) -> list[tuple[Job, LoadedPair, FusionResult | BaseException]]:
    """Fuse decoded pairs in one batch; on failure retry one by one so only bad pairs fail."""
    if not loaded:
        return []
    tile, overlap = _auto_tile(fuser, loaded, args)
    try:
        results = fuser.fuse_arrays(
            [lp.ir for _, lp in loaded],
            [lp.vi for _, lp in loaded],
            tile=tile,
            overlap=overlap,
            batch_size=len(loaded),
            details=details,
        )
    except _PAIR_ERRORS as exc:
        if len(loaded) == 1:
            return [(loaded[0][0], loaded[0][1], exc)]
        return [r for item in loaded for r in _fuse_loaded(fuser, [item], args, details=details)]
    return [(job, lp, res) for (job, lp), res in zip(loaded, results, strict=True)]


def colorize_u8(fused: np.ndarray, vi_rgb: np.ndarray, rows: int = 512) -> np.ndarray:
    """:func:`colorize` then 8-bit rounding as ``save_rgb_u8`` (``floor(x*255 + 0.5)``),
    strip by strip: whole-image float64 temporaries of an 8000x6000 pair take ~5 GB.

    Shapes:
        ``fused [H, W]``, ``vi_rgb [H, W, 3]`` in [0, 1] -> ``[H, W, 3]`` uint8.
    """
    out = np.empty(vi_rgb.shape, dtype=np.uint8)
    for top in range(0, fused.shape[0], rows):
        rgb = colorize(fused[top : top + rows], vi_rgb[top : top + rows])
        out[top : top + rows] = np.clip(np.floor(rgb * 255.0 + 0.5), 0, 255)
    return out


def _save_u8(path: Path, image: np.ndarray) -> None:
    save_image_atomic(path, image)


def _save(job: Job, lp: LoadedPair, fused: np.ndarray, figure_rows: list[FigureRow] | None) -> None:
    save_gray_u8(job.gray, fused)
    if job.color is not None:
        _save_u8(job.color, colorize_u8(fused, lp.vi_rgb))
    if figure_rows is not None:
        from moefusion.figures import MAX_ROWS, FigureRow, thumbnail

        if len(figure_rows) < MAX_ROWS:
            small_fused, small_rgb = thumbnail(fused), thumbnail(lp.vi_rgb)
            figure_rows.append(
                FigureRow(
                    title=job.pair.stem,
                    ir=thumbnail(lp.ir),
                    vi=small_rgb if lp.vi_is_color else thumbnail(lp.vi),
                    fused=small_fused,
                    fused_color=colorize(small_fused, small_rgb),
                )
            )
