"""Recipe study for stage 2 (fusion branch alone): one row per setting, same budget.

    python scripts/recipe_study.py --out runs/recipe --minutes 4 --parallel 2

Every row trains the `cpu` config's fusion stage from a fresh fusion branch, with the
bundled weights' attention branch as the stage-1 result (its detectors were trained
with detection losses only), for the same wall-clock budget, seed and data (train part
of split shared-data-v2), then reads the fit report on the split's validation part
(never the held-out test part). A finished row is not rerun (resumable). Rows run as
separate `moefusion train` processes, ``--parallel`` at a time with one thread each.
Prints a Markdown table and writes it to ``<out>/study.md`` (and ``study.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from moefusion.training.config import FUSION_STAGES
from moefusion.weights import bundled_weights_path

BASE = [
    "stages.detect.trainer.max_epochs=0",
    # rows compare stage 2 alone: the later fusion stages off
    *(f"stages.{later}.trainer.max_steps=0" for later in FUSION_STAGES[1:]),
    "stages.fusion.optim.schedule=constant",
    "stages.fusion.optim.warmup_steps=100",
    "stages.fusion.trainer.max_steps=-1",
    "stages.fusion.checkpoint_every=1000",
    "data.num_workers=0",
]

# name -> (what changes, overrides on top of BASE)
ROWS: dict[str, tuple[str, list[str]]] = {
    "base": (
        "Adam 1e-3 constant, crop 128, batch 4, fp32, max target, alpha 10",
        [],
    ),
    "alpha-ramp": (
        "gradient weight ramped 0 -> alpha over 300 steps",
        ["stages.fusion.optim.alpha_warmup_steps=300"],
    ),
    "lr3e-3": ("learning rate 3e-3", ["stages.fusion.optim.lr=3.0e-3"]),
    "cosine": ("warm-up + cosine to 5 % over the base row's steps", ["cosine"]),
    "crop192": ("crop 192", ["stages.fusion.data.crop=192"]),
    "crop96-b8": (
        "crop 96, batch 8",
        ["stages.fusion.data.crop=96", "stages.fusion.data.batch_size=8"],
    ),
    "bf16": ("bf16 autocast", ["trainer.precision=bf16-mixed"]),
    "boxes": (
        "release pixel target (max in boxes, mean outside)",
        ["stages.fusion.optim.pixel_target=boxes"],
    ),
    "alpha5": ("alpha 5", ["optim.alpha=5.0"]),
    "alpha20": ("alpha 20", ["optim.alpha=20.0"]),
    "load1x": (
        "load-loss weights of the release (0.01 / 0.02)",
        ["model.mole_load_weight=0.01", "model.moge_load_weight=0.02"],
    ),
    "load10x": (
        "load-loss weights x10 (0.1 / 0.2)",
        ["model.mole_load_weight=0.1", "model.moge_load_weight=0.2"],
    ),
    "noise0.3": ("gate noise floor 0.3 (release 0.01)", ["model.noise_epsilon=0.3"]),
    "load50x": (
        "load-loss weights x50 (0.5 / 1.0)",
        ["model.mole_load_weight=0.5", "model.moge_load_weight=1.0"],
    ),
    "paper-width": (
        "paper widths (growth 16, decoders 64/32/16)",
        ["model.encoder_growth=16", "model.decoder_channels=[64, 32, 16]"],
    ),
    # capacity at a fixed wall time (issue 37): three widths, fp32 and bf16 autocast
    "cap-cpu": ("`cpu` widths (growth 8, decoders 16/16/8), fp32", []),
    "cap-cpu-bf16": ("`cpu` widths, bf16 autocast", ["trainer.precision=bf16-mixed"]),
    "cap-dec64": (
        "MoGE decoders 64/32/16 (growth 8), fp32",
        ["model.decoder_channels=[64, 32, 16]"],
    ),
    "cap-dec64-bf16": (
        "MoGE decoders 64/32/16 (growth 8), bf16 autocast",
        ["model.decoder_channels=[64, 32, 16]", "trainer.precision=bf16-mixed"],
    ),
    "cap-paper": (
        "paper widths (growth 16, decoders 64/32/16), fp32",
        ["model.encoder_growth=16", "model.decoder_channels=[64, 32, 16]"],
    ),
    "cap-paper-bf16": (
        "paper widths, bf16 autocast",
        [
            "model.encoder_growth=16",
            "model.decoder_channels=[64, 32, 16]",
            "trainer.precision=bf16-mixed",
        ],
    ),
    # a sharper gradient target (SF and AG are where the published networks lead)
    "sharp1.5": (
        "`cpu` widths, gradient target 1.5 x max source gradient",
        ["optim.grad_target_scale=1.5"],
    ),
}

KEYS = (
    "loss",
    "scd",
    "corr_ir",
    "corr_vi",
    "min_usage_mole_fg",
    "min_usage_mole_bg",
    "min_usage_moge",
)


def row_command(
    name: str, out: Path, minutes: float, base_steps: int | None, common: list[str]
) -> list[str]:
    weights = bundled_weights_path()
    if weights is None:
        raise SystemExit("no bundled weights: the study takes its attention branch from them")
    extra = []
    for item in ROWS[name][1]:
        if item == "cosine":
            if not base_steps:
                raise SystemExit("the cosine row needs the base row's step count: run base first")
            extra += [
                "stages.fusion.optim.schedule=cosine",
                f"stages.fusion.trainer.max_steps={base_steps}",
            ]
        else:
            extra.append(item)
    budget = f"{{minutes: {minutes}}}"
    return [
        sys.executable, "-m", "moefusion.cli", "train", "--config", "cpu", "--no-progress",
        "--out", str(out / name),
        f"stages.detect.init_weights={weights}",
        f"stages.fusion.trainer.max_time={budget}",
        *BASE, *common, *extra,
    ]  # fmt: skip


def result_of(run: Path) -> dict | None:
    done = run / "stage2-fusion" / "done.json"
    report = run / "fit_report.jsonl"
    if not done.is_file() or not report.is_file():
        return None
    last = json.loads(report.read_text().strip().splitlines()[-1])
    return {"steps": json.loads(done.read_text())["global_step"], **{k: last[k] for k in last}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--minutes", type=float, default=4.0, help="stage-2 wall time per row")
    parser.add_argument("--parallel", type=int, default=2, help="rows at a time (1 thread each)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--common", nargs="*", default=[], metavar="KEY=VALUE",
        help="overrides added to every row (a previous round's winners)",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    pending = [r for r in args.rows if result_of(args.out / r) is None]
    if "cosine" in pending and "base" in args.rows:  # cosine needs base's steps
        pending.remove("cosine")
        pending.append("cosine")
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending[0]
            base = result_of(args.out / "base")
            if name == "cosine" and base is None:
                if not running:
                    raise SystemExit("base row failed: cannot run cosine")
                break
            pending.pop(0)
            log = (args.out / f"{name}.log").open("w")
            steps = base["steps"] if base else None
            cmd = row_command(name, args.out, args.minutes, steps, args.common)
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            running[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        time.sleep(5)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"[{time.strftime('%H:%M:%S')}] {name} exited {proc.returncode}", flush=True)
                del running[name]

    results = {r: result_of(args.out / r) for r in args.rows}
    lines = [
        "| row | change | steps | val loss | SCD | corr IR | corr VI | min usage MoLE fg / bg / MoGE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = next((v for v in results.values() if v), None)
    for name, res in results.items():
        if res is None:
            lines.append(f"| {name} | {ROWS[name][0]} | failed | | | | | |")
            continue
        usage = " / ".join(f"{res[k]:.2f}" for k in KEYS[4:])
        lines.append(
            f"| {name} | {ROWS[name][0]} | {res['steps']} | {res['loss']:.4f} | {res['scd']:.3f} "
            f"| {res['corr_ir']:.3f} | {res['corr_vi']:.3f} | {usage} |"
        )
    if ref:
        lines.append("")
        lines.append(
            f"Training-free outputs on the same validation pairs: average {ref['loss_average']:.4f}, "
            f"max {ref['loss_max']:.4f}, Laplacian pyramid {ref['loss_laplacian']:.4f}."
        )
    if args.common:
        lines.append("")
        lines.append("Every row also has: " + ", ".join(f"`{c}`" for c in args.common) + ".")
    table = "\n".join(lines)
    print(table)
    (args.out / "study.md").write_text(table + "\n")
    (args.out / "study.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
