"""Regenerate the quality report of the bundled weights (docs/report.md and docs/report/).

    python scripts/make_report.py --data ../shared/data

Test sets: the held-out test part of split ``shared-data-v3`` for the five datasets it
shares with ``shared-data-v2`` (the same 70 pairs, per dataset and together) and its
``msrs_eval`` part (the 180 pairs of the official MSRS test split, all, day ``D`` and night
``N``). On each: the eight paper metrics and the others of ``moefusion.metrics`` in the
``paper`` and ``float`` conventions for the bundled model, the five classical baselines
and the published networks of ``../shared/reference/peers`` (SeAFusion, IFCNN, DenseFuse,
TarDAL: outputs made outside the project, metrics made with this project's code), and
each method's mean rank over the eight paper metrics. Also the MoLE and MoGE gate
distributions on MSRS day versus night pairs, one side-by-side figure per test set, and
the targets of the training recipe. Nothing here trains or tunes anything.

Fused images, their metric values and the training-pair targets are cached in ``--work``
(default ``/tmp/moefusion-report``: ``<dataset>/fused/<method>/<stem>.png``), keyed by a
digest of the weights and of the code that makes them (model, baselines) and by what the
metric code gives on a fixed synthetic pair (:func:`metric_fingerprint`), so a rerun only
redoes what changed; ``--fresh`` empties the cache first. ``--jobs N`` fuses and evaluates
in N worker processes; ``--paper-only`` and ``--no-msrs-eval`` make a quicker partial
report. The run time is printed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from moefusion import Fuser  # noqa: E402
from moefusion.baselines import BASELINES, fuse_baseline  # noqa: E402
from moefusion.data import (  # noqa: E402
    SHARED_DATASETS,
    colorize,
    dataset_pairs,
    load_pair,
    resolve_split,
    save_gray_u8,
    split_part_pairs,
)
from moefusion.evaluation import (  # noqa: E402
    PAPER_METRICS,
    RANK_TIES,
    EvaluationResults,
    evaluate_folders,
    join_methods,
    markdown_table,
    mean_ranks,
    rank_positions,
    read_peer_metrics,
    read_u8,
    rename_methods,
    select_stems,
    summarise,
    write_tables,
)
from moefusion.figures import FigureRow, save_pair_figure  # noqa: E402
from moefusion.models.gating import USED_WEIGHT  # noqa: E402
from moefusion.training.fit_report import correlation  # noqa: E402
from moefusion.weights import bundled_weights_path, read_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLIT_NAME = "shared-data-v3"
OLD_SPLIT = "shared-data-v2"  # its test part of DATASETS must equal SPLIT_NAME's
DATASETS = SHARED_DATASETS
MSRS_EVAL = "msrs_eval"  # SPLIT_NAME's evaluation-only part: the official MSRS test split
PEERS = ROOT / ".." / "shared" / "reference" / "peers"
PEER_SETS = {"test70": DATASETS, "msrs180": (MSRS_EVAL,)}  # sets of the peers' CSV
#: display names of the published networks; PEER_MARK marks them in every table
PEER_NAMES = {
    "seafusion": "SeAFusion",
    "ifcnn": "IFCNN",
    "densefuse": "DenseFuse",
    "tardal": "TarDAL",
}
PEER_MARK = " ‡"
PEER_NOTE = (
    "‡ = published network (authors' code and weights, run outside the project; its fused "
    "images are not made by this repository; metric values computed with "
    "`moefusion.metrics` on exactly these pairs: `../shared/reference/peers/README.md`)."
)
SEAFUSION = PEER_NAMES["seafusion"] + PEER_MARK
PEER_FIGURE = ("00111D", "00686N", "00706N", "010006", "labMan")  # stems in peers/figures
DAY_NIGHT = ("00095D", "00012N")  # held-out MSRS pairs shown in the day/night figure
TRAIN_PAIRS_FOR_FIT = 40  # training pairs on which the objective is compared
CONVENTIONS = ("paper", "float")
TABLE1 = PAPER_METRICS
MODEL = "MoE-Fusion (bundled)"


def link_sources(pairs, stems, work: Path) -> tuple[Path, Path]:
    """Test-split sources as symlinks, so the evaluator sees exactly those pairs."""
    ir_dir, vi_dir = work / "ir", work / "vi"
    for d in (ir_dir, vi_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    for p in pairs:
        if p.stem in stems:
            (ir_dir / p.ir.name).symlink_to(p.ir.resolve())
            (vi_dir / p.vi.name).symlink_to(p.vi.resolve())
    return ir_dir, vi_dir


def merge(results: list[EvaluationResults], prefixes: list[str]) -> EvaluationResults:
    """All datasets' per-image values as one result (stems prefixed by dataset)."""
    values: dict = {c: {m: {} for m in results[0].methods} for c in results[0].conventions}
    stems: list[str] = []
    for res, prefix in zip(results, prefixes, strict=True):
        stems += [f"{prefix}/{s}" for s in res.stems]
        for c in res.conventions:
            for m in res.methods:
                for s, v in res.values[c][m].items():
                    values[c][m][f"{prefix}/{s}"] = v
    return EvaluationResults(results[0].conventions, results[0].methods, tuple(stems), values)


def best_count(summary, method: str) -> tuple[int, list[str]]:
    wins = [k for k in TABLE1 if summary.ranks[method].get(k) == 1]
    return len(wins), [k for k in TABLE1 if k not in wins]


def gate_report(gates_by_stem: dict[str, dict[str, np.ndarray]], split_test: set[str], out: Path):
    """Mean gate weight and routing share per expert, MSRS day vs night."""
    rows = []
    groups: dict[tuple[str, str, str], list[np.ndarray]] = defaultdict(list)
    for stem, gates in gates_by_stem.items():
        light = "day" if stem.endswith("D") else "night"
        part = "test" if stem in split_test else "train"
        for mixture, g in gates.items():
            groups[(mixture, light, "all")].append(g)
            groups[(mixture, light, part)].append(g)
    mixtures = sorted({k[0] for k in groups})
    for mixture in mixtures:
        for part in ("all", "test"):
            for light in ("day", "night"):
                gs = groups.get((mixture, light, part))
                if not gs:
                    continue
                arr = np.stack(gs)
                rows.append(
                    {
                        "mixture": mixture,
                        "pairs": part,
                        "light": light,
                        "n": len(gs),
                        "mean_weight": [round(float(v), 3) for v in arr.mean(0)],
                        "routed_share": [round(float(v), 3) for v in (arr > 0).mean(0)],
                    }
                )
    fig, axes = plt.subplots(1, len(mixtures), figsize=(4 * len(mixtures), 3.2), squeeze=False)
    for ax, mixture in zip(axes[0], mixtures, strict=True):
        day = np.stack(groups[(mixture, "day", "all")]).mean(0)
        night = np.stack(groups[(mixture, "night", "all")]).mean(0)
        x = np.arange(len(day))
        ax.bar(x - 0.2, day, 0.4, label="day (D)", color="#f2b134")
        ax.bar(x + 0.2, night, 0.4, label="night (N)", color="#3b4b8c")
        ax.set_xticks(x, [f"E{i + 1}" for i in x])
        ax.set_title(mixture)
        ax.set_ylabel("mean gate weight")
        ax.set_ylim(0, 1)
    axes[0][0].legend()
    fig.suptitle("MSRS: gate weights per expert, day vs night (all 16 pairs)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return rows


def fit_on_training_pairs(fuser: Fuser, data: Path, split: dict) -> dict[str, float]:
    """Mean fusion objective (max target + 10 x gradient) on training pairs, as trained
    (longer side shrunk to 640): the model against the Laplacian pyramid and the average."""
    import torch

    from moefusion.data import PairedFusionDataset, Resize
    from moefusion.training.fit_report import objective

    stems = [(name, s) for name in DATASETS for s in split["datasets"][name]["train"]]
    step = max(1, len(stems) // TRAIN_PAIRS_FOR_FIT)
    chosen = stems[::step][:TRAIN_PAIRS_FOR_FIT]
    values: dict[str, list[float]] = {"model": [], "laplacian": [], "average": []}
    for name in DATASETS:
        wanted = [s for n, s in chosen if n == name]
        if not wanted:
            continue
        kwargs = {"label_set": "infrared"} if name == "msrs" else {}
        ds = PairedFusionDataset(
            data / name, stems=wanted, transform=Resize(max_side=640), **kwargs
        )
        for i in range(len(ds)):
            sample = ds[i]
            ir, vi = sample["ir"], sample["vi"]
            outputs = {
                "model": torch.from_numpy(fuser.fuse(ir[0].numpy(), vi[0].numpy()))[None],
                "laplacian": torch.from_numpy(
                    fuse_baseline(ir[0].double().numpy(), vi[0].double().numpy(), "laplacian")
                ).float()[None],
                "average": (ir + vi) / 2,
            }
            for k, f in outputs.items():
                values[k].append(objective(f.float(), ir, vi, None, pixel_target="max", alpha=10.0))
    return {k: float(np.mean(v)) for k, v in values.items()} | {"n": len(chosen)}


def usage_on_validation(fuser: Fuser, data: Path, split: dict) -> dict[str, list[float]]:
    """Share of validation pairs (split part ``val``) on which each expert is used (gets at
    least ``USED_WEIGHT`` of the gate weight, not merely selected), per gate."""
    routed: dict[str, list[np.ndarray]] = defaultdict(list)
    for pairs in split_part_pairs(data, split, "val", DATASETS).values():
        for p in pairs:
            loaded = load_pair(p.ir, p.vi)
            res = fuser.fuse(loaded.ir, loaded.vi, return_details=True)
            for k, g in res.gates.items():
                routed[k].append(g >= USED_WEIGHT)
    return {k: [round(float(v), 3) for v in np.stack(gs).mean(0)] for k, gs in routed.items()}


def day_night_figure(fuser: Fuser, data: Path, out: Path) -> list[str]:
    """One day and one night held-out MSRS pair, and a measured sentence for each."""
    rows, sentences = [], []
    pairs = {p.stem: p for p in dataset_pairs(data / "msrs")}
    for stem in DAY_NIGHT:
        loaded = load_pair(pairs[stem].ir, pairs[stem].vi)
        fused = fuser.fuse(loaded.ir, loaded.vi)
        color = colorize(fused, loaded.vi_rgb) if loaded.vi_is_color else None
        rows.append(FigureRow(stem, loaded.ir, loaded.vi_rgb, fused, color))
        c_vi, c_ir = correlation(fused, loaded.vi), correlation(fused, loaded.ir)
        hot = loaded.ir >= np.quantile(loaded.ir, 0.99)  # the brightest 1 % of infrared
        kept = float(fused[hot].mean() / max(1e-6, loaded.ir[hot].mean()))
        # texture: gradient energy of the fused image relative to the visible one's
        gy_f, gx_f = np.gradient(fused.astype(np.float64))
        gy_v, gx_v = np.gradient(loaded.vi.astype(np.float64))
        texture = float(np.hypot(gx_f, gy_f).mean() / max(1e-9, np.hypot(gx_v, gy_v).mean()))
        if stem.endswith("D"):
            verdict = "keeps" if c_vi > 0.6 and texture > 0.8 else "does NOT keep"
            sentences.append(
                f"- Day `{stem}`: the fused image {verdict} the visible texture: correlation "
                f"{c_vi:.2f} with the visible image ({c_ir:.2f} with the infrared), mean gradient "
                f"{texture:.2f}x the visible image's; the hottest 1 % of infrared pixels keep "
                f"{kept:.0%} of their intensity."
            )
        else:
            verdict = "keeps" if kept > 0.8 else "does NOT keep"
            sentences.append(
                f"- Night `{stem}`: the fused image {verdict} the infrared targets: the hottest 1 % "
                f"of infrared pixels keep {kept:.0%} of their intensity; correlation {c_ir:.2f} "
                f"with the infrared image, {c_vi:.2f} with the visible one."
            )
    save_pair_figure(rows, out)
    return sentences


def _training_summary(meta: dict[str, str]) -> str:
    """How the weights were trained, from what their metadata holds."""
    if "epochs" in meta or "global_step" in meta:
        return f"epochs {meta.get('epochs', '?')}, steps {meta.get('global_step', '?')}"
    return f"{meta.get('schedule', 'unknown')} schedule"


# ----------------------------------------------------------------------------- caching


def digest(paths: Iterable[Path]) -> str:
    """Short sha256 of the files (folders: their ``*.py`` files, recursively), by content.

    A file counts by its bytes alone (a renamed but identical weights file keeps its
    cache); a folder's files also by their path inside it (a moved module is a change).
    """
    h = hashlib.sha256()
    for path in paths:
        if path.is_dir():
            for f in sorted(path.rglob("*.py")):
                h.update(f.relative_to(path).as_posix().encode())
                h.update(f.read_bytes())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def metric_fingerprint() -> str:
    """Short sha256 of every metric both conventions give on a fixed synthetic pair: the
    cached metric values are redone when the metric code gives other values (not when
    unrelated code of ``moefusion.metrics`` changes)."""
    from moefusion.metrics import compute

    rng = np.random.default_rng(0)
    ir, vi = (rng.integers(0, 256, (48, 64), dtype=np.uint8) for _ in range(2))
    y, x = np.mgrid[:48, :64]
    ir[10:30, 20:40] = 250
    vi = (vi // 2 + (x * 2).astype(np.uint8)).astype(np.uint8)
    fused = ((ir.astype(np.float64) + vi) / 2 + (y % 7)).clip(0, 255).astype(np.uint8)
    values = {c: compute(ir, vi, fused, c) for c in ("paper", "float")}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload) + "\n")
    tmp.replace(path)


def fused_folder(folder: Path, key: str) -> Path:
    """``folder`` for fused images made with ``key``; emptied when they were made otherwise."""
    stamp = folder.parent / f"{folder.name}.key"
    if not stamp.exists() or stamp.read_text().strip() != key:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    return folder


_FUSER: Fuser | None = None  # the model of this process (the main one or a worker)


def _init_worker(weights: str) -> None:
    """Worker process: one torch thread, its own copy of the model."""
    import torch

    global _FUSER
    torch.set_num_threads(1)
    _FUSER = Fuser.from_file(weights, device="cpu")


def _fuse_one(task: tuple) -> tuple[str, float | None, dict | None]:
    """Fuse one pair: the model (when its image or gates are wanted) and the baselines
    whose image is missing; returns (stem, the model's seconds, its gates)."""
    p, methods, in_test, want_gates = task
    assert _FUSER is not None
    loaded = load_pair(p.ir, p.vi)
    model_png = methods[MODEL] / f"{p.stem}.png"
    seconds, gates = None, None
    if want_gates or (in_test and not model_png.exists()):
        t0 = time.perf_counter()
        res = _FUSER.fuse(loaded.ir, loaded.vi, return_details=True)
        seconds = time.perf_counter() - t0
        gates = {k: [float(x) for x in g] for k, g in res.gates.items()}
        if in_test:
            save_gray_u8(model_png, res.fused)
    if in_test:
        for m, folder in methods.items():
            if m != MODEL and not (folder / f"{p.stem}.png").exists():
                save_gray_u8(folder / f"{p.stem}.png", fuse_baseline(loaded.ir, loaded.vi, m))
    return p.stem, (seconds if in_test else None), gates


def fuse_cached(
    pairs,
    test: set[str],
    methods: dict[str, Path],
    meta_path: Path,
    model_key: str,
    gate_stems: set[str],
    desc: str,
    progress: bool,
    pool=None,
) -> dict:
    """Fuse the test pairs that lack an image in some method folder (the model and the
    baselines), and get the model's gates of ``gate_stems``; the model's time per pair
    and its gates are kept in ``meta_path``. Returns that record. ``pool``: worker
    processes (:func:`_init_worker`), else this process's model."""
    meta = _read_json(meta_path)
    if meta.get("key") != model_key:
        meta = {"key": model_key, "seconds": {}, "gates": {}}
    tasks = [
        (p, methods, p.stem in test, p.stem in gate_stems and p.stem not in meta["gates"])
        for p in pairs
        if (p.stem in test and any(not (d / f"{p.stem}.png").exists() for d in methods.values()))
        or (p.stem in gate_stems and p.stem not in meta["gates"])
    ]
    results = pool.imap_unordered(_fuse_one, tasks) if pool else map(_fuse_one, tasks)
    bar = tqdm(results, total=len(tasks), desc=desc, unit="pair", disable=not progress or not tasks)
    for i, (stem, seconds, gates) in enumerate(bar):
        if seconds is not None:
            meta["seconds"][stem] = seconds
        if gates is not None and stem in gate_stems:
            meta["gates"][stem] = gates
        if i % 10 == 9:
            _write_json(meta_path, meta)
    _write_json(meta_path, meta)
    return meta


def _evaluate_one(task: tuple) -> tuple[str, dict]:
    """Worker: every metric of ``conventions`` for one method folder."""
    ir_dir, vi_dir, method, folder, conventions = task
    res = evaluate_folders(ir_dir, vi_dir, {method: folder}, conventions, progress=False)
    return method, {
        "stems": list(res.stems),
        "values": {c: res.values[c][method] for c in conventions},
    }


def evaluate_cached(
    ir_dir: Path,
    vi_dir: Path,
    methods: dict[str, Path],
    keys: dict[str, str],
    work: Path,
    desc: str,
    progress: bool,
    pool=None,
) -> EvaluationResults:
    """Every metric of each convention for each method folder, from ``work/metrics`` when
    computed before on the same stems with the same key (fused images and metric code),
    per convention; the rest computed by the worker processes of ``pool`` (one method per
    task) or here."""
    stems = tuple(sorted(p.stem for p in ir_dir.iterdir()))
    cached = {
        m: _read_json(work / "metrics" / f"{folder.name}.json") for m, folder in methods.items()
    }
    tasks = []
    for m, folder in methods.items():
        got = cached[m]
        if got.get("key") != keys[m]:
            cached[m] = got = {"key": keys[m], "values": {}}
        todo = tuple(
            c for c in CONVENTIONS if any(s not in got["values"].get(c, {}) for s in stems)
        )
        if todo:
            tasks.append((ir_dir, vi_dir, m, folder, todo))
    if tasks:
        bar = tqdm(total=len(tasks), desc=desc, unit="method", disable=not progress)
        if pool is not None and len(tasks) > 1:
            done = list(_tick(pool.imap_unordered(_evaluate_one, tasks), bar))
        else:
            done = list(_tick(map(_evaluate_one, tasks), bar))
        bar.close()
        for m, got in done:
            if set(got["stems"]) != set(stems):
                raise SystemExit(
                    f"{methods[m]}: fused images for {len(got['stems'])} of {len(stems)} pairs"
                )
            for c, vals in got["values"].items():
                cached[m]["values"][c] = vals
            _write_json(work / "metrics" / f"{methods[m].name}.json", cached[m])
    values = {
        c: {m: {s: cached[m]["values"][c][s] for s in stems} for m in methods} for c in CONVENTIONS
    }
    return EvaluationResults(CONVENTIONS, tuple(methods), stems, values)


def _tick(results, bar):
    for r in results:
        bar.update(1)
        yield r


# ----------------------------------------------------------------------------- published networks


def load_peers(
    path: Path, expected: dict[tuple[str, str], set[str]]
) -> dict[str, EvaluationResults]:
    """The published networks' per-image values per dataset, renamed and marked; exits
    when their pairs are not exactly our test pairs (same stems per dataset)."""
    peers = read_peer_metrics(path)
    problems = []
    for key in sorted(set(peers) | set(expected)):
        if key not in peers:
            problems.append(f"{key[0]}/{key[1]}: no rows")
        elif key not in expected:
            problems.append(f"{key[0]}/{key[1]}: not a test set of the report")
        else:
            ours, theirs = expected[key], set(peers[key].stems)
            if ours != theirs:
                problems.append(
                    f"{key[0]}/{key[1]}: {len(theirs - ours)} stem(s) not ours "
                    f"({sorted(theirs - ours)[:5]}), {len(ours - theirs)} of ours missing "
                    f"({sorted(ours - theirs)[:5]})"
                )
    if problems:
        raise SystemExit(
            f"{path}: the published networks' pairs are not the report's test pairs:\n  "
            + "\n  ".join(problems)
        )
    out = {}
    for (_, dataset), res in peers.items():
        order = [m for m in PEER_NAMES if m in res.methods] + [
            m for m in res.methods if m not in PEER_NAMES
        ]
        res = EvaluationResults(res.conventions, tuple(order), res.stems, res.values)
        out[dataset] = rename_methods(res, {m: PEER_NAMES.get(m, m) + PEER_MARK for m in order})
    return out


def peer_figure(rows: list[tuple[str, Path, Path]], peers_dir: Path, out: Path) -> bool:
    """Infrared, visible, the bundled model and each published network side by side, for
    the pairs of ``peers/figures`` (rows: stem, source pair, the model's fused image)."""
    methods = [m for m in PEER_NAMES if (peers_dir / "figures" / m).is_dir()]
    rows = [
        r
        for r in rows
        if all((peers_dir / "figures" / m / f"{r[0]}.png").exists() for m in methods)
    ]
    if not rows or not methods:
        return False
    columns = ["infrared", "visible", "MoE-Fusion (bundled)"] + [
        PEER_NAMES[m] + PEER_MARK for m in methods
    ]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(2.2 * len(columns), 1.75 * len(rows)), squeeze=False
    )
    for r, (stem, pair, model_png) in enumerate(rows):
        loaded = load_pair(pair.ir, pair.vi)
        images = [loaded.ir, loaded.vi_rgb, read_u8(model_png) / 255.0]
        images += [read_u8(peers_dir / "figures" / m / f"{stem}.png") / 255.0 for m in methods]
        for c, img in enumerate(images):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(stem, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- tables


def ranked_tables(res: EvaluationResults) -> tuple[str, dict[str, dict[str, float]]]:
    """Both conventions' tables with a mean-rank column, and {convention: mean ranks}."""
    summaries = summarise(res)
    text, ranks = [], {}
    for c in CONVENTIONS:
        s = summaries[c]
        mr = mean_ranks(s.means, TABLE1, RANK_TIES)
        pos = rank_positions(mr)
        ranks[c] = mr
        lines = markdown_table(s).rstrip("\n").split("\n")
        i = next(j for j, line in enumerate(lines) if line.startswith("| method |"))
        lines[i] += " mean rank ↓ (position) |"
        lines[i + 1] += "---:|"
        for j, m in enumerate(s.means):
            cell = f"{mr[m]:.2f} ({pos[m]})"
            lines[i + 2 + j] += f" {'**' + cell + '**' if pos[m] == 1 else cell} |"
        text.append("\n".join(lines) + "\n")
    note = (
        f"Mean rank: each method's rank among the {len(res.methods)} methods of the table on "
        "each of the 8 paper metrics (EN SF SD MI VIF AG SCD Qabf), averaged; lower is better; "
        "(position) = its place by mean rank."
    )
    if any(m.endswith(PEER_MARK) for m in res.methods):
        note += " " + PEER_NOTE
    return "\n".join(text) + "\n" + note + "\n", ranks


def only_methods(res: EvaluationResults, methods: list[str]) -> EvaluationResults:
    """``res`` restricted to ``methods``."""
    values = {c: {m: res.values[c][m] for m in methods} for c in res.conventions}
    return EvaluationResults(res.conventions, tuple(methods), res.stems, values)


def rank_row(label: str, n: int, ranks: dict[str, dict[str, float]]) -> str:
    cells = [label, str(n), str(len(ranks["paper"]))]
    for c in CONVENTIONS:
        mr = ranks[c]
        pos = rank_positions(mr)
        best = min(mr, key=lambda m: (mr[m], m != MODEL))
        sea = f"{mr[SEAFUSION]:.2f} ({pos[SEAFUSION]})" if SEAFUSION in mr else "-"
        cells += [f"**{mr[MODEL]:.2f} ({pos[MODEL]})**", f"{best} {mr[best]:.2f}", sea]
    return "| " + " | ".join(cells) + " |"


def published_targets(
    tables: list[tuple[str, str, EvaluationResults]], rendered: dict[str, tuple[str, dict]]
) -> list[str]:
    """The release targets set against the published networks (issue 37), paper convention:
    mean rank ahead of SeAFusion on every test set with its row; on ``msrs_eval`` SF and AG
    at least SeAFusion's and SCD and Qabf best of all methods. Each line says met or by how
    much it is missed."""
    lines = []
    for key, label, res in tables:
        mr = rendered[key][1]["paper"]
        if SEAFUSION not in mr:
            continue
        gap = mr[MODEL] - mr[SEAFUSION]
        verdict = "met" if gap < 0 else f"NOT met, {gap:+.2f}"
        lines.append(
            f"| {label} | {len(res.stems)} | {mr[MODEL]:.2f} | {mr[SEAFUSION]:.2f} | {verdict} |"
        )
    if not lines:
        return []
    out = [
        "## Targets against the published networks",
        "",
        "The release targets of the bundled weights (issue 37), `paper` convention. Mean rank",
        "over the 8 paper metrics ahead of SeAFusion's (lower is better) on every test set:",
        "",
        "| test set | pairs | ours | SeAFusion ‡ | ahead of SeAFusion |",
        "|---|---:|---:|---:|---|",
        *lines,
        "",
    ]
    ev = next((res for key, _, res in tables if key == MSRS_EVAL), None)
    if ev is not None and SEAFUSION in ev.methods:
        means = summarise(ev)["paper"].means
        items = []
        for metric in ("SF", "AG"):
            ours, sea = means[MODEL][metric], means[SEAFUSION][metric]
            verdict = "met" if ours >= sea else f"NOT met, {(ours - sea) / sea:+.1%}"
            items.append(f"{metric} {ours:.4f} against SeAFusion's {sea:.4f} ({verdict})")
        for metric in ("SCD", "Qabf"):
            best = max(means, key=lambda m: means[m][metric])
            ours = means[MODEL][metric]
            verdict = (
                f"met ({ours:.4f})"
                if best == MODEL
                else f"NOT met ({ours:.4f}; {best} {means[best][metric]:.4f})"
            )
            items.append(f"{metric} best of all methods: {verdict}")
        out += [
            f"On `{MSRS_EVAL}` ({len(ev.stems)} pairs): " + "; ".join(items) + ".",
            "",
            "The other targets (never behind the previous release v4; objective below the",
            "Laplacian pyramid's; every expert used) are in [model-card.md](model-card.md) and",
            'in "Targets of the training recipe" below.',
            "",
        ]
    return out


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=None, help="default: bundled")
    parser.add_argument("--peers", type=Path, default=PEERS, help="published networks' values")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/moefusion-report"),
        help="cache of fused images and metric values (outside the repository)",
    )
    parser.add_argument("--fresh", action="store_true", help="empty --work first")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--jobs", type=int, default=1, help="worker processes for the metrics (one method each)"
    )
    parser.add_argument(
        "--no-msrs-eval",
        action="store_true",
        help=f"leave out the {MSRS_EVAL} test set (e.g. while another run makes its images)",
    )
    parser.add_argument(
        "--paper-only", action="store_true", help="only the paper convention (half the metric time)"
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    progress = not args.no_progress
    global CONVENTIONS
    CONVENTIONS = ("paper",) if args.paper_only else ("paper", "float")

    weights = args.weights or bundled_weights_path()
    if weights is None:
        raise SystemExit("no bundled weights in this build; pass --weights")
    global _FUSER
    fuser = _FUSER = Fuser.from_file(weights, device="cpu")
    pool = None
    if args.jobs > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        pool = ctx.Pool(args.jobs, initializer=_init_worker, initargs=(str(weights),))
    split = resolve_split(SPLIT_NAME)
    old = resolve_split(OLD_SPLIT)
    for name in DATASETS:
        if old["datasets"][name]["test"] != split["datasets"][name]["test"]:
            raise SystemExit(f"{SPLIT_NAME}: the test part of {name} is not {OLD_SPLIT}'s")
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    out_dir = args.docs / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in DATASETS + ("all",):  # tables now live in --work, not in the docs
        shutil.rmtree(out_dir / stale, ignore_errors=True)

    src = ROOT / "src" / "moefusion"
    model_key = digest([Path(weights), src / "models", src / "fuser.py"])
    baseline_key = digest([src / "baselines.py"])
    metric_key = metric_fingerprint()
    tests = {name: set(split["datasets"][name]["test"]) for name in (*DATASETS, MSRS_EVAL)}
    test_sets = DATASETS if args.no_msrs_eval else (*DATASETS, MSRS_EVAL)
    expected = {(s, n): tests[n] for s, names in PEER_SETS.items() for n in names}
    peers = load_peers(args.peers / "metrics_per_image.csv", expected)

    per_dataset: dict[str, EvaluationResults] = {}
    timings: dict[str, list[float]] = {}
    gates_msrs: dict[str, dict[str, np.ndarray]] = {}
    model_pngs: dict[str, tuple[object, Path]] = {}
    for name in test_sets:
        pairs = dataset_pairs(args.data / name)
        test = tests[name]
        missing = test - {p.stem for p in pairs}
        if missing:
            raise SystemExit(f"{args.data / name}: lacks test pairs {sorted(missing)[:5]}")
        work = args.work / name
        ir_dir, vi_dir = link_sources(pairs, test, work)
        methods = {MODEL: fused_folder(work / "fused" / "moefusion", model_key)}
        methods.update({m: fused_folder(work / "fused" / m, baseline_key) for m in BASELINES})
        keys = {m: f"{metric_key}-{model_key if m == MODEL else baseline_key}" for m in methods}
        gate_stems = {p.stem for p in pairs} if name == "msrs" else set()
        meta = fuse_cached(
            pairs,
            test,
            methods,
            work / "fused" / "moefusion.meta.json",
            model_key,
            gate_stems,
            f"fuse {name}",
            progress,
            pool,
        )
        timings[name] = [meta["seconds"][s] for s in sorted(test) if s in meta["seconds"]]
        gates_msrs.update(
            {s: {k: np.array(g) for k, g in gs.items()} for s, gs in meta["gates"].items()}
        )
        ordered = [p for p in pairs if p.stem in test]
        if name == MSRS_EVAL:  # two day and two night pairs
            ordered = [p for p in ordered if p.stem.endswith("D")][:2] + [
                p for p in ordered if p.stem.endswith("N")
            ][:2]
        figure_rows = []
        for p in ordered[: 4 if name == MSRS_EVAL else 3]:
            loaded = load_pair(p.ir, p.vi)
            fused = read_u8(methods[MODEL] / f"{p.stem}.png") / 255.0
            color = colorize(fused, loaded.vi_rgb) if loaded.vi_is_color else None
            figure_rows.append(FigureRow(p.stem, loaded.ir, loaded.vi_rgb, fused, color))
        save_pair_figure(figure_rows, out_dir / f"figure_{name}.png")
        for p in ordered:
            model_pngs[p.stem] = (p, methods[MODEL] / f"{p.stem}.png")
        for p in pairs:
            if p.stem in test and p.stem in PEER_FIGURE:
                model_pngs[p.stem] = (p, methods[MODEL] / f"{p.stem}.png")
        ours = evaluate_cached(
            ir_dir, vi_dir, methods, keys, work, f"evaluate {name}", progress, pool
        )
        res = join_methods(ours, peers[name])
        write_tables(res, summarise(res), work / "tables")
        per_dataset[name] = res

    if pool is not None:
        pool.close()
        pool.join()
    overall = merge([per_dataset[n] for n in DATASETS], list(DATASETS))
    write_tables(overall, summarise(overall), args.work / "all" / "tables")
    tables: list[tuple[str, str, EvaluationResults]] = []
    if MSRS_EVAL in per_dataset:
        ev = per_dataset[MSRS_EVAL]
        tables += [
            (MSRS_EVAL, f"MSRS test split, all {len(ev.stems)} pairs", ev),
            (
                f"{MSRS_EVAL}_day",
                "MSRS test split, day (`D`)",
                select_stems(ev, [s for s in ev.stems if s.endswith("D")]),
            ),
            (
                f"{MSRS_EVAL}_night",
                "MSRS test split, night (`N`)",
                select_stems(ev, [s for s in ev.stems if s.endswith("N")]),
            ),
        ]
    tables += [
        ("all", f"all {len(overall.stems)} held-out pairs", overall),
        *((n, f"held-out `{n}`", per_dataset[n]) for n in DATASETS),
    ]
    rendered: dict[str, tuple[str, dict]] = {key: ranked_tables(res) for key, _, res in tables}
    rank_lines = [
        "| test set | pairs | methods | "
        + " | ".join(
            f"{c}: ours, mean rank (position) | {c}: best | {c}: SeAFusion ‡" for c in CONVENTIONS
        )
        + " |",
        "|---|---:|---:|" + "---:|---|---:|" * len(CONVENTIONS),
    ]
    rank_lines += [rank_row(label, len(res.stems), rendered[key][1]) for key, label, res in tables]
    peer_fig = peer_figure(
        [(s, *model_pngs[s]) for s in PEER_FIGURE if s in model_pngs],
        args.peers,
        out_dir / "published_networks.png",
    )

    own = [MODEL, *BASELINES]  # the targets predate the published networks: wins among these
    wins, short = best_count(summarise(only_methods(overall, own))["paper"], MODEL)
    wins_all, _ = best_count(summarise(overall)["paper"], MODEL)
    sections, targets_per_dataset = [], []
    for name in DATASETS:
        paper = summarise(only_methods(per_dataset[name], own))["paper"]
        d_wins, _ = best_count(paper, MODEL)
        scd_model, scd_avg = paper.means[MODEL]["SCD"], paper.means["average"]["SCD"]
        targets_per_dataset.append(
            f"| {name} | {len(per_dataset[name].stems)} | {d_wins} of 8 "
            f"{'(met)' if d_wins >= 5 else '(NOT met)'} "
            f"| {scd_model:.3f} vs {scd_avg:.3f} {'(met)' if scd_model > scd_avg else '(NOT met)'} |"
        )
        d_wins, d_short = best_count(summarise(per_dataset[name])["paper"], MODEL)
        sections.append(
            f"### {name} ({len(per_dataset[name].stems)} test pairs)\n\n"
            f"![{name}](report/figure_{name}.png)\n\n"
            + rendered[name][0]
            + f"\nMoE-Fusion is best of all {len(per_dataset[name].methods)} methods on {d_wins} "
            "of 8 paper metrics" + (f"; not best on {', '.join(d_short)}.\n" if d_short else ".\n")
        )
    gate_rows = gate_report(gates_msrs, tests["msrs"], out_dir / "gates_msrs.png")
    (out_dir / "gates_msrs.json").write_text(json.dumps(gate_rows, indent=2) + "\n")
    meta = read_metadata(weights)
    targets_cache = args.work / "targets.json"
    cached = _read_json(targets_cache)
    if cached.get("key") != model_key:
        print("targets: fusion objective on training pairs, expert usage on validation pairs")
        cached = {
            "key": model_key,
            "fit_on_training_pairs": fit_on_training_pairs(fuser, args.data, split),
            "usage_on_validation": usage_on_validation(fuser, args.data, split),
        }
        _write_json(targets_cache, cached)
    fit, usage = cached["fit_on_training_pairs"], cached["usage_on_validation"]
    day_night = day_night_figure(fuser, args.data, out_dir / "day_night_msrs.png")
    (out_dir / "targets.json").write_text(
        json.dumps({"fit_on_training_pairs": fit, "usage_on_validation": usage}, indent=2) + "\n"
    )
    min_usage = min(min(v) for v in usage.values()) if usage else float("nan")
    target_lines = [
        "## Targets of the training recipe",
        "",
        "Counted against the five classical baselines only (the targets predate the published",
        "networks' rows).",
        "",
        f"- Fusion objective (pixel, max target, + 10 x gradient) on {fit['n']} training pairs "
        f"(longer side 640, as trained): model {fit['model']:.4f}, Laplacian pyramid "
        f"{fit['laplacian']:.4f}, average {fit['average']:.4f}: "
        + (
            "**met** (below the Laplacian pyramid's)."
            if fit["model"] < fit["laplacian"]
            else f"**NOT met** ({fit['model'] - fit['laplacian']:+.4f} above the Laplacian pyramid's)."
        ),
        "- Expert usage on the validation part (share of pairs on which each expert gets "
        f"at least {USED_WEIGHT:.0%} of the gate weight): "
        + "; ".join(f"{k} {v}" for k, v in usage.items())
        + (
            f": **met** (lowest {min_usage:.0%})."
            if min_usage >= 0.1
            else f": **NOT met** (lowest {min_usage:.0%}; target: no expert under 10 %)."
        ),
        "",
        "| dataset | test pairs | best of the 6 project methods on (target: 5 of 8) | SCD model vs average (target: above) |",
        "|---|---|---|---|",
        *targets_per_dataset,
        "",
        "![day and night](report/day_night_msrs.png)",
        "",
        *day_night,
        "",
    ]
    gate_md = [
        "| mixture | pairs | light | n | mean gate weight per expert | share of pairs routed to each expert |",
        "|---|---|---|---|---|---|",
    ]
    gate_md += [
        f"| {r['mixture']} | {r['pairs']} | {r['light']} | {r['n']} | {r['mean_weight']} | {r['routed_share']} |"
        for r in gate_rows
    ]
    total_pairs = len(overall.stems)
    n_methods = len(overall.methods)
    peer_names = ", ".join(m for m in overall.methods if m.endswith(PEER_MARK))
    lines = [
        "# Quality report: bundled weights against classical baselines and published networks",
        "",
        "Regenerate with `python scripts/make_report.py --data ../shared/data` (writes this",
        "file and `docs/report/`; fused images, per-image tables and a cache in",
        f"`/tmp/moefusion-report`, `--work` to change). Weights: `{Path(weights).name}` "
        f"({_training_summary(meta)}; see [model-card.md](model-card.md)).",
        "",
        f"Test sets of split `{SPLIT_NAME}`, never used for training, tuning or selecting weights:",
        f"the held-out pairs of five datasets ({total_pairs} pairs, the same as `{OLD_SPLIT}`'s),",
        (
            f"and `{MSRS_EVAL}`, the {len(per_dataset[MSRS_EVAL].stems)} pairs of the official "
            "MSRS test split (evaluation only), also split into day (`D`) and night (`N`) pairs."
            if MSRS_EVAL in per_dataset
            else f"and `{MSRS_EVAL}` (the official MSRS test split): **left out of this run** "
            "(`--no-msrs-eval`)."
        ),
        "Sources and fused images are evaluated at the sources' own resolution; colour visible",
        "images are turned to gray as each convention's reference does. Conventions: `paper` =",
        "the toolbox of the MoE-Fusion paper's Table 1 (uint8 quirks), `float` = its corrected",
        "float definitions (see [metrics.md](metrics.md)). Higher is better for every metric here",
        "except MSE."
        + ("" if "float" in CONVENTIONS else " This run: `paper` only (`--paper-only`)."),
        "",
        f"Methods ({n_methods}): the bundled MoE-Fusion weights, five classical baselines",
        f"(`moefusion.baselines`: {', '.join(BASELINES)}) and the published networks {peer_names}.",
        PEER_NOTE,
        "",
        "**Mean rank**: on each of the 8 paper metrics (EN SF SD MI VIF AG SCD Qabf, higher is",
        f"better for all) every method gets its rank among all {n_methods} methods of the table by",
        "its mean over the pairs (1 = best; ties share the best rank: `scipy.stats.rankdata`",
        f"method `{RANK_TIES}`, on the unrounded means); a method's mean rank is the average of",
        "its 8 ranks, and its position is its place when the methods are ordered by mean rank.",
        "",
        "## Rank of the bundled weights per test set",
        "",
        f"Mean rank of MoE-Fusion among the {n_methods} methods (position), the best method",
        "by mean rank, and SeAFusion's, per test set and convention.",
        "",
        *rank_lines,
        "",
        *published_targets(tables, rendered),
        *(
            [
                "![published networks](report/published_networks.png)",
                "",
                "Fused images of the bundled weights and of the published networks (gray, as the "
                "metrics see them) on a few test pairs.",
                "",
            ]
            if peer_fig
            else []
        ),
        *(
            [
                f"## MSRS test split (`{MSRS_EVAL}`, {len(per_dataset[MSRS_EVAL].stems)} pairs)",
                "",
                f"![{MSRS_EVAL}](report/figure_{MSRS_EVAL}.png)",
                "",
                *(
                    f"### {label} ({len(res.stems)} pairs)\n\n{rendered[key][0]}"
                    for key, label, res in tables[:3]
                ),
            ]
            if MSRS_EVAL in per_dataset
            else []
        ),
        f"## All held-out pairs ({total_pairs})",
        "",
        rendered["all"][0],
        f"**Target: best of the model and the five baselines on at least 5 of the 8 paper "
        f"metrics. Result: best on {wins} of 8"
        + (f"; falls short on {', '.join(short)}" if short else "")
        + f".** Best of all {n_methods} methods on {wins_all} of 8.",
        "",
        *target_lines,
        "## Per dataset (held-out pairs)",
        "",
        *sections,
        "## Dynamic routing: MSRS day versus night",
        "",
        "Gate weights of each mixture (MoLE foreground, MoLE background, MoGE) per expert,",
        "averaged over the 16 pairs of the `msrs` folder by lighting (stems ending in D = day,",
        "N = night). MoLE experts see visible features (first half) or infrared features",
        "(second half). `all` includes the 12 MSRS training and validation pairs (routing",
        "statistics only; nothing is tuned on them); `test` is the held-out 4. Whether these",
        "differences are significant (permutation tests by day/night and by dataset):",
        "[report/routing.md](report/routing.md), written by `python scripts/routing_report.py`.",
        "",
        *gate_md,
        "",
        "![gates](report/gates_msrs.png)",
        "",
        "## Fusion time",
        "",
        "Wall time of `Fuser.fuse` per pair when the fused images were made (CPU, incl. the",
        "attention branch, on whatever else the machine was doing; cached images keep the time",
        "of the run that made them); the controlled benchmark is in [fuse.md](fuse.md).",
        "",
        *(f"- {k}: {np.mean(v):.2f} s per pair ({len(v)} pairs)" for k, v in timings.items() if v),
        "",
    ]
    (args.docs / "report.md").write_text("\n".join(lines))
    minutes = (time.perf_counter() - started) / 60
    print(
        f"wrote {args.docs / 'report.md'}; best on {wins}/8 paper metrics over the held-out pairs"
    )
    for key, label, _res in tables:
        mr = rendered[key][1]["paper"]
        print(
            f"  {label}: mean rank {mr[MODEL]:.2f} (position {rank_positions(mr)[MODEL]} of {len(mr)})"
        )
    print(f"make_report: {minutes:.1f} min")


if __name__ == "__main__":
    main()
