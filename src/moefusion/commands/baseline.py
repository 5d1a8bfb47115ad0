"""``moefusion baseline``: fuse infrared/visible pairs with a classical method."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moefusion.baselines import BASELINES, fuse_baseline, output_path, to_u8, to_unit_gray
from moefusion.commands._common import (
    check_not_same_input,
    check_out_folder,
    check_output_outside,
    check_targets,
    check_writable_outputs,
    input_folders,
)
from moefusion.data.io import HIGH_BIT_MODES, read_image, save_image_atomic, to_gray, to_unit_float
from moefusion.data.pairs import PAIR_ERRORS, Pair, match_pairs
from moefusion.errors import MoEFusionError, PairError


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Fuse infrared/visible pairs with a classical baseline and write 8-bit gray PNGs "
            "named <stem>.png. Inputs are two folders (paired by file stem) or two files; a "
            "colour visible image is turned to gray with 0.299 R + 0.587 G + 0.114 B and "
            "16-bit images are normalised as `moefusion fuse` does (--high-bit). A bad or "
            "unpaired image is reported on one line and the other pairs are still fused. "
            "Exit code 0 when every pair was fused, 1 when some failed, 2 for usage errors."
        ),
    )
    p.add_argument("--method", required=True, choices=tuple(BASELINES), help="fusion method")
    p.add_argument("--ir", type=Path, required=True, help="infrared image or folder")
    p.add_argument("--vi", type=Path, required=True, help="visible image or folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (not an input folder)")
    p.add_argument(
        "--high-bit",
        choices=HIGH_BIT_MODES,
        default="percentile",
        help="normalisation of 16-bit images (default: 1st..99th percentile stretch)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


Unpaired = tuple[str, Path | None, Path | None, str]


def _pairs(ir: Path, vi: Path) -> tuple[list[Pair], list[Unpaired]]:
    """(pairs, [(stem, ir file, vi file, why it has no pair)]) from two files or two
    folders."""
    if ir.is_file() and vi.is_file():
        return [Pair(stem=ir.stem, ir=ir, vi=vi)], []
    if ir.is_dir() and vi.is_dir():
        pairs, ir_only, vi_only = match_pairs(ir, vi)
        unpaired: list[Unpaired] = [
            (p.stem, p, None, f"no visible image for {p.stem} in {vi}") for p in ir_only
        ]
        unpaired += [(p.stem, None, p, f"no infrared image for {p.stem} in {ir}") for p in vi_only]
        return pairs, sorted(unpaired, key=lambda u: u[0])
    for p in (ir, vi):
        if not p.exists():
            raise MoEFusionError(f"input not found: {p}")
    raise MoEFusionError("--ir and --vi must both be files or both be folders")


def load_gray(path: Path, high_bit: str) -> np.ndarray:
    """(H, W) float64 gray in [0, 1]: 8-bit as before (cv2's rounded RGB2GRAY), 16-bit
    normalised with ``high_bit`` like ``moefusion fuse`` (then BT.601 luma in float)."""
    raw = read_image(path)
    if raw.dtype == np.uint8:
        return to_unit_gray(raw)
    unit = to_unit_float(raw, high_bit=high_bit)
    gray = to_gray(unit) if unit.ndim == 3 else unit
    return np.clip(gray.astype(np.float64), 0.0, 1.0)


def _fail(stem: str, ir: Path | None, vi: Path | None, exc: BaseException | str) -> None:
    msg = (str(exc) if not isinstance(exc, str) else exc).replace("\n", " ")
    msg = msg or type(exc).__name__
    files = [f"{role} {p}" for role, p in (("ir", ir), ("vi", vi)) if p is not None]
    where = f" ({', '.join(files)})" if files else ""
    tqdm.write(f"moefusion baseline: failed {stem}{where}: {msg}", file=sys.stderr)


def _fuse_one(pair: Pair, target: Path, method: str, high_bit: str) -> None:
    ir, vi = load_gray(pair.ir, high_bit), load_gray(pair.vi, high_bit)
    if ir.shape != vi.shape:
        raise PairError(
            f"{pair.stem}: ir is {ir.shape[1]}x{ir.shape[0]} but vi is {vi.shape[1]}x{vi.shape[0]}"
        )
    save_image_atomic(target, to_u8(fuse_baseline(ir, vi, method)))


def run(args: argparse.Namespace) -> int:
    check_not_same_input(args.ir, args.vi)
    pairs, unpaired = _pairs(args.ir, args.vi)
    check_out_folder(args.out)
    check_output_outside(args.out, *input_folders(args.ir, args.vi))
    targets = [output_path(args.out, p.stem) for p in pairs]
    check_targets(targets, (q for p in pairs for q in (p.ir, p.vi)), overwrite=args.overwrite)
    check_writable_outputs(args.out)
    for stem, ir_file, vi_file, why in unpaired:
        _fail(stem, ir_file, vi_file, why)
    failed = len(unpaired)
    done = 0
    try:
        for pair, target in tqdm(
            list(zip(pairs, targets, strict=True)),
            desc=f"baseline {args.method}",
            unit="img",
            disable=args.no_progress,
        ):
            try:
                _fuse_one(pair, target, args.method, args.high_bit)
                done += 1
            except PAIR_ERRORS as exc:
                _fail(pair.stem, pair.ir, pair.vi, exc)
                failed += 1
    except KeyboardInterrupt:
        print(
            f"moefusion baseline: interrupted after {done} of {len(pairs)} pair(s)",
            file=sys.stderr,
        )
        raise
    total = len(pairs) + len(unpaired)
    print(
        f"wrote {done} image(s) to {args.out}"
        + (f"; {failed} of {total} failed (listed above)" if failed else "")
    )
    return 1 if failed else 0
