"""Distributed (DDP) training on CPU: two processes, gloo, started by Lightning itself.

The slow tests run the real command, ``python -m moefusion.cli train ... trainer.devices=2
trainer.strategy=ddp_find_unused_parameters_true``; Lightning's DDP launcher re-runs it in
a second process (``LOCAL_RANK=1``). What each rank trained on comes from the
``MOEFUSION_RANK_TRACE`` hook (:class:`moefusion.training.run.RankTrace`: one line per
step with the batch's stems and a digest of the parameters after the step). What each
process wrote comes from a Python audit hook (``sys.addaudithook``) that a
``sitecustomize.py`` on ``PYTHONPATH`` installs in both processes: every file opened for
writing, created, renamed or removed under the run folder, per rank.

That the first launch works at all into a fresh folder also shows that rank 0 writes
nothing before the other rank has started: the second process re-runs the command's
checks, which refuse a folder that already holds a run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "msrs").is_dir(), reason="../shared/data absent")

#: The CLI's writability check (``moefusion.atomic.check_writable``) creates and at once
#: removes a probe file in the run folder, on every rank, before any training.
PROBE = ".moefusion-write-test-"

SITECUSTOMIZE = r'''
"""Test-only audit of file writes under $MOEFUSION_AUDIT_ROOT (tests/test_ddp_training.py)."""
import atexit
import os
import sys

_out, _root = os.environ.get("MOEFUSION_AUDIT_OUT"), os.environ.get("MOEFUSION_AUDIT_ROOT")
if _out and _root:
    _root = os.path.abspath(_root) + os.sep
    _events = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _PATH_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree"}

    def _record(event, path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                _events.append(event + " " + path)

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE
            ):
                _record(event, path)
        elif event == "os.rename":
            _record(event, args[0])
            _record(event, args[1])
        elif event in _PATH_EVENTS:
            _record(event, args[0])

    sys.addaudithook(_hook)

    @atexit.register
    def _dump():
        rank = os.environ.get("LOCAL_RANK", "0")  # Lightning sets it in both processes
        name = os.path.join(_out, "rank%s-%d.txt" % (rank, os.getpid()))
        with open(name, "w") as f:
            f.write("\n".join(_events))
'''

DIST_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
DDP = (
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.num_nodes=1",
    "trainer.strategy=ddp_find_unused_parameters_true",
)
TINY = (
    f"data.datasets=[{{root: {SHARED / 'msrs'}, label_set: infrared}}]",
    "model.detector.fpn_channels=16",
    "model.decoder_channels=[8, 8, 8]",
    "data.num_workers=0",
    "trainer.log_every_n_steps=1",
    "trainer.limit_train_batches=null",  # whole epochs: the ranks must cover them
)


def launch(tmp_path: Path, out: Path, tag: str, *args: str, timeout: float = 300) -> dict:
    """Run ``python -m moefusion.cli train --config cpu --out OUT ARGS`` with 2 DDP ranks.

    Returns ``{"writes": {rank: [event path, ...]}, "trace": folder}``.
    """
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    audit, trace = tmp_path / f"audit-{tag}", tmp_path / f"trace-{tag}"
    audit.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DIST_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_"))
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
        MOEFUSION_AUDIT_OUT=str(audit),
        MOEFUSION_AUDIT_ROOT=str(out),
        MOEFUSION_RANK_TRACE=str(trace),
    )
    cmd = [sys.executable, "-m", "moefusion.cli", "train", "--config", "cpu", "--out", str(out)]
    cmd += ["--no-progress", *args]
    # own session: a rank that hangs (waiting for a dead peer) is killed with the rest
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"2-process training did not finish in {timeout} s:\n{output[-4000:]}")
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 0, output[-4000:]
    writes: dict[int, list[str]] = {}
    for f in sorted(audit.glob("rank*-*.txt")):
        rank = int(f.name[4:].split("-")[0])
        lines = [x for x in f.read_text().splitlines() if x and PROBE not in x]
        writes.setdefault(rank, []).extend(lines)
    assert sorted(writes) == [0, 1], f"expected one audit per rank, got {sorted(writes)}"
    return {"writes": writes, "trace": trace}


def _kill_group(pgid: int) -> None:
    """Wait for what is left of a launch's session (the launcher does not wait for
    rank 1), killing it after 30 s."""
    deadline = time.monotonic() + 30
    while _alive(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.2)


def _alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def traced(trace: Path, stage: str) -> dict[int, list[dict[str, Any]]]:
    out = {}
    for rank in (0, 1):
        path = trace / f"{stage}-rank{rank}.jsonl"
        assert path.is_file(), f"rank {rank} left no trace for {stage}"
        out[rank] = [json.loads(x) for x in path.read_text().splitlines()]
    return out


def check_sharded_epoch(
    records: dict[int, list[dict[str, Any]]], epoch: int, stems: list[str]
) -> list[int]:
    """The ranks' batches of ``epoch``: disjoint, together each of ``stems`` exactly once,
    the same steps on both ranks, and the same parameters on both after every step.
    Returns the steps."""
    mine = {r: [x for x in recs if x["epoch"] == epoch] for r, recs in records.items()}
    assert all(x["world"] == 2 and x["rank"] == r for r, xs in mine.items() for x in xs)
    seen = {r: [s for x in xs for s in x["stems"]] for r, xs in mine.items()}
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1]), "the ranks trained on the same pairs"
    assert Counter(seen[0] + seen[1]) == Counter(stems), "the ranks did not cover the epoch"
    steps = [x["step"] for x in mine[0]]
    assert steps == [x["step"] for x in mine[1]], "the ranks took different steps"
    digests = [x["digest"] for x in mine[0]]
    assert digests == [x["digest"] for x in mine[1]], "parameters differ across ranks"
    return steps


def only_rank0_wrote(result: dict, out: Path, names: tuple[str, ...]) -> set[str]:
    """Assert rank 1 wrote nothing and rank 0 wrote each of ``names`` under ``out``;
    returns rank 0's written paths."""
    assert result["writes"][1] == [], result["writes"][1][:10]
    w0 = written(result["writes"][0])
    for name in names:
        assert str(out / name) in w0, name
    return w0


def written(writes: list[str]) -> set[str]:
    """Paths that ``writes`` created or filled (open for writing, rename target, mkdir)."""
    out = set()
    for line in writes:
        event, path = line.split(" ", 1)
        if event in ("open", "os.rename", "os.mkdir"):
            out.add(path)
    return out


def run_stems() -> list[str]:
    return sorted(p.stem for p in (SHARED / "msrs" / "ir").iterdir() if p.is_file())


def split_stems(part: str) -> list[str]:
    from moefusion.data import resolve_split

    split = resolve_split("shared-data-v2")
    assert split is not None
    return list(split["datasets"]["msrs"][part])


@pytest.mark.slow
@needs_shared
def test_joint_schedule_on_two_processes_shards_the_data_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # all 16 MSRS pairs (no split): 8 per rank, 4 steps of 2 per epoch
    joint = (*TINY, "schedule=joint", "data.split=null", "data.crop=64", "data.batch_size=2")
    first = launch(tmp_path, out, "a", *joint, "trainer.max_epochs=1", *DDP)
    records = traced(first["trace"], "joint")
    assert check_sharded_epoch(records, 0, run_stems()) == [1, 2, 3, 4]
    digests = [x["digest"] for x in records[0]]
    assert len(set(digests)) == len(digests), "the parameters did not change every step"

    # only rank 0 wrote, and it wrote the run (the audit sees the files it should)
    names = (
        "config.yaml",
        "checkpoints/config.yaml",
        "checkpoints/epoch000.ckpt",
        "checkpoints/last.ckpt",
        "logs/csv/version_0/metrics.csv",
        "moefusion.safetensors",
    )
    w0 = only_rank0_wrote(first, out, names)
    assert all((out / name).is_file() for name in names)
    assert any("logs/tensorboard/version_0/events" in p for p in w0)
    assert [p.name for p in (out / "logs" / "csv").iterdir()] == ["version_0"]

    # --resume auto: both ranks continue from last.ckpt with epoch 1, still sharded
    second = launch(tmp_path, out, "b", *joint, "trainer.max_epochs=2", *DDP, "--resume", "auto")
    resumed = traced(second["trace"], "joint")
    assert all(x["epoch"] == 1 for xs in resumed.values() for x in xs)
    assert check_sharded_epoch(resumed, 1, run_stems()) == [5, 6, 7, 8]
    assert second["writes"][1] == [], second["writes"][1][:10]
    assert str(out / "checkpoints" / "epoch001.ckpt") in written(second["writes"][0])
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8 and last["epoch"] == 1
    # rank 0's checkpoint holds the parameters both ranks had after the last step
    from moefusion.training.module import MoEFusionModule
    from moefusion.training.run import parameter_digest

    module = MoEFusionModule(last["hyper_parameters"]["config"])
    module.load_state_dict(last["state_dict"])
    assert parameter_digest(module) == resumed[1][-1]["digest"]


@pytest.mark.slow
@needs_shared
def test_staged_schedule_on_two_processes_shards_cache_and_batches(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fusion_epochs = "stages.fusion.trainer={max_epochs: %d, max_steps: null, max_time: null}"
    staged = (
        *TINY,
        "schedule=staged",
        "data.split=shared-data-v2",  # 10 training and 2 validation pairs of MSRS
        "data.max_side=160",
        # 5 pairs per rank: one step of 5 (a batch of 1 would fail in BatchNorm)
        "stages.detect.data={crop: 64, batch_size: 5, repeat: 1}",
        "stages.detect.trainer={max_epochs: 1, max_steps: null}",
        "stages.detect.checkpoint_every=1",
        "stages.fusion.data={crop: 48, batch_size: 5, repeat: 1}",
        "stages.fusion.optim.schedule=constant",
        "stages.fusion.optim.warmup_steps=0",
        "stages.fusion.checkpoint_every=1",
        "stages.refine.trainer.max_steps=0",
        "stages.sharpen.trainer.max_steps=0",
    )
    train = split_stems("train")
    first = launch(tmp_path, out, "a", *staged, fusion_epochs % 1, *DDP)
    detect = traced(first["trace"], "detect")
    fusion = traced(first["trace"], "fusion")
    assert check_sharded_epoch(detect, 0, train) == [1]
    assert check_sharded_epoch(fusion, 0, train) == [1]
    assert detect[0][0]["digest"] != fusion[0][0]["digest"]
    for stage in ("stage1-detect", "stage2-fusion"):
        done = json.loads((out / stage / "done.json").read_text())
        assert done["global_step"] == 1 and done["epochs"] == 1
    # the fit report ran on rank 0 only: one record for the one fusion epoch
    records = [json.loads(x) for x in (out / "fit_report.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("fusion", 0)]
    only_rank0_wrote(
        first,
        out,
        (
            "config.yaml",
            "fit_report.jsonl",
            "moefusion.safetensors",
            "stage1-detect/done.json",
            "stage1-detect/config.yaml",
            "stage1-detect/checkpoints/last.ckpt",
            "stage2-fusion/done.json",
            "stage2-fusion/checkpoints/epoch000.ckpt",
            "stage2-fusion/logs/csv/version_0/metrics.csv",
        ),
    )

    # --resume auto: the detect stage is done; the fusion stage continues with epoch 1
    second = launch(tmp_path, out, "b", *staged, fusion_epochs % 2, *DDP, "--resume", "auto")
    assert not (second["trace"] / "detect-rank0.jsonl").exists()
    resumed = traced(second["trace"], "fusion")
    assert check_sharded_epoch(resumed, 1, train) == [2]
    assert second["writes"][1] == [], second["writes"][1][:10]
    records = [json.loads(x) for x in (out / "fit_report.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert json.loads((out / "stage2-fusion" / "done.json").read_text())["global_step"] == 2


# ---- in-process checks of the pieces, on a 2-process gloo group -----------------------


#: Seconds a worker of the 2-process group may take (spawning costs most of it).
WORKER_TIMEOUT = 240


class _StubAttention(torch.nn.Module):
    """Records the pairs it is asked for; its "attention" is the infrared image."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[float] = []

    def forward(self, ir: torch.Tensor, vi: torch.Tensor, targets: Any) -> tuple:
        self.seen.append(round(float(ir.flatten()[0]) * 100))
        return ir * self.weight, {}


class _StubModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _StubAttention()


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == self.bad:
            raise OSError(f"cannot read pair {i}")
        x = torch.full((1, 4, 4), i / 100)
        return {"ir": x, "vi": 1 - x, "boxes": None, "labels": None, "stem": f"p{i}"}


def _distributed_worker(rank: int, world: int, init_file: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(WORKER_TIMEOUT, exit=True)  # a hang shows its stack
    from moefusion.errors import MoEFusionError
    from moefusion.training.cache import build_cache
    from moefusion.training.sampling import EpochSampler

    # built before the process group exists, as the training loader is
    sampler = EpochSampler(11, seed=3)
    assert len(sampler) == 11
    single = list(sampler)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        sampler.set_epoch(2)
        keys = list(sampler)
        assert len(sampler) == len(keys) == 6  # 11 padded to 12
        everything: list[Any] = [None] * world
        torch.distributed.all_gather_object(everything, keys)
        order = EpochSampler(11, seed=3)
        order.set_epoch(2)
        expected = order.epoch_keys(world)
        solo = EpochSampler(11, seed=3, rank=0, world_size=1)
        solo.set_epoch(2)
        assert expected[:11] == list(solo)  # the single-process order, plus one pad
        assert all(everything[r] == expected[r::world] for r in range(world))
        assert len(set(everything[0]) | set(everything[1])) == 12  # disjoint
        assert single != list(solo)  # (another epoch)

        model = _StubModel()
        items = build_cache(model, _Pairs(7), progress=False, distributed=True)  # type: ignore[arg-type]
        assert model.attention.seen == list(range(rank, 7, world)), model.attention.seen
        assert [x["stem"] for x in items] == [f"p{i}" for i in range(7)]
        reference = build_cache(_StubModel(), _Pairs(7), progress=False)  # type: ignore[arg-type]
        for a, b in zip(items, reference, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in ("ir", "vi", "attention"))

        # a pair that fails on rank 1 raises on every rank instead of leaving rank 0 waiting
        try:
            build_cache(_StubModel(), _Pairs(7, bad=3), progress=False, distributed=True)  # type: ignore[arg-type]
        except MoEFusionError as exc:
            assert "rank 1" in str(exc) and "cannot read pair 3" in str(exc), exc
        else:
            raise AssertionError(f"no error on rank {rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_sampler_and_cache_shard_on_a_two_process_group(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    context = mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=False)
    deadline = time.monotonic() + WORKER_TIMEOUT + 30
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the 2-process group did not finish")


def test_sampler_with_a_fixed_rank_shards_like_the_process_group() -> None:
    from moefusion.training.sampling import EpochSampler

    full = EpochSampler(10, seed=1, repeat=2)
    full.set_epoch(4)
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=1, repeat=2, rank=rank, world_size=3)
        s.set_epoch(4)
        shards.append(list(s))
        assert len(s) == 7
    everything = [k for part in zip(*shards, strict=True) for k in part]
    assert everything[:20] == list(full)  # single-process order, dealt round-robin
    assert everything[20] % 10 == list(full)[0] % 10  # padded with the first pair
    with pytest.raises(ValueError):
        EpochSampler(10, seed=1, rank=0)
    with pytest.raises(ValueError):
        EpochSampler(10, seed=1, rank=2, world_size=2)
