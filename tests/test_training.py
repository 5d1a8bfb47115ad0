"""End-to-end training: the loss goes down on real data, and resume is exact."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from moefusion.config import load_run_config
from moefusion.training.module import apply_milestones
from moefusion.training.run import train
from moefusion.weights import load_checkpoint_model, load_weights

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "msrs").is_dir(), reason="../shared/data absent")


def small_cpu_config(*overrides: str) -> dict:
    """The shipped ``cpu`` config on MSRS with tiny crops so a run takes seconds (joint)."""
    return load_run_config(
        "cpu",
        [
            "schedule=joint",
            # the release's load weights: the test is about the end-to-end recipe
            "model.mole_load_weight=0.01",
            "model.moge_load_weight=0.02",
            "data.split=shared-data-v1",  # the 12 MSRS training pairs these tests were set on
            f"data.datasets=[{{root: {SHARED / 'msrs'}, label_set: infrared}}]",
            "data.crop=64",
            "model.detector.fpn_channels=16",
            "model.decoder_channels=[8, 8, 8]",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.log_every_n_steps=1",
            *overrides,
        ],
    )


def logged(run_dir: Path, key: str) -> list[float]:
    latest = sorted((run_dir / "logs" / "csv").glob("version_*/metrics.csv"))[-1]
    with open(latest) as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.mark.slow
@needs_shared
def test_cpu_config_training_reduces_fusion_loss(tmp_path: Path) -> None:
    config = small_cpu_config("trainer.max_steps=16", "optim.lr=1e-3", "data.hflip=0")
    run_dir = train(config, tmp_path / "run", progress=False)
    losses = logged(run_dir, "loss/fusion")
    assert len(losses) == 16
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    # detectors were trained too (MSRS is fully labelled)
    assert logged(run_dir, "loss/det")[0] > 0
    # the checkpoint and the exported weights load and fuse an odd-sized pair identically
    from_ckpt = load_checkpoint_model(run_dir / "checkpoints" / "last.ckpt")
    exported = load_weights(run_dir / "moefusion.safetensors")
    ir, vi = torch.rand(1, 1, 45, 71), torch.rand(1, 1, 45, 71)
    with torch.inference_mode():
        a, b = from_ckpt(ir, vi).fused, exported(ir, vi).fused
    assert a.shape == (1, 1, 45, 71)
    torch.testing.assert_close(a, b)
    assert (run_dir / "checkpoints" / "config.yaml").is_file()


@pytest.mark.slow
@needs_shared
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    common = ("trainer.limit_train_batches=2", "data.num_workers=0")
    straight = train(
        small_cpu_config("trainer.max_epochs=2", *common), tmp_path / "a", progress=False
    )
    # "interrupted" after epoch 1, then resumed to epoch 2 from last.ckpt
    part = train(small_cpu_config("trainer.max_epochs=1", *common), tmp_path / "b", progress=False)
    resumed = train(
        small_cpu_config("trainer.max_epochs=2", *common),
        tmp_path / "b",
        resume=part / "checkpoints" / "last.ckpt",
        progress=False,
    )
    a = load_checkpoint_model(straight / "checkpoints" / "last.ckpt").state_dict()
    b = load_checkpoint_model(resumed / "checkpoints" / "last.ckpt").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # and the run really trained: epoch-1 weights differ from the final ones
    c = load_checkpoint_model(part / "checkpoints" / "epoch000.ckpt").state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_apply_milestones_sets_the_rate_the_new_schedule_implies() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.1)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    # extended schedule: no milestone reached yet at epoch 3 -> back to the base rate
    apply_milestones(scheduler, [5, 7], 0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    rates = []
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-4, 1e-5, 1e-5, 1e-6, 1e-6])
    # a milestone already passed decays the rate at once
    apply_milestones(scheduler, [1], 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    # a new base rate
    apply_milestones(scheduler, [1], 0.5, base_lr=1e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert scheduler.base_lrs == [1e-3]


@pytest.mark.slow
@needs_shared
def test_resumed_run_follows_the_config_schedule_not_the_checkpoints(tmp_path: Path) -> None:
    common = ("trainer.limit_train_batches=1", "data.num_workers=0", "optim.lr=1e-4")
    part = train(
        small_cpu_config("trainer.max_epochs=1", "optim.milestones=[1]", *common),
        tmp_path / "run",
        progress=False,
    )
    last = part / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"][0][
        "lr"
    ] == pytest.approx(1e-5)
    # extended: two more epochs with the decay moved later and a higher base rate
    resumed = train(
        small_cpu_config("trainer.max_epochs=3", "optim.milestones=[3]", *common, "optim.lr=2e-4"),
        tmp_path / "run",
        resume=last,
        progress=False,
    )
    state = torch.load(resumed / "checkpoints" / "epoch001.ckpt", weights_only=False)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert sorted(state["lr_schedulers"][0]["milestones"]) == [3]
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-5)


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from moefusion.training.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=False)["step"] == 1

    def dies_half_way(obj, fh, *args, **kwargs):  # killed while the bytes are written
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False)["step"] == 1  # the previous one, intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_memory_estimate_scales_with_the_batch_and_refuses_what_cannot_fit(tmp_path) -> None:
    from moefusion.cli import main
    from moefusion.errors import MoEFusionError
    from moefusion.training.memory import check_training_memory

    base = load_run_config("cpu")
    est = {e.stage: e for e in check_training_memory(base, None)}
    assert set(est) == {"detect", "fusion", "refine", "sharpen"}  # joint (empty) is not
    assert est["fusion"].pixels == 4 * 128 * 128 and est["detect"].pixels == 4 * 256 * 256
    assert (
        est["refine"].total == est["sharpen"].total == est["fusion"].total
    )  # same branch, crop, batch
    # measured on this config: 240 MB (fusion, 128 px x 4) and 621 MB (detectors, 256 x 4)
    assert 200e6 < est["fusion"].total < 400e6 and 550e6 < est["detect"].total < 1000e6
    bigger = load_run_config("cpu", ["stages.fusion.data.batch_size=8"])
    doubled = {e.stage: e for e in check_training_memory(bigger, None)}["fusion"]
    assert doubled.activations == 2 * est["fusion"].activations
    fusion_only = load_run_config("cpu", ["stages.detect.trainer.max_epochs=0"])
    with pytest.raises(MoEFusionError, match=r"stages\.fusion\.data\.crop or stages\.fusion"):
        check_training_memory(fusion_only, est["fusion"].total - 1)
    check_training_memory(base, est["detect"].total)  # fits exactly: no error

    out = tmp_path / "run"
    code = main(["train", "--config", "cpu", "--out", str(out), "stages.fusion.data.crop=4096"])
    assert code == 2 and not out.exists()


def test_overwrite_with_resume_is_refused_before_anything_is_read(tmp_path, capsys) -> None:
    """--overwrite starts a run over and --resume continues it: together --overwrite did
    nothing (only a fresh run into an existing folder reads it), so it is refused."""
    from moefusion.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    missing = tmp_path / "none.ckpt"  # without the check: "checkpoint not found"
    code = main(["train", "--config", "cpu", "--out", str(run), "--resume", str(missing),
                 "--overwrite"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("moefusion train: error: --overwrite starts a run over; it does not go")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
