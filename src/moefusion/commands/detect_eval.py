"""``moefusion detect-eval``: detection evaluation of fused images (paper Table 3)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from moefusion.commands._common import parse_named_dirs
from moefusion.config import available_configs, load_run_config
from moefusion.errors import MoEFusionError


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Train a Faster R-CNN on the infrared and visible images of the labelled "
            "training pairs, run it on the test pairs' visible, infrared and fused images, "
            "and report per-class AP at IoU 0.5 and mAP (COCO 101-point interpolation), one "
            "row per input, as in the paper's Table 3. Writes table.md/.csv/.json and the "
            "detector (detector.safetensors + detector.json) to --out."
        ),
        epilog=(
            "fused folders hold <stem>.<ext> images of the labelled test pairs, flat or in a\n"
            "subfolder per test dataset named like its folder (needed when two test datasets\n"
            "share a stem).\n\n"
            "examples:\n"
            "  moefusion detect-eval --train data/roadscene --train data/msrs \\\n"
            "      --test data/roadscene --test data/msrs --split shared-data-v1 \\\n"
            "      --fused average=fused/average --fused laplacian=fused/laplacian\n"
            "  moefusion detect-eval --detector detect-eval/detector.safetensors \\\n"
            "      --test data/roadscene --split shared-data-v1 --fused ours=fused/ours \\\n"
            "      --out detect-eval/ours\n"
            "  moefusion detect-eval --detector detect-eval/detector.safetensors \\\n"
            "      --test data/msrs_eval --split msrs-eval-detect-v1 --fused ours=fused/ours \\\n"
            "      --bootstrap 1000 --out detect-eval/ours-ci\n"
            "  moefusion detect-eval ... train.epochs=2 data.image_size=384"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--train",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="dataset folder (ir/, vi/, labels/) to train on; repeat for several "
        "(not needed with --detector)",
    )
    p.add_argument(
        "--test",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="dataset folder to evaluate on; repeat for several",
    )
    p.add_argument(
        "--fused",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a fusion method's images of the test pairs; repeat for several methods",
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="class names in table order (default from the config: person,car,bicycle)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="FILE_OR_NAME",
        help="split JSON (or shipped name, e.g. shared-data-v1): --train folders keep its "
        "train stems, --test folders its test stems (by folder name)",
    )
    p.add_argument(
        "--config",
        default="detect_cpu",
        metavar="NAME_OR_FILE",
        help=f"shipped config ({', '.join(c for c in available_configs() if c.startswith('detect'))}) "
        "or a YAML file (default: detect_cpu)",
    )
    p.add_argument(
        "--detector",
        type=Path,
        default=None,
        metavar="FILE",
        help="reuse a saved detector (.safetensors with its .json) instead of training",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("detect-eval"),
        help="output folder (default ./detect-eval)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the tables (and the detector, when training) of an earlier run in --out",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed training run in --out from its checkpoint (detector-resume.pt, "
        "saved every 10 iterations); repeat the run's command with --resume",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default from config)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="N resamples of the test images for 95 %% confidence intervals of every mAP and "
        "of the differences fused - Infrared, fused - Visible, Infrared - Visible (paired "
        "percentile bootstrap; also writes differences.csv). Default 0: no intervals",
    )
    p.add_argument(
        "--bootstrap-seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the bootstrap draws (default 0); needs --bootstrap N",
    )
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.epochs=4 data.image_size=384",
    )
    return p


#: What a run writes into --out (the detector only when it trains one).
TABLE_FILES = ("table.md", "table.csv", "table.json")
DETECTOR_FILES = ("detector.safetensors", "detector.json")
#: Written with --bootstrap.
DIFFERENCES_FILE = "differences.csv"
#: Override keys (and sections) that only the detector's training reads: with --detector
#: nothing trains, so they would be ignored.
TRAINING_KEYS = (
    "seed",
    "train",
    "data.scale_jitter",
    "data.hflip",
    "data.gamma_jitter",
    "data.crop",
)


def _key_under(key: str, prefixes: tuple[str, ...]) -> bool:
    """``key`` (dotted) is one of ``prefixes`` or lies inside one of them."""
    return any(key == k or key.startswith(f"{k}.") for k in prefixes)


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that the run would ignore: a bootstrap seed without resamples, and
    the training's seed and overrides with a saved detector (nothing trains)."""
    if args.bootstrap < 0:
        raise MoEFusionError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.bootstrap_seed is not None and args.bootstrap == 0:
        raise MoEFusionError("--bootstrap-seed seeds the resamples; it needs --bootstrap N (N > 0)")
    if args.detector is None:
        return
    if args.seed is not None:
        raise MoEFusionError("--seed seeds the detector's training; it does not go with --detector")
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if _key_under(key, TRAINING_KEYS):
            raise MoEFusionError(
                f"override {item!r} sets the detector's training; it does not go with "
                "--detector (a saved detector is reused, nothing trains)"
            )
        if _key_under(key, ("model",)):
            # the saved detector is rebuilt from its own model settings (its sidecar)
            raise MoEFusionError(
                f"override {item!r} sets the detector's model; it does not go with "
                "--detector (a saved detector keeps the model settings it was trained with)"
            )


def check_outputs(args: argparse.Namespace, fused: dict[str, Path]) -> None:
    """Before any work: --out is a folder outside every input folder, and the files this
    run would write do not exist yet (unless --overwrite)."""
    from moefusion.commands._common import (
        check_out_folder,
        check_output_outside,
        check_targets,
        check_writable_outputs,
    )

    check_out_folder(args.out)
    inputs = [*args.train, *args.test, *fused.values()]
    check_output_outside(args.out, [d for d in inputs if d.is_dir()])
    names = TABLE_FILES + (DETECTOR_FILES if args.detector is None else ())
    if args.bootstrap > 0:
        names += (DIFFERENCES_FILE,)
    check_targets([args.out / n for n in names], [], overwrite=args.overwrite)
    check_writable_outputs(args.out)
    from moefusion.detection.protocol import RESUME_FILE

    if args.detector is not None and args.resume:
        raise MoEFusionError("--resume continues a training run; it does not go with --detector")
    resume_file = args.out / RESUME_FILE
    if args.detector is None and resume_file.is_file() and not (args.resume or args.overwrite):
        raise MoEFusionError(
            f"{resume_file} is the checkpoint of an unfinished training run: add --resume to "
            "continue it, or --overwrite to start over"
        )


def run(args: argparse.Namespace) -> int:
    from moefusion.data import resolve_split
    from moefusion.detection import Bootstrap, DetectConfig, run_detection_eval

    check_options(args)
    raw = load_run_config(args.config, args.overrides)
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise MoEFusionError(f"--classes: no class names in {args.classes!r}")
        raw.setdefault("data", {})["classes"] = classes
    if args.seed is not None:
        raw["seed"] = args.seed
    config = DetectConfig.from_dict(raw)
    fused = parse_named_dirs(args.fused, "--fused")
    split = resolve_split(args.split)
    check_outputs(args, fused)

    start = time.perf_counter()
    table = run_detection_eval(
        args.train,
        args.test,
        fused,
        config,
        out_dir=args.out,
        split=split,
        split_name=args.split,
        detector=args.detector,
        progress=not args.no_progress,
        bootstrap=Bootstrap(args.bootstrap, args.bootstrap_seed or 0),
        resume=args.resume,
    )
    print(table.to_markdown())
    print(f"tables written to {args.out}/table.md, table.csv, table.json")
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0
