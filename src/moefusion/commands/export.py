"""``moefusion export``: write the inference network as ONNX or TorchScript."""

from __future__ import annotations

import argparse
from pathlib import Path

from moefusion.commands._common import resolve_weights
from moefusion.errors import MoEFusionError

#: Largest accepted difference between the exported graph and PyTorch in the self-check.
CHECK_TOLERANCE = 1e-4


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Export the inference model (attention branch + fusion network, gates without "
            "noise, all experts run densely and are weighted by the top-K gates) with inputs "
            "ir, vi [B,1,H,W] float32 in [0,1] and output fused [B,1,H,W] clamped to [0,1]; "
            "batch, height and width are dynamic. The file is checked against PyTorch at two "
            "sizes afterwards."
        ),
    )
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (.safetensors, or a training .ckpt); default: the bundled weights",
    )
    p.add_argument("--out", type=Path, required=True, help="output file (.onnx / .pt)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument(
        "--with-attention", action="store_true", help="add the attention map as a second output"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    return p


def run(args: argparse.Namespace) -> int:
    if args.opset is not None and args.format != "onnx":
        raise MoEFusionError("--opset only applies to --format onnx")
    from moefusion.export import DEFAULT_OPSET, check_export, check_opset, export_model

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    check_opset(opset)
    if args.out.is_dir():
        raise MoEFusionError(f"--out {args.out} is a folder; give a file name")
    if args.out.exists() and not args.overwrite:
        raise MoEFusionError(f"{args.out} exists; pass --overwrite to replace it")
    weights = resolve_weights(args.weights)
    if args.weights is not None and args.out.resolve() == args.weights.resolve():
        raise MoEFusionError(f"--out {args.out} is the --weights file; choose another name")
    from moefusion.atomic import check_writable

    check_writable(args.out.parent, f"folder of --out {args.out}")

    from moefusion.weights import load_weights

    model = load_weights(weights, device="cpu")
    path = export_model(
        model, args.out, args.format, opset=opset, with_attention=args.with_attention
    )
    print(f"wrote {args.format} model to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    diff = check_export(model, path, args.format)
    print(f"check: max |exported - PyTorch| = {diff:.2e} at 64x96 and 77x123")
    if diff > CHECK_TOLERANCE:
        print(f"warning: difference above {CHECK_TOLERANCE:g}; the export may be wrong")
        return 1
    return 0
