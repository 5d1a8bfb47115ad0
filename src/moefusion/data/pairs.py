"""Matching infrared and visible image files into pairs by file stem."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from moefusion.data.io import (
    IMAGE_EXTENSIONS,
    LoadedPair,
    PairResize,
    image_size,
    is_image_file,
    load_pair,
)
from moefusion.errors import ImageReadError, MoEFusionError, PairError

__all__ = [
    "PAIR_ERRORS",
    "Pair",
    "dataset_pairs",
    "find_pairs",
    "format_names",
    "list_images",
    "match_pairs",
    "read_pair_batches",
    "same_size_batches",
    "unpaired_message",
]

#: Failures of one pair that must not stop a run over many (decoding, shapes, memory, disk).
PAIR_ERRORS: tuple[type[BaseException], ...] = (
    MoEFusionError,
    RuntimeError,
    ValueError,
    OSError,
    MemoryError,
)

_MAX_LISTED = 10


@dataclass(frozen=True)
class Pair:
    """An infrared/visible pair. ``stem`` is the file stem (or, for recursive search,
    the relative posix path without extension) shared by both files."""

    stem: str
    ir: Path
    vi: Path


def format_names(names: Iterable[str], limit: int = _MAX_LISTED) -> str:
    """``"a, b, c (+N more)"``: a short list of offending names for error messages."""
    items = list(names)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"


def _key(path: Path, folder: Path, recursive: bool) -> str:
    if recursive:
        return path.relative_to(folder).with_suffix("").as_posix()
    return path.stem


def list_images(
    folder: str | Path, role: str, *, recursive: bool = False, suffix: str = ""
) -> dict[str, Path]:
    """The image files of ``folder`` (:func:`~moefusion.data.io.is_image_file`) keyed by
    stem, sorted; with ``recursive`` keyed by relative posix path without extension.
    Hidden files and folders (``.*``) are ignored. ``role`` names the folder in errors.
    With ``suffix`` only the files whose stem ends in it count, keyed without it (FLIR's
    ``X_PreviewData.jpeg`` and ``X_RGB.jpg`` share one folder).

    Raises:
        ImageReadError: the folder does not exist.
        PairError: the same stem occurs twice (``a.png`` and ``a.jpg``), or no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{role} folder not found: {folder}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.stem.endswith(suffix)
    )
    found: dict[str, Path] = {}
    clashes: dict[str, list[str]] = {}
    for p in files:
        key = _key(p, folder, recursive)
        key = key[: len(key) - len(suffix)] if suffix else key
        if key in found:
            clashes.setdefault(key, [found[key].name]).append(p.name)
        else:
            found[key] = p
    if clashes:
        detail = format_names(f"{k} ({' / '.join(v)})" for k, v in sorted(clashes.items()))
        raise PairError(
            f"{len(clashes)} stem(s) occur more than once in {role} folder {folder}: {detail}"
        )
    if not found:
        which = f" named *{suffix}.*" if suffix else ""
        raise PairError(
            f"no image files{which} ({', '.join(IMAGE_EXTENSIONS)}) in {role} folder {folder}"
        )
    return found


def match_pairs(
    ir_dir: Path,
    vi_dir: Path,
    *,
    recursive: bool = False,
    ir_suffix: str = "",
    vi_suffix: str = "",
) -> tuple[list[Pair], list[Path], list[Path]]:
    """Match two image folders: (pairs sorted by stem, IR files without VI, VI without IR).

    With ``ir_suffix``/``vi_suffix`` the files are matched by their stems without them
    (:func:`list_images`) and a pair is named after its infrared file, as the labels of
    such a data set are (FLIR-aligned: ``FLIR_08865_PreviewData``).

    Raises:
        PairError: a folder has no images or the same stem twice.
    """
    ir_files = list_images(ir_dir, "infrared", recursive=recursive, suffix=ir_suffix)
    vi_files = list_images(vi_dir, "visible", recursive=recursive, suffix=vi_suffix)
    common = sorted(ir_files.keys() & vi_files.keys())
    pairs = [Pair(stem=k + ir_suffix, ir=ir_files[k], vi=vi_files[k]) for k in common]
    ir_only = [ir_files[k] for k in sorted(set(ir_files) - set(vi_files))]
    vi_only = [vi_files[k] for k in sorted(set(vi_files) - set(ir_files))]
    return pairs, ir_only, vi_only


def unpaired_message(ir_dir: Path, vi_dir: Path, ir_only: list[Path], vi_only: list[Path]) -> str:
    """Human-readable description of unpaired files (counts and the first names)."""
    parts = []
    if ir_only:
        names = (p.relative_to(ir_dir).as_posix() for p in ir_only)
        parts.append(
            f"{len(ir_only)} infrared image(s) in {ir_dir} without a visible partner "
            f"in {vi_dir}: {format_names(names)}"
        )
    if vi_only:
        names = (p.relative_to(vi_dir).as_posix() for p in vi_only)
        parts.append(
            f"{len(vi_only)} visible image(s) in {vi_dir} without an infrared partner "
            f"in {ir_dir}: {format_names(names)}"
        )
    return "; ".join(parts)


def find_pairs(
    ir: str | Path,
    vi: str | Path,
    *,
    recursive: bool = False,
    allow_unpaired: bool = False,
) -> list[Pair]:
    """Pair infrared and visible images, sorted by stem.

    ``ir`` and ``vi`` are either two files (one pair, stem taken from the IR file) or two
    folders whose image files are matched by stem (with ``recursive``, by relative path
    without extension). Non-image and hidden files are ignored.

    Raises:
        PairError: a path is missing, one is a file and the other a folder, a folder has
            no images or the same stem twice (``a.png`` and ``a.jpg``), or images lack a
            partner (unless ``allow_unpaired``, which warns with the count instead).
        ImageReadError: two files were given and one is not an image file.
    """
    ir_p, vi_p = Path(ir), Path(vi)
    for role, p in (("infrared", ir_p), ("visible", vi_p)):
        if not p.exists():
            raise PairError(f"{role} path does not exist: {p}")
    if ir_p.is_file() and vi_p.is_file():
        for p in (ir_p, vi_p):
            if not is_image_file(p):
                raise ImageReadError(f"not an image file (unknown extension): {p}")
        return [Pair(stem=ir_p.stem, ir=ir_p, vi=vi_p)]
    if not (ir_p.is_dir() and vi_p.is_dir()):
        kind = {True: "folder", False: "file"}
        raise PairError(
            f"infrared and visible paths must both be files or both be folders: "
            f"{ir_p} is a {kind[ir_p.is_dir()]}, {vi_p} is a {kind[vi_p.is_dir()]}"
        )

    pairs, ir_only, vi_only = match_pairs(ir_p, vi_p, recursive=recursive)
    if ir_only or vi_only:
        message = unpaired_message(ir_p, vi_p, ir_only, vi_only)
        if not allow_unpaired or not pairs:
            raise PairError(message)
        warnings.warn(
            f"{len(ir_only) + len(vi_only)} unpaired image(s) ignored: {message}", stacklevel=2
        )
    return pairs


def dataset_pairs(
    root: str | Path,
    *,
    recursive: bool = False,
    allow_unpaired: bool = False,
    layout: str = "auto",
    part: str | None = None,
) -> list[Pair]:
    """Pairs of the data set folder ``root`` in its layout (``ir/`` + ``vi/``, or an
    official one: :func:`moefusion.data.layouts.resolve_layout`; see :func:`find_pairs`)."""
    from moefusion.data.layouts import resolve_layout

    found = resolve_layout(root, layout, part)
    pairs, ir_only, vi_only = match_pairs(
        found.ir_dir,
        found.vi_dir,
        recursive=recursive,
        ir_suffix=found.ir_suffix,
        vi_suffix=found.vi_suffix,
    )
    if ir_only or vi_only:
        message = unpaired_message(found.ir_dir, found.vi_dir, ir_only, vi_only)
        if not allow_unpaired or not pairs:
            raise PairError(message)
        warnings.warn(
            f"{len(ir_only) + len(vi_only)} unpaired image(s) ignored: {message}", stacklevel=2
        )
    return pairs


# ------------------------------------------------------------------------------ batches


def same_size_batches(sizes: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices of equal ``sizes`` in chunks of at most ``batch_size``.

    Groups come in the order of their first member, indices in input order. With
    ``batch_size`` 1 every index is its own batch, in input order.
    """
    if batch_size < 1:
        raise MoEFusionError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size == 1:
        return [[i] for i in range(len(sizes))]
    groups: dict[Hashable, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def _decoded_size(pair: Pair, resize: PairResize, index: int) -> Hashable:
    """Pairs with equal keys decode to the same size (header read only)."""
    if isinstance(resize, tuple):
        return resize
    try:
        return image_size(pair.vi if resize == "vi" else pair.ir)
    except MoEFusionError:
        return ("unreadable", index)  # fails alone at decode time


def read_pair_batches(
    pairs: Sequence[Pair],
    *,
    batch_size: int = 1,
    resize: PairResize = None,
    high_bit: str = "percentile",
) -> Iterator[list[tuple[int, LoadedPair | BaseException]]]:
    """Decode pairs batch by batch: same-size pairs (by their headers) in chunks of
    ``batch_size``, only one batch in memory at a time.

    Yields:
        per batch, ``(index into pairs, LoadedPair)`` or, for a pair that cannot be
        decoded, ``(index, the exception)`` (one of :data:`PAIR_ERRORS`), so that one
        bad pair does not stop the others. See :func:`~moefusion.data.io.load_pair` for
        ``resize`` and ``high_bit``.
    """
    if batch_size > 1:
        sizes: list[Hashable] = [_decoded_size(p, resize, i) for i, p in enumerate(pairs)]
    else:
        sizes = list(range(len(pairs)))  # one pair per batch: no header reads needed
    for batch in same_size_batches(sizes, batch_size):
        loaded: list[tuple[int, LoadedPair | BaseException]] = []
        for i in batch:
            try:
                pair = pairs[i]
                loaded.append((i, load_pair(pair.ir, pair.vi, high_bit=high_bit, resize=resize)))
            except PAIR_ERRORS as exc:
                loaded.append((i, exc))
        yield loaded
