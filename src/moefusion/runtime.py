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
Flush-to-zero mode treats them as 0, which changes no result above that magnitude. The
mode is a per-thread CPU register: :func:`set_flush_denormal_all_threads` sets it on the
calling thread and on every thread of the OpenMP pool that runs PyTorch's parallel
operations, which may already exist (``torch.set_flush_denormal`` alone reaches only the
calling thread: a 2-thread stage-2 run slowed from 1.9 to 0.32 steps per second by epoch 13,
``docs/training.md``, "Subnormal weights").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Iterator

__all__ = [
    "denormals_flushed",
    "denormals_flushed_in_pool",
    "flush_denormals",
    "reuse_freed_memory",
    "set_flush_denormal_all_threads",
]

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


def denormals_flushed_in_pool() -> bool:
    """Whether every thread of PyTorch's intra-op pool flushes subnormal results to zero:
    one multiplication large enough to be split across all of them."""
    import torch

    threads = torch.get_num_threads()
    product = torch.full((threads * 2**17,), 1e-30) * 1e-9
    return not bool(product.any())


_Region = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime that this process has loaded (PyTorch's parallel backend), if any,
    with ``GOMP_parallel``'s signature declared. Cached: a loaded runtime stays loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/lib" in line}
    except OSError:
        return None
    for path in sorted(paths):
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp")):
            try:
                runtime = ctypes.CDLL(path)
                parallel = runtime.GOMP_parallel
            except (OSError, AttributeError):
                continue
            parallel.argtypes = [_Region, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            parallel.restype = None
            return runtime
    return None


def set_flush_denormal_all_threads(on: bool) -> None:
    """``torch.set_flush_denormal(on)`` on the calling thread and on every OpenMP thread.

    The pool's threads keep the mode they had when they were created; this runs one
    parallel region (libgomp's ``GOMP_parallel``, also exported by Intel's runtime) in
    which each thread sets the mode. At least ``os.cpu_count()`` threads take part, so the
    pool's idle threads beyond the current thread count are reached too. Without an OpenMP
    runtime (another platform or backend) only the calling thread is set.
    """
    import torch  # first: it loads the OpenMP runtime that _openmp_runtime looks for

    torch.set_flush_denormal(on)
    runtime = _openmp_runtime()
    if runtime is None:
        return

    def region(_: int | None) -> None:
        # best effort per thread: ctypes would print an exception here as unraisable
        with contextlib.suppress(BaseException):
            torch.set_flush_denormal(on)

    callback = _Region(region)
    threads = max(torch.get_num_threads(), os.cpu_count() or 1)
    runtime.GOMP_parallel(callback, None, threads, 0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Run the block with subnormal floats flushed to zero on every thread that PyTorch
    computes on (:func:`set_flush_denormal_all_threads`).

    Threads created later (the intra-op pool's, data-loader threads) inherit the mode. The
    calling thread's previous mode is restored on exit, on the pool's threads too; on CPUs
    without the mode this does nothing.
    """
    before = denormals_flushed()
    set_flush_denormal_all_threads(True)
    try:
        yield
    finally:
        set_flush_denormal_all_threads(before)
