"""Training-step speed of MoE-Fusion on this machine, printed as a Markdown table.

For the ``cpu`` and ``paper`` configs, milliseconds per optimisation step (forward,
backward, Adam step; random images, random boxes, a random attention map) and pixels
per second, split into

- ``detectors``: both auxiliary Faster R-CNNs with mixing and attention, detection
  losses (stage 1 of staged training),
- ``fusion``: the fusion branch alone on a given attention map (stage 2),
- ``joint``: one end-to-end step (paper schedule: detectors + fusion),

each in fp32, bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``: uses the CPU's
AVX-512 BF16 / AMX units where present), channels-last inputs and weights (fusion), and
``torch.compile`` (fusion only; ``n/a`` where it fails). Batch and crop follow the
configs' stages (``cpu``: detectors 4 x 256^2, fusion 4 x 128^2, joint 4 x 256^2;
``paper``: batch 1 at 480x640, the release resolution, to keep the run short).

Usage::

    python benchmarks/bench_train.py [--configs cpu paper] [--steps 5] [--threads 2] [--no-compile]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moefusion.config import load_run_config
from moefusion.losses import fusion_loss
from moefusion.models import MoEFusion, MoEFusionConfig

SETTINGS = {
    # config -> part -> (batch, height, width)
    "cpu": {"detectors": (4, 256, 256), "fusion": (4, 128, 128), "joint": (4, 256, 256)},
    "paper": {"detectors": (1, 480, 640), "fusion": (1, 480, 640), "joint": (1, 480, 640)},
}


@dataclass
class Row:
    config: str
    part: str
    variant: str
    shape: tuple[int, int, int]
    ms: float | None
    note: str = ""

    @property
    def mpix_per_s(self) -> float | None:
        b, h, w = self.shape
        return None if self.ms is None else b * h * w / (self.ms / 1000) / 1e6


def random_batch(b: int, h: int, w: int, num_classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ir, vi = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
    targets = []
    for _ in range(b):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(3, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (3,), generator=g)})
    return {
        "ir": ir,
        "vi": vi,
        "attention": torch.rand(b, 1, h, w, generator=g),
        "targets": targets,
    }


def step_fn(
    model: MoEFusion, part: str, batch: dict, bf16: bool, fusion: torch.nn.Module
) -> Callable[[], None]:
    params = (
        model.attention.parameters()
        if part == "detectors"
        else model.fusion.parameters()
        if part == "fusion"
        else model.parameters()
    )
    optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-5)
    boxes = [t["boxes"] for t in batch["targets"]]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if part == "detectors":
                _, losses = model.attention(batch["ir"], batch["vi"], batch["targets"])
                loss = sum(losses.values())
            elif part == "fusion":
                out = fusion(batch["ir"], batch["vi"], batch["attention"])
                loss = fusion_loss(
                    out.fused.float(), batch["ir"], batch["vi"], None, out.load_loss
                )["total"]
            else:
                out = model(batch["ir"], batch["vi"], batch["targets"])
                fl = fusion_loss(out.fused.float(), batch["ir"], batch["vi"], boxes, out.load_loss)
                loss = fl["total"] + sum(out.det_losses.values())
        loss.backward()
        optimizer.step()

    return step


def time_ms(step: Callable[[], None], steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_config(name: str, steps: int, compile_: bool) -> list[Row]:
    config = load_run_config(name)
    rows: list[Row] = []
    for part, shape in SETTINGS[name].items():
        variants = ["fp32", "bf16"]
        if part == "fusion":
            variants += ["channels-last", "channels-last + bf16"] + (
                ["torch.compile"] if compile_ else []
            )
        for variant in variants:
            torch.manual_seed(0)
            model = MoEFusion(MoEFusionConfig.from_dict(config["model"])).train()
            batch = random_batch(*shape, num_classes=model.config.detector.num_classes)
            fusion: torch.nn.Module = model.fusion
            note = ""
            if "channels-last" in variant:
                model.fusion.to(memory_format=torch.channels_last)
                for key in ("ir", "vi", "attention"):
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
            if variant == "torch.compile":
                fusion = torch.compile(model.fusion)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    step = step_fn(model, part, batch, "bf16" in variant, fusion)
                    ms = time_ms(step, steps if name == "cpu" else max(1, steps // 2))
            except Exception as exc:  # noqa: BLE001 - a variant that fails is reported as n/a
                ms, note = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
            rows.append(Row(name, part, variant, shape, ms, note))
            print(
                f"  {name} {part} {variant}: {'n/a' if ms is None else f'{ms:.0f} ms'}", flush=True
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "paper"], choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for name in args.configs:
        rows += bench_config(name, args.steps, not args.no_compile)
    print()
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.steps} steps"
    )
    print()
    print("| config | part | batch x H x W | variant | ms / step | Mpixel / s | vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if (x.config, x.part, x.variant) == (r.config, r.part, "fp32"))
        ratio = "" if r.ms is None or base.ms is None else f"{base.ms / r.ms:.2f}x"
        ms = "n/a" if r.ms is None else f"{r.ms:.0f}"
        mp = "" if r.mpix_per_s is None else f"{r.mpix_per_s:.3f}"
        b, h, w = r.shape
        print(
            f"| {r.config} | {r.part} | {b} x {h} x {w} | {r.variant} | {ms} | {mp} | {ratio} {r.note} |"
        )


if __name__ == "__main__":
    main()
