"""``moefusion baseline``: fuse infrared/visible pairs with a classical method."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from moefusion.baselines import BASELINES, fuse_baseline, output_path, to_u8, to_unit_gray
from moefusion.errors import MoEFusionError, PairError
from moefusion.evaluation import _list_images, _names, _read_u8, check_output_outside


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Fuse infrared/visible pairs with a classical baseline and write 8-bit gray PNGs "
            "named <stem>.png. Inputs are two folders (paired by file stem) or two files; a "
            "colour visible image is turned to gray with 0.299 R + 0.587 G + 0.114 B."
        ),
    )
    p.add_argument("--method", required=True, choices=tuple(BASELINES), help="fusion method")
    p.add_argument("--ir", type=Path, required=True, help="infrared image or folder")
    p.add_argument("--vi", type=Path, required=True, help="visible image or folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (not an input folder)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _pairs(ir: Path, vi: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """([(stem, ir file, vi file)], input folders) from two files or two folders."""
    if ir.is_file() and vi.is_file():
        return [(ir.stem, ir, vi)], [ir.parent, vi.parent]
    if ir.is_dir() and vi.is_dir():
        a, b = _list_images(ir, "ir"), _list_images(vi, "vi")
        problems = []
        if set(a) - set(b):
            problems.append(f"no visible image for {_names(set(a) - set(b))}")
        if set(b) - set(a):
            problems.append(f"no infrared image for {_names(set(b) - set(a))}")
        if problems:
            raise PairError("unpaired images: " + "; ".join(problems))
        return [(s, a[s], b[s]) for s in sorted(a)], [ir, vi]
    for p in (ir, vi):
        if not p.exists():
            raise MoEFusionError(f"input not found: {p}")
    raise MoEFusionError("--ir and --vi must both be files or both be folders")


def run(args: argparse.Namespace) -> int:
    pairs, folders = _pairs(args.ir, args.vi)
    check_output_outside(args.out, folders)
    targets = [output_path(args.out, stem) for stem, _, _ in pairs]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise MoEFusionError(
            f"{len(existing)} output file(s) exist in {args.out} ({_names(t.name for t in existing)}); "
            "pass --overwrite to replace them"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for (stem, ir_path, vi_path), target in tqdm(
        list(zip(pairs, targets, strict=True)),
        desc=f"baseline {args.method}",
        unit="img",
        disable=args.no_progress,
    ):
        ir, vi = to_unit_gray(_read_u8(ir_path)), to_unit_gray(_read_u8(vi_path))
        if ir.shape != vi.shape:
            raise PairError(
                f"{stem}: ir is {ir.shape[1]}x{ir.shape[0]} but vi is {vi.shape[1]}x{vi.shape[0]}"
            )
        Image.fromarray(to_u8(fuse_baseline(ir, vi, args.method))).save(target)
    print(f"wrote {len(targets)} image(s) to {args.out}")
    return 0
