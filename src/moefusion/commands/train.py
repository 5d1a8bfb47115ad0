"""``moefusion train``: train MoE-Fusion from a shipped or custom YAML config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moefusion.config import available_configs, load_run_config


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Train MoE-Fusion end to end (fusion branch + both auxiliary detectors) with "
            "PyTorch Lightning. Checkpoints (one per epoch and last.ckpt), the resolved "
            "config, TensorBoard/CSV logs and the exported fusion weights "
            "(moefusion.safetensors) go to --out."
        ),
        epilog=(
            "examples:\n"
            "  moefusion train --config cpu\n"
            "  moefusion train --config paper --data /data/M3FD --out runs/m3fd\n"
            "  moefusion train --config cpu optim.lr=2e-4 trainer.max_epochs=5\n"
            "  moefusion train --config cpu --out runs/cpu --resume auto\n"
            "  moefusion train --config cpu --out runs/cpu --resume auto trainer.max_epochs=90 "
            "'optim.milestones=[80, 86]'   # extend a finished run\n"
            "  multi-GPU: moefusion train --config paper trainer.devices=4 "
            "trainer.strategy=ddp_find_unused_parameters_true"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="NAME_OR_FILE",
        help="shipped config ("
        + ", ".join(c for c in available_configs() if not c.startswith("detect_"))
        + ") or a YAML file",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of config values, e.g. optim.lr=2e-4 data.crop=256",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="dataset folder(s) with ir/, vi/ and optional labels/; replaces data.datasets "
        "and disables the shipped split (repeat for several folders)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config>)")
    p.add_argument(
        "--resume",
        metavar="CKPT|auto",
        default=None,
        help=(
            "continue a run from a checkpoint ('auto': <out>/checkpoints/last.ckpt); "
            "max_epochs and the learning-rate schedule (optim.lr, optim.milestones, "
            "optim.gamma) come from this command's config, so a run can be extended"
        ),
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default from config)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from moefusion.training.run import train

    config = load_run_config(args.config, args.overrides)
    if args.data:
        config["data"]["datasets"] = [{"root": d} for d in args.data]
        config["data"]["split"] = None
    if args.seed is not None:
        config["seed"] = args.seed
    out = args.out or Path("runs") / Path(str(args.config)).stem
    run_dir = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(f"run folder: {run_dir}")
    print(f"fusion weights: {run_dir / 'moefusion.safetensors'}")
    return 0
