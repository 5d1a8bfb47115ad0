"""``moefusion fuse``: fuse infrared/visible pairs (two files or two folders) with trained weights.

Outputs: ``<out>/<stem>.png`` (8-bit gray) and, with ``--color``, ``<out>/color/<stem>.png``
(8-bit RGB) so that ``<out>`` holds only gray images paired by stem (what ``moefusion
evaluate`` expects). Recursive input keeps its relative sub-folders under both.

The data goes one way, each step done by the layer that owns it:
read (:func:`moefusion.data.read_pair_batches`) -> fuse (:meth:`moefusion.Fuser.fuse_arrays`)
-> colour (:func:`moefusion.data.colorize_u8`) -> save (:mod:`moefusion.data.io`). This
module only plans the output paths, checks them before any work, and reports.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from moefusion.commands._common import (
    DEVICE_HELP,
    check_figure_path,
    check_files_outside,
    check_not_same_input,
    check_out_folder,
    check_output_outside,
    check_targets,
    check_writable_outputs,
    device_arg,
    input_folders,
    resolve_weights,
)
from moefusion.data import (
    HIGH_BIT_MODES,
    PAIR_ERRORS,
    LoadedPair,
    Pair,
    PairResize,
    colorize_u8,
    find_pairs,
    parse_size,
    read_pair_batches,
    save_gray_u8,
    save_image_atomic,
)
from moefusion.errors import MoEFusionError, PairError

if TYPE_CHECKING:
    from moefusion.figures import FigureRow
    from moefusion.fuser import Fuser, FusionResult

#: Sub-folder of ``--out`` for the colourised images.
COLOR_DIR = "color"


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
            "colour with the fused luminance). Two video files (or two folders of numbered "
            "frames with --sequence) are fused into <out>/<stem>.mp4 and <out>/<stem>_gates.csv. "
            "Exit code 0 when every pair was fused, 1 when some failed, 2 for usage errors."
        ),
    )
    p.add_argument("--ir", type=Path, required=True, help="infrared image or folder")
    p.add_argument("--vi", type=Path, required=True, help="visible image or folder")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (not inside an input folder, nor the folder of input files)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (.safetensors from `moefusion train`); default: the bundled weights",
    )
    p.add_argument("--color", action="store_true", help="also write colourised RGB images")
    p.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
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
        "--skip-existing",
        action="store_true",
        help="leave pairs whose outputs exist alone (resume a killed run); not with --overwrite",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="shard the pairs across N processes (N GPUs, or N CPU processes with "
        "--device cpu); default 1: one process",
    )
    p.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="save a side-by-side figure of the first pairs (`moefusion evaluate` skips it "
        "if it lies in --out)",
    )
    p.add_argument(
        "--save-gates",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every pair's gate weights to FILE (.json or .csv)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32 (default), or half precision for the attention branch, local experts and "
        "first decoder layer: bf16 (CPUs with AVX-512 BF16/AMX, CUDA) or fp16 (CUDA); "
        "within one grey level of fp32 on the samples",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from moefusion.commands._fuse_options import add_options as add_video_options

    add_video_options(p)  # videos (--sequence, --temporal-smoothing...) and --align
    return p


# ------------------------------------------------------------------------------ options


def parse_resize(spec: str | None) -> PairResize:
    """``None``, ``"ir"``, ``"vi"`` or ``"WxH"`` -> None, the side, or ``(W, H)``."""
    if spec is None or spec in ("ir", "vi"):
        return spec
    size = parse_size(spec)
    if size is None:
        raise MoEFusionError(f"--resize must be ir, vi or WxH (e.g. 640x480), got {spec!r}")
    return size


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
    if args.skip_existing and args.overwrite:
        raise MoEFusionError(
            "--skip-existing and --overwrite contradict each other (leave existing outputs "
            "alone, or replace them); pass one"
        )
    if args.devices < 1:
        raise MoEFusionError(f"--devices must be >= 1, got {args.devices}")
    check_not_same_input(args.ir, args.vi)


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


def check_job_targets(jobs: Sequence[Job], args: argparse.Namespace, extra: Sequence[Path]) -> None:
    """Refuse to write into an input folder (or beside input files), over an input, twice
    to one file, or over existing outputs (without ``--overwrite``). Everything is checked
    before any work (:mod:`moefusion.commands._common`)."""
    check_out_folder(args.out)
    inside, beside = input_folders(args.ir, args.vi)
    check_output_outside(args.out, inside, beside)
    check_files_outside(extra, inside, beside)
    targets = [t for j in jobs for t in (j.gray, j.color) if t is not None] + list(extra)
    check_targets(
        targets,
        (p for j in jobs for p in (j.pair.ir, j.pair.vi)),
        # --skip-existing: existing outputs are allowed, and left alone
        overwrite=args.overwrite or getattr(args, "skip_existing", False),
        clash_hint=f" (stems clash with the '{COLOR_DIR}' folder or with each other)",
    )


def split_existing(jobs: Sequence[Job]) -> tuple[list[Job], list[Job]]:
    """``(jobs to run, jobs skipped)`` for ``--skip-existing``: a job is skipped when all
    its outputs exist. A job with some outputs missing (a run killed between the gray and
    the colour image) is run again and writes only the missing ones (see :func:`_save`)."""
    todo: list[Job] = []
    skipped: list[Job] = []
    for j in jobs:
        done = j.gray.exists() and (j.color is None or j.color.exists())
        (skipped if done else todo).append(j)
    return todo, skipped


# ------------------------------------------------------------------------------ gates log


@dataclass
class GateLog:
    """Every fused pair's gate weights, written as JSON or CSV at the end."""

    weights: str
    records: list[dict] = field(default_factory=list)
    #: records of an existing log kept by ``--skip-existing`` (:meth:`keep_existing`)
    previous: list[dict] = field(default_factory=list)

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

    def keep_existing(self, path: Path) -> int:
        """``--skip-existing``: take over the records of an existing log at ``path`` (so
        that a resumed run's log covers the pairs fused before it too); records of pairs
        fused again replace them when written. Returns how many were read.

        Raises:
            MoEFusionError: the file cannot be read as a gates log.
        """
        if not path.is_file():
            return 0
        try:
            old = read_gate_records(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise MoEFusionError(
                f"--skip-existing: cannot read the existing gates log {path} ({exc}); "
                "remove it or choose another --save-gates file"
            ) from exc
        self.previous = old
        return len(old)

    def write(self, path: Path) -> Path:
        """Write the log (atomically: a temporary file renamed onto ``path``)."""
        from moefusion.atomic import atomic_open, atomic_write_text

        fused = {r["stem"] for r in self.records}
        previous = [r for r in self.previous if r["stem"] not in fused]
        records = sorted(previous + self.records, key=lambda r: r["stem"])
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


def read_gate_records(path: Path) -> list[dict]:
    """The records of a gates log written by :meth:`GateLog.write` (JSON or CSV)."""
    if path.suffix.lower() == ".json":
        return list(json.loads(path.read_text(encoding="utf-8"))["pairs"])
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = rows[0]
    if header[:4] != ["stem", "ir", "vi", "tiles"]:
        raise ValueError("not a gates log: the header does not start with stem,ir,vi,tiles")
    names = [h[: -len("_experts")] for h in header if h.endswith("_experts")]
    records = []
    for row in rows[1:]:
        cols = dict(zip(header, row, strict=True))
        records.append(
            {
                "stem": cols["stem"],
                "ir": cols["ir"],
                "vi": cols["vi"],
                "tiles": int(cols["tiles"]),
                "gates": {
                    n: [
                        float(cols[h])
                        for h in header
                        if h.rpartition("_")[0] == n and h.rpartition("_")[2].isdigit()
                    ]
                    for n in names
                },
                "experts": {n: [int(i) for i in cols[f"{n}_experts"].split()] for n in names},
            }
        )
    return records


# ------------------------------------------------------------------------------ run


def _failure_line(job: Job, exc: BaseException) -> str:
    msg = str(exc).replace("\n", " ") or type(exc).__name__
    return f"moefusion fuse: failed {job.pair.stem} (ir {job.pair.ir}, vi {job.pair.vi}): {msg}"


def _report(job: Job, exc: BaseException) -> None:
    tqdm.write(_failure_line(job, exc), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from moefusion.commands import _fuse_options, _fuse_video

    if _fuse_video.wants_video(args):
        return _fuse_video.run(args)
    _fuse_options.check_image_options(args)
    _check_options(args)
    resize = parse_resize(args.resize)
    if args.align != "none" and resize is None:
        resize = "ir"  # pairs of different sizes: registered from the visible one resized
    weights = resolve_weights(args.weights)
    from moefusion.fuser import Fuser, resolve_device

    sharded = None
    if args.devices > 1:
        from moefusion.commands._fuse_devices import ShardedRun

        sharded = ShardedRun.configure(args)  # usage errors before anything else
    else:
        device = resolve_device(args.device)

    pairs = find_pairs(args.ir, args.vi, recursive=args.recursive)
    jobs = plan_jobs(pairs, args.out, args.color)
    extra = [p for p in (args.figure, args.save_gates) if p is not None]
    check_job_targets(jobs, args, extra)
    check_writable_outputs(args.out, extra)
    todo, skipped = split_existing(jobs) if args.skip_existing else (list(jobs), [])
    gate_log = GateLog(str(weights)) if args.save_gates is not None else None
    if gate_log is not None and args.skip_existing:
        gate_log.keep_existing(args.save_gates)
    draw_figure = args.figure is not None and not (args.skip_existing and args.figure.exists())
    if sharded is not None:
        return sharded.run(weights, resize, jobs, todo, len(skipped), gate_log, draw_figure)

    fuser = Fuser.from_file(weights, device=device, precision=args.precision)
    figure_rows: list[FigureRow] | None = [] if draw_figure else None
    state = _RunState()
    start = time.perf_counter()
    bar = tqdm(
        total=len(jobs), initial=len(skipped), unit="pair", desc="fuse", disable=args.no_progress
    )
    try:
        for _ in _fuse_jobs(fuser, todo, resize, args, gate_log, figure_rows, state, bar):
            pass
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
            f"moefusion fuse: interrupted after {state.done} of {len(todo)} pair(s)"
            + _resume_hint(args),
            file=sys.stderr,
        )
        raise
    bar.close()
    elapsed = time.perf_counter() - start
    if gate_log is not None:
        gate_log.write(args.save_gates)
    if figure_rows:
        save_figure(figure_rows, args.figure)
    return summarize(
        args, total=len(jobs), skipped=len(skipped), failed=state.failed, elapsed=elapsed
    )


def _resume_hint(args: argparse.Namespace) -> str:
    return "" if args.skip_existing else "; rerun with --skip-existing to fuse only the rest"


def save_figure(rows: list[FigureRow], path: Path) -> None:
    from moefusion.atomic import atomic_path
    from moefusion.figures import save_pair_figure

    with atomic_path(path, keep_suffix=True) as tmp:
        save_pair_figure(rows, tmp)


def summarize(
    args: argparse.Namespace, *, total: int, skipped: int, failed: int, elapsed: float
) -> int:
    """Print the one summary line; the exit code (0 all fused or skipped, 1 some failed)."""
    done = total - skipped - failed
    rate = done / elapsed if elapsed > 0 else float("inf")
    print(
        f"fused {done}/{total} pair(s) into {args.out} in {elapsed:.1f} s "
        f"({rate:.2f} pairs/s)"
        + (f"; {skipped} skipped (outputs exist)" if skipped else "")
        + (f"; {failed} failed" if failed else "")
    )
    return 0 if failed == 0 else 1


@dataclass
class _RunState:
    done: int = 0
    failed: int = 0
    #: None: failures are printed at once; a list: their lines are collected here (the
    #: processes of ``--devices N`` send them to rank 0, which prints them)
    messages: list[str] | None = None

    def fail(self, job: Job, exc: BaseException, bar: tqdm) -> None:
        self.failed_only(job, exc)
        bar.update(1)

    def failed_only(self, job: Job, exc: BaseException) -> None:
        if self.messages is None:
            _report(job, exc)
        else:
            self.messages.append(_failure_line(job, exc))
        self.failed += 1


def _fuse_jobs(
    fuser: Fuser,
    jobs: Sequence[Job],
    resize: PairResize,
    args: argparse.Namespace,
    gate_log: GateLog | None,
    figure_rows: list[FigureRow] | None,
    state: _RunState,
    bar: tqdm,
) -> Iterator[None]:
    """read -> fuse -> colour -> save, one batch of same-size pairs at a time; yields after
    each batch (``state`` holds the counts so far)."""
    from moefusion.commands._fuse_align import Aligner

    aligner = Aligner.from_args(args)  # --align: register each pair before fusing it
    batches = read_pair_batches(
        [j.pair for j in jobs], batch_size=args.batch_size, resize=resize, high_bit=args.high_bit
    )
    for batch in batches:  # read
        loaded: list[tuple[Job, LoadedPair]] = []
        for index, item in batch:
            if isinstance(item, LoadedPair):
                if aligner is not None:
                    item = aligner.align_pair(item, jobs[index].pair.stem)
                loaded.append((jobs[index], item))
            else:
                if isinstance(item, PairError) and resize is None:
                    item = PairError(f"{item}; pass --resize ir, vi or WxH to fuse such pairs")
                state.fail(jobs[index], item, bar)
        for job, lp, res in _fuse_loaded(fuser, loaded, args, details=gate_log is not None):
            if isinstance(res, BaseException):
                state.fail(job, res, bar)
                continue
            try:
                _save(job, lp, res.fused, figure_rows, keep=args.skip_existing)
                if gate_log is not None:
                    gate_log.add(job, res.gates, res.tiles)
                state.done += 1
            except PAIR_ERRORS as exc:
                state.failed_only(job, exc)
            bar.update(1)
        yield


def _tiling(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace
) -> tuple[int | None, int | None]:
    """``--tile`` as given, or the Fuser's tile size when the untiled batch would not fit."""
    if args.tile is not None or not loaded:
        return args.tile, args.overlap
    height, width = loaded[0][1].ir.shape
    tile = fuser.auto_tile(height, width, len(loaded))
    if tile is not None:
        need, have = fuser.untiled_memory(height, width, len(loaded))
        tqdm.write(
            f"moefusion fuse: {loaded[0][0].pair.stem} ({width}x{height}) needs about "
            f"{need / 2**30:.1f} GiB untiled but {(have or 0) / 2**30:.1f} GiB is available; "
            f"fusing it in {tile}x{tile} tiles (pass --tile to choose)",
            file=sys.stderr,
        )
    return tile, None


def _fuse_loaded(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace, *, details: bool
) -> list[tuple[Job, LoadedPair, FusionResult | BaseException]]:
    """Fuse decoded pairs in one batch; on failure retry one by one so only bad pairs fail."""
    if not loaded:
        return []
    tile, overlap = _tiling(fuser, loaded, args)
    try:
        results = fuser.fuse_arrays(
            [lp.ir for _, lp in loaded],
            [lp.vi for _, lp in loaded],
            tile=tile,
            overlap=overlap,
            batch_size=len(loaded),
            details=details,
        )
    except PAIR_ERRORS as exc:
        if len(loaded) == 1:
            return [(loaded[0][0], loaded[0][1], exc)]
        return [r for item in loaded for r in _fuse_loaded(fuser, [item], args, details=details)]
    return [(job, lp, res) for (job, lp), res in zip(loaded, results, strict=True)]


def _save(
    job: Job,
    lp: LoadedPair,
    fused: np.ndarray,
    figure_rows: list[FigureRow] | None,
    *,
    keep: bool = False,
) -> None:
    """colour -> save: the gray image, the colourised one, and a figure row. ``keep``
    (``--skip-existing``) leaves an output that exists alone."""
    if not (keep and job.gray.exists()):
        save_gray_u8(job.gray, fused)
    if job.color is not None and not (keep and job.color.exists()):
        save_image_atomic(job.color, colorize_u8(fused, lp.vi_rgb))
    if figure_rows is not None:
        from moefusion.figures import MAX_ROWS, FigureRow

        if len(figure_rows) < MAX_ROWS:
            figure_rows.append(FigureRow.from_pair(job.pair.stem, lp, fused))
