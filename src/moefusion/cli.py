"""The ``moefusion`` command line: one subcommand per module in :mod:`moefusion.commands`.

Each command module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Modules are imported lazily so that ``moefusion --help`` stays fast
and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Busy-waiting OpenMP threads make torch several times slower on a shared or small
# machine; passive waiting costs nothing measurable when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Sequence

from moefusion import __version__
from moefusion.errors import MoEFusionError

#: subcommand name -> (module under moefusion.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fuse": ("fuse", "fuse infrared/visible pairs (files or folders) with trained weights"),
    "train": ("train", "train MoE-Fusion from a YAML config (PyTorch Lightning)"),
    "evaluate": ("evaluate", "compute fusion-quality metrics for one or more fused folders"),
    "baseline": (
        "baseline",
        "fuse pairs with a classical method (average, max, pyramid, DWT, GFF)",
    ),
    "detect-eval": ("detect_eval", "detection evaluation of fused images (paper Table 3)"),
    "export": ("export", "export the fusion network to ONNX or TorchScript"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moefusion",
        description="MoE-Fusion infrared-visible image fusion toolkit (Cao et al., ICCV 2023).",
    )
    parser.add_argument("--version", action="version", version=f"moefusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"moefusion.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("moefusion.commands"):
                continue  # command not implemented in this build
            raise
        p = module.add_parser(sub, name, help_text)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MoEFusionError as exc:
        print(f"moefusion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
