"""``moefusion fuse --devices N``: the pairs sharded across N processes.

The processes are started and connected by Lightning Fabric's DDP strategy (``gloo`` on
CPU, ``nccl`` on GPUs): the command re-runs its own command line in N - 1 more processes
(``LOCAL_RANK`` 1..N-1), as ``moefusion train trainer.devices=N`` does. Every process
plans the same job list and runs the same checks before any of them writes (the process
group's rendezvous waits for all of them), then:

- rank ``r`` of ``N`` fuses the pairs ``todo[r::N]`` (after ``--skip-existing`` has taken
  out the finished ones), so every output has exactly one writer; the writes are the
  single-process ones (atomic, :mod:`moefusion.atomic`);
- after every batch the ranks add up their counts (``all_reduce``): rank 0 draws the one
  progress bar for the whole run, and prints the failure lines the ranks gathered
  (``all_gather_object``, only in the steps where something failed);
- at the end rank 0 merges the gate records and the figure rows of all ranks into the
  one ``--save-gates`` file and ``--figure``, and prints the one summary line. Its exit
  code is the command's (0, or 1 when a pair failed on any rank); the other ranks exit
  with 0 (Lightning's launcher ends the whole run when a child exits otherwise).

Threads: unless ``OMP_NUM_THREADS`` is set, each process uses ``cores // N`` threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moefusion.errors import MoEFusionError

if TYPE_CHECKING:
    from moefusion.commands._fuse_images import GateLog, Job
    from moefusion.data import PairResize

__all__ = ["ShardedRun", "cpu_threads"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(processes: int) -> int:
    """Threads per process when ``processes`` share the machine: ``cores // processes``."""
    return max(1, available_cores() // processes)


def _started_by_launcher() -> bool:
    """This process was started by a launcher (Lightning's, for rank > 0, or torchrun)."""
    return "LOCAL_RANK" in os.environ


@dataclass
class ShardedRun:
    """A ``fuse --devices N`` run (N > 1): the options checked, the processes not started."""

    args: argparse.Namespace
    accelerator: str
    #: ``OMP_NUM_THREADS`` was set by the user: its thread count is kept
    user_threads: bool

    @classmethod
    def configure(cls, args: argparse.Namespace) -> ShardedRun:
        """Check ``--devices`` against ``--device`` and the machine (usage errors)."""
        import torch

        n = args.devices
        if args.device == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        elif args.device in ("cpu", "cuda"):
            accelerator = args.device
        else:
            raise MoEFusionError(
                f"--devices {n} uses the first {n} GPUs or {n} CPU processes: pass --device "
                f"auto, cuda or cpu, not {args.device} (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if accelerator == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count < n:
                raise MoEFusionError(
                    f"--devices {n} --device cuda: only {count} CUDA device(s) are visible; "
                    "use --device cpu for CPU processes"
                )
        if not _started_by_launcher() and getattr(args, "_argv", None) != sys.argv[1:]:
            # the other processes re-run sys.argv: from inside another program that
            # would start that program again, not this command
            raise MoEFusionError(
                f"--devices {n} starts its other processes by re-running the command line; "
                "run it as a command (`moefusion fuse ...` or `python -m moefusion.cli "
                "fuse ...`), not through moefusion.cli.main(argv)"
            )
        return cls(args, accelerator, user_threads="OMP_NUM_THREADS" in os.environ)

    def run(
        self,
        weights: Path,
        resize: PairResize,
        jobs: Sequence[Job],
        todo: Sequence[Job],
        skipped: int,
        gate_log: GateLog | None,
        draw_figure: bool,
    ) -> int:
        """Start the processes, fuse this rank's share, report on rank 0."""
        import logging

        import torch
        from lightning.fabric import Fabric
        from tqdm import tqdm

        from moefusion.commands import fuse
        from moefusion.commands._fuse_images import RunState, fuse_jobs
        from moefusion.fuser import Fuser

        args = self.args
        # Lightning's "Initializing distributed: ..." lines, one per rank, say nothing the
        # summary does not; its launcher's warnings (a child that died) still show.
        # (rank_zero_info logs to whichever of these Lightning imported last)
        for name in ("lightning.fabric.utilities", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
        fabric = Fabric(accelerator=self.accelerator, devices=args.devices, strategy="ddp")
        fabric.launch()  # rank 0: starts ranks 1..N-1; every rank: joins the group
        if not self.user_threads:
            torch.set_num_threads(cpu_threads(args.devices))
        rank, world = fabric.global_rank, fabric.world_size
        shard = list(todo[rank::world])
        fuser = Fuser.from_file(weights, device=fabric.device, precision=args.precision)
        info = _all_gather((torch.get_num_threads(), str(fabric.device), len(shard)))
        if rank == 0:
            backend = torch.distributed.get_backend()
            print(
                f"moefusion fuse: {world} processes ({backend}): "
                + ", ".join(
                    f"rank {r} {d} {t} thread(s) {k} pair(s)" for r, (t, d, k) in enumerate(info)
                )
                + (f"; {skipped} pair(s) skipped (outputs exist)" if skipped else ""),
                file=sys.stderr,
            )
        state = RunState(messages=[])
        figure_rows: list[Any] | None = [] if draw_figure else None
        bar = tqdm(
            total=len(jobs),
            initial=skipped,
            unit="pair",
            desc="fuse",
            disable=args.no_progress or rank != 0,
        )
        quiet = tqdm(disable=True)  # the per-rank updates: rank 0 draws the totals
        steps = fuse_jobs(fuser, shard, resize, args, gate_log, figure_rows, state, quiet)
        start = time.perf_counter()
        finished, total_done, total_failed, reported = False, 0, 0, 0
        try:
            while True:
                if not finished:
                    try:
                        next(steps)
                    except StopIteration:
                        finished = True
                counts = torch.tensor(
                    [state.done, state.failed, int(finished)], device=fabric.device
                )
                summed = fabric.all_reduce(counts, reduce_op="sum").tolist()
                total_done, now_failed, ranks_finished = (int(x) for x in summed)
                if now_failed > total_failed:  # every rank sees it: the gather is matched
                    lines = _all_gather(state.messages[reported:])
                    reported = len(state.messages)
                    if rank == 0:
                        for rank_lines in lines:
                            for line in rank_lines:
                                tqdm.write(line, file=sys.stderr)
                total_failed = now_failed
                bar.update(skipped + total_done + total_failed - bar.n)
                if ranks_finished == world:
                    break
        except KeyboardInterrupt:
            bar.close()
            if rank == 0:
                print(
                    f"moefusion fuse: interrupted after {total_done + total_failed} of "
                    f"{len(todo)} pair(s) on {world} processes (no gates file written)"
                    + fuse._resume_hint(args),
                    file=sys.stderr,
                )
            raise
        bar.close()
        elapsed = time.perf_counter() - start

        records = _all_gather(gate_log.records if gate_log is not None else [])
        rows = _all_gather(figure_rows or [])
        code = 0
        if rank == 0:
            if gate_log is not None:
                gate_log.records = [r for rank_records in records for r in rank_records]
                gate_log.write(args.save_gates)
            if draw_figure:
                from moefusion.figures import MAX_ROWS

                order = {j.pair.stem: i for i, j in enumerate(todo)}
                merged = sorted((r for rr in rows for r in rr), key=lambda r: order[r.title])
                if merged:
                    fuse.save_figure(merged[:MAX_ROWS], args.figure)
            code = fuse.summarize(
                args, total=len(jobs), skipped=skipped, failed=total_failed, elapsed=elapsed
            )
        fabric.barrier()  # rank 0 has written everything before any process exits
        return code


def _all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``torch.distributed.all_gather_object``)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
