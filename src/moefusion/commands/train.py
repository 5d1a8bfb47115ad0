"""``moefusion train``: train MoE-Fusion from a shipped or custom YAML config."""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

from moefusion.config import available_configs, load_run_config
from moefusion.errors import MoEFusionError

#: Files and folders that make a folder an existing run.
RUN_MARKERS = ("config.yaml", "moefusion.safetensors", "checkpoints")


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
        help="dotted overrides of config values, e.g. optim.lr=2e-4 data.crop=256; in a "
        "staged config a data/optim/trainer key also replaces the stages' own value "
        "(stages.NAME.SECTION.KEY=... sets one stage's); an optim key that no stage which "
        "trains reads (optim.milestones when only a cosine fusion stage trains) is refused",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="dataset folder(s) with ir/, vi/ and optional labels/, or an official "
        "M3FD, LLVIP, FLIR-aligned or MSRS download as it is (see --layout); replaces "
        "data.datasets and disables the shipped split (repeat for several folders)",
    )
    p.add_argument(
        "--layout",
        default=None,
        choices=("auto", "moefusion", "m3fd", "llvip", "flir", "msrs"),
        help="folder layout of the --data folders (default auto: detected; ir/ + vi/, or "
        "the official M3FD, LLVIP, FLIR-aligned or MSRS download; docs/data.md)",
    )
    p.add_argument(
        "--part",
        default=None,
        choices=("train", "test"),
        help="part of an LLVIP or MSRS download to train on (default train)",
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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an existing run folder, replacing its config, checkpoints and "
        "weights (not with --resume)",
    )
    p.add_argument(
        "--skip-memory-check",
        action="store_true",
        help="train even when the estimated memory of a step exceeds what is available",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default from config)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p


def _existing_run(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    found = []
    for name in RUN_MARKERS:
        p = out / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    found += sorted(p.name for p in out.glob("stage*") if p.is_dir() and any(p.iterdir()))
    return found


def check_resume(out: Path, resume: str | None, config: dict[str, Any]) -> None:
    """Check the checkpoint(s) a resume would read to be complete training checkpoints.

    ``auto`` reads ``<out>/checkpoints/last.ckpt`` (joint runs) or each stage's
    ``last.ckpt`` (staged runs); the value itself is passed on to training unchanged.
    """
    if resume is None:
        return
    from moefusion.weights import check_training_checkpoint

    if str(resume) != "auto":
        path = Path(resume)
        if not path.is_file():
            raise MoEFusionError(f"cannot resume: checkpoint not found: {path}")
        check_training_checkpoint(path)
        return
    from moefusion.training.config import RunConfig

    joint = out / "checkpoints" / "last.ckpt"
    if RunConfig.from_dict(config).schedule != "staged":
        if not joint.is_file():
            raise MoEFusionError(f"cannot resume: checkpoint not found: {joint}")
        check_training_checkpoint(joint)
        return
    for path in sorted(out.glob("stage*/**/last.ckpt")):
        check_training_checkpoint(path)


def check_data(config: dict[str, Any]) -> None:
    """Open every dataset (pairs, sizes, labels) before anything is written."""
    from moefusion.training.data import build_train_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training itself warns once, later
        build_train_dataset(config["data"])


def check_memory(config: dict[str, Any]) -> None:
    """Refuse a crop / batch size whose step cannot fit in this machine's memory (CPU
    training: every process of ``trainer.devices`` needs its own share)."""
    import torch

    from moefusion.tiling import available_memory
    from moefusion.training.memory import check_training_memory

    trainer = config.get("trainer") or {}
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return  # GPU memory is checked by the GPU itself, at the first step
    available = available_memory("cpu")
    devices = trainer.get("devices")
    processes = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    if available is not None:
        available //= max(1, processes)
    check_training_memory(config, available)


def run(args: argparse.Namespace) -> int:
    from moefusion.training.config import RunConfig
    from moefusion.training.run import train

    if (args.layout or args.part) and not args.data:
        raise MoEFusionError("--layout and --part apply to --data folders; pass --data DIR")
    if args.overwrite and args.resume is not None:
        # --overwrite only lets a fresh run into an existing folder; a resumed run keeps it
        raise MoEFusionError(
            "--overwrite starts a run over; it does not go with --resume (which continues it)"
        )
    notes: list[str] = []
    config = load_run_config(args.config, args.overrides, notes)
    for note in notes:
        print(f"moefusion train: note: {note}", file=sys.stderr)
    if args.data:
        where = {k: v for k, v in (("layout", args.layout), ("part", args.part)) if v}
        values = {"datasets": [{"root": d, **where} for d in args.data], "split": None}
        config["data"].update(values)
        for stage in (config.get("stages") or {}).values():
            # a stage of a config file that sets its own datasets trains on --data too
            data = stage.get("data") if isinstance(stage, dict) else None
            if isinstance(data, dict):
                data.update({k: copy.deepcopy(v) for k, v in values.items() if k in data})
    if args.seed is not None:
        config["seed"] = args.seed
    RunConfig.from_dict(config)  # unknown keys and bad values fail before anything is written
    out = args.out or Path("runs") / Path(str(args.config)).stem
    if out.exists() and not out.is_dir():
        raise MoEFusionError(f"--out {out} exists and is not a folder")
    existing = _existing_run(out)
    if existing and args.resume is None and not args.overwrite:
        raise MoEFusionError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume auto to "
            "continue it, --overwrite to replace it, or choose another --out"
        )
    check_resume(out, args.resume, config)
    from moefusion.atomic import check_writable

    check_writable(out, "run folder")
    check_data(config)
    if not args.skip_memory_check:
        check_memory(config)
    run_dir = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(f"run folder: {run_dir}")
    print(f"fusion weights: {run_dir / 'moefusion.safetensors'}")
    return 0
