"""Evaluate folders of fused images with :mod:`moefusion.metrics` and write result tables.

Reusable from Python (a report script calls these)::

    res = evaluate_folders(ir_dir, vi_dir, {"ours": Path("out/ours")}, ["paper"])
    summaries = summarise(res)
    write_tables(res, summaries, Path("evaluation"))

Images are paired by file stem (:func:`moefusion.data.list_images`) and read by the data
layer (:func:`moefusion.data.read_image`, 8-bit only). A fused image whose stem is in
neither source folder is not a pair (e.g. the ``--figure`` of ``moefusion fuse`` written
into its ``--out``): it is skipped and listed in :attr:`EvaluationResults.skipped_fused`.
Colour images are turned to gray the way each convention's reference toolbox does (:func:`moefusion.metrics.to_gray_u8`). Means are
plain means over images of the per-image values, as the reference scripts compute them,
except that undefined values (NaN, and the infinite PSNR of a fused image equal to a
source) are left out: the per-image table marks them in its ``undefined`` column and the
summaries give the number of images each mean is over (:attr:`Summary.counts`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moefusion.atomic import atomic_open, atomic_write_text
from moefusion.data.io import IMAGE_EXTENSIONS, parse_size, read_image, resize_image
from moefusion.data.pairs import format_names, list_images
from moefusion.errors import ImageReadError, MoEFusionError, PairError
from moefusion.metrics import (
    CONVENTION_DESCRIPTIONS,
    CONVENTIONS,
    HIGHER_IS_BETTER,
    MetricInputError,
    compute,
    to_gray_u8,
)
from moefusion.metrics.conventions import get_convention

__all__ = [
    "IMAGE_EXTENSIONS",
    "PAPER_METRICS",
    "EvaluationResults",
    "Summary",
    "check_conventions",
    "evaluate_folders",
    "join_methods",
    "markdown_table",
    "mean_ranks",
    "metric_ranks",
    "output_files",
    "parse_resize",
    "rank_positions",
    "read_peer_metrics",
    "read_u8",
    "rename_methods",
    "select_stems",
    "summarise",
    "undefined_values",
    "write_tables",
]
#: Resize modes besides an explicit ``WxH``.
RESIZE_MODES: tuple[str, ...] = ("source", "fused")
#: Markdown marking of the best, second and third value of each metric.
RANK_MARKS: Mapping[int, tuple[str, str]] = {1: ("**", "**"), 2: ("_", "_"), 3: ("", "†")}
MARKING_NOTE = "Per metric: **bold** = best, _italic_ = second, † = third among the methods."


def direction_note(metrics: Sequence[str]) -> str:
    """Which of ``metrics`` are lower-is-better, for a table's legend."""
    lower = [k for k in metrics if not HIGHER_IS_BETTER[k]]
    if not lower:
        return "Higher is better for every metric."
    return f"Higher is better for every metric except {', '.join(lower)} (lower is better)."


# ----------------------------------------------------------------------------- reading


def read_u8(path: Path) -> np.ndarray:
    """Read an 8-bit image file as (H, W) gray or (H, W, 3) RGB uint8 with the data layer's
    decoder (:func:`moefusion.data.read_image`: EXIF orientation applied, alpha dropped).

    Raises:
        ImageReadError: missing, unreadable, or not 8 bits per channel.
    """
    img = read_image(path)
    if img.dtype != np.uint8:
        raise ImageReadError(f"{path}: 16-bit image; the metrics need 8-bit images")
    return img


def _names(stems: Iterable[str], limit: int = 8) -> str:
    return format_names(sorted(stems), limit)


# ----------------------------------------------------------------------------- resizing


def parse_resize(spec: str | None) -> str | tuple[int, int] | None:
    """``None``, ``'source'``, ``'fused'`` or ``'WxH'`` -> None, the mode, or (W, H).

    ``source``: resize both sources to the fused image's size; ``fused``: resize the
    fused image to the sources' size; ``WxH``: resize all three. Always cv2 bilinear
    (:func:`moefusion.data.resize_image`).
    """
    if spec is None or spec in RESIZE_MODES:
        return spec
    size = parse_size(spec)
    if size is None:
        raise MoEFusionError(
            f"--resize must be WxH (e.g. 640x480), 'source' or 'fused', got {spec!r}"
        )
    return size


def _size(img: np.ndarray) -> tuple[int, int]:
    return img.shape[1], img.shape[0]


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationResults:
    """Per-image metric values: ``values[convention][method][stem][metric]``."""

    conventions: tuple[str, ...]
    methods: tuple[str, ...]
    stems: tuple[str, ...]
    values: dict[str, dict[str, dict[str, dict[str, float]]]]
    resize: str | tuple[int, int] | None = None
    skipped_sources: tuple[str, ...] = field(default=())
    #: per method, the fused images whose stem is in neither source folder (not pairs,
    #: e.g. a figure saved into the fused folder): skipped.
    skipped_fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: stems left out because one of their images could not be read (``skip_unreadable``),
    #: with the reason
    failed: dict[str, str] = field(default_factory=dict)

    def rows(self, convention: str) -> list[dict[str, str | float]]:
        """One row per (method, stem): {'method', 'stem', metric: value, ...}."""
        out: list[dict[str, str | float]] = []
        for method in self.methods:
            for stem in self.stems:
                out.append(
                    {"method": method, "stem": stem, **self.values[convention][method][stem]}
                )
        return out


def check_conventions(conventions: Sequence[str] | str) -> tuple[str, ...]:
    """Convention names (or ``"all"``) -> the checked, de-duplicated tuple.

    Raises:
        MoEFusionError: an unknown name, or none.
    """
    if isinstance(conventions, str):
        conventions = CONVENTIONS if conventions == "all" else (conventions,)
    for c in conventions:
        get_convention(c)  # raises a clear error for unknown names
    if not conventions:
        raise MoEFusionError("no metric convention given")
    return tuple(dict.fromkeys(conventions))


def _pair_stems(
    ir: dict[str, Path], vi: dict[str, Path], fused: dict[str, dict[str, Path]]
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(stems to evaluate, source stems without fused images, per method the fused stems
    in neither source folder); raises PairError on gaps."""
    sources = set(ir) | set(vi)
    not_pairs = {m: tuple(sorted(set(f) - sources)) for m, f in fused.items()}
    not_pairs = {m: stems for m, stems in not_pairs.items() if stems}
    wanted = set().union(*(set(f) & sources for f in fused.values()))
    if not wanted:
        every = set().union(*(set(f) for f in fused.values()))
        raise PairError(
            f"no fused image has a source pair: the fused stems ({_names(every)}) are in "
            "neither source folder"
        )
    problems = []
    for method, files in fused.items():
        missing = wanted - set(files)
        if missing:
            problems.append(f"fused '{method}' lacks {_names(missing)}")
    for role, files in (("ir", ir), ("vi", vi)):
        missing = wanted - set(files)
        if missing:
            problems.append(f"{role} folder lacks {_names(missing)}")
    if problems:
        raise PairError("unpaired images: " + "; ".join(problems))
    skipped = sources - wanted
    return tuple(sorted(wanted)), tuple(sorted(skipped)), not_pairs


def evaluate_folders(
    ir_dir: Path,
    vi_dir: Path,
    fused: Mapping[str, Path],
    conventions: Sequence[str] | str = ("paper",),
    resize: str | tuple[int, int] | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> EvaluationResults:
    """Compute every metric of each convention for each fused folder.

    Args:
        ir_dir, vi_dir: folders of source images, paired by stem with each fused folder.
        fused: {method name: folder of fused images}.
        conventions: names from :data:`moefusion.metrics.CONVENTIONS`, or ``"all"``.
        resize: None (sizes must match), ``"source"``, ``"fused"`` or (W, H); see
            :func:`parse_resize`. Resizing happens on the image as read, before gray
            conversion (as the MoE-Fusion data path resizes before BGR2GRAY).
        progress: show a tqdm progress bar.
        skip_unreadable: a stem with an unreadable image (source or any method's fused
            image) is left out for every method, its reason kept in
            :attr:`EvaluationResults.failed`, instead of raising; so one bad file does
            not stop the evaluation of the others, and all methods keep the same stems.

    Raises:
        PairError: missing partners, or sizes differ and ``resize`` is None.
        ImageReadError: unreadable folders, or files (without ``skip_unreadable``; with
            it, when no stem is readable at all).
    """
    if not fused:
        raise MoEFusionError("no fused folder given")
    convs = check_conventions(conventions)
    if isinstance(resize, str) or resize is None:
        resize = parse_resize(resize)
    ir = list_images(ir_dir, "ir")
    vi = list_images(vi_dir, "vi")
    fused_files = {m: list_images(d, f"fused '{m}'") for m, d in fused.items()}
    stems, skipped, not_pairs = _pair_stems(ir, vi, fused_files)
    methods = tuple(fused)
    values: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        c: {m: {} for m in methods} for c in convs
    }
    bar = tqdm(total=len(stems) * len(methods), desc="evaluate", unit="img", disable=not progress)
    failed: dict[str, str] = {}
    with bar:
        for stem in stems:
            try:
                a, b = read_u8(ir[stem]), read_u8(vi[stem])
                fused_images = {m: read_u8(fused_files[m][stem]) for m in methods}
            except ImageReadError as exc:
                if not skip_unreadable:
                    raise
                failed[stem] = str(exc)
                bar.update(len(methods))
                continue
            if _size(a) != _size(b) and not isinstance(resize, tuple):
                raise PairError(
                    f"{stem}: ir is {_size(a)[0]}x{_size(a)[1]} but vi is "
                    f"{_size(b)[0]}x{_size(b)[1]} (use --resize WxH)"
                )
            for method in methods:
                f = fused_images[method]
                a2, b2, f2 = _match_sizes(a, b, f, resize, stem, method)
                for c in convs:
                    try:
                        values[c][method][stem] = compute(
                            to_gray_u8(a2, c), to_gray_u8(b2, c), to_gray_u8(f2, c), c
                        )
                    except MetricInputError as exc:
                        raise MetricInputError(f"{stem} (fused '{method}'): {exc}") from exc
                bar.update(1)
    if failed and len(failed) == len(stems):
        raise ImageReadError(
            f"no pair could be read ({len(failed)} tried); first: {next(iter(failed.values()))}"
        )
    kept = tuple(s for s in stems if s not in failed)
    return EvaluationResults(convs, methods, kept, values, resize, skipped, not_pairs, failed)


def _match_sizes(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    resize: str | tuple[int, int] | None,
    stem: str,
    method: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(resize, tuple):
        return resize_image(a, resize), resize_image(b, resize), resize_image(f, resize)
    if _size(f) == _size(a):
        return a, b, f
    if resize == "source":
        return resize_image(a, _size(f)), resize_image(b, _size(f)), f
    if resize == "fused":
        return a, b, resize_image(f, _size(a))
    raise PairError(
        f"{stem}: fused '{method}' is {_size(f)[0]}x{_size(f)[1]} but the sources are "
        f"{_size(a)[0]}x{_size(a)[1]}; pass --resize source|fused|WxH to resize (cv2 bilinear)"
    )


# ----------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """Means over images per method, and the rank per metric (1 best .. 3; 0 for the rest,
    and for every method when only one is evaluated).

    ``counts[method][metric]`` is the number of images with a defined (finite) value that
    the mean is over; None means all ``n_images``. A mean over no image is NaN.
    """

    convention: str
    description: str
    metrics: tuple[str, ...]
    n_images: int
    means: dict[str, dict[str, float]]
    ranks: dict[str, dict[str, int]]
    counts: dict[str, dict[str, int]] | None = None

    def count(self, method: str, metric: str) -> int:
        """Images the mean of ``metric`` for ``method`` is over."""
        if self.counts is None:
            return self.n_images
        return self.counts[method][metric]


def _rank(values: Mapping[str, float], higher_is_better: bool) -> dict[str, int]:
    """Competition ranking (ties share a rank) of finite values; NaN/None get 0, and only
    ranks 1-3 are kept."""
    finite = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    ordered = sorted(finite.values(), reverse=higher_is_better)
    ranks = {m: 0 for m in values}
    for m, v in finite.items():
        r = ordered.index(v) + 1
        ranks[m] = r if r <= 3 else 0
    return ranks


def _mean(xs: Iterable[float]) -> tuple[float, int]:
    """(mean of the finite values, their number); NaN when there is none."""
    arr = np.array(list(xs), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return (float(arr.mean()) if arr.size else math.nan), int(arr.size)


def undefined_values(results: EvaluationResults) -> list[tuple[str, str, str, str, float]]:
    """Every non-finite per-image value: (convention, method, stem, metric, value)."""
    out = []
    for c in results.conventions:
        for m in results.methods:
            for s in results.stems:
                for k, v in results.values[c][m][s].items():
                    if not math.isfinite(v):
                        out.append((c, m, s, k, v))
    return out


def summarise(results: EvaluationResults) -> dict[str, Summary]:
    """{convention: Summary} with the mean over images of each metric per method.

    Undefined (non-finite) per-image values are left out of the means; the number of
    images each mean is over is in :attr:`Summary.counts`.
    """
    out = {}
    for c in results.conventions:
        metrics = get_convention(c).metrics
        pairs = {
            m: {k: _mean(results.values[c][m][s][k] for s in results.stems) for k in metrics}
            for m in results.methods
        }
        means = {m: {k: v[0] for k, v in d.items()} for m, d in pairs.items()}
        counts = {m: {k: v[1] for k, v in d.items()} for m, d in pairs.items()}
        ranks: dict[str, dict[str, int]] = {m: dict.fromkeys(metrics, 0) for m in results.methods}
        if len(results.methods) > 1:  # a lone method is not "best" of anything
            for k in metrics:
                col = {m: means[m][k] for m in results.methods}
                for m, r in _rank(col, HIGHER_IS_BETTER[k]).items():
                    ranks[m][k] = r
        out[c] = Summary(
            c, CONVENTION_DESCRIPTIONS[c], metrics, len(results.stems), means, ranks, counts
        )
    return out


def _fmt(v: float) -> str:
    return "undefined" if not math.isfinite(v) else f"{v:.4f}"


def _json_safe(v: float) -> float | None:
    return v if math.isfinite(v) else None


def markdown_table(summary: Summary) -> str:
    """The summary as a Markdown table with the convention line and the marking legend."""
    arrows = {k: ("↑" if HIGHER_IS_BETTER[k] else "↓") for k in summary.metrics}
    head = "| method | " + " | ".join(f"{k} {arrows[k]}" for k in summary.metrics) + " |"
    sep = "|---|" + "---:|" * len(summary.metrics)
    partial = any(
        summary.count(m, k) != summary.n_images for m in summary.means for k in summary.metrics
    )
    note = (
        " (n/N): the mean is over the n images whose value is defined (not NaN or infinite)."
        if partial
        else ""
    )
    lines = [
        f"Convention: {summary.description}",
        "",
        f"Mean over {summary.n_images} image(s){note} {MARKING_NOTE} "
        f"{direction_note(summary.metrics)}",
        "",
        head,
        sep,
    ]
    for m, means in summary.means.items():
        cells = []
        for k in summary.metrics:
            pre, post = RANK_MARKS.get(summary.ranks[m][k], ("", ""))
            n = summary.count(m, k)
            count = f" ({n}/{summary.n_images})" if n != summary.n_images else ""
            cells.append(f"{pre}{_fmt(means[k])}{post}{count}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def output_files(out_dir: Path, conventions: Iterable[str]) -> list[Path]:
    """The files :func:`write_tables` writes for ``conventions``."""
    return [
        out_dir / f"{kind}_{c}.{ext}"
        for c in conventions
        for kind, ext in (
            ("per_image", "csv"),
            ("summary", "md"),
            ("summary", "csv"),
            ("summary", "json"),
        )
    ]


def write_tables(
    results: EvaluationResults, summaries: Mapping[str, Summary], out_dir: Path
) -> list[Path]:
    """Write per-image CSV and summary Markdown/CSV/JSON per convention; returns the paths.

    Files: ``per_image_<conv>.csv`` (method, stem, metrics, ``undefined``: the metrics
    whose value is NaN or infinite for that image), ``summary_<conv>.md``,
    ``summary_<conv>.csv`` (means, ``<metric>_rank`` and ``<metric>_n`` columns, n = the
    images each mean is over), ``summary_<conv>.json``. Each file is written to a
    temporary name and renamed when complete.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for c, s in summaries.items():
        per_image = out_dir / f"per_image_{c}.csv"
        with atomic_open(per_image, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method", "stem", *s.metrics, "undefined"])
            for row in results.rows(c):
                vals = [float(row[k]) for k in s.metrics]
                bad = " ".join(
                    k for k, v in zip(s.metrics, vals, strict=True) if not math.isfinite(v)
                )
                w.writerow([row["method"], row["stem"], *(repr(v) for v in vals), bad])
        md = out_dir / f"summary_{c}.md"
        atomic_write_text(md, f"# Fusion metrics, convention `{c}`\n\n" + markdown_table(s))
        summary_csv = out_dir / f"summary_{c}.csv"
        with atomic_open(summary_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "method",
                    *s.metrics,
                    *(f"{k}_rank" for k in s.metrics),
                    *(f"{k}_n" for k in s.metrics),
                ]
            )
            for m in results.methods:
                w.writerow(
                    [
                        m,
                        *(repr(s.means[m][k]) for k in s.metrics),
                        *(s.ranks[m][k] for k in s.metrics),
                        *(s.count(m, k) for k in s.metrics),
                    ]
                )
        js = out_dir / f"summary_{c}.json"
        payload = {
            "convention": c,
            "description": s.description,
            "n_images": s.n_images,
            "stems": list(results.stems),
            "resize": list(results.resize) if isinstance(results.resize, tuple) else results.resize,
            "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in s.metrics},
            "means": {m: {k: _json_safe(v) for k, v in d.items()} for m, d in s.means.items()},
            "n_defined": {m: {k: s.count(m, k) for k in s.metrics} for m in s.means},
            "ranks": s.ranks,
        }
        atomic_write_text(js, json.dumps(payload, indent=2) + "\n")
        written += [per_image, md, summary_csv, js]
    return written


# ----------------------------------------------------------------------------- mean ranks

#: The eight metrics of the MoE-Fusion paper's Table 1 (higher is better for each).
PAPER_METRICS: tuple[str, ...] = ("EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf")
#: How ties share a rank in :func:`metric_ranks` (``scipy.stats.rankdata``): ``"min"`` =
#: competition ranking (two methods tied for best both get 1, the next gets 3).
RANK_TIES = "min"


def metric_ranks(
    means: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = PAPER_METRICS,
    ties: str = RANK_TIES,
) -> dict[str, dict[str, float]]:
    """Rank of every method on every metric among all methods of ``means``
    (``{method: {metric: mean}}``): 1 = best, in each metric's direction
    (:data:`moefusion.metrics.HIGHER_IS_BETTER`); equal values share a rank as
    ``scipy.stats.rankdata(method=ties)`` does. A non-finite mean gets rank NaN and does
    not take part in that metric's ranking.
    """
    from scipy.stats import rankdata

    out: dict[str, dict[str, float]] = {m: {} for m in means}
    for k in metrics:
        finite = [m for m in means if means[m][k] is not None and math.isfinite(means[m][k])]
        sign = -1.0 if HIGHER_IS_BETTER[k] else 1.0
        ranks = rankdata([sign * float(means[m][k]) for m in finite], method=ties)
        for m in means:
            out[m][k] = math.nan
        for m, r in zip(finite, ranks, strict=True):
            out[m][k] = float(r)
    return out


def mean_ranks(
    means: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = PAPER_METRICS,
    ties: str = RANK_TIES,
) -> dict[str, float]:
    """Each method's mean over ``metrics`` of its rank (:func:`metric_ranks`) among all
    methods of ``means``; lower is better. Metrics with an undefined mean are left out of
    that method's mean (NaN when none is left)."""
    out = {}
    for m, ranks in metric_ranks(means, metrics, ties).items():
        vals = [r for r in ranks.values() if math.isfinite(r)]
        out[m] = float(np.mean(vals)) if vals else math.nan
    return out


def rank_positions(scores: Mapping[str, float]) -> dict[str, int]:
    """Position of each method when ordered by ``scores`` (e.g. mean ranks; lower is
    better), ties sharing the best position (competition ranking); NaN scores last."""
    ordered = sorted(v for v in scores.values() if math.isfinite(v))
    return {
        m: (ordered.index(v) + 1 if math.isfinite(v) else len(scores)) for m, v in scores.items()
    }


# ----------------------------------------------------------------------------- other methods' values

#: Key columns of a per-image metrics CSV of other methods (e.g. ``reference/peers``).
PEER_KEY_COLUMNS: tuple[str, ...] = ("set", "dataset", "stem", "method", "convention")
#: Columns of that CSV that are not metrics.
PEER_OTHER_COLUMNS: tuple[str, ...] = ("H", "W")


def read_peer_metrics(path: Path) -> dict[tuple[str, str], EvaluationResults]:
    """Read a per-image metrics CSV with one row per (set, dataset, stem, method,
    convention) and one column per metric (plus ``H``, ``W``), as
    ``../shared/reference/peers/metrics_per_image.csv``, into one
    :class:`EvaluationResults` per ``(set, dataset)``. Stems are kept as text (leading
    zeros matter).

    Raises:
        MoEFusionError: missing key columns, a repeated row, a value that is not a
            number, or a method lacking a stem (or convention) that another row of its
            ``(set, dataset)`` has.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = tuple(reader.fieldnames or ())
        missing = [c for c in PEER_KEY_COLUMNS if c not in columns]
        if missing:
            raise MoEFusionError(f"{path}: no column(s) {', '.join(missing)}")
        metrics = tuple(c for c in columns if c not in PEER_KEY_COLUMNS + PEER_OTHER_COLUMNS)
        groups: dict[tuple[str, str], dict[str, dict[str, dict[str, dict[str, float]]]]] = {}
        for line, row in enumerate(reader, start=2):
            key = (row["set"], row["dataset"])
            conv, method, stem = row["convention"], row["method"], row["stem"]
            per_stem = groups.setdefault(key, {}).setdefault(conv, {}).setdefault(method, {})
            if stem in per_stem:
                raise MoEFusionError(
                    f"{path}:{line}: repeated row for {key[0]}/{key[1]}/{stem} {method} {conv}"
                )
            try:
                per_stem[stem] = {k: float(row[k]) for k in metrics}
            except (TypeError, ValueError) as exc:
                raise MoEFusionError(f"{path}:{line}: not a number ({exc})") from exc
    out = {}
    for key, values in groups.items():
        conventions = tuple(values)
        methods = tuple(dict.fromkeys(m for c in conventions for m in values[c]))
        stems = set().union(*(set(values[c][m]) for c in conventions for m in values[c]))
        for c in conventions:
            for m in methods:
                lacking = stems - set(values[c].get(m, {}))
                if lacking:
                    raise MoEFusionError(
                        f"{path}: {key[0]}/{key[1]}: method {m!r} ({c}) lacks {_names(lacking)}"
                    )
        out[key] = EvaluationResults(conventions, methods, tuple(sorted(stems)), values)
    return out


def join_methods(first: EvaluationResults, other: EvaluationResults) -> EvaluationResults:
    """The methods of both results side by side, for their common conventions; the
    order of ``first``'s stems.

    Raises:
        PairError: the two do not have exactly the same stems.
        MoEFusionError: a method name in both, or no common convention.
    """
    only_first = set(first.stems) - set(other.stems)
    only_other = set(other.stems) - set(first.stems)
    if only_first or only_other:
        raise PairError(
            "the results are not on the same pairs: "
            + "; ".join(
                f"{n} only in {where} ({_names(s)})"
                for where, s in (("the first", only_first), ("the other", only_other))
                for n in [len(s)]
                if s
            )
        )
    both = set(first.methods) & set(other.methods)
    if both:
        raise MoEFusionError(f"method(s) in both results: {_names(both)}")
    conventions = tuple(c for c in first.conventions if c in other.conventions)
    if not conventions:
        raise MoEFusionError("the results have no convention in common")
    values = {
        c: {
            **{m: dict(first.values[c][m]) for m in first.methods},
            **{m: dict(other.values[c][m]) for m in other.methods},
        }
        for c in conventions
    }
    return EvaluationResults(
        conventions, first.methods + other.methods, first.stems, values, first.resize
    )


def select_stems(results: EvaluationResults, keep: Iterable[str]) -> EvaluationResults:
    """``results`` restricted to the stems in ``keep`` (in ``results``' order)."""
    wanted = set(keep)
    stems = tuple(s for s in results.stems if s in wanted)
    values = {
        c: {m: {s: results.values[c][m][s] for s in stems} for m in results.methods}
        for c in results.conventions
    }
    return EvaluationResults(results.conventions, results.methods, stems, values, results.resize)


def rename_methods(results: EvaluationResults, names: Mapping[str, str]) -> EvaluationResults:
    """``results`` with methods renamed by ``names`` (others keep their name)."""
    new = tuple(names.get(m, m) for m in results.methods)
    values = {
        c: {names.get(m, m): results.values[c][m] for m in results.methods}
        for c in results.conventions
    }
    return EvaluationResults(results.conventions, new, results.stems, values, results.resize)
