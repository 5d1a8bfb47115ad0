"""Atomic file writing: write to a temporary name in the target's folder, rename when done.

Every file the project writes goes through these helpers, so an interrupted run (Ctrl-C,
a full disk, a crash in an encoder) never leaves a truncated file under the final name
and never destroys the previous version of a file it was replacing. The temporary file
lives in the same folder as the target (``os.replace`` is only atomic within one file
system) under a hidden name that ends in ``.tmp`` (so no image or table reader picks it
up) unless ``keep_suffix`` asks for the real extension (for writers that pick the format
from the name).

Example::

    with atomic_path(out / "model.onnx") as tmp:
        torch.onnx.export(model, args, str(tmp))     # out/model.onnx appears only now

    atomic_write_text(out / "summary.json", text)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from moefusion.errors import MoEFusionError

__all__ = [
    "TEMP_MARK",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "temp_name",
]

#: Part of every temporary file name (``.<name>.<random>.partial.tmp``).
TEMP_MARK = ".partial"


def temp_name(path: Path, *, keep_suffix: bool = False) -> Path:
    """A fresh hidden temporary path beside ``path``.

    ``keep_suffix`` ends the name with ``path``'s own extension (``.fig.a1b2.partial.png``)
    for writers that infer the format from the file name.
    """
    token = secrets.token_hex(4)
    tail = path.suffix if keep_suffix and path.suffix else ".tmp"
    return path.with_name(f".{path.name}.{token}{TEMP_MARK}{tail}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Parent folders are created. If the block raises (including ``KeyboardInterrupt``),
    the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target, keep_suffix=keep_suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise MoEFusionError(f"internal error: nothing was written for {target}")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only replaces ``path`` when the block completes.

    The data is flushed and ``fsync``-ed before the rename.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    binary = "b" in mode
    with atomic_path(path) as tmp:
        kwargs: dict[str, Any] = {} if binary else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Raise :class:`MoEFusionError` unless files can be created in ``folder``.

    ``folder`` need not exist yet: then its nearest existing ancestor must be a writable
    folder. Nothing is left behind (a probe file is created and removed). Meant to run
    before any work, so that a read-only output is found in a second, not after an hour.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MoEFusionError(f"{what} {folder} exists and is not a folder")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise MoEFusionError(f"cannot create {what} {folder}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".moefusion-write-test-", dir=base)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if base == folder.absolute() else f" (its existing parent {base})"
        raise MoEFusionError(f"cannot write to {what} {folder}{where}: {reason}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
