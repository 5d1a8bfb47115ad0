"""``moefusion fuse``: fuse infrared/visible pairs (two files or two folders) with trained weights.

Outputs: ``<out>/<stem>.png`` (8-bit gray) and, with ``--color``, ``<out>/color/<stem>.png``
(8-bit RGB) so that ``<out>`` holds only gray images paired by stem (what ``moefusion
evaluate`` expects). Recursive input keeps its relative sub-folders under both. For two
input files, an ``--out`` with an image extension (``fused.png``) is the output file itself
and ``--color`` writes ``<name>_color<ext>`` beside it (:func:`single_output`).

The data goes one way, each step done by the layer that owns it:
read (:func:`moefusion.data.read_pair_batches`) -> fuse (:meth:`moefusion.Fuser.fuse_arrays`)
-> colour (:func:`moefusion.data.colorize_u8`) -> save (:mod:`moefusion.data.io`). This
module parses and checks the options and drives the run; the output paths, their checks,
the gates log and the per-batch loop are in :mod:`moefusion.commands._fuse_images`, video
in :mod:`moefusion.commands._fuse_video`, ``--devices N`` in
:mod:`moefusion.commands._fuse_devices`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from moefusion.commands._common import (
    DEVICE_HELP,
    check_figure_path,
    check_not_same_input,
    check_targets,
    check_writable_outputs,
    device_arg,
    resolve_weights,
)
from moefusion.commands._fuse_images import (
    GateLog,
    Job,
    RunState,
    check_job_targets,
    fuse_jobs,
    plan_jobs,
    split_existing,
)
from moefusion.data import (
    HIGH_BIT_MODES,
    Pair,
    PairResize,
    find_pairs,
    is_image_file,
    parse_size,
)
from moefusion.errors import MoEFusionError

if TYPE_CHECKING:
    from moefusion.figures import FigureRow


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
            "colour with the fused luminance); for two files, --out fused.png writes "
            "fused.png (and fused_color.png). Two video files (or two folders of numbered "
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
        help="output folder (not inside an input folder, nor the folder of input files); "
        "for two input files, a name with an image extension (fused.png) is the output "
        "file itself, and --color then writes fused_color.png beside it",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (.safetensors from `moefusion train`, or a training .ckpt); default: bundled",
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


# ------------------------------------------------------------------------------ outputs


def color_file(out: Path) -> Path:
    """Where ``--color`` goes for a single output file: ``fused.png`` -> ``fused_color.png``."""
    return out.with_name(f"{out.stem}_color{out.suffix}")


def single_output(args: argparse.Namespace, pairs: list[Pair]) -> Job | None:
    """The job of one pair fused into the file ``--out`` names (``--out fused.png``), or
    None when ``--out`` is a folder (no image extension, or an existing folder).

    An image name for the outputs of input folders is refused: many pairs cannot go to
    one file, and a folder called ``fused.png`` is not what was meant.
    """
    out = args.out
    if not is_image_file(out) or out.is_dir():
        return None
    if not (args.ir.is_file() and args.vi.is_file()) or len(pairs) != 1:
        raise MoEFusionError(
            f"--out {out} names an image file, but --ir/--vi are folders ({len(pairs)} "
            f"pair(s)); give an output folder (--out {out.with_suffix('')}/)"
        )
    return Job(pair=pairs[0], gray=out, color=color_file(out) if args.color else None)


def check_single_targets(job: Job, args: argparse.Namespace, extra: list[Path]) -> None:
    """Checks of a single output file: not a folder, not an input, not written twice, not
    replaced without ``--overwrite``. It may sit beside the input files (one named file
    is not picked up as a pair, unlike a folder of outputs there)."""
    for target in [job.gray, job.color]:
        if target is not None and target.is_dir():
            raise MoEFusionError(f"output {target} is an existing folder; choose another --out")
    check_targets(
        [t for t in (job.gray, job.color) if t is not None] + extra,
        [job.pair.ir, job.pair.vi],
        overwrite=args.overwrite or args.skip_existing,
    )


# ------------------------------------------------------------------------------ run


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
    extra = [p for p in (args.figure, args.save_gates) if p is not None]
    single = single_output(args, pairs)
    if single is not None:
        jobs = [single]
        check_single_targets(single, args, extra)
        check_writable_outputs(args.out.parent, extra)
    else:
        jobs = plan_jobs(pairs, args.out, args.color)
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
    state = RunState()
    start = time.perf_counter()
    bar = tqdm(
        total=len(jobs), initial=len(skipped), unit="pair", desc="fuse", disable=args.no_progress
    )
    try:
        for _ in fuse_jobs(fuser, todo, resize, args, gate_log, figure_rows, state, bar):
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
