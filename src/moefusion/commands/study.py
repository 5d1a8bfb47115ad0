"""``moefusion study``: run one of the paper's studies (Table 2, Fig. 7, Fig. 8) on your data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from moefusion.errors import MoEFusionError

NAMES = ("ablation", "experts", "alpha", "dynamic")
#: Options only the studies that train read (study dynamic refuses them): attribute ->
#: (option, default).
TRAINING_ONLY: dict[str, tuple[str, object]] = {
    "split": ("--split", None),
    "steps": ("--steps", None),
    "budget_minutes": ("--budget-minutes", None),
    "seeds": ("--seeds", 1),
    "config": ("--config", "cpu"),
    "overrides": ("--set", []),
}


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Train every variant of one of the paper's studies with the same recipe, seed, "
            "data and budget (the fusion stage of a staged config, on the attention branch "
            "of --weights), evaluate each on the held-out part of the split in the paper "
            "convention, and write a table like the paper's (Markdown, CSV, JSON; best per "
            "metric marked), a figure for experts and alpha, and a verdict per paper claim. "
            "Resumable: run the same command again to continue; studies that share --out "
            "share identical runs (the full model is E4K2 and alpha 10)."
        ),
        epilog=(
            "studies:\n"
            "  ablation  full, w/o MoLE, w/o MoGE, Att-Local (Table 2)\n"
            "  experts   E2K2, E4K2, E6K2, E8K2, E4K1, E4K3, E4K4 (Fig. 7)\n"
            "  alpha     alpha 1, 5, 10, 20, 40 (Fig. 8)\n"
            "  dynamic   no training: day vs night (or two groups of a --groups CSV), how\n"
            "            much of each source the fused images keep and the gate weights,\n"
            "            with permutation tests (section 'Dynamic routing' of docs/studies.md)\n"
            "examples:\n"
            "  moefusion study ablation --out runs/studies --steps 1000\n"
            "  moefusion study experts --data mydata --out runs/mine --budget-minutes 10\n"
            "  moefusion study alpha --out runs/studies --seeds 3   # means and spreads\n"
            "  moefusion study dynamic --data ../shared/data/msrs_eval --out runs/dynamic"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name", choices=NAMES, metavar="NAME", help="ablation, experts, alpha or dynamic"
    )
    p.add_argument(
        "--data",
        action="append",
        type=Path,
        metavar="DIR",
        help="dataset folder(s) with ir/ and vi/ (repeat); default: the config's datasets "
        "(for cpu, ../shared/data with the shipped split)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="NAME|FILE|auto",
        help="train/val/test split; 'auto' (the default with --data) holds out 20 %% of each "
        "dataset and keeps 15 %% of the rest for validation, written to <out>/split.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="study folder (default runs/studies; dynamic: runs/studies/dynamic)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=None, help="fusion-stage steps per run (default 1000)"
    )
    budget.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        metavar="M",
        help="wall-clock minutes per run instead of steps (constant learning rate)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="first seed (default 0; dynamic: permutation seed)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant: seed, seed+1, ...")
    p.add_argument("--config", default="cpu", help="staged base config (name or YAML file)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights whose attention branch every run uses (default: the bundled weights)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run (repeat), e.g. --set stages.fusion.data.crop=96",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training run, or of study dynamic's network (not with "
        "--report-only or --no-model)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the table from the finished runs only (train nothing; dynamic: the "
        "summary and figure again from <out>/pairs.csv and gates.csv)",
    )
    from moefusion.commands.study_dynamic import add_arguments

    add_arguments(p)
    return p


def check_options(args: argparse.Namespace) -> None:
    """Refuse the options the chosen study would not read (never silently ignored): the
    dynamic study's in a training study and the reverse, what a measurement reads with
    dynamic --report-only, the network's with --no-model, --threads when nothing trains."""
    from moefusion.commands._common import refuse_given
    from moefusion.commands.study_dynamic import DYNAMIC_ONLY, MEASURING, MODEL_ONLY, THREADS

    if args.name != "dynamic":
        refuse_given(args, DYNAMIC_ONLY, f"is for study dynamic, not study {args.name}")
        if args.report_only:
            refuse_given(
                args, THREADS, "sets the training runs' threads; --report-only trains nothing"
            )
        return
    refuse_given(
        args,
        TRAINING_ONLY,
        "is for the studies that train (ablation, experts, alpha); study dynamic trains nothing",
    )
    if args.report_only:
        refuse_given(
            args,
            MEASURING,
            "has no effect with --report-only (study dynamic redoes the report from the "
            "measurements in --out)",
        )
    elif args.no_model:
        refuse_given(args, MODEL_ONLY, "has no effect with --no-model (no network is run)")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    if args.name == "dynamic":
        from moefusion.commands.study_dynamic import run as run_dynamic

        return run_dynamic(args)
    if args.out is None:
        args.out = Path("runs/studies")
    from moefusion.commands._common import resolve_weights
    from moefusion.studies import STUDIES, Budget, StudySettings, run_variant
    from moefusion.studies.report import write_report
    from moefusion.studies.runner import resolve_run, run_folder

    if args.seeds < 1:
        raise MoEFusionError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise MoEFusionError(f"--threads must be >= 1, got {args.threads}")
    for d in args.data or []:
        if not d.is_dir():
            raise MoEFusionError(f"--data {d}: not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise MoEFusionError(f"--out {args.out} exists and is not a folder")
    study = STUDIES[args.name]
    budget = Budget(steps=args.steps, minutes=args.budget_minutes)
    settings = StudySettings(
        config=args.config,
        weights=resolve_weights(args.weights),
        budget=budget,
        seeds=tuple(range(args.seed, args.seed + args.seeds)),
        data=tuple(args.data) if args.data else None,
        split=args.split if args.split is not None else ("auto" if args.data else None),
        overrides=tuple(args.overrides),
        threads=args.threads,
    )
    from moefusion.atomic import check_writable

    check_writable(args.out, "study folder")
    args.out.mkdir(parents=True, exist_ok=True)
    # every run's config must resolve (and its data open) before the first one trains
    from moefusion.commands.train import check_data

    first_config, _, _ = resolve_run(settings, study.variants[0], settings.seeds[0], args.out)
    check_data(first_config)

    start = time.perf_counter()
    results = []
    total = len(study.variants) * len(settings.seeds)
    done = 0
    for seed in settings.seeds:
        for variant in study.variants:
            if args.report_only:
                _, _, key = resolve_run(settings, variant, seed, args.out)
                if not (run_folder(args.out, variant, seed, key) / "heldout.json").is_file():
                    continue
            results.append(run_variant(study, variant, seed, settings, args.out))
            done += 1
            r = results[-1]
            print(
                f"[{done}/{total}] {variant.name} seed {seed}: {r.steps} steps, "
                + ", ".join(f"{m} {v:.3f}" for m, v in r.means.items()),
                flush=True,
            )
    if not results:
        raise MoEFusionError(f"no finished runs of {study.name} under {args.out}")
    header = [
        f"Command: `moefusion study {study.name} --out {args.out} "
        + (f"--budget-minutes {budget.minutes:g}" if budget.minutes else f"--steps {budget.steps}")
        + (f" --seed {args.seed} --seeds {args.seeds}" if args.seeds > 1 or args.seed else "")
        + "`.",
        f"Budget: {budget.describe()} per run; config `{args.config}`, attention branch of "
        f"`{settings.weights.name}`; {results[0].pairs} held-out pairs, paper convention; "
        f"seeds {', '.join(map(str, settings.seeds))}.",
    ]
    paths = write_report(study, results, args.out, header)
    print(f"{study.name}: {len(results)} runs in {(time.perf_counter() - start) / 60:.1f} min")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
