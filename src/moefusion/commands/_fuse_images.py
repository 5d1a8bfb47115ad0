"""The image half of ``moefusion fuse``: output paths per pair, their checks, the gates log,
and the loop read -> fuse -> colour -> save over batches of same-size pairs.

:mod:`moefusion.commands.fuse` parses the options and drives it (one process);
:mod:`moefusion.commands._fuse_devices` drives the same loop on each of ``--devices N``
processes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from moefusion.commands._common import (
    check_files_outside,
    check_out_folder,
    check_output_outside,
    check_targets,
    input_folders,
)
from moefusion.data import (
    PAIR_ERRORS,
    LoadedPair,
    Pair,
    PairResize,
    colorize_u8,
    read_pair_batches,
    save_gray_u8,
    save_image_atomic,
)
from moefusion.errors import MoEFusionError, PairError

if TYPE_CHECKING:
    from moefusion.figures import FigureRow
    from moefusion.fuser import Fuser, FusionResult

#: Sub-folder of ``--out`` for the colourised images.
COLOR_DIR = "color"

# ------------------------------------------------------------------------------ targets


@dataclass
class Job:
    """One pair and where its outputs go."""

    pair: Pair
    gray: Path
    color: Path | None


def plan_jobs(pairs: Sequence[Pair], out: Path, color: bool) -> list[Job]:
    """Output paths per pair: ``out/<stem>.png`` and ``out/color/<stem>.png``.

    The stem is used as is (``a.b`` stays ``a.b.png``; recursive stems keep sub-folders).
    """
    return [
        Job(
            pair=p,
            gray=out / f"{p.stem}.png",
            color=out / COLOR_DIR / f"{p.stem}.png" if color else None,
        )
        for p in pairs
    ]


def check_job_targets(jobs: Sequence[Job], args: argparse.Namespace, extra: Sequence[Path]) -> None:
    """Refuse to write into an input folder (or beside input files), over an input, twice
    to one file, or over existing outputs (without ``--overwrite``). Everything is checked
    before any work (:mod:`moefusion.commands._common`)."""
    check_out_folder(args.out)
    inside, beside = input_folders(args.ir, args.vi)
    check_output_outside(args.out, inside, beside)
    check_files_outside(extra, inside, beside)
    targets = [t for j in jobs for t in (j.gray, j.color) if t is not None] + list(extra)
    check_targets(
        targets,
        (p for j in jobs for p in (j.pair.ir, j.pair.vi)),
        # --skip-existing: existing outputs are allowed, and left alone
        overwrite=args.overwrite or getattr(args, "skip_existing", False),
        clash_hint=f" (stems clash with the '{COLOR_DIR}' folder or with each other)",
    )


def split_existing(jobs: Sequence[Job]) -> tuple[list[Job], list[Job]]:
    """``(jobs to run, jobs skipped)`` for ``--skip-existing``: a job is skipped when all
    its outputs exist. A job with some outputs missing (a run killed between the gray and
    the colour image) is run again and writes only the missing ones (see :func:`_save`)."""
    todo: list[Job] = []
    skipped: list[Job] = []
    for j in jobs:
        done = j.gray.exists() and (j.color is None or j.color.exists())
        (skipped if done else todo).append(j)
    return todo, skipped


# ------------------------------------------------------------------------------ gates log


@dataclass
class GateLog:
    """Every fused pair's gate weights, written as JSON or CSV at the end."""

    weights: str
    records: list[dict] = field(default_factory=list)
    #: records of an existing log kept by ``--skip-existing`` (:meth:`keep_existing`)
    previous: list[dict] = field(default_factory=list)

    def add(self, job: Job, gates: dict[str, np.ndarray], tiles: int) -> None:
        self.records.append(
            {
                "stem": job.pair.stem,
                "ir": str(job.pair.ir),
                "vi": str(job.pair.vi),
                "tiles": tiles,
                "gates": {k: [round(float(x), 6) for x in v] for k, v in gates.items()},
                # experts that fired (non-zero weight), best first
                "experts": {
                    k: [int(i) for i in np.argsort(-v, kind="stable") if v[i] > 0]
                    for k, v in gates.items()
                },
            }
        )

    def keep_existing(self, path: Path) -> int:
        """``--skip-existing``: take over the records of an existing log at ``path`` (so
        that a resumed run's log covers the pairs fused before it too); records of pairs
        fused again replace them when written. Returns how many were read.

        Raises:
            MoEFusionError: the file cannot be read as a gates log.
        """
        if not path.is_file():
            return 0
        try:
            old = read_gate_records(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise MoEFusionError(
                f"--skip-existing: cannot read the existing gates log {path} ({exc}); "
                "remove it or choose another --save-gates file"
            ) from exc
        self.previous = old
        return len(old)

    def write(self, path: Path) -> Path:
        """Write the log (atomically: a temporary file renamed onto ``path``)."""
        from moefusion.atomic import atomic_open, atomic_write_text

        fused = {r["stem"] for r in self.records}
        previous = [r for r in self.previous if r["stem"] not in fused]
        records = sorted(previous + self.records, key=lambda r: r["stem"])
        if path.suffix.lower() == ".json":
            # one pair per line: diff- and grep-friendly, unlike one number per line
            pairs = ",\n".join("  " + json.dumps(r) for r in records)
            text = f'{{"weights": {json.dumps(self.weights)},\n "pairs": [\n{pairs}\n ]}}\n'
            atomic_write_text(path, text)
            return path
        names = list(records[0]["gates"]) if records else []
        header = ["stem", "ir", "vi", "tiles"]
        for n in names:
            header += [f"{n}_{i}" for i in range(len(records[0]["gates"][n]))]
            header.append(f"{n}_experts")
        with atomic_open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in records:
                row = [r["stem"], r["ir"], r["vi"], r["tiles"]]
                for n in names:
                    row += r["gates"][n] + [" ".join(str(i) for i in r["experts"][n])]
                w.writerow(row)
        return path


def read_gate_records(path: Path) -> list[dict]:
    """The records of a gates log written by :meth:`GateLog.write` (JSON or CSV)."""
    if path.suffix.lower() == ".json":
        return list(json.loads(path.read_text(encoding="utf-8"))["pairs"])
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = rows[0]
    if header[:4] != ["stem", "ir", "vi", "tiles"]:
        raise ValueError("not a gates log: the header does not start with stem,ir,vi,tiles")
    names = [h[: -len("_experts")] for h in header if h.endswith("_experts")]
    records = []
    for row in rows[1:]:
        cols = dict(zip(header, row, strict=True))
        records.append(
            {
                "stem": cols["stem"],
                "ir": cols["ir"],
                "vi": cols["vi"],
                "tiles": int(cols["tiles"]),
                "gates": {
                    n: [
                        float(cols[h])
                        for h in header
                        if h.rpartition("_")[0] == n and h.rpartition("_")[2].isdigit()
                    ]
                    for n in names
                },
                "experts": {n: [int(i) for i in cols[f"{n}_experts"].split()] for n in names},
            }
        )
    return records


# ------------------------------------------------------------------------------ loop


def _failure_line(job: Job, exc: BaseException) -> str:
    msg = str(exc).replace("\n", " ") or type(exc).__name__
    return f"moefusion fuse: failed {job.pair.stem} (ir {job.pair.ir}, vi {job.pair.vi}): {msg}"


def report_failure(job: Job, exc: BaseException) -> None:
    tqdm.write(_failure_line(job, exc), file=sys.stderr)


@dataclass
class RunState:
    done: int = 0
    failed: int = 0
    #: None: failures are printed at once; a list: their lines are collected here (the
    #: processes of ``--devices N`` send them to rank 0, which prints them)
    messages: list[str] | None = None

    def fail(self, job: Job, exc: BaseException, bar: tqdm) -> None:
        self.failed_only(job, exc)
        bar.update(1)

    def failed_only(self, job: Job, exc: BaseException) -> None:
        if self.messages is None:
            report_failure(job, exc)
        else:
            self.messages.append(_failure_line(job, exc))
        self.failed += 1


def fuse_jobs(
    fuser: Fuser,
    jobs: Sequence[Job],
    resize: PairResize,
    args: argparse.Namespace,
    gate_log: GateLog | None,
    figure_rows: list[FigureRow] | None,
    state: RunState,
    bar: tqdm,
) -> Iterator[None]:
    """read -> fuse -> colour -> save, one batch of same-size pairs at a time; yields after
    each batch (``state`` holds the counts so far)."""
    from moefusion.commands._fuse_align import Aligner

    aligner = Aligner.from_args(args)  # --align: register each pair before fusing it
    batches = read_pair_batches(
        [j.pair for j in jobs], batch_size=args.batch_size, resize=resize, high_bit=args.high_bit
    )
    for batch in batches:  # read
        loaded: list[tuple[Job, LoadedPair]] = []
        for index, item in batch:
            if isinstance(item, LoadedPair):
                if aligner is not None:
                    item = aligner.align_pair(item, jobs[index].pair.stem)
                loaded.append((jobs[index], item))
            else:
                if isinstance(item, PairError) and resize is None:
                    item = PairError(f"{item}; pass --resize ir, vi or WxH to fuse such pairs")
                state.fail(jobs[index], item, bar)
        for job, lp, res in _fuse_loaded(fuser, loaded, args, details=gate_log is not None):
            if isinstance(res, BaseException):
                state.fail(job, res, bar)
                continue
            try:
                _save(job, lp, res.fused, figure_rows, keep=args.skip_existing)
                if gate_log is not None:
                    gate_log.add(job, res.gates, res.tiles)
                state.done += 1
            except PAIR_ERRORS as exc:
                state.failed_only(job, exc)
            bar.update(1)
        yield


def _tiling(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace
) -> tuple[int | None, int | None]:
    """``--tile`` as given, or the Fuser's tile size when the untiled batch would not fit."""
    if args.tile is not None or not loaded:
        return args.tile, args.overlap
    height, width = loaded[0][1].ir.shape
    tile = fuser.auto_tile(height, width, len(loaded))
    if tile is not None:
        need, have = fuser.untiled_memory(height, width, len(loaded))
        tqdm.write(
            f"moefusion fuse: {loaded[0][0].pair.stem} ({width}x{height}) needs about "
            f"{need / 2**30:.1f} GiB untiled but {(have or 0) / 2**30:.1f} GiB is available; "
            f"fusing it in {tile}x{tile} tiles (pass --tile to choose)",
            file=sys.stderr,
        )
    return tile, None


def _fuse_loaded(
    fuser: Fuser, loaded: list[tuple[Job, LoadedPair]], args: argparse.Namespace, *, details: bool
) -> list[tuple[Job, LoadedPair, FusionResult | BaseException]]:
    """Fuse decoded pairs in one batch; on failure retry one by one so only bad pairs fail."""
    if not loaded:
        return []
    tile, overlap = _tiling(fuser, loaded, args)
    try:
        results = fuser.fuse_arrays(
            [lp.ir for _, lp in loaded],
            [lp.vi for _, lp in loaded],
            tile=tile,
            overlap=overlap,
            batch_size=len(loaded),
            details=details,
        )
    except PAIR_ERRORS as exc:
        if len(loaded) == 1:
            return [(loaded[0][0], loaded[0][1], exc)]
        return [r for item in loaded for r in _fuse_loaded(fuser, [item], args, details=details)]
    return [(job, lp, res) for (job, lp), res in zip(loaded, results, strict=True)]


def _save(
    job: Job,
    lp: LoadedPair,
    fused: np.ndarray,
    figure_rows: list[FigureRow] | None,
    *,
    keep: bool = False,
) -> None:
    """colour -> save: the gray image, the colourised one, and a figure row. ``keep``
    (``--skip-existing``) leaves an output that exists alone."""
    if not (keep and job.gray.exists()):
        save_gray_u8(job.gray, fused)
    if job.color is not None and not (keep and job.color.exists()):
        save_image_atomic(job.color, colorize_u8(fused, lp.vi_rgb))
    if figure_rows is not None:
        from moefusion.figures import MAX_ROWS, FigureRow

        if len(figure_rows) < MAX_ROWS:
            figure_rows.append(FigureRow.from_pair(job.pair.stem, lp, fused))
