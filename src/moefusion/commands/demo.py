"""``moefusion demo``: a local web page to fuse a pair and see what the network decided.

The page (:mod:`moefusion.demo.app`) needs gradio, an optional extra
(``pip install -e ".[demo]"``); this module checks for it without importing it, so that
``moefusion --help`` and every other command work without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import shutil
import tempfile
import warnings
from pathlib import Path

from moefusion.commands._common import DEVICE_HELP, device_arg, resolve_weights
from moefusion.errors import MoEFusionError

#: What to run when gradio is missing.
INSTALL_HINT = 'the demo needs gradio: pip install -e ".[demo]" (or pip install gradio)'


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Serve a local web page where you upload an infrared and a visible image (or "
            "pick a sample pair) and see the fused images, the experts that fired in each "
            "mixture, the attention map, a classical baseline and the paper's eight "
            "metrics of both, and download the fused images. Needs the optional gradio "
            'extra: pip install -e ".[demo]". Stop it with Ctrl-C.'
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens "
        "the page to the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (.safetensors from `moefusion train`, or a training .ckpt); default: bundled",
    )
    p.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with ir/ and vi/ sample pairs offered on the page (default: the "
        "repository's samples/)",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise MoEFusionError(f"--port must be 1..65535, got {args.port}")
    if args.samples is not None and not (
        (args.samples / "ir").is_dir() and (args.samples / "vi").is_dir()
    ):
        raise MoEFusionError(f"--samples {args.samples}: expected a folder with ir/ and vi/")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        warnings.warn(
            f"listening on {args.host}: anyone who can reach this machine can use the demo",
            UserWarning,
            stacklevel=2,
        )


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise MoEFusionError(INSTALL_HINT)
    _check_args(args)
    weights = resolve_weights(args.weights)

    from moefusion.demo.logic import Demo, bundled_samples_dir, sample_pairs
    from moefusion.fuser import Fuser

    samples_dir = args.samples if args.samples is not None else bundled_samples_dir()
    fuser = Fuser.from_file(weights, device=args.device)
    out_dir = Path(tempfile.mkdtemp(prefix="moefusion-demo-"))
    try:
        demo = Demo(fuser, out_dir, weights_name=weights.name, samples=sample_pairs(samples_dir))
        from moefusion.demo.app import serve

        allowed = [out_dir] + ([samples_dir.resolve()] if samples_dir is not None else [])
        try:
            serve(demo, args.host, args.port, allowed)
        except OSError as exc:
            text = " ".join(str(exc).split())
            why = "the port is in use" if "empty port" in text else text
            raise MoEFusionError(
                f"cannot listen on {args.host}:{args.port} ({why}); pass another --port"
            ) from exc
    finally:
        # the downloads of this session: gone with the server
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0
