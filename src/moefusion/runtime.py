"""Process settings for speed (what ``moefusion fuse`` and ``moefusion train`` apply).

:func:`reuse_freed_memory`: glibc's ``malloc`` hands every block of 32 MB or more (and,
by default, much smaller ones) back to the kernel when it is freed, so the next forward
pass gets fresh pages that the kernel has to fault in and zero, one 4 KiB page at a
time. A 640x480 pair allocates about 800 MB of feature maps per pass; on the project's
virtual machine those page faults took more CPU time than the convolutions themselves
(``docs/fuse.md``, "Speed"). Keeping freed memory in the process makes every pass after
the first reuse the same pages: the resident size stays at the peak of one pass.

:func:`flush_denormals`: subnormal floats (magnitude below 1.2e-38 in float32) take a
slow microcode path on x86 CPUs. Weight decay drives the weights of rarely chosen experts
and gates towards zero until some become subnormal; in a stage-2 run (``docs/training.md``,
"Subnormal weights") they made a step 7x slower (3.0 s instead of 0.43 s at step 2 000).
Flush-to-zero mode treats them as 0, which changes no result above that magnitude.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator

__all__ = ["denormals_flushed", "flush_denormals", "reuse_freed_memory"]

# mallopt(3) parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: Set to ``0`` to leave the allocator alone.
ENV_VAR = "MOEFUSION_REUSE_MEMORY"

_applied = False


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel: no
    ``mmap`` for large blocks (they come from the heap, which is never trimmed).

    Process-wide and irreversible in practice (memory freed later is kept too); meant
    for a process that fuses images, not for a library to call behind its user's back.
    Does nothing (returns False) outside Linux/glibc or when ``MOEFUSION_REUSE_MEMORY=0``.
    Returns True when the setting is in effect.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_VAR, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a non-glibc libc (musl) has no mallopt at all
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied


def denormals_flushed() -> bool:
    """Whether this thread flushes subnormal results to zero (PyTorch has no getter)."""
    import torch

    return float(torch.tensor([1e-30]) * 1e-9) == 0.0


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Run the block with subnormal floats flushed to zero (``torch.set_flush_denormal``).

    The mode is per thread and inherited by threads created later (the intra-op pool, the
    data-loader threads), so enter it before the first parallel operation. The previous
    mode is restored on exit; on CPUs without the mode this does nothing.
    """
    import torch  # here: reuse_freed_memory runs before torch is imported

    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
