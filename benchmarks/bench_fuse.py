"""Speed of ``moefusion fuse`` on this machine: start-up, per-pair time and peak memory of
each inference path, and the ratio to a DenseFuse-shaped network timed in the same run.

Printed as Markdown. Three parts:

1. **Start-up** (``moefusion fuse`` as a subprocess, on one sample pair and on a folder
   of four copies of it, interleaved with ``python -c "import torch"``, the floor that
   any PyTorch program pays): start-up = wall(1 pair) - per pair, per pair =
   (wall(4 pairs) - wall(1 pair)) / 3, each from the fastest of ``--startup-repeat``
   runs; CPU time (user + system) of the same runs.
2. **Per pair** (network only, batch 1, no file I/O) for every variant below, timed in two
   worker processes (one with glibc's default allocator, one with freed memory kept for
   reuse, :func:`moefusion.runtime.reuse_freed_memory`, as ``moefusion fuse`` runs),
   the variants' repeats interleaved so that a busy machine slows all of them alike:

   - ``plain fp32 (before)``: ``MoEFusion.forward`` with torchvision's backbones and the
     default allocator: what ``moefusion fuse`` ran before issue #17;
   - ``plain fp32, reused memory``: the same with the allocator setting;
   - ``plain fp32, reused memory, subnormal weights kept``: the same with the file's
     subnormal weights left in (as every path loaded them before stop 13; the other
     variants load them as 0, :func:`moefusion.weights.zero_subnormals`);
   - ``fuse fp32``: :class:`moefusion.models.inference.FastMoEFusion` (what ``moefusion
     fuse`` runs now);
   - ``fuse --precision bf16``: the same with the half-precision parts;
   - ``DenseFuse-shaped, as published``: DenseFuse's layers (Li & Wu, 2019: encoder conv
     3x3 1->16, a dense block of three 3x3 convs of 16 concatenated to 64, decoder 3x3
     64->64->32->16->1, ReLU; random weights), run on both images and fused by addition,
     float32, NCHW, default allocator: how its authors' PyTorch code runs;
   - ``DenseFuse-shaped, channels-last + reused memory``: the same network given this
     project's layout and allocator setting, for a like-for-like view.

   Columns: fastest and median wall ms, CPU ms of the fastest (all threads), achieved
   GMAC/s and the ratio of the wall time to ``DenseFuse-shaped, as published``.
3. **Peak memory**: the resident-set high-water mark increase of one pass per variant, in
   a fresh process per variant (sizes in increasing order).

Usage::

    python benchmarks/bench_fuse.py [--weights FILE] [--repeat 7] [--threads 2]
        [--sizes 640x480,1280x1024] [--startup-repeat 5] [--no-startup] [--no-memory]
        [--onnx] [--compile]

``--onnx`` adds onnxruntime on the exported graph (dense expert dispatch: N/K times the
expert cost), ``--compile`` ``torch.compile`` of the plain model (minutes of compilation
per size). Inputs are the sample pair ``00012N`` resized to each size (real content, so
that the gates route as they do on real images).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PAIR = ("samples/ir/00012N.png", "samples/vi/00012N.png")

#: variant -> allocator of the worker that runs it
VARIANTS: dict[str, str] = {
    "plain fp32 (before)": "default",
    "plain fp32, reused memory": "reuse",
    "plain fp32, reused memory, subnormal weights kept": "reuse",
    "fuse fp32": "reuse",
    "fuse --precision bf16": "reuse",
    "DenseFuse-shaped, as published": "default",
    "DenseFuse-shaped, channels-last + reused memory": "reuse",
}
REFERENCE = "DenseFuse-shaped, as published"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it
    return env


# ------------------------------------------------------------------------ start-up
def _run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def startup(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    env = _env()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "four"
        for side, src in zip(("ir", "vi"), PAIR, strict=True):
            (folder / side).mkdir(parents=True)
            for i in range(4):
                shutil.copy(ROOT / src, folder / side / f"p{i}.png")
        weights = ["--weights", args.weights] if args.weights else []
        py = sys.executable

        def fuse(ir: str, vi: str, out: str) -> list[str]:
            return [py, "-m", "moefusion.cli", "fuse", "--ir", ir, "--vi", vi, "--out", out,
                    "--no-progress", "--overwrite", *weights]  # fmt: skip

        cmds = {
            "python -c 'import torch'": [py, "-c", "import torch"],
            "fuse, 1 pair": fuse(str(ROOT / PAIR[0]), str(ROOT / PAIR[1]), f"{tmp}/o1"),
            "fuse, 4 pairs": fuse(str(folder / "ir"), str(folder / "vi"), f"{tmp}/o4"),
        }
        out: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for _ in range(args.startup_repeat):
            for name, cmd in cmds.items():
                out[name].append(_run_child(cmd, env))
    return out


def print_startup(res: dict[str, list[tuple[float, float]]]) -> None:
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in res.items()}
    med = {k: statistics.median(w for w, _ in v) for k, v in res.items()}
    print("| start-up | fastest wall s | median wall s | least CPU s |")
    print("|---|---|---|---|")
    for k in res:
        print(f"| {k} | {best[k][0]:.2f} | {med[k]:.2f} | {best[k][1]:.2f} |")
    w1, w4 = best["fuse, 1 pair"][0], best["fuse, 4 pairs"][0]
    c1, c4 = best["fuse, 1 pair"][1], best["fuse, 4 pairs"][1]
    per_wall, per_cpu = (w4 - w1) / 3, (c4 - c1) / 3
    print(
        f"| **start-up = 1 pair - per pair** | **{w1 - per_wall:.2f}** | | **{c1 - per_cpu:.2f}** |"
    )
    print(f"| per pair incl. reading and writing | {per_wall:.3f} | | {per_cpu:.3f} |")
    print(
        f"| start-up above `import torch` | {w1 - per_wall - best[next(iter(res))][0]:.2f} | "
        f"| {c1 - per_cpu - best[next(iter(res))][1]:.2f} |"
    )
    print()


# ------------------------------------------------------------------------- workers
def _densefuse() -> Any:
    import torch
    from torch import nn

    def conv(i: int, o: int) -> nn.Conv2d:
        return nn.Conv2d(i, o, 3, padding=1)

    class DenseFuseShaped(nn.Module):
        """DenseFuse's layers (Li & Wu, TIP 2019) with random weights, addition fusion."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = conv(1, 16)
            self.dense = nn.ModuleList([conv(16, 16), conv(32, 16), conv(48, 16)])
            self.decoder = nn.ModuleList([conv(64, 64), conv(64, 32), conv(32, 16), conv(16, 1)])

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(x))
            for layer in self.dense:
                x = torch.cat([x, torch.relu(layer(x))], 1)
            return x

        def forward(self, ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
            f = self.encode(ir) + self.encode(vi)
            for i, layer in enumerate(self.decoder):
                f = layer(f)
                if i < len(self.decoder) - 1:
                    f = torch.relu(f)
            return f

    torch.manual_seed(0)
    return DenseFuseShaped().eval()


def _macs(model: Any, ir: Any, vi: Any) -> float:
    """Multiply-accumulates of one call (Conv2d layers that run)."""
    import torch
    from torch import nn

    total = [0]

    def hook(m: nn.Conv2d, _: Any, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out.numel() * m.in_channels // m.groups * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(ir, vi)
    finally:
        for h in handles:
            h.remove()
    return float(total[0])


@dataclass
class _Worker:
    """State of a worker process: its variants' callables per size."""

    args: argparse.Namespace
    calls: dict[tuple[str, str], Callable[[], object]] = field(default_factory=dict)
    macs: dict[tuple[str, str], float] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def prepare(self, variant: str, size: str, *, count: bool = True) -> None:
        """Build ``variant`` for ``size`` and run it once (warm-up); ``count``: also count
        its MACs (one more pass, of the plain model for MoE-Fusion variants)."""
        import numpy as np
        import torch
        from PIL import Image

        if (variant, size) in self.calls:
            return
        width, height = (int(v) for v in size.split("x"))

        def load(path: str) -> torch.Tensor:
            im = Image.open(ROOT / path).convert("L").resize((width, height), Image.BILINEAR)
            return torch.from_numpy(np.asarray(im, np.float32) / 255.0)[None, None]

        ir, vi = load(PAIR[0]), load(PAIR[1])
        model: Any
        if variant.startswith("DenseFuse"):
            model = _densefuse()
            if "channels-last" in variant:
                model = model.to(memory_format=torch.channels_last)
            if count:
                self.macs[(variant, size)] = _macs(model, ir, vi)
        else:
            model = self._moefusion(variant)
            if count:
                from moefusion.models import count_macs

                plain = self._plain()
                self.macs[(variant, size)] = float(count_macs(plain, height, width)["total"])
        self.calls[(variant, size)] = lambda: model(ir, vi)
        with torch.inference_mode():
            model(ir, vi)  # warm-up: kernels, first-touch memory

    def _plain(self, keep_subnormals: bool = False) -> Any:
        """The model as before issue #17: torchvision backbones, weights copied in (with
        their subnormal entries at 0 unless ``keep_subnormals``)."""
        key = "plain, subnormals" if keep_subnormals else "plain"
        if key not in self._cache:
            import json

            from safetensors.torch import load_file

            from moefusion.models import MoEFusion, MoEFusionConfig
            from moefusion.weights import CONFIG_KEY, read_metadata, zero_subnormals

            path = self.args.weights or str(_bundled())
            config = MoEFusionConfig.from_dict(json.loads(read_metadata(path)[CONFIG_KEY]))
            model = MoEFusion(config, with_heads=False)
            state = load_file(path)
            if not keep_subnormals:
                zero_subnormals(state)
            model.load_inference_state_dict(state)
            self._cache[key] = model.eval()
        return self._cache[key]

    def _moefusion(self, variant: str) -> Any:
        if variant.startswith("plain"):
            return self._plain(keep_subnormals="subnormal" in variant)
        if variant in self._cache:
            return self._cache[variant]
        from moefusion.fuser import Fuser

        precision = "bf16" if "bf16" in variant else "fp32"
        if variant.startswith("torch.compile"):
            import torch

            runner = torch.compile(self._plain())
        elif variant.startswith("onnxruntime"):
            runner = self._onnx()
        else:
            path = self.args.weights or str(_bundled())
            runner = Fuser.from_file(path, device="cpu", precision=precision)._runner
        self._cache[variant] = runner
        return runner

    def _onnx(self) -> Any:
        import onnxruntime as ort

        from moefusion.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(self._plain(), Path(tmp) / "m.onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.args.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda ir, vi: sess.run(None, {"ir": ir.numpy(), "vi": vi.numpy()})

    def run(self, variant: str, size: str) -> tuple[float, float]:
        import torch

        call = self.calls[(variant, size)]
        with torch.inference_mode():
            cpu, wall = time.process_time(), time.perf_counter()
            call()
            return time.perf_counter() - wall, time.process_time() - cpu


def _bundled() -> Path:
    from moefusion.weights import bundled_weights_path

    path = bundled_weights_path()
    if path is None:
        raise SystemExit("no bundled weights in this build: pass --weights")
    return path


def _worker_main(conn: Any, allocator: str, args: argparse.Namespace) -> None:
    if allocator == "reuse":
        from moefusion.runtime import reuse_freed_memory

        reuse_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    worker = _Worker(args)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        op, variant, size = msg
        try:
            if op == "prepare":
                worker.prepare(variant, size)
                conn.send(("ok", worker.macs[(variant, size)]))
            else:
                conn.send(("ok", worker.run(variant, size)))
        except Exception as exc:  # a backend that fails is reported, the others go on
            conn.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"))


def per_pair(args: argparse.Namespace, variants: dict[str, str]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    workers = {}
    for allocator in sorted(set(variants.values())):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, allocator, args), daemon=True)
        proc.start()
        workers[allocator] = (parent, proc)
    rows = []
    try:
        for size in args.sizes.split(","):
            times: dict[str, list[tuple[float, float]]] = {}
            macs: dict[str, float] = {}
            errors: dict[str, str] = {}
            for v, allocator in variants.items():
                conn = workers[allocator][0]
                conn.send(("prepare", v, size))
                status, value = conn.recv()
                if status == "ok":
                    macs[v], times[v] = value, []
                else:
                    errors[v] = value
            for _ in range(args.repeat):
                for v in times:
                    conn = workers[variants[v]][0]
                    conn.send(("run", v, size))
                    status, value = conn.recv()
                    if status == "ok":
                        times[v].append(value)
            for v in variants:
                if v in errors:
                    rows.append({"size": size, "variant": v, "error": errors[v]})
                    continue
                wall = [w for w, _ in times[v]]
                fastest = min(range(len(wall)), key=wall.__getitem__)
                rows.append(
                    {
                        "size": size,
                        "variant": v,
                        "wall": wall[fastest],
                        "median": statistics.median(wall),
                        "cpu": times[v][fastest][1],
                        "macs": macs[v],
                    }
                )
    finally:
        for conn, proc in workers.values():
            conn.send(None)
            proc.join(timeout=30)
    return rows


def print_per_pair(rows: list[dict[str, Any]]) -> None:
    print(
        "| size | variant | fastest ms | median ms | CPU ms | GMAC/s | x DenseFuse as published |"
    )
    print("|---|---|---|---|---|---|---|")
    ref = {r["size"]: r["wall"] for r in rows if r["variant"] == REFERENCE and "wall" in r}
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['variant']} | n/a | | | | {r['error']} |")
            continue
        ratio = f"{r['wall'] / ref[r['size']]:.2f}" if r["size"] in ref else "n/a"
        print(
            f"| {r['size']} | {r['variant']} | {r['wall'] * 1e3:.0f} | {r['median'] * 1e3:.0f} | "
            f"{r['cpu'] * 1e3:.0f} | {r['macs'] / r['wall'] / 1e9:.1f} | {ratio} |",
            flush=True,
        )
    print()


# ------------------------------------------------------------------------- memory
_MEMORY_CHILD = """
import json, resource, sys
args = json.loads(sys.argv[1])
if args["allocator"] == "reuse":
    from moefusion.runtime import reuse_freed_memory
    reuse_freed_memory()
import torch
torch.set_num_threads(args["threads"])
sys.path.insert(0, args["bench_dir"])
from bench_fuse import _Worker
import argparse
worker = _Worker(argparse.Namespace(weights=args["weights"], threads=args["threads"]))
out = {}
for size in args["sizes"]:
    worker.prepare(args["variant"], "64x64", count=False)  # the model, warmed at a tiny size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker.prepare(args["variant"], size, count=False)  # one pass at this size
    out[size] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def peak_memory(args: argparse.Namespace, variants: dict[str, str]) -> dict[str, dict[str, float]]:
    import json

    sizes = sorted(args.sizes.split(","), key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    out = {}
    for v, allocator in variants.items():
        payload = {
            "allocator": allocator,
            "threads": args.threads,
            "variant": v,
            "weights": args.weights,
            "sizes": sizes,
            "bench_dir": str(Path(__file__).resolve().parent),
        }
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, json.dumps(payload)],
            env=_env(),
            capture_output=True,
            text=True,
        )
        if run.returncode == 0:
            out[v] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def print_memory(mem: dict[str, dict[str, float]]) -> None:
    if not mem:
        return
    sizes = list(next(iter(mem.values())))
    print("| variant | " + " | ".join(f"peak RSS +MB {s}" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for v, per in mem.items():
        print(f"| {v} | " + " | ".join(f"{per[s]:.0f}" for s in sizes) + " |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", default=None, help="safetensors weights (default: bundled)")
    p.add_argument("--repeat", type=int, default=7, help="timed passes per variant and size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sizes", default="640x480,1280x1024", help="comma-separated WxH")
    p.add_argument("--startup-repeat", type=int, default=5)
    p.add_argument("--no-startup", dest="startup", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--onnx", action="store_true", help="also onnxruntime (dense experts)")
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    args = p.parse_args()
    variants = dict(VARIANTS)
    if args.onnx:
        variants["onnxruntime (dense experts)"] = "reuse"
    if args.compile:
        variants["torch.compile (plain)"] = "reuse"

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import torch

    print("# bench_fuse")
    print()
    print(
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} thread(s), repeat {args.repeat}, "
        f"weights {args.weights or 'bundled'}"
        + (f", load average at start {load[0]:.1f}" if load else "")
    )
    print()
    if args.startup:
        print_startup(startup(args))
    print_per_pair(per_pair(args, variants))
    if args.memory:
        print_memory(peak_memory(args, variants))
    if load:
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
