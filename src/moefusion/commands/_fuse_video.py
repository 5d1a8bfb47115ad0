"""``moefusion fuse`` on videos: two video files, or two folders of numbered frames.

``fuse --ir thermal.mp4 --vi rgb.mp4 --out DIR`` (or ``--sequence`` with two folders)
writes ``DIR/<stem>.mp4`` (gray, or colour with ``--color``) at the infrared stream's
frame rate and ``DIR/<stem>_gates.csv`` with one row of gate weights per frame.

The data goes one way, each step done by the layer that owns it: read and match
(:mod:`moefusion.video`) -> decode and resize (:func:`moefusion.data.pair_from_arrays`)
-> register (``--align``, :mod:`moefusion.commands._fuse_align`) -> fuse
(:meth:`moefusion.Fuser.fuse_arrays` inside :meth:`~moefusion.Fuser.temporal_smoothing`)
-> colour -> write (:func:`moefusion.video.open_writer`). One batch of frames is in memory
at a time; the video and the CSV appear only when the run completes.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from moefusion.commands import _fuse_align
from moefusion.commands._common import (
    check_files_outside,
    check_out_folder,
    check_output_outside,
    check_targets,
    check_writable_outputs,
    input_folders,
    resolve_weights,
)
from moefusion.commands._fuse_options import check_video_options
from moefusion.data import LoadedPair, PairResize, colorize_u8, is_image_file, pair_from_arrays
from moefusion.errors import MoEFusionError, PairError
from moefusion.video import (
    VIDEO_FORMATS,
    Frame,
    FrameMatch,
    is_video_file,
    match_frames,
    open_source,
    open_writer,
)


def _is_video_path(path: Path) -> bool:
    return is_video_file(path) or (path.is_file() and not is_image_file(path))


def wants_video(args: argparse.Namespace) -> bool:
    """Video mode: ``--sequence``, or an input file that is not an image."""
    return bool(args.sequence) or _is_video_path(args.ir) or _is_video_path(args.vi)


# ------------------------------------------------------------------------------ gates CSV


class FrameGateLog:
    """The per-frame gate CSV, written row by row into a temporary file (atomic)."""

    def __init__(self, fh: IO[str], *, aligned: bool) -> None:
        self._writer = csv.writer(fh)
        self._names: list[str] | None = None
        self._aligned = aligned

    def add(
        self,
        index: int,
        seconds: float,
        ir: Frame,
        vi: Frame,
        gates: dict[str, np.ndarray],
        confidence: float | None,
    ) -> None:
        if self._names is None:
            self._names = list(gates)
            header = ["frame", "time_s", "ir_frame", "vi_frame"]
            header += ["align_confidence"] if self._aligned else []
            for n in self._names:
                header += [f"{n}_{i}" for i in range(len(gates[n]))] + [f"{n}_experts"]
            self._writer.writerow(header)
        row: list[Any] = [index, f"{seconds:.4f}", ir.index, vi.index]
        if self._aligned:
            row.append("" if confidence is None else f"{confidence:.4f}")
        for n in self._names:
            w = gates[n]
            row += [round(float(x), 6) for x in w]
            row.append(" ".join(str(int(i)) for i in np.argsort(-w, kind="stable") if w[i] > 0))
        self._writer.writerow(row)


# ------------------------------------------------------------------------------ run


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _output_size(
    ir_size: tuple[int, int], vi_size: tuple[int, int], resize: PairResize
) -> tuple[int, int]:
    if resize == "vi":
        return vi_size
    if isinstance(resize, tuple):
        return resize
    return ir_size


def _to_u8(img01: np.ndarray) -> np.ndarray:
    # the rounding of save_gray_u8
    return np.clip(np.floor(np.asarray(img01, np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _batches(
    pairs: Iterator[tuple[Frame, Frame]], size: int
) -> Iterator[list[tuple[Frame, Frame]]]:
    batch: list[tuple[Frame, Frame]] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(args: argparse.Namespace) -> int:
    from moefusion.commands.fuse import _check_options as check_common
    from moefusion.commands.fuse import parse_resize

    check_common(args)
    check_video_options(args)
    resize = parse_resize(args.resize)
    aligner = _fuse_align.Aligner.from_args(args)
    fmt = args.video_format or "mp4"
    smoothing = args.temporal_smoothing or 0.0

    ir_src = open_source(args.ir, sequence=args.sequence, fps=args.fps)
    try:
        vi_src = open_source(args.vi, sequence=args.sequence, fps=args.fps)
    except BaseException:
        ir_src.close()
        raise
    try:
        match = match_frames(ir_src, vi_src, trim=args.trim, fps=args.fps)
        if ir_src.size != vi_src.size and resize is None:
            if aligner is None:
                (iw, ih), (vw, vh) = ir_src.size, vi_src.size
                raise PairError(
                    f"the streams' frames differ in size: infrared {args.ir} is {iw}x{ih}, "
                    f"visible {args.vi} is {vw}x{vh}; pass --resize ir, vi or WxH, or --align"
                )
            resize = "ir"  # registered onto the infrared grid: start from the same size
        return _run(args, match, resize, aligner, fmt, smoothing)
    finally:
        ir_src.close()
        vi_src.close()


def _run(
    args: argparse.Namespace,
    match: FrameMatch,
    resize: PairResize,
    aligner: _fuse_align.Aligner | None,
    fmt: str,
    smoothing: float,
) -> int:
    from moefusion.atomic import atomic_open
    from moefusion.fuser import Fuser, resolve_device

    stem = _stem(args.ir)
    video_path = args.out / f"{stem}{VIDEO_FORMATS[fmt][1]}"
    gates_path = args.save_gates or args.out / f"{stem}_gates.csv"
    check_out_folder(args.out)
    inside, beside = input_folders(args.ir, args.vi)
    check_output_outside(args.out, inside, beside)
    check_files_outside([gates_path], inside, beside)
    inputs = [p for p in (args.ir, args.vi) if p.is_file()]
    check_targets([video_path, gates_path], inputs, overwrite=args.overwrite)
    check_writable_outputs(args.out, [gates_path])
    weights = resolve_weights(args.weights)
    device = resolve_device(args.device)

    width, height = _output_size(match.ir.size, match.vi.size, resize)
    fuser = Fuser.from_file(weights, device=device)
    tile, overlap = args.tile, args.overlap
    if tile is None and (auto := fuser.auto_tile(height, width, args.batch_size)) is not None:
        tile = auto
        print(
            f"moefusion fuse: {width}x{height} frames do not fit untiled in the available "
            f"memory; fusing them in {tile}x{tile} tiles",
            file=sys.stderr,
        )
    print(f"moefusion fuse: {match.note}", file=sys.stderr)

    done = 0
    start = time.perf_counter()
    bar = tqdm(total=match.total, unit="frame", desc="fuse", disable=args.no_progress)
    names = (str(args.ir), str(args.vi))
    try:
        with (
            fuser.temporal_smoothing(smoothing),
            open_writer(
                video_path, fps=match.fps, size=(width, height), color=args.color, fmt=fmt
            ) as write,
            atomic_open(gates_path, "w", newline="") as fh,
        ):
            log = FrameGateLog(fh, aligned=aligner is not None)
            for batch in _batches(match.pairs(), args.batch_size):
                loaded: list[tuple[Frame, Frame, LoadedPair, float | None]] = []
                for ir_f, vi_f in batch:
                    lp = pair_from_arrays(
                        ir_f.image, vi_f.image, high_bit=args.high_bit, resize=resize, names=names
                    )
                    confidence = None
                    if aligner is not None:
                        lp, reg = aligner.align_frame(lp, done + len(loaded))
                        confidence = reg.confidence if reg.method != "none" else None
                    loaded.append((ir_f, vi_f, lp, confidence))
                results = fuser.fuse_arrays(
                    [lp.ir for _, _, lp, _ in loaded],
                    [lp.vi for _, _, lp, _ in loaded],
                    tile=tile,
                    overlap=overlap,
                    batch_size=len(loaded),
                    details=True,
                )
                for (ir_f, vi_f, lp, confidence), res in zip(loaded, results, strict=True):
                    frame = colorize_u8(res.fused, lp.vi_rgb) if args.color else _to_u8(res.fused)
                    write(frame)
                    seconds = ir_f.time if ir_f.time is not None else done / match.fps
                    log.add(done, seconds, ir_f, vi_f, res.gates, confidence)
                    done += 1
                    bar.update(1)
            if done == 0:
                raise MoEFusionError(f"no frame pairs to fuse in {args.ir} and {args.vi}")
    except KeyboardInterrupt:
        bar.close()
        print(
            f"moefusion fuse: interrupted after {done} of {match.total or '?'} frame(s); "
            "nothing written (the video and its gates appear only when complete)",
            file=sys.stderr,
        )
        raise
    bar.close()
    elapsed = time.perf_counter() - start
    if match.total is not None and done < match.total:
        print(
            f"moefusion fuse: note: a stream ended after {done} frame pair(s), before the "
            f"{match.total} its container announced; the video has {done} frames",
            file=sys.stderr,
        )
    rate = done / elapsed if elapsed > 0 else float("inf")
    kind = "colour" if args.color else "gray"
    print(
        f"fused {done} frame(s) into {video_path} ({width}x{height}, {match.fps:g} fps, {kind}, "
        f"{VIDEO_FORMATS[fmt][2]}) in {elapsed:.1f} s ({rate:.2f} frames/s); gates in "
        f"{gates_path}"
    )
    if aligner is not None and aligner.current is not None:
        print(
            f"registration: {aligner.current.describe()}; refined {aligner.refinements} "
            f"time(s), {aligner.failures} failure(s)"
        )
    return 0
