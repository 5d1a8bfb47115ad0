"""``moefusion evaluate``: fusion metrics for one or more folders of fused images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moefusion.commands._common import (
    check_out_folder,
    check_output_outside,
    check_targets,
    check_writable_outputs,
    listing,
    parse_named_dirs,
)
from moefusion.errors import MoEFusionError
from moefusion.evaluation import (
    EvaluationResults,
    check_conventions,
    evaluate_folders,
    markdown_table,
    output_files,
    parse_resize,
    summarise,
    undefined_values,
    write_tables,
)
from moefusion.metrics import ALL_CONVENTIONS, EXTRA_METRICS
from moefusion.metrics.conventions import (
    get_convention,
    metric_function,
    selected_metrics,
    unknown_metric_message,
)

#: How many undefined values the warning names.
_LISTED = 6


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Compute fusion metrics (EN, SF, SD, MI, VIF, AG, SCD, Qabf, CC, PSNR, MSE; SSIM for "
            "cddfuse; the 13 VIFB metrics for vifb; FMI, Nabf, MEF-MS-SSIM on request) for "
            "folders of fused images, paired with the sources by file stem. Writes per-image "
            "CSV and a per-method summary (Markdown, CSV, JSON) per convention."
        ),
        epilog=_metrics_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ir", type=Path, required=True, help="folder of infrared source images")
    p.add_argument("--vi", type=Path, required=True, help="folder of visible source images")
    p.add_argument(
        "--fused",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a method name and its folder of fused images (repeat for several methods); "
        "images whose stem is in neither source folder (e.g. a figure) are skipped",
    )
    p.add_argument(
        "--convention",
        choices=(*ALL_CONVENTIONS, "all"),
        default="paper",
        help="metric convention: paper (TANG-2022, the MoE-Fusion Table 1 scales; default), "
        "float (TANG-2023), cddfuse (CDDFuse Evaluator), vifb (the 13 VIFB metrics), or all "
        "(= paper, float, cddfuse)",
    )
    p.add_argument(
        "--metrics",
        metavar="NAME,...",
        help="compute only these metrics (comma-separated, in this order), from the "
        "convention's own metrics and the extras every convention offers (FMI_*, Nabf*, "
        "MEF_*); see the list below. Default: all of the convention's own metrics",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation"),
        help="output folder for the tables (default ./evaluation; never an input folder)",
    )
    p.add_argument(
        "--resize",
        metavar="WxH|source|fused",
        help="when sizes differ: 'source' resizes the sources to the fused size, 'fused' the "
        "fused image to the source size, WxH all three (cv2 bilinear); default: sizes must match",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing tables in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _metrics_epilog() -> str:
    own = "\n".join(f"  {c}: {', '.join(get_convention(c).metrics)}" for c in ALL_CONVENTIONS)
    return (
        "metrics per convention (default set):\n"
        f"{own}\n"
        "extra metrics, any convention, only with --metrics (TANG toolbox definitions):\n"
        f"  {', '.join(EXTRA_METRICS)}\n"
        "lower is better: MSE, Cross_entropy, Rmse, Qcv, Nabf, Nabf_tang2023, Nabf_tang2022"
    )


def parse_metrics(spec: str | None, conventions: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``--metrics`` -> {convention: names it computes}; conventions without any of the
    names are left out. Raises :class:`MoEFusionError` (one line, closest names) for a name
    that none of ``conventions`` computes, or an empty list."""
    if spec is None:
        return {}
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise MoEFusionError("--metrics: no metric name given")
    selection = {
        c: tuple(m for m in names if metric_function(c, m) is not None) for c in conventions
    }
    missing = [m for m in names if not any(m in sel for sel in selection.values())]
    if missing:
        msg = unknown_metric_message(conventions[0], missing) or ""
        if len(conventions) > 1:
            msg = msg.replace(
                f"convention {conventions[0]!r}", "conventions " + "/".join(conventions)
            )
        raise MoEFusionError(f"--metrics: {msg.split('; available:')[0]} (see --help)")
    return {c: sel for c, sel in selection.items() if sel}


def _warn_undefined(results: EvaluationResults) -> None:
    bad = undefined_values(results)
    if not bad:
        return
    listed = ", ".join(f"{c} {k} of {s} ({m}) = {v}" for c, m, s, k, v in bad[:_LISTED]) + (
        f" (+{len(bad) - _LISTED} more)" if len(bad) > _LISTED else ""
    )
    print(
        f"moefusion evaluate: warning: {len(bad)} per-image value(s) are undefined (NaN or "
        f"infinite, e.g. a constant fused image) and left out of the means, whose image "
        f"counts are given as (n/N): {listed}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    fused = parse_named_dirs(args.fused, "--fused")
    resize = parse_resize(args.resize)
    check_output_outside(args.out, [args.ir, args.vi, *fused.values()])
    conventions = check_conventions(args.convention)
    selection = parse_metrics(args.metrics, conventions)
    if selection:
        conventions = tuple(selection)
    check_out_folder(args.out)
    check_targets(output_files(args.out, conventions), (), overwrite=args.overwrite)
    check_writable_outputs(args.out)
    with selected_metrics(selection):
        results = evaluate_folders(
            args.ir,
            args.vi,
            fused,
            conventions,
            resize=resize,
            progress=not args.no_progress,
            skip_unreadable=True,
        )
        for stem, reason in results.failed.items():
            print(f"moefusion evaluate: failed {stem}: {reason}", file=sys.stderr)
        summaries = summarise(results)
        _warn_undefined(results)
        written = write_tables(results, summaries, args.out)
    if results.skipped_sources:
        print(
            f"note: {len(results.skipped_sources)} source pair(s) have no fused image and were skipped"
        )
    for method, stems in results.skipped_fused.items():
        print(
            f"note: {len(stems)} image(s) in fused '{method}' are not pairs (their stem is in "
            f"neither source folder) and were skipped: {listing(stems)}"
        )
    for s in summaries.values():
        print()
        print(markdown_table(s))
    print(f"wrote {len(written)} files to {args.out}")
    if results.failed:
        print(
            f"moefusion evaluate: {len(results.failed)} pair(s) could not be read and are "
            f"not in the tables: {listing(results.failed)}",
            file=sys.stderr,
        )
        return 1
    return 0
