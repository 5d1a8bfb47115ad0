"""Process settings for fast inference (what ``moefusion fuse`` applies at start-up).

:func:`reuse_freed_memory`: glibc's ``malloc`` hands every block of 32 MB or more (and,
by default, much smaller ones) back to the kernel when it is freed, so the next forward
pass gets fresh pages that the kernel has to fault in and zero, one 4 KiB page at a
time. A 640x480 pair allocates about 800 MB of feature maps per pass; on the project's
virtual machine those page faults took more CPU time than the convolutions themselves
(``docs/fuse.md``, "Speed"). Keeping freed memory in the process makes every pass after
the first reuse the same pages: the resident size stays at the peak of one pass.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["reuse_freed_memory"]

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
