"""Inference speed of MoE-Fusion on this machine, printed as a Markdown table.

For each image size: milliseconds per pair (batch 1) for

- ``eager``: PyTorch, attention branch + fusion network (what ``moefusion fuse`` runs),
- ``eager fusion only``: the fusion network with a precomputed attention map,
- ``eager channels-last weights``: the model's parameters also in channels-last layout
  (the features already are, see docs/architecture.md deviation 18),
- ``torch.compile``: inductor on the full model (n/a when it fails),
- ``onnxruntime``: the exported graph (dense expert dispatch: N/K times the expert cost),

the peak resident-memory increase while the variant ran (sampled from /proc every 2 ms,
so short spikes may be missed), the achieved multiply-accumulate rate (the model's MACs,
``moefusion.models.count_macs``, divided by the time) and that rate as a fraction of a
large float32 matmul's rate on the same threads (a practical arithmetic ceiling).

Usage::

    python benchmarks/bench_fuse.py [--weights FILE | --config cpu|paper] [--repeat 5]
        [--threads 2] [--sizes 640x480,1280x1024] [--no-compile] [--no-onnx]

Timing does not depend on the weights: without ``--weights`` (and without bundled
weights) the chosen config is built with random initialisation.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from moefusion.models import MoEFusion, build_model, count_macs, set_dispatch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Current resident set size from /proc (Linux), else None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:
        return None


class PeakRSS:
    """Context manager sampling RSS in a thread; ``delta`` = peak minus the start value."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.delta: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self._start = rss_bytes()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes() or 0)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self.delta = max(self._peak, rss_bytes() or 0) - self._start


@dataclass
class Row:
    size: str
    variant: str
    ms: float | None
    ms_min: float | None
    cpu_ms: float | None
    rss_mb: float | None
    macs: float
    note: str = ""


def time_fn(fn: Callable[[], object], repeat: int) -> tuple[list[float], float, int | None]:
    """One warm-up call, then ``repeat`` timed calls: wall seconds per call, CPU seconds
    per call (all threads of the process) and the peak RSS delta in bytes."""
    fn()
    times = []
    cpu = time.process_time()
    with PeakRSS() as mem:
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times, (time.process_time() - cpu) / repeat, mem.delta


def matmul_gmacs(threads: int, n: int = 1536, repeat: int = 5) -> float:
    """Float32 GEMM rate in GMAC/s on this machine (best of ``repeat``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeat))
    return n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load_model(weights: str | None, config: str) -> tuple[MoEFusion, str]:
    from moefusion.weights import bundled_weights_path, load_weights

    path = weights or bundled_weights_path()
    if path is not None:
        return load_weights(path), f"weights {path}"
    cfg_file = (
        Path(__file__).resolve().parents[1] / "src" / "moefusion" / "configs" / f"{config}.yaml"
    )
    cfg = yaml.safe_load(cfg_file.read_text())["model"]
    torch.manual_seed(0)
    return build_model(cfg, with_heads=False).eval(), f"config {config} (random init)"


def bench_size(model: MoEFusion, height: int, width: int, args: argparse.Namespace) -> list[Row]:
    size = f"{width}x{height}"
    ir, vi = torch.rand(1, 1, height, width), torch.rand(1, 1, height, width)
    macs = count_macs(model, height, width)
    total, fusion_macs = float(macs["total"]), float(macs.get("fusion", 0))
    rows: list[Row] = []

    def record(variant: str, fn: Callable[[], object], work: float, note: str = "") -> None:
        try:
            with torch.inference_mode():
                times, cpu, rss = time_fn(fn, args.repeat)
        except Exception as exc:  # report any backend failure as n/a, keep going
            rows.append(Row(size, variant, None, None, None, None, work, f"n/a: {_short(exc)}"))
            return
        rows.append(
            Row(
                size,
                variant,
                statistics.median(times) * 1e3,
                min(times) * 1e3,
                cpu * 1e3,
                None if rss is None else rss / 2**20,
                work,
                note,
            )
        )

    record("eager", lambda: model(ir, vi), total)
    with torch.inference_mode():
        attention = model.attention(ir, vi)[0]
    record("eager fusion only", lambda: model.fusion(ir, vi, attention), fusion_macs)

    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    record("eager channels-last weights", lambda: channels_last(ir, vi), total)

    if args.compile:
        try:
            compiled = torch.compile(copy.deepcopy(model))
            t = time.perf_counter()
            with torch.inference_mode():
                compiled(ir, vi)
            note = f"compile {time.perf_counter() - t:.0f} s"
            record("torch.compile", lambda: compiled(ir, vi), total, note)
        except Exception as exc:
            rows.append(
                Row(size, "torch.compile", None, None, None, None, total, f"n/a: {_short(exc)}")
            )

    if args.onnx:
        try:
            import onnxruntime as ort

            from moefusion.export import export_onnx

            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(model, Path(tmp) / "m.onnx")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"ir": ir.numpy(), "vi": vi.numpy()}
            dense = _dense_macs(model, height, width)
            record("onnxruntime (dense experts)", lambda: sess.run(None, feed), dense)
        except Exception as exc:
            rows.append(
                Row(size, "onnxruntime", None, None, None, None, total, f"n/a: {_short(exc)}")
            )
    return rows


def _dense_macs(model: MoEFusion, height: int, width: int) -> float:
    """MACs when every expert runs (the exported graph's dispatch)."""
    return float(count_macs(set_dispatch(copy.deepcopy(model), "dense"), height, width)["total"])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:80] if text else ''}"


def _fmt(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", default=None, help="safetensors weights (default: bundled)")
    p.add_argument("--config", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--sizes", default="640x480,1280x1024", help="comma-separated WxH")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-onnx", dest="onnx", action="store_false")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    model, source = load_model(args.weights, args.config)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    peak = matmul_gmacs(args.threads)
    macs = count_macs(model, 480, 640)
    px = 480 * 640

    print(f"# bench_fuse: {source}")
    print()
    print(
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} thread(s), repeat {args.repeat}"
        + (f", load average at start {load[0]:.1f}" if load else "")
    )
    print(
        "- MACs per pixel (sparse, K experts): "
        + ", ".join(f"{k} {v / px / 1e3:.1f} k" for k, v in macs.items())
    )
    print(f"- float32 matmul ceiling: {peak:.1f} GMAC/s")
    print()
    print(
        "| size | variant | ms/pair (median) | min ms | CPU ms/pair | peak RSS +MB "
        "| GMAC/s | % of matmul | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.sizes.split(","):
        width, height = (int(v) for v in spec.lower().split("x"))
        for row in bench_size(model, height, width, args):
            rate = None if row.ms is None else row.macs / (row.ms / 1e3) / 1e9
            share = None if rate is None else 100 * rate / peak
            print(
                f"| {row.size} | {row.variant} | {_fmt(row.ms)} | {_fmt(row.ms_min)} | "
                f"{_fmt(row.cpu_ms)} | "
                f"{_fmt(row.rss_mb)} | {_fmt(rate, 1)} | {_fmt(share)} | {row.note} |",
                flush=True,
            )
    if load:
        print()
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
