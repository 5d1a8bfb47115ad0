"""Dynamic fusion, measured: does the fused image keep more infrared at night, and do the
gates route differently by day and by night?

Per pair and method, :func:`moefusion.metrics.source_share.source_share` gives the
infrared and visible halves of Qabf and the infrared share ``q_ir / (q_ir + q_vi)``;
per pair, the model's gate weights of every mixture. The pairs fall into two groups
(MSRS: stem suffix ``D`` day, ``N`` night; or a ``stem,group`` CSV). Per method and
group: median and interquartile range; between the groups:

* **share**: the difference of the group medians (second group minus first), a 95 %
  bootstrap interval for it (resampling pairs within each group), and a two-sided
  permutation p-value (group labels shuffled; ``(1 + #{|T_perm| >= |T|}) / (1 + P)``);
* **share against a reference method** (the static ``average`` baseline by default): the
  same on the per-pair difference ``share(method) - share(reference)``. The sources
  themselves change between day and night (a dark visible image has fewer, weaker
  edges), which moves every method's share; a method that *adapts* moves further than a
  fixed rule, so this paired difference isolates the adaptation;
* **gates**: the L1 distance between the two groups' mean gate-weight vectors per
  mixture, with its permutation p-value, and the selection-based test of
  :func:`moefusion.studies.routing.permutation_test` (which experts were chosen).

Everything is computed from numbers alone (numpy), except :func:`measure_pairs`, which
reads images and runs the model and the baselines.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moefusion.errors import MoEFusionError
from moefusion.figures import write_figure

if TYPE_CHECKING:
    from moefusion.data import Pair
    from moefusion.fuser import Fuser

#: Name of the model's rows.
OURS = "moe-fusion"
#: Default reference for the paired (adaptation) test: the static average.
REFERENCE = "average"
#: MSRS stem suffix -> group.
MSRS_GROUPS: Mapping[str, str] = {"D": "day", "N": "night"}
#: Per-pair records of a run (JSON lines, settings first): what a rerun continues from.
CACHE = "pairs.jsonl"
#: Columns of the per-pair CSV.
PAIR_COLUMNS = ("stem", "group", "method", "q_ir", "q_vi", "ir_share", "qabf", "ir_weight")
#: Mixture names in the figure and tables.
MIXTURE_TITLES: Mapping[str, str] = {
    "mole_fg": "MoLE foreground",
    "mole_bg": "MoLE background",
    "moge": "MoGE",
}
#: Image extensions of fused images (lower case).
_FUSED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- groups


def msrs_groups(stems: Sequence[str]) -> dict[str, str]:
    """``{stem: "day" | "night"}`` from the MSRS suffix (last character ``D`` / ``N``).

    Raises:
        MoEFusionError: a stem ends in neither (names up to five of them).
    """
    bad = [s for s in stems if Path(s).name[-1:].upper() not in MSRS_GROUPS]
    if bad:
        from moefusion.data.pairs import format_names

        raise MoEFusionError(
            f"{len(bad)} stem(s) do not end in D (day) or N (night): {format_names(bad, 5)}; "
            "pass --groups FILE.csv with stem,group rows"
        )
    found = {s: MSRS_GROUPS[Path(s).name[-1].upper()] for s in stems}
    # day first: the group order of every table and difference (night minus day)
    return dict(sorted(found.items(), key=lambda kv: kv[1] != "day"))


def read_groups_csv(path: Path) -> dict[str, str]:
    """``{stem: group}`` from a CSV of ``stem,group`` rows (an optional header
    ``stem,group`` is skipped; blank lines and ``#`` comments are ignored).

    Raises:
        MoEFusionError: unreadable file, a row without two fields, a stem given twice.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MoEFusionError(f"--groups {path}: cannot read ({exc})") from exc
    out: dict[str, str] = {}
    for i, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if i == 1 and [c.lower() for c in cells[:2]] == ["stem", "group"]:
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise MoEFusionError(f"--groups {path}, line {i}: expected stem,group, got {row!r}")
        if cells[0] in out:
            raise MoEFusionError(f"--groups {path}, line {i}: stem {cells[0]!r} given twice")
        out[cells[0]] = cells[1]
    if not out:
        raise MoEFusionError(f"--groups {path}: no stem,group rows")
    return out


def group_labels(stems: Sequence[str], mapping: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Labels of ``stems`` and the group order (first appearance in ``mapping``: MSRS day
    before night, a CSV's groups in the order its rows name them).

    Raises:
        MoEFusionError: stems without a group, or not exactly two groups with pairs.
    """
    from moefusion.data.pairs import format_names

    missing = [s for s in stems if s not in mapping]
    if missing:
        raise MoEFusionError(f"{len(missing)} pair(s) have no group: {format_names(missing, 5)}")
    labels = [mapping[s] for s in stems]
    used = set(labels)
    order = [g for g in dict.fromkeys(mapping.values()) if g in used]
    if len(order) != 2:
        raise MoEFusionError(
            f"the study compares two groups; the pairs fall into {len(order)}: " + ", ".join(order)
        )
    return labels, order


# ------------------------------------------------------------------------- statistics


def describe(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """``n``, ``median``, ``q1``, ``q3`` (quartiles) and ``mean`` of the finite values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0, "median": math.nan, "q1": math.nan, "q3": math.nan, "mean": math.nan}
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return {
        "n": len(x),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(x.mean()),
    }


@dataclass(frozen=True)
class GroupTest:
    """Two-group comparison of one scalar per pair.

    Attributes:
        groups: the two group names, first and second.
        counts: pairs per group (finite values only).
        difference: median of the second group minus median of the first.
        ci95: 95 % percentile bootstrap interval of ``difference``.
        p_value: two-sided permutation p-value of ``difference``; NaN with < 2 per group.
        permutations: label permutations drawn.
    """

    groups: tuple[str, str]
    counts: tuple[int, int]
    difference: float
    ci95: tuple[float, float]
    p_value: float
    permutations: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "counts": list(self.counts),
            "median_difference": self.difference,
            "ci95": list(self.ci95),
            "p_value": self.p_value,
            "permutations": self.permutations,
        }


def _shuffled(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """``[size, n]`` independent random permutations of ``range(n)``."""
    return np.argsort(rng.random((size, n)), axis=1)


def compare_groups(
    values: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    permutations: int = 10000,
    bootstrap: int = 2000,
    seed: int = 0,
) -> GroupTest:
    """Median difference (``groups[1]`` minus ``groups[0]``) with a bootstrap interval and a
    two-sided permutation p-value; non-finite values are dropped first."""
    x = np.asarray(values, dtype=np.float64)
    lab = np.asarray([str(v) for v in labels])
    keep = np.isfinite(x) & np.isin(lab, list(groups[:2]))
    x, first = x[keep], lab[keep] == groups[0]
    counts = (int(first.sum()), int((~first).sum()))
    g = (str(groups[0]), str(groups[1]))
    if min(counts) < 2:
        return GroupTest(g, counts, math.nan, (math.nan, math.nan), math.nan, permutations)
    a, b = x[first], x[~first]
    observed = float(np.median(b) - np.median(a))
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, 1000):
        shuffled = x[_shuffled(rng, min(1000, permutations - start), len(x))]
        diffs = np.median(shuffled[:, counts[0] :], 1) - np.median(shuffled[:, : counts[0]], 1)
        exceed += int((np.abs(diffs) >= abs(observed) - 1e-12).sum())
    boot = np.median(rng.choice(b, (bootstrap, len(b))), 1) - np.median(
        rng.choice(a, (bootstrap, len(a))), 1
    )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return GroupTest(
        g, counts, observed, (float(lo), float(hi)), (1 + exceed) / (1 + permutations), permutations
    )


@dataclass(frozen=True)
class GateTest:
    """Day/night comparison of one mixture's gate weights.

    Attributes:
        groups: the two group names.
        counts: pairs per group.
        mean: ``[2, N]`` mean gate weight per expert in each group.
        q1, q3: ``[2, N]`` quartiles of each expert's weight in each group.
        selected: ``[2, N]`` share of each group's pairs whose gate selected each expert.
        l1: L1 distance between the two mean vectors (0 to 2).
        p_value: permutation p-value of ``l1``.
        selection_p_value: p-value of the selection test of
            :func:`moefusion.studies.routing.permutation_test`.
        permutations: label permutations drawn (each test).
    """

    groups: tuple[str, str]
    counts: tuple[int, int]
    mean: np.ndarray
    q1: np.ndarray
    q3: np.ndarray
    selected: np.ndarray
    l1: float
    p_value: float
    selection_p_value: float
    permutations: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "counts": list(self.counts),
            "mean": {g: r.round(4).tolist() for g, r in zip(self.groups, self.mean, strict=True)},
            "q1": {g: r.round(4).tolist() for g, r in zip(self.groups, self.q1, strict=True)},
            "q3": {g: r.round(4).tolist() for g, r in zip(self.groups, self.q3, strict=True)},
            "selected": {
                g: r.round(4).tolist() for g, r in zip(self.groups, self.selected, strict=True)
            },
            "l1_mean_difference": self.l1,
            "p_value": self.p_value,
            "selection_p_value": self.selection_p_value,
            "permutations": self.permutations,
        }


def compare_gates(
    gates: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    permutations: int = 10000,
    seed: int = 0,
) -> GateTest:
    """L1 distance between the groups' mean gate vectors (``gates``: ``[n, N]``) and its
    permutation p-value, plus the selection test of :mod:`moefusion.studies.routing`."""
    from moefusion.studies.routing import permutation_test, selections

    w = np.asarray(gates, dtype=np.float64)
    lab = np.asarray([str(v) for v in labels])
    if w.ndim != 2 or len(w) != len(lab):
        raise ValueError(f"gates must be [pairs, experts] for {len(lab)} pairs, got {w.shape}")
    first = lab == groups[0]
    second = lab == groups[1]
    w, first = w[first | second], first[first | second]
    observed = float(np.abs(w[first].mean(0) - w[~first].mean(0)).sum())
    rng = np.random.default_rng(seed)
    exceed = 0
    n_first = int(first.sum())
    for start in range(0, permutations, 500):
        shuffled = w[_shuffled(rng, min(500, permutations - start), len(w))]
        d = np.abs(shuffled[:, :n_first].mean(1) - shuffled[:, n_first:].mean(1)).sum(1)
        exceed += int((d >= observed - 1e-12).sum())
    parts = (w[first], w[~first])
    selection = permutation_test(
        w, [groups[0] if f else groups[1] for f in first], permutations=permutations, seed=seed
    )
    return GateTest(
        groups=(str(groups[0]), str(groups[1])),
        counts=(len(parts[0]), len(parts[1])),
        mean=np.stack([p.mean(0) for p in parts]),
        q1=np.stack([np.percentile(p, 25, axis=0) for p in parts]),
        q3=np.stack([np.percentile(p, 75, axis=0) for p in parts]),
        selected=np.stack([selections(p).mean(0) for p in parts]),
        l1=observed,
        p_value=(1 + exceed) / (1 + permutations),
        selection_p_value=selection.p_value,
        permutations=permutations,
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurements:
    """What :func:`measure_pairs` recorded.

    Attributes:
        rows: one dict per (pair, method) with :data:`PAIR_COLUMNS`.
        gates: ``{mixture: [pairs, N]}`` gate weights of the model (empty without one).
        stems, labels: the pairs' stems and groups, in order (rows of ``gates``).
        total: pairs the run was given (more than ``stems`` when it stopped early).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    stems: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    total: int | None = None

    @property
    def complete(self) -> bool:
        """Every pair of the run was measured (``total`` unknown counts as complete)."""
        return self.total is None or len(self.stems) >= self.total

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def values(self, method: str, column: str = "ir_share") -> tuple[np.ndarray, list[str]]:
        """``column`` of ``method`` per pair and the pairs' groups."""
        rows = [r for r in self.rows if r["method"] == method]
        return np.array([r[column] for r in rows], dtype=np.float64), [r["group"] for r in rows]

    def paired_difference(
        self, method: str, reference: str, column: str = "ir_share"
    ) -> tuple[np.ndarray, list[str]]:
        """``column(method) - column(reference)`` on the pairs both have, and their groups."""
        ref = {r["stem"]: r[column] for r in self.rows if r["method"] == reference}
        rows = [r for r in self.rows if r["method"] == method and r["stem"] in ref]
        return (
            np.array([r[column] - ref[r["stem"]] for r in rows], dtype=np.float64),
            [r["group"] for r in rows],
        )


def fused_folders(specs: Mapping[str, Path]) -> dict[str, dict[str, Path]]:
    """``{method: folder}`` -> ``{method: {stem: file}}``. A folder without image files
    whose subfolders hold images stands for one method per subfolder (named after it).

    Raises:
        MoEFusionError: a folder that does not exist or holds no fused images.
    """
    out: dict[str, dict[str, Path]] = {}

    def images(folder: Path) -> dict[str, Path]:
        return {
            f.stem: f
            for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix.lower() in _FUSED_EXTENSIONS and not f.name.startswith(".")
        }

    for name, folder in specs.items():
        if not folder.is_dir():
            raise MoEFusionError(f"--fused {folder}: not a folder")
        found = images(folder)
        if found:
            out[name] = found
            continue
        subs = {d.name: images(d) for d in sorted(folder.iterdir()) if d.is_dir()}
        subs = {k: v for k, v in subs.items() if v}
        if not subs:
            raise MoEFusionError(f"--fused {folder}: no fused images (or subfolders with them)")
        for sub, files in subs.items():
            if sub in out:
                raise MoEFusionError(f"--fused: method {sub!r} given twice")
            out[sub] = files
    return out


def measure_pair(
    pair: Pair,
    group: str,
    *,
    fuser: Fuser | None = None,
    baselines: Sequence[str] = (),
    fused: Mapping[str, Mapping[str, Path]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Source share of every method on one pair (rows of :data:`PAIR_COLUMNS`), and the
    model's gate weights ``{mixture: [N]}`` (empty without a model).

    Sources are read as 8-bit and turned to gray with MATLAB ``rgb2gray`` (the ``float``
    convention of the metrics). The model fuses the pair as ``moefusion fuse`` does
    (:func:`moefusion.data.load_pair`), the baselines as ``moefusion baseline`` does;
    every fused image is rounded to 8 bits as it would be saved. ``fused`` gives other
    methods' images by stem (a method that lacks the pair is skipped).

    Raises:
        MoEFusionError: unreadable images, a fused image of another size than its pair.
    """
    from moefusion.baselines import fuse_baseline, to_u8, to_unit_gray
    from moefusion.data import load_pair
    from moefusion.evaluation import read_u8
    from moefusion.metrics import to_gray_u8
    from moefusion.metrics.source_share import source_share

    ir_raw, vi_raw = read_u8(pair.ir), read_u8(pair.vi)
    if ir_raw.shape[:2] != vi_raw.shape[:2]:
        raise MoEFusionError(
            f"{pair.stem}: infrared {ir_raw.shape[1]}x{ir_raw.shape[0]} and visible "
            f"{vi_raw.shape[1]}x{vi_raw.shape[0]} differ in size"
        )
    ir, vi = to_gray_u8(ir_raw, "float"), to_gray_u8(vi_raw, "float")
    images: dict[str, np.ndarray] = {}
    gates: dict[str, list[float]] = {}
    if fuser is not None:
        loaded = load_pair(pair.ir, pair.vi)
        res = fuser.fuse(loaded.ir, loaded.vi, return_details=True)
        images[OURS] = to_u8(res.fused)
        gates = {name: [float(x) for x in g] for name, g in res.gates.items()}
    if baselines:
        ir_f, vi_f = to_unit_gray(ir_raw), to_unit_gray(vi_raw)
        for method in baselines:
            images[method] = to_u8(fuse_baseline(ir_f, vi_f, method))
    for method, files in (fused or {}).items():
        if pair.stem in files:
            f = to_gray_u8(read_u8(files[pair.stem]), "float")
            if f.shape != ir.shape:
                raise MoEFusionError(
                    f"{files[pair.stem]}: {f.shape[1]}x{f.shape[0]}, but pair {pair.stem} is "
                    f"{ir.shape[1]}x{ir.shape[0]}"
                )
            images[method] = f
    rows = [
        {"stem": pair.stem, "group": group, "method": method, **source_share(ir, vi, f).as_dict()}
        for method, f in images.items()
    ]
    return rows, gates


def processing_order(pairs: Sequence[Pair], mapping: Mapping[str, str]) -> list[Pair]:
    """The pairs in a fixed order that alternates the groups, each group shuffled by a
    hash of its stems: the pairs done when a run is stopped early are a balanced random
    subset, not the first stems of one group."""
    import hashlib

    by_group: dict[str, list[Pair]] = {}
    for p in pairs:
        by_group.setdefault(mapping[p.stem], []).append(p)
    queues = [
        sorted(ps, key=lambda p: hashlib.sha256(p.stem.encode()).hexdigest())
        for ps in by_group.values()
    ]
    order: list[Pair] = []
    for i in range(max((len(q) for q in queues), default=0)):
        order += [q[i] for q in queues if i < len(q)]
    return order


def _read_cache(path: Path, settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Records of an earlier run of the same settings, by stem."""
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
        records = [json.loads(line) for line in lines[1:] if line.strip()]
    except ValueError:
        # the last line may be cut by an interruption: keep what parses
        records = []
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                break
    if head.get("settings") != json.loads(json.dumps(settings)):
        raise MoEFusionError(
            f"{path} was made with other data, weights, methods or groups; pass --overwrite "
            "to start again, or another --out"
        )
    return {r["stem"]: r for r in records}


def measure_pairs(
    pairs: Sequence[Pair],
    mapping: Mapping[str, str],
    *,
    fuser: Fuser | None = None,
    baselines: Sequence[str] = (),
    fused: Mapping[str, Mapping[str, Path]] | None = None,
    progress: Callable[[Sequence[Pair]], Any] | None = None,
    cache: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    deadline: float | None = None,
) -> Measurements:
    """:func:`measure_pair` on every pair, in :func:`processing_order`.

    With ``cache``, every pair's record is appended to that JSON-lines file as soon as it
    is measured, and the pairs it already holds (for the same ``settings``) are not
    measured again: an interrupted run continues where it stopped. ``deadline``
    (``time.monotonic()`` value) stops measuring early; :attr:`Measurements.total` then
    exceeds the pairs measured. The result lists the pairs in the order of ``pairs``.

    Raises:
        MoEFusionError: see :func:`measure_pair`; a cache made with other settings.
    """
    import time

    records: dict[str, dict[str, Any]] = {}
    handle = None
    if cache is not None:
        if cache.is_file():
            records = _read_cache(cache, settings or {})
        else:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"settings": settings or {}}) + "\n")
        handle = cache.open("a")
    todo = [p for p in processing_order(pairs, mapping) if p.stem not in records]
    try:
        for p in progress(todo) if progress is not None else todo:
            if deadline is not None and time.monotonic() > deadline:
                break
            rows, gates = measure_pair(
                p, mapping[p.stem], fuser=fuser, baselines=baselines, fused=fused
            )
            records[p.stem] = {
                "stem": p.stem,
                "group": mapping[p.stem],
                "rows": rows,
                "gates": gates,
            }
            if handle is not None:
                handle.write(json.dumps(records[p.stem]) + "\n")
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    result = Measurements(total=len(pairs))
    gate_rows: dict[str, list[list[float]]] = {}
    for p in pairs:
        if p.stem not in records:
            continue
        r = records[p.stem]
        result.rows += r["rows"]
        result.stems.append(p.stem)
        result.labels.append(mapping[p.stem])
        for name, g in r["gates"].items():
            gate_rows.setdefault(name, []).append(g)
    result.gates = {k: np.array(v, dtype=np.float64) for k, v in gate_rows.items()}
    return result


# ------------------------------------------------------------------------------ report


def summarise(
    m: Measurements,
    groups: Sequence[str],
    *,
    reference: str | None = REFERENCE,
    permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers of the report: per method and group the distributions, the tests."""
    share: dict[str, Any] = {}
    for method in m.methods():
        entry: dict[str, Any] = {}
        for column in ("ir_share", "q_ir", "q_vi"):
            x, lab = m.values(method, column)
            entry[column] = {
                g: describe(x[[v == g for v in lab]]) if len(x) else describe([]) for g in groups
            }
        x, lab = m.values(method)
        entry["test"] = compare_groups(
            x, lab, groups, permutations=permutations, seed=seed
        ).as_dict()
        if reference is not None and reference != method and reference in m.methods():
            d, dlab = m.paired_difference(method, reference)
            entry["minus_reference"] = {
                "reference": reference,
                **{g: describe(d[[v == g for v in dlab]]) for g in groups},
                "test": compare_groups(
                    d, dlab, groups, permutations=permutations, seed=seed
                ).as_dict(),
            }
        share[method] = entry
    gates = {
        name: compare_gates(w, m.labels, groups, permutations=permutations, seed=seed).as_dict()
        for name, w in m.gates.items()
    }
    return {
        "groups": list(groups),
        "pairs": {g: m.labels.count(g) for g in groups},
        "pairs_measured": len(m.stems),
        "pairs_total": m.total if m.total is not None else len(m.stems),
        "permutations": permutations,
        "seed": seed,
        "reference": reference if reference in m.methods() else None,
        "share": share,
        "gates": gates,
    }


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def markdown(summary: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """The summary as Markdown tables (share per method, against the reference, gates)."""
    g0, g1 = summary["groups"]
    lines = [*header, ""] if header else []
    measured, total = summary.get("pairs_measured"), summary.get("pairs_total")
    if measured is not None and total is not None and measured < total:
        lines += [
            f"**Partial run: {measured} of {total} pairs measured** (a random, group-balanced "
            "subset); run the same command again to continue.",
            "",
        ]
    lines += [
        f"Pairs: {g0} {summary['pairs'][g0]}, {g1} {summary['pairs'][g1]}. Infrared share "
        "`q_ir / (q_ir + q_vi)` (halves of Qabf, docs/metrics.md): median [IQR] per group; "
        f"difference = median {g1} - median {g0} with a 95 % bootstrap interval; "
        f"p = two-sided permutation test ({summary['permutations']} permutations, "
        f"seed {summary['seed']}).",
        "",
        f"| method | n | IR share {g0} | IR share {g1} | difference | 95 % CI | p | "
        f"q_ir {g0} | q_ir {g1} | q_vi {g0} | q_vi {g1} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, e in summary["share"].items():
        s, t = e["ir_share"], e["test"]

        def med(block: Mapping[str, Any], g: str) -> str:
            d = block[g]
            return f"{_f(d['median'])} [{_f(d['q1'])}, {_f(d['q3'])}]"

        lines.append(
            f"| {method} | {t['counts'][0]}+{t['counts'][1]} | {med(s, g0)} | {med(s, g1)} | "
            f"{_f(t['median_difference'], 4)} | [{_f(t['ci95'][0], 4)}, {_f(t['ci95'][1], 4)}] | "
            f"{_p(t['p_value'])} | {_f(e['q_ir'][g0]['median'])} | {_f(e['q_ir'][g1]['median'])} | "
            f"{_f(e['q_vi'][g0]['median'])} | {_f(e['q_vi'][g1]['median'])} |"
        )
    ref = summary.get("reference")
    if ref:
        lines += [
            "",
            f"Against the static `{ref}` on the same pair: per-pair IR share minus `{ref}`'s, "
            "median [IQR] per group; does the method shift further between the groups than "
            "the fixed rule?",
            "",
            f"| method | {g0} | {g1} | difference | 95 % CI | p |",
            "|---|---|---|---|---|---|",
        ]
        for method, e in summary["share"].items():
            if "minus_reference" not in e:
                continue
            r = e["minus_reference"]
            t = r["test"]
            lines.append(
                f"| {method} | {_f(r[g0]['median'], 4)} [{_f(r[g0]['q1'], 4)}, "
                f"{_f(r[g0]['q3'], 4)}] | {_f(r[g1]['median'], 4)} [{_f(r[g1]['q1'], 4)}, "
                f"{_f(r[g1]['q3'], 4)}] | {_f(t['median_difference'], 4)} | "
                f"[{_f(t['ci95'][0], 4)}, {_f(t['ci95'][1], 4)}] | {_p(t['p_value'])} |"
            )
    if summary["gates"]:
        lines += [
            "",
            "Gate weights of the model: mean weight per expert (E1..EN) per group; L1 = "
            "distance between the two mean vectors (0..2), p its permutation p-value; "
            "selection p = test of which experts were selected (moefusion.studies.routing).",
            "",
            f"| mixture | mean {g0} | mean {g1} | selected {g0} | selected {g1} | L1 | p | "
            "selection p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, t in summary["gates"].items():

            def vec(v: Sequence[float]) -> str:
                return " ".join(f"{x:.2f}" for x in v)

            lines.append(
                f"| {MIXTURE_TITLES.get(name, name)} | {vec(t['mean'][g0])} | "
                f"{vec(t['mean'][g1])} | {vec(t['selected'][g0])} | {vec(t['selected'][g1])} | "
                f"{t['l1_mean_difference']:.3f} | {_p(t['p_value'])} | "
                f"{_p(t['selection_p_value'])} |"
            )
    return "\n".join(lines) + "\n"


def save_figure(m: Measurements, groups: Sequence[str], path: Path, title: str = "") -> Path:
    """Box plots of the infrared share per method and group (methods with fewer than 5
    pairs per group as points), and the model's mean gate weights per expert and group
    (bars, quartiles as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ("tab:orange", "tab:blue")
    mixtures = list(m.gates)
    n_methods = len(m.methods())
    ratios = [max(2.5, 0.55 * n_methods)] + [1.6] * len(mixtures)
    fig, axes = plt.subplots(
        1,
        1 + len(mixtures),
        figsize=(1.2 + sum(ratios), 3.4),
        gridspec_kw={"width_ratios": ratios},
        squeeze=False,
    )
    ax = axes[0, 0]
    methods = m.methods()
    for j, g in enumerate(groups):
        for i, method in enumerate(methods):
            x, lab = m.values(method)
            v = x[[lv == g for lv in lab]]
            v = v[np.isfinite(v)]
            pos = i + (j - 0.5) * 0.38
            if len(v) >= 5:
                ax.boxplot(
                    [v],
                    positions=[pos],
                    widths=0.32,
                    patch_artist=True,
                    showfliers=False,
                    boxprops={"facecolor": colors[j], "alpha": 0.6},
                    medianprops={"color": "k"},
                )
            elif len(v):
                ax.plot([pos] * len(v), v, "o", color=colors[j], ms=4)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("IR share q_ir / (q_ir + q_vi)")
    for j, g in enumerate(groups):
        ax.plot([], [], "s", color=colors[j], alpha=0.6, label=g)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("infrared share of the fused image", fontsize=9)
    for k, name in enumerate(mixtures):
        ax = axes[0, k + 1]
        w = m.gates[name]
        n = w.shape[1]
        for j, g in enumerate(groups):
            part = w[[lv == g for lv in m.labels]]
            mean = part.mean(0)
            lo, hi = np.percentile(part, 25, axis=0), np.percentile(part, 75, axis=0)
            err = np.stack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
            ax.bar(
                np.arange(n) + (j - 0.5) * 0.38,
                mean,
                0.36,
                yerr=err,
                color=colors[j],
                alpha=0.8,
                capsize=2,
                label=g,
            )
        ax.set_xticks(range(n), [f"E{i + 1}" for i in range(n)], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"gates: {MIXTURE_TITLES.get(name, name)}", fontsize=9)
        if k == 0:
            ax.set_ylabel("mean gate weight (IQR)")
    if title:
        fig.suptitle(title, fontsize=9)
    return write_figure(fig, path, dpi=80)


def write_outputs(
    m: Measurements,
    summary: Mapping[str, Any],
    out: Path,
    header: Sequence[str] = (),
    title: str = "",
) -> dict[str, Path]:
    """``pairs.csv`` (one row per pair and method), ``gates.csv`` (one row per pair and
    mixture), ``summary.json``, ``summary.md`` and ``dynamic.png`` under ``out``."""
    from moefusion.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    lines = [",".join(PAIR_COLUMNS)]
    for r in m.rows:
        lines.append(
            ",".join(
                str(r[c]) if c in ("stem", "group", "method") else repr(float(r[c]))
                for c in PAIR_COLUMNS
            )
        )
    paths["pairs"] = atomic_write_text(out / "pairs.csv", "\n".join(lines) + "\n")
    if m.gates:
        n = max(w.shape[1] for w in m.gates.values())
        glines = [",".join(["stem", "group", "mixture", *(f"e{i + 1}" for i in range(n))])]
        for name, w in m.gates.items():
            for stem, g, row in zip(m.stems, m.labels, w, strict=True):
                glines.append(",".join([stem, g, name, *(f"{x:.6g}" for x in row)]))
        paths["gates"] = atomic_write_text(out / "gates.csv", "\n".join(glines) + "\n")
    paths["json"] = atomic_write_text(
        out / "summary.json", json.dumps(_json_safe(summary), indent=1) + "\n"
    )
    paths["markdown"] = atomic_write_text(out / "summary.md", markdown(summary, header))
    paths["figure"] = save_figure(m, list(summary["groups"]), out / "dynamic.png", title)
    return paths


def load_measurements(out: Path) -> Measurements:
    """Read ``pairs.csv`` and ``gates.csv`` of an earlier run back (``--report-only``).

    Raises:
        MoEFusionError: ``pairs.csv`` missing or not written by this study.
    """
    path = out / "pairs.csv"
    if not path.is_file():
        raise MoEFusionError(f"{path}: not found (run the study without --report-only first)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != PAIR_COLUMNS:
            raise MoEFusionError(f"{path}: not a pairs.csv of study dynamic")
        rows: list[dict[str, Any]] = [
            {k: (v if k in ("stem", "group", "method") else float(v)) for k, v in r.items()}
            for r in reader
        ]
    m = Measurements(rows=rows)
    for r in rows:
        if r["stem"] not in m.stems:
            m.stems.append(r["stem"])
            m.labels.append(r["group"])
    gates_path = out / "gates.csv"
    if gates_path.is_file():
        per: dict[str, dict[str, list[float]]] = {}
        with gates_path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                weights = [float(v) for k, v in r.items() if k.startswith("e") and v != ""]
                per.setdefault(r["mixture"], {})[r["stem"]] = weights
        m.gates = {name: np.array([d[s] for s in m.stems]) for name, d in per.items()}
    return m


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x
