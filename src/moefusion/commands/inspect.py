"""``moefusion inspect``: the paper's figures for one pair (attention, experts, gates)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moefusion.commands._common import (
    check_not_same_input,
    check_out_folder,
    check_targets,
    check_writable_outputs,
    device_arg,
    resolve_weights,
)
from moefusion.errors import MoEFusionError


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Run the model on one infrared/visible pair and draw what it did: the attention "
            "map over the image (attention.png), the gate weights of every mixture as bars "
            "(gates.png), each MoLE expert's foreground and background output, as in the "
            "paper's Fig. 6 (mole_experts.png), and each MoGE expert's own decoded image "
            "next to the fused one (moge_experts.png); inspection.json holds the numbers. "
            "Every expert is run, not only the ones the gates selected (marked *)."
        ),
        epilog="example:\n  moefusion inspect --ir samples/ir/00095D.png "
        "--vi samples/vi/00095D.png --out inspect/00095D",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ir", type=Path, required=True, help="infrared image file")
    p.add_argument("--vi", type=Path, required=True, help="visible image file (same size)")
    p.add_argument("--out", type=Path, required=True, help="folder for the figures")
    p.add_argument("--weights", type=Path, default=None, help="default: the bundled weights")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures")
    return p


def run(args: argparse.Namespace) -> int:
    from moefusion.data import load_pair
    from moefusion.fuser import Fuser
    from moefusion.inspection import OUTPUT_FILES, inspect_pair, save_inspection

    for option, path in (("--ir", args.ir), ("--vi", args.vi)):
        if not path.is_file():
            raise MoEFusionError(f"{option} {path}: not a file (inspect takes one pair)")
    check_not_same_input(args.ir, args.vi)
    check_out_folder(args.out)
    targets = [args.out / name for name in OUTPUT_FILES]
    check_targets(targets, [args.ir, args.vi], overwrite=args.overwrite)
    check_writable_outputs(args.out)
    pair = load_pair(args.ir, args.vi)
    fuser = Fuser.from_file(resolve_weights(args.weights), device=args.device)
    ins = inspect_pair(fuser.model, pair.ir, pair.vi)
    if args.overwrite:  # figures a previous run wrote for another variant must not linger
        for stale in targets:
            stale.unlink(missing_ok=True)
    written = save_inspection(ins, args.out)
    for name in ins.gates:
        print(f"{name}: experts {[i + 1 for i in ins.selected(name)]} of {len(ins.gates[name])}")
    for path in written.values():
        print(path)
    return 0
