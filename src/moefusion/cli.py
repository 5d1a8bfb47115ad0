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
import warnings

# Busy-waiting OpenMP threads make torch several times slower on a shared or small
# machine; passive waiting costs nothing measurable when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The commands run on cpu, cuda or mps: no need for torch to scan every installed
# package's entry points for out-of-tree device backends when it is imported.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
from collections.abc import Sequence

from moefusion import __version__
from moefusion.errors import MoEFusionError

#: commands that run the network pass after pass: freed memory is kept for reuse
#: (:func:`moefusion.runtime.reuse_freed_memory`; ``MOEFUSION_REUSE_MEMORY=0`` opts out)
REUSE_MEMORY = ("fuse",)

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
    "inspect": ("inspect", "figures of one pair: attention, every expert's output, the gates"),
    "study": ("study", "run a study of the paper (ablation, experts, alpha) on your data"),
    "demo": ("demo", "a local web page: fuse a pair, see the experts that fired and the attention"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only`` of that one command: the other
    commands' modules (and what they import: metrics, Lightning, ...) are not imported
    and their sub-parsers are bare (``moefusion fuse`` starts faster)."""
    parser = argparse.ArgumentParser(
        prog="moefusion",
        description="MoE-Fusion infrared-visible image fusion toolkit (Cao et al., ICCV 2023).",
    )
    parser.add_argument("--version", action="version", version=f"moefusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(f"moefusion.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("moefusion.commands"):
                continue  # command not implemented in this build
            raise
        p = module.add_parser(sub, name, help_text)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 done but some items failed (the command says
    which), 2 a usage or input error (one line on stderr, nothing written), 130 interrupted.

    Set ``MOEFUSION_DEBUG=1`` to get the full traceback of file-system and memory errors.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    # what a command would be re-run with (``fuse --devices N`` starts its other
    # processes by re-running the command line, as Lightning's DDP launcher does)
    args._argv = args_list
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.command in REUSE_MEMORY:
        from moefusion.runtime import reuse_freed_memory

        reuse_freed_memory()
    prefix = f"moefusion {args.command}"
    original_format = warnings.formatwarning

    def one_line_warning(message, category, filename, lineno, line=None) -> str:
        return f"{prefix}: warning: {' '.join(str(message).split())}\n"

    warnings.formatwarning = one_line_warning
    debug = os.environ.get("MOEFUSION_DEBUG", "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except MoEFusionError as exc:
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        if debug:
            raise
        print(f"{prefix}: error: out of memory ({_one_line(exc)})", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, ... after the checks passed
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"{prefix}: error: {exc.strerror or _one_line(exc)}{where}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = original_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
