"""Helpers every command shares: output safety, ``NAME=DIR`` options, weights and devices.

Commands import these instead of each other's (or :mod:`moefusion.evaluation`'s)
private functions. Everything here raises :class:`~moefusion.errors.MoEFusionError`
with a one-line message that the CLI prints as ``moefusion <command>: error: ...``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

from moefusion.devices import DEVICE_CHOICES, parse_device
from moefusion.errors import MoEFusionError

__all__ = [
    "DEVICE_HELP",
    "check_figure_path",
    "check_files_outside",
    "check_not_same_input",
    "check_out_folder",
    "check_output_outside",
    "check_targets",
    "check_writable_outputs",
    "device_arg",
    "input_folders",
    "is_inside",
    "listing",
    "parse_device",
    "parse_named_dirs",
    "resolve_weights",
]

#: How many offending paths an error lists.
LISTED = 5
#: ``--device`` help text of the commands that run the network.
DEVICE_HELP = f"{DEVICE_CHOICES} (default: auto)"


def listing(items: Iterable[object], limit: int = LISTED) -> str:
    """``"a, b, c (+N more)"`` for error messages."""
    names = [str(x) for x in items]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------ options


def refuse_given(
    args: argparse.Namespace, options: dict[str, tuple[str, object]], why: str
) -> None:
    """Refuse, as ``"<option> <why>"``, the first of ``options`` (attribute -> (option,
    default)) that the command line set to other than its default."""
    for attr, (option, default) in options.items():
        if getattr(args, attr, default) != default:
            raise MoEFusionError(f"{option} {why}")


def parse_named_dirs(specs: Sequence[str], option: str = "--fused") -> dict[str, Path]:
    """``NAME=DIR`` (or just ``DIR``, named after the folder) -> ``{name: folder}``.

    Raises:
        MoEFusionError: an empty name or folder, or a name given twice.
    """
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec).name, spec
        name = name.strip()
        if not name or not folder:
            raise MoEFusionError(f"{option} expects NAME=DIR, got {spec!r}")
        if name in out:
            raise MoEFusionError(f"{option} name {name!r} given twice")
        out[name] = Path(folder)
    return out


def device_arg(text: str) -> str:
    """:func:`moefusion.devices.parse_device` (the spelling of a ``--device`` value) as an
    argparse ``type`` (a usage error, exit code 2)."""
    try:
        return parse_device(text)
    except MoEFusionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def resolve_weights(weights: Path | None) -> Path:
    """``--weights`` or the bundled weights; a clear error when neither exists."""
    if weights is not None:
        if not weights.is_file():
            raise MoEFusionError(f"weights file not found: {weights}")
        return weights
    from moefusion import weights as weights_module

    bundled = weights_module.bundled_weights_path()
    if bundled is None:
        raise MoEFusionError(
            "this moefusion build has no bundled weights; pass --weights FILE "
            "(a .safetensors file written by `moefusion train`)"
        )
    return bundled


def check_figure_path(path: Path) -> None:
    """Refuse a ``--figure`` extension matplotlib cannot write, before any work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    kinds = sorted(FigureCanvasAgg.get_supported_filetypes())
    ext = path.suffix.lower().lstrip(".")
    if ext not in kinds:
        raise MoEFusionError(
            f"--figure {path}: unsupported extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join('.' + k for k in kinds)}"
        )


# ------------------------------------------------------------------------------ outputs


def is_inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (after resolving links and ``..``)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_not_same_input(ir: Path, vi: Path) -> None:
    """Refuse ``--ir X --vi X``: every image would be fused with itself."""
    if ir.exists() and vi.exists() and ir.resolve() == vi.resolve():
        kind = "folder" if ir.is_dir() else "file"
        raise MoEFusionError(
            f"--ir and --vi are the same {kind} ({ir}); give the infrared and the visible "
            "images separately"
        )


def input_folders(ir: Path, vi: Path) -> tuple[list[Path], list[Path]]:
    """``(folders nothing may be written inside, folders nothing may be written into)``.

    Two input folders are protected with everything below them (a later run over them
    would pick the outputs up as inputs). For two input files only their own folders
    are protected, and only directly: ``--ir a.png --vi b.png --out fused/`` is fine,
    ``--out .`` is not.
    """
    if ir.is_file() and vi.is_file():
        return [], [ir.parent, vi.parent]
    return [ir, vi], []


def check_output_outside(
    out_dir: Path, inputs: Iterable[Path], beside: Iterable[Path] = ()
) -> None:
    """Refuse an output folder that is or lies inside one of ``inputs``, or that is one
    of the ``beside`` folders (the folders of input files, see :func:`input_folders`)."""
    for d in inputs:
        if is_inside(out_dir, d):
            how = "is" if out_dir.resolve() == d.resolve() else "is inside"
            raise MoEFusionError(
                f"output folder {out_dir} {how} input folder {d}; choose another --out"
            )
    for d in beside:
        if out_dir.resolve() == d.resolve():
            raise MoEFusionError(
                f"output folder {out_dir} is the input files' folder {d} (outputs would sit "
                "beside the inputs); choose another --out"
            )


def check_files_outside(
    files: Iterable[Path], inputs: Iterable[Path], beside: Iterable[Path] = ()
) -> None:
    """:func:`check_output_outside` for single output files (``--figure``, ``--save-gates``)."""
    inputs, beside = list(inputs), list(beside)
    for t in files:
        for d in inputs:
            if is_inside(t, d):
                raise MoEFusionError(f"{t} is inside input folder {d}; write it elsewhere")
        for d in beside:
            if t.parent.resolve() == d.resolve():
                raise MoEFusionError(
                    f"{t} would sit beside the input files in {d}; write it elsewhere"
                )


def check_out_folder(out: Path, option: str = "--out") -> None:
    """Refuse an output folder path that exists as a file."""
    if out.exists() and not out.is_dir():
        raise MoEFusionError(f"{option} {out} exists and is not a folder")


def check_targets(
    targets: Sequence[Path],
    inputs: Iterable[Path],
    *,
    overwrite: bool,
    clash_hint: str = "",
) -> None:
    """Refuse outputs that would replace an input file, map twice to one file, or (without
    ``overwrite``) replace existing files. Call before any work."""
    input_set = {p.resolve() for p in inputs}
    clobbered = [t for t in targets if t.resolve() in input_set]
    if clobbered:
        raise MoEFusionError(f"output would overwrite input file(s): {listing(clobbered)}")
    seen: dict[Path, int] = {}
    for t in targets:
        seen[t.resolve()] = seen.get(t.resolve(), 0) + 1
    dupes = [p for p, n in seen.items() if n > 1]
    if dupes:
        raise MoEFusionError(f"several outputs map to the same file{clash_hint}: {listing(dupes)}")
    if not overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise MoEFusionError(
                f"{len(existing)} output file(s) already exist: {listing(existing)}; "
                "pass --overwrite to replace them"
            )


def check_writable_outputs(out: Path, extra: Sequence[Path] = ()) -> None:
    """Every output location must be writable before the work starts."""
    from moefusion.atomic import check_writable

    check_writable(out, "output folder")
    for p in extra:
        check_writable(p.parent, f"folder of {p}")
