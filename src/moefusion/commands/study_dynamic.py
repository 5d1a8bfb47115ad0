"""``moefusion study dynamic``: day vs night source share and routing on a folder of pairs."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from moefusion.errors import MoEFusionError

#: Default output folder of the dynamic study.
DEFAULT_OUT = Path("runs/studies/dynamic")
#: Files the study writes (refused without --overwrite when present).
OUTPUT_FILES = ("pairs.csv", "gates.csv", "summary.json", "summary.md", "dynamic.png")
#: --threads: the training studies' torch threads per run, or those of this study's network.
THREADS: dict[str, tuple[str, object]] = {"threads": ("--threads", None)}
#: Defaults of --baselines (all five) and --permutations.
DEFAULT_BASELINES = "average,max,laplacian,dwt,gff"
DEFAULT_PERMUTATIONS = 10000

#: The options of :func:`add_arguments`, which only the dynamic study reads (the training
#: studies refuse them): attribute -> (option, default).
DYNAMIC_ONLY: dict[str, tuple[str, object]] = {
    "groups": ("--groups", None),
    "fused": ("--fused", []),
    "baselines": ("--baselines", DEFAULT_BASELINES),
    "no_model": ("--no-model", False),
    "permutations": ("--permutations", DEFAULT_PERMUTATIONS),
    "device": ("--device", "cpu"),
    "time_limit": ("--time-limit", None),
    "overwrite": ("--overwrite", False),
}
#: What only a measuring run reads: --report-only redoes the report from <out> instead.
MEASURING: dict[str, tuple[str, object]] = {
    "data": ("--data", None),
    "weights": ("--weights", None),
    **THREADS,
    **{k: v for k, v in DYNAMIC_ONLY.items() if k != "permutations"},
}
#: What only the network reads: --no-model runs none.
MODEL_ONLY: dict[str, tuple[str, object]] = {
    "weights": ("--weights", None),
    "device": ("--device", "cpu"),
    **THREADS,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options only the dynamic study uses (the others refuse them)."""
    g = p.add_argument_group(
        "dynamic study",
        "source share and gate weights per pair, two groups compared (see docs/studies.md);\n"
        "only study dynamic takes these, and it refuses --split, --steps, --budget-minutes,\n"
        "--seeds, --config and --set (it trains nothing); --threads sets its network's threads",
    )
    g.add_argument(
        "--groups",
        type=Path,
        default=None,
        metavar="CSV",
        help="stem,group rows (two groups); default: MSRS stem suffix D = day, N = night",
    )
    g.add_argument(
        "--fused",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="other methods' fused images <stem>.png (repeat); a folder of subfolders is "
        "one method per subfolder; pairs a method lacks are skipped for it",
    )
    g.add_argument(
        "--baselines",
        default=DEFAULT_BASELINES,
        metavar="LIST",
        help="classical baselines to measure, comma-separated, or 'none' (default: all five)",
    )
    g.add_argument(
        "--no-model",
        action="store_true",
        help="measure only the baselines and --fused images (no network, no gates)",
    )
    g.add_argument(
        "--permutations",
        type=int,
        default=DEFAULT_PERMUTATIONS,
        help=f"label permutations per test ({DEFAULT_PERMUTATIONS})",
    )
    g.add_argument("--device", default="cpu", help="device of the network (default cpu)")
    g.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MIN",
        help="stop measuring after MIN minutes and report the pairs done (a balanced random "
        "subset); the same command continues the run (<out>/pairs.jsonl)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")


def _baselines(text: str) -> list[str]:
    from moefusion.baselines import BASELINES

    if text.strip().lower() == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise MoEFusionError(
            f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)} or none"
        )
    return list(dict.fromkeys(names))


def _previous_summary(out: Path) -> dict:
    """``summary.json`` of an earlier run (its command, weights and groups), or ``{}``."""
    import json

    try:
        data = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fingerprint(path: Path) -> str:
    """``name sha256[:16]`` of a weights file: a resumed run must use the same weights."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{path.name} {digest}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from moefusion.commands._common import (
        check_writable_outputs,
        device_arg,
        parse_named_dirs,
        resolve_weights,
    )
    from moefusion.data import dataset_pairs
    from moefusion.studies import dynamic

    out = args.out if args.out is not None else DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise MoEFusionError(f"--out {out} exists and is not a folder")
    if args.permutations < 1:
        raise MoEFusionError(f"--permutations must be >= 1, got {args.permutations}")
    argv = getattr(args, "_argv", None)
    start = time.perf_counter()
    if args.report_only:
        m = dynamic.load_measurements(out)
        previous = _previous_summary(out)
        m.total = previous.get("pairs_total")
        groups = list(previous.get("groups") or dict.fromkeys(m.labels))
        if len(groups) != 2 or set(m.labels) != set(groups):
            raise MoEFusionError(
                f"{out}/pairs.csv: expected two groups, found {sorted(set(m.labels))}"
            )
        weights_name = previous.get("weights")
        data_name = str(previous.get("data", out))
        command = previous.get("command") or ""
        groups_text = previous.get("groups_rule", "")
    else:
        if not args.data or len(args.data) != 1:
            raise MoEFusionError("study dynamic takes one --data folder (with ir/ and vi/)")
        data = args.data[0]
        if not data.is_dir():
            raise MoEFusionError(f"--data {data}: not a folder")
        if args.groups is not None and not args.groups.is_file():
            raise MoEFusionError(f"--groups {args.groups}: not a file")
        baselines = _baselines(args.baselines)
        fused = dynamic.fused_folders(parse_named_dirs(args.fused))
        clash = sorted(set(fused) & {*baselines, dynamic.OURS})
        if clash:
            raise MoEFusionError(f"--fused method name(s) {', '.join(clash)} clash; use NAME=DIR")
        if args.no_model and not baselines and not fused:
            raise MoEFusionError("nothing to measure: --no-model without baselines or --fused")
        if args.time_limit is not None and args.time_limit <= 0:
            raise MoEFusionError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
        cache = out / dynamic.CACHE
        present = [out / f for f in OUTPUT_FILES if (out / f).exists()]
        if present and not args.overwrite and not cache.is_file():
            raise MoEFusionError(
                f"{present[0]} exists (an earlier run); pass --overwrite, --report-only or "
                "another --out"
            )
        check_writable_outputs(out)
        pairs = dataset_pairs(data)
        stems = [p.stem for p in pairs]
        mapping = (
            dynamic.read_groups_csv(args.groups)
            if args.groups is not None
            else dynamic.msrs_groups(stems)
        )
        _, groups = dynamic.group_labels(stems, mapping)
        fuser = None
        weights = None
        if not args.no_model:
            import torch

            from moefusion.fuser import Fuser

            if args.threads is not None:
                if args.threads < 1:
                    raise MoEFusionError(f"--threads must be >= 1, got {args.threads}")
                torch.set_num_threads(args.threads)

            weights = resolve_weights(args.weights)
            fuser = Fuser.from_file(weights, device=device_arg(args.device))
        settings = {
            "data": str(data.resolve()),
            "weights": _fingerprint(weights) if weights is not None else None,
            "baselines": baselines,
            "fused": {k: sorted(v) for k, v in fused.items()},
            "groups": {s: mapping[s] for s in stems},
        }
        if args.overwrite:
            for f in (cache, *(out / name for name in OUTPUT_FILES)):
                f.unlink(missing_ok=True)
        m = dynamic.measure_pairs(
            pairs,
            mapping,
            fuser=fuser,
            baselines=baselines,
            fused=fused,
            progress=lambda ps: tqdm(ps, desc="study dynamic", unit="pair", file=sys.stderr),
            cache=cache,
            settings=settings,
            deadline=None if args.time_limit is None else time.monotonic() + 60 * args.time_limit,
        )
        if not m.stems:
            raise MoEFusionError("no pair measured before --time-limit")
        weights_name = weights.name if weights is not None else None
        data_name = str(data)
        command = f"moefusion {shlex.join(argv)}" if argv else ""
        groups_text = (
            f"from `{args.groups}`" if args.groups else "by MSRS stem suffix (D day, N night)"
        )
    summary = dynamic.summarise(m, groups, permutations=args.permutations, seed=args.seed)
    summary.update(weights=weights_name, data=data_name, command=command, groups_rule=groups_text)
    header = [
        "# Dynamic fusion: source share and routing, "
        + " vs ".join(f"{g} ({m.labels.count(g)})" for g in groups),
        "",
        f"Data `{data_name}`; weights `{weights_name or 'none'}`; groups {groups_text}.",
    ]
    if command:
        header[2:2] = [f"Command: `{command}`", ""]
    paths = dynamic.write_outputs(
        m, summary, out, header, title=f"{Path(data_name).name}: " + " vs ".join(groups)
    )
    g0, g1 = groups
    for method, e in summary["share"].items():
        s, t = e["ir_share"], e["test"]
        print(
            f"{method}: IR share median {g0} {s[g0]['median']:.3f}, {g1} {s[g1]['median']:.3f}, "
            f"p = {t['p_value']:.4f}"
        )
    for name, t in summary["gates"].items():
        print(f"gates {name}: L1 {t['l1_mean_difference']:.3f}, p = {t['p_value']:.4f}")
    if not m.complete:
        print(f"partial: {len(m.stems)} of {m.total} pairs; run the same command to continue")
    print(f"{len(m.stems)} pairs in {(time.perf_counter() - start) / 60:.1f} min")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
