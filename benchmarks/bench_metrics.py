"""Seconds per 640x480 image for each metric and convention, as a Markdown table.

Usage: ``python benchmarks/bench_metrics.py [--repeat 15] [--extra-repeat 3] [--only-extra]``

A second table times the extended suite (issue #39): the ``vifb`` convention, every
extra metric (FMI, Nabf, MEF-MS-SSIM) alone, and the whole extended suite with and
without FMI, as wall-clock and CPU seconds.

Uses the MSRS triple 00008N (DenseFuse output) from shared/reference/metrics when present,
else a synthetic 640x480 triple. Each metric is timed alone on a fresh input (so it
pays for any shared histogram it needs); "all" is one ``compute()`` call. Values are
medians of ``--repeat`` wall-clock runs; the last row is the CPU time of one
``compute()`` (process time, all threads), which other load on the machine inflates less.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from moefusion.metrics import CONVENTIONS, EXTRA_METRICS, METRICS, VIFB_METRICS, compute
from moefusion.metrics._inputs import make_triple
from moefusion.metrics.conventions import get_convention

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "metrics" / "gray"


def load_triple() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(ir, vi, fused) as (480, 640) uint8, and a description of where they came from."""
    files = [
        REFERENCE / n for n in ("00008N_ir.png", "00008N_vi.png", "fused_densefuse/00008N.png")
    ]
    if all(f.is_file() for f in files):
        ir, vi, f = (np.asarray(Image.open(p)) for p in files)
        return ir, vi, f, "MSRS 00008N, DenseFuse output (shared/reference/metrics)"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    ir = np.clip(128 + 60 * np.sin(xx / 40.0) + rng.normal(0, 10, xx.shape), 0, 255).astype(
        np.uint8
    )
    vi = np.clip(100 + 80 * np.cos(yy / 25.0) + rng.normal(0, 15, xx.shape), 0, 255).astype(
        np.uint8
    )
    f = ((ir.astype(np.uint16) + vi + 1) // 2).astype(np.uint8)
    return ir, vi, f, "synthetic 640x480 triple (reference images not found)"


def median_seconds(
    fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    fn()  # warm-up: imports, allocator, caches
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per cell (median)")
    parser.add_argument(
        "--extra-repeat", type=int, default=3, help="timed runs per cell of the extended table"
    )
    parser.add_argument("--no-extra", action="store_true", help="skip the extended table")
    parser.add_argument("--only-extra", action="store_true", help="only the extended table (#39)")
    args = parser.parse_args()
    ir, vi, f, source = load_triple()
    if args.only_extra:
        print(f"Input: {source}, {f.shape[1]}x{f.shape[0]}")
        extended(ir, vi, f, args.extra_repeat)
        return
    table: dict[str, dict[str, float]] = {}
    for conv in CONVENTIONS:
        c = get_convention(conv)
        cells = {}
        for m in c.metrics:
            fn = c.functions[m]
            cells[m] = median_seconds(lambda fn=fn: fn(make_triple(ir, vi, f)), args.repeat)
        cells["all"] = median_seconds(lambda conv=conv: compute(ir, vi, f, conv), args.repeat)
        # CPU time of this process (all threads): less sensitive to other load on the box.
        cells["all, CPU"] = median_seconds(
            lambda conv=conv: compute(ir, vi, f, conv), args.repeat, time.process_time
        )
        table[conv] = cells
    print(f"Input: {source}, {f.shape[1]}x{f.shape[0]}")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"Median of {args.repeat} runs, wall-clock seconds per image{load}.\n")
    print("| metric | " + " | ".join(CONVENTIONS) + " |")
    print("|---|" + "---:|" * len(CONVENTIONS))
    names = {"all": "**all** (one `compute()`)", "all, CPU": "all, CPU seconds"}
    for m in (*METRICS, *names):
        row = [f"{table[c][m]:.4f}" if m in table[c] else "—" for c in CONVENTIONS]
        name = names.get(m, m)
        print(f"| {name} | " + " | ".join(row) + " |")
    if not args.no_extra:
        extended(ir, vi, f, args.extra_repeat)


def extended(ir: np.ndarray, vi: np.ndarray, f: np.ndarray, repeat: int) -> None:
    """Wall-clock and CPU seconds of the vifb convention and the extra metrics."""
    main_extra = ("FMI_pixel", "FMI_dct", "FMI_w", "Nabf", "MEF_MS_SSIM")
    no_fmi = [m for m in main_extra if not m.startswith("FMI")]
    cases: dict[str, Callable[[], object]] = {
        f"vifb {m}": (lambda m=m: compute(ir, vi, f, "vifb", metrics=[m])) for m in VIFB_METRICS
    }
    cases.update({m: (lambda m=m: compute(ir, vi, f, metrics=[m])) for m in main_extra})
    cases["**vifb** (13 metrics, one `compute()`)"] = lambda: compute(ir, vi, f, "vifb")
    cases["**extended suite without FMI** (vifb + Nabf + MEF_MS_SSIM)"] = lambda: compute(
        ir, vi, f, "vifb", metrics=[*VIFB_METRICS, *no_fmi]
    )
    cases["**extended suite** (vifb + FMI_pixel/dct/w + Nabf + MEF_MS_SSIM)"] = lambda: compute(
        ir, vi, f, "vifb", metrics=[*VIFB_METRICS, *main_extra]
    )
    print(f"\nExtended suite (#39), median of {repeat} runs; extras also exist as ", end="")
    print(", ".join(m for m in EXTRA_METRICS if m not in main_extra) + " (same cost).\n")
    print("| metric | wall s | CPU s |")
    print("|---|---:|---:|")
    for name, fn in cases.items():
        wall = median_seconds(fn, repeat)
        cpu = median_seconds(fn, repeat, time.process_time)
        print(f"| {name} | {wall:.4f} | {cpu:.4f} |", flush=True)


if __name__ == "__main__":
    main()
