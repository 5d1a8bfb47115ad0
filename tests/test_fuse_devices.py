"""``moefusion fuse --devices N`` (pairs sharded over processes) and ``--skip-existing``.

The multi-process tests run the real command, ``python -m moefusion.cli fuse ... --devices 2
--device cpu``: Lightning Fabric re-runs it in a second process (``LOCAL_RANK=1``) and the
two talk over gloo. Which process wrote which file comes from a Python audit hook that a
``sitecustomize.py`` on ``PYTHONPATH`` installs in both: every rename (the atomic writes'
last step) and every open for writing under the output folder, per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import moefusion
from moefusion.cli import main
from moefusion.commands._fuse_devices import cpu_threads

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SRC = Path(moefusion.__file__).resolve().parents[1]  # the package under test, not an install

SITECUSTOMIZE = r'''
"""Test-only audit of writes under $MOEFUSION_AUDIT_ROOT (tests/test_fuse_devices.py)."""
import atexit
import os
import sys

_out, _root = os.environ.get("MOEFUSION_AUDIT_OUT"), os.environ.get("MOEFUSION_AUDIT_ROOT")
if _out and _root:
    _root = os.path.abspath(_root) + os.sep
    _events = []

    def _record(event, path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                _events.append(event + " " + path[len(_root):])

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int)
                and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                _record("open", path)
        elif event == "os.rename":  # os.replace too
            _record("rename", args[1])

    sys.addaudithook(_hook)

    @atexit.register
    def _dump():
        rank = os.environ.get("LOCAL_RANK", "0")
        with open(os.path.join(_out, "rank%s-%d.txt" % (rank, os.getpid())), "w") as f:
            f.write("\n".join(_events))
'''

DIST_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _fuse_devices(
    tmp_path: Path, root: Path, *args: object, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], dict[int, list[str]]]:
    """Run ``python -m moefusion.cli fuse ARGS --devices 2 --device cpu``; returns the
    process and ``{rank: [event relative-path, ...]}`` of the writes under ``root``."""
    site, audit = tmp_path / "site", tmp_path / "audit"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    shutil.rmtree(audit, ignore_errors=True)
    audit.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DIST_VARS and k != "OMP_NUM_THREADS" and not k.startswith("SLURM_")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(SRC), env.get("PYTHONPATH")])),
        MOEFUSION_AUDIT_OUT=str(audit),
        MOEFUSION_AUDIT_ROOT=str(root),
    )
    cmd = [sys.executable, "-m", "moefusion.cli", "fuse", "--no-progress", *map(str, args)]
    cmd += ["--devices", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    writes: dict[int, list[str]] = {}
    for f in sorted(audit.glob("rank*.txt")):
        rank = int(f.name[4 : f.name.index("-")])
        writes.setdefault(rank, []).extend(x for x in f.read_text().splitlines() if x)
    return proc, writes


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _renamed(events: list[str]) -> list[str]:
    return [e.split(" ", 1)[1] for e in events if e.startswith("rename ")]


@pytest.mark.slow
def test_two_cpu_processes_match_one_bit_for_bit(tiny_weights: Path, tmp_path: Path) -> None:
    """The samples on 2 gloo processes: the same bytes as 1 process (at the same threads
    per process), every output written once by one rank, gates and figure merged."""
    root = tmp_path / "res"
    common = ["--weights", tiny_weights, "--ir", SAMPLES / "ir", "--vi", SAMPLES / "vi",
              "--color"]  # fmt: skip
    two = [*common, "--out", root / "two", "--save-gates", root / "two.json",
           "--figure", root / "two-fig.png"]  # fmt: skip
    proc, writes = _fuse_devices(tmp_path, root, *two)
    assert proc.returncode == 0, proc.stderr
    assert "fused 5/5 pair(s)" in proc.stdout and "failed" not in proc.stdout
    threads = cpu_threads(2)
    assert (
        f"rank 0 cpu {threads} thread(s) 3 pair(s), rank 1 cpu {threads} thread(s) 2 pair(s)"
        in proc.stderr
    )

    # one process, the same threads per process (float sums are split per thread)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one = [*common, "--out", root / "one", "--save-gates", root / "one.json",
               "--figure", root / "one-fig.png"]  # fmt: skip
        assert main(["fuse", "--no-progress", *map(str, one)]) == 0
    finally:
        torch.set_num_threads(previous)

    a, b = _files(root / "one"), _files(root / "two")
    assert len(a) == 10 and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert (root / "one.json").read_bytes() == (root / "two.json").read_bytes()
    assert len(json.loads((root / "two.json").read_text())["pairs"]) == 5
    assert (root / "one-fig.png").read_bytes() == (root / "two-fig.png").read_bytes()

    # each image renamed into place exactly once, by one rank; no rank opened a final
    # name for writing (everything went through a temporary file)
    assert sorted(writes) == [0, 1]
    outputs = [f"two/{k}" for k in b]
    renamed = {r: _renamed(ev) for r, ev in writes.items()}
    everything = renamed[0] + renamed[1]
    assert sorted(x for x in everything if x.startswith("two/")) == sorted(outputs)
    assert len(set(renamed[0]) & set(renamed[1])) == 0 and renamed[1]
    assert {"two.json", "two-fig.png"} <= set(renamed[0])
    assert not any(x.startswith("two.json") or x.startswith("two-fig") for x in renamed[1])
    opened = [e.split(" ", 1)[1] for ev in writes.values() for e in ev if e.startswith("open")]
    assert not set(opened) & set(outputs + ["two.json", "two-fig.png"])


def _sample_copy(tmp_path: Path, stems: list[str]) -> tuple[Path, Path]:
    ir, vi = tmp_path / "in" / "ir", tmp_path / "in" / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    for side, dst in (("ir", ir), ("vi", vi)):
        for f in (SAMPLES / side).iterdir():
            if f.stem in stems:
                shutil.copy(f, dst / f.name)
    return ir, vi


def test_two_processes_corrupt_pair_and_skip_existing(tiny_weights: Path, tmp_path: Path) -> None:
    """One truncated file and one finished pair: the failure (on rank 1) is printed once,
    the summary and exit code count it, the finished pair's files are not touched."""
    ir, vi = _sample_copy(tmp_path, ["00012N", "00095D", "FLIR_05016"])
    data = (ir / "00095D.png").read_bytes()
    (ir / "00095D.png").write_bytes(data[: len(data) // 3])  # truncated
    out = tmp_path / "out"
    old = 1_000_000_000_000_000_000  # 2001, in ns: a rewrite would set it to now
    for path in (out / "FLIR_05016.png", out / "color" / "FLIR_05016.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"finished before")
        os.utime(path, ns=(old, old))
    proc, writes = _fuse_devices(
        tmp_path, out, "--weights", tiny_weights, "--ir", ir, "--vi", vi, "--out", out,
        "--color", "--skip-existing",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    failed = [x for x in proc.stderr.splitlines() if "failed" in x]
    assert len(failed) == 1 and "failed 00095D" in failed[0] and str(ir / "00095D.png") in failed[0]
    assert "fused 1/3 pair(s)" in proc.stdout
    assert "1 skipped (outputs exist)" in proc.stdout and "1 failed" in proc.stdout
    for path in (out / "FLIR_05016.png", out / "color" / "FLIR_05016.png"):
        assert path.read_bytes() == b"finished before" and path.stat().st_mtime_ns == old
    assert sorted(_files(out)) == [
        "00012N.png", "FLIR_05016.png", "color/00012N.png", "color/FLIR_05016.png"
    ]  # fmt: skip
    assert np.asarray(Image.open(out / "00012N.png")).shape == (480, 640)
    # the finished pair was left out before sharding: rank 0 fused 00012N, rank 1 tried
    # 00095D (the failure came from rank 1 and was printed once, by rank 0)
    assert sorted(_renamed(writes[0])) == ["00012N.png", "color/00012N.png"]
    assert _renamed(writes[1]) == []


# ---------------------------------------------------------------- one process, in-process


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ir, vi = tmp_path / "in" / "ir", tmp_path / "in" / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    for stem in "abc":
        Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(ir / f"{stem}.png")
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(vi / f"{stem}.png")
    return ir, vi


def _fuse(tiny_weights: Path, *args: object) -> int:
    return main(["fuse", "--weights", str(tiny_weights), "--no-progress", *map(str, args)])


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_skip_existing_resumes_and_leaves_outputs_alone(
    tiny_weights: Path,
    small: tuple[Path, Path],
    tmp_path: Path,
    suffix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir, vi = small
    out, gates = tmp_path / "out", tmp_path / f"gates{suffix}"
    io = ["--ir", ir, "--vi", vi, "--out", out, "--color", "--save-gates", gates]
    assert _fuse(tiny_weights, *io) == 0
    first, first_gates = _files(out), gates.read_bytes()
    old = 1_000_000_000_000_000_000
    for p in out.rglob("*.png"):
        os.utime(p, ns=(old, old))
    # a killed run: a's gray image and b's colour image were never written
    (out / "a.png").unlink()
    (out / "color" / "b.png").unlink()
    capsys.readouterr()
    assert _fuse(tiny_weights, *io) == 2  # without --skip-existing: refused
    assert "already exist" in capsys.readouterr().err
    assert _fuse(tiny_weights, *io, "--skip-existing", "--overwrite") == 2
    assert "--skip-existing and --overwrite" in capsys.readouterr().err

    assert _fuse(tiny_weights, *io, "--skip-existing") == 0
    summary = capsys.readouterr().out
    assert "fused 2/3 pair(s)" in summary and "1 skipped (outputs exist)" in summary
    assert _files(out) == first  # the missing files came back, the same bytes
    assert gates.read_bytes() == first_gates  # c's gates kept from the first run's log
    rewritten = {p.relative_to(out).as_posix() for p in out.rglob("*.png")
                 if p.stat().st_mtime_ns != old}  # fmt: skip
    assert rewritten == {"a.png", "color/b.png"}

    # everything there: nothing fused, nothing written, exit code 0
    assert _fuse(tiny_weights, *io, "--skip-existing") == 0
    assert "fused 0/3 pair(s)" in capsys.readouterr().out
    assert {p for p in out.rglob("*.png") if p.stat().st_mtime_ns != old} == {
        out / x for x in rewritten
    }


def test_devices_usage_errors(
    tiny_weights: Path, small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir, vi = small
    io = ["--ir", ir, "--vi", vi, "--out", tmp_path / "o"]
    assert _fuse(tiny_weights, *io, "--devices", "0") == 2
    assert "--devices must be >= 1" in capsys.readouterr().err
    assert _fuse(tiny_weights, *io, "--devices", "2", "--device", "cuda:1") == 2
    assert "--device auto, cuda or cpu" in capsys.readouterr().err
    # from inside another program (here pytest) the other processes cannot be started by
    # re-running the command line: refused before anything starts
    assert _fuse(tiny_weights, *io, "--devices", "2", "--device", "cpu") == 2
    assert "re-running the command line" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
