"""Staged training: stage configs, learning-rate factors, the attention cache, real runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from moefusion.config import load_run_config
from moefusion.data import Compose, RandomCrop, RandomHorizontalFlip, collate_pairs
from moefusion.errors import ConfigError
from moefusion.runtime import denormals_flushed
from moefusion.training.cache import CachedPairs
from moefusion.training.run import train
from moefusion.training.stages import (
    DetectorStageModule,
    FusionStageModule,
    lr_factor,
    stage_config,
    stage_is_empty,
)
from moefusion.weights import load_weights

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "msrs").is_dir(), reason="../shared/data absent")


def test_stage_config_merges_stage_sections_over_the_base() -> None:
    config = load_run_config("cpu", ["optim.weight_decay=0.5", "stages.fusion.data.crop=96"])
    fusion = stage_config(config, "fusion")
    assert fusion["data"]["crop"] == 96 and fusion["data"]["max_side"] == 640
    assert fusion["optim"]["weight_decay"] == 0.5  # from the base
    assert fusion["optim"]["pixel_target"] == "max"
    assert stage_config(config, "detect")["data"]["crop"] == 256
    assert stage_is_empty(stage_config(config, "joint"))
    assert not stage_is_empty(fusion)
    config["stages"]["fusion"]["learning_rate"] = 1
    with pytest.raises(ConfigError, match="stages.fusion: learning_rate"):
        stage_config(config, "fusion")


def test_lr_factor_warmup_cosine_and_steps() -> None:
    cos = lr_factor("cosine", warmup_steps=10, total_steps=110, min_factor=0.1)
    assert cos(0) == pytest.approx(0.1)  # warm-up starts at 1/10
    assert cos(9) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    step = lr_factor("step", milestones=[5, 3], gamma=0.5)
    assert [step(i) for i in (0, 2, 3, 4, 5, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor("constant", warmup_steps=4)(1) == 0.5
    with pytest.raises(ConfigError, match="max_steps"):
        lr_factor("cosine")


def test_cached_pairs_crop_and_flip_move_the_attention_with_the_images() -> None:
    h, w = 40, 50
    ramp = (torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) / (h * w)).half()
    items = [
        {
            "ir": ramp,
            "vi": 1 - ramp,
            "attention": ramp,
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
            "labels": torch.tensor([0]),
            "stem": "a",
            "dataset": "d",
        }
    ]
    dataset = CachedPairs(items, Compose([RandomCrop(24), RandomHorizontalFlip(0.5)]))
    seen_flip = seen_plain = False
    for seed in range(12):
        torch.manual_seed(seed)
        s = dataset[0]
        assert s["ir"].dtype == torch.float32 and s["ir"].shape == (1, 24, 24)
        torch.testing.assert_close(s["attention"], s["ir"])
        torch.testing.assert_close(s["vi"], 1 - s["ir"], atol=1e-3, rtol=0)
        row = s["ir"][0, 0]
        if row[0] > row[-1]:
            seen_flip = True
        else:
            seen_plain = True
    assert seen_flip and seen_plain
    # the cache itself is never modified by augmentation
    assert items[0]["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    batch = collate_pairs([dataset[0], dataset[0]])
    assert batch["attention"].shape == (2, 1, 24, 24) and "vi_rgb" not in batch


def tiny_staged_config(*overrides: str) -> dict:
    return load_run_config(
        "cpu",
        [
            f"data.datasets=[{{root: {SHARED / 'msrs'}, label_set: infrared}}]",
            "model.detector.fpn_channels=16",
            "model.decoder_channels=[8, 8, 8]",
            "data.num_workers=0",
            "data.max_side=160",
            "trainer.log_every_n_steps=1",
            "trainer.limit_train_batches=2",
            "stages.detect.data={crop: 64, batch_size: 2, repeat: 1}",
            "stages.detect.trainer={max_epochs: 1, max_steps: null}",
            "stages.fusion.data={crop: 48, batch_size: 2, repeat: 1}",
            "stages.fusion.optim.schedule=constant",
            "stages.fusion.optim.warmup_steps=0",
            "stages.fusion.checkpoint_every=1",
            "stages.refine.trainer.max_steps=0",
            "stages.sharpen.trainer.max_steps=0",
            *overrides,
        ],
    )


@pytest.mark.slow
@needs_shared
def test_staged_run_trains_each_stage_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every step runs with subnormals flushed to zero, and the mode is restored after
    flushed: list[bool] = []
    for cls in (DetectorStageModule, FusionStageModule):

        def recording(self, *args, _step=cls.training_step, **kwargs):
            flushed.append(denormals_flushed())
            return _step(self, *args, **kwargs)

        monkeypatch.setattr(cls, "training_step", recording)
    fusion_epochs = "stages.fusion.trainer={max_epochs: %d, max_steps: null, max_time: null}"
    straight = train(tiny_staged_config(fusion_epochs % 2), tmp_path / "a", progress=False)
    assert len(flushed) == 6 and all(flushed)
    assert not denormals_flushed()
    monkeypatch.undo()
    for stage in ("stage1-detect", "stage2-fusion"):
        done = json.loads((straight / stage / "done.json").read_text())
        assert done["global_step"] == (2 if stage == "stage1-detect" else 4)
        assert (straight / stage / "checkpoints" / "last.ckpt").is_file()
    assert not (straight / "stage3-refine").exists()  # 0 steps: skipped
    assert not (straight / "stage4-sharpen").exists()  # 0 steps: skipped
    assert not (straight / "stage5-joint").exists()  # 0 epochs: skipped

    # stage 2 never changes the detectors, and does change the fusion branch
    def state(path: Path) -> dict[str, torch.Tensor]:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return ckpt["state_dict"]

    s1 = state(straight / "stage1-detect" / "checkpoints" / "last.ckpt")
    s2 = state(straight / "stage2-fusion" / "checkpoints" / "last.ckpt")
    attention = [k for k in s1 if k.startswith("model.attention.")]
    fusion = [k for k in s1 if k.startswith("model.fusion.")]
    assert all(torch.equal(s1[k], s2[k]) for k in attention)
    assert any(not torch.equal(s1[k], s2[k]) for k in fusion)

    # fit report on the split's validation part, one record per fusion epoch
    records = [json.loads(x) for x in (straight / "fit_report.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["loss_laplacian"] == records[1]["loss_laplacian"] > 0
    assert all(math.isfinite(r["loss"]) and -1 <= r["corr_vi"] <= 1 for r in records)
    assert 0 <= records[-1]["min_usage_moge"] <= 1

    # interrupted after the first fusion epoch, resumed: identical to the straight run
    part = train(tiny_staged_config(fusion_epochs % 1), tmp_path / "b", progress=False)
    resumed = train(tiny_staged_config(fusion_epochs % 2), part, resume="auto", progress=False)
    a = load_weights(straight / "moefusion.safetensors").state_dict()
    b = load_weights(resumed / "moefusion.safetensors").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@needs_shared
def test_refine_and_sharpen_stages_continue_the_fusion_stage_with_their_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moefusion.training.run import parameter_digest

    seen: list[tuple[str, str, str, float, float]] = []

    def record(when: str):
        def hook(self) -> None:
            seen.append(
                (
                    self.config.stage,
                    when,
                    parameter_digest(self.model.fusion),
                    self.alpha,
                    self.config.optim.grad_target_scale,
                )
            )

        return hook

    monkeypatch.setattr(FusionStageModule, "on_train_start", record("start"), raising=False)
    monkeypatch.setattr(FusionStageModule, "on_train_end", record("end"), raising=False)
    config = tiny_staged_config(
        "stages.fusion.trainer={max_epochs: null, max_steps: 2, max_time: null}",
        "stages.refine.data={crop: 48, batch_size: 2, repeat: 1}",
        "stages.refine.optim.warmup_steps=0",
        "stages.refine.trainer={max_epochs: null, max_steps: 3, max_time: null}",
        "stages.sharpen.data={crop: 48, batch_size: 2, repeat: 1}",
        "stages.sharpen.optim.warmup_steps=0",
        "stages.sharpen.trainer={max_epochs: null, max_steps: 2, max_time: null}",
    )
    out = train(config, tmp_path / "run", progress=False)
    assert [(stage, when) for stage, when, *_ in seen] == [
        (stage, when) for stage in ("fusion", "refine", "sharpen") for when in ("start", "end")
    ]
    # each stage starts from the previous stage's last weights and trains them
    assert seen[2][2] == seen[1][2] and seen[3][2] != seen[2][2]
    assert seen[4][2] == seen[3][2] and seen[5][2] != seen[4][2]
    # at its own settings (cpu: alpha 20, then 40; the gradient target 1, 1, then 1.1)
    assert [(s[3], s[4]) for s in seen[::2]] == [(20.0, 1.0), (40.0, 1.0), (40.0, 1.1)]
    for stage, steps in (("stage3-refine", 3), ("stage4-sharpen", 2)):
        done = json.loads((out / stage / "done.json").read_text())
        assert done["stage"] == stage.split("-")[1] and done["global_step"] == steps
    stages = [json.loads(x)["stage"] for x in (out / "fit_report.jsonl").read_text().splitlines()]
    assert stages[0] == "fusion" and "refine" in stages and stages[-1] == "sharpen"
    # the exported weights are the last stage's
    exported = load_weights(out / "moefusion.safetensors").state_dict()
    ckpt = torch.load(out / "stage4-sharpen" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(v, ckpt["state_dict"][f"model.{k}"]) for k, v in exported.items())


def test_refine_and_sharpen_stages_are_off_unless_a_config_sets_them() -> None:
    finetune = load_run_config("finetune")  # no refine or sharpen section
    for name in ("refine", "sharpen"):
        assert name not in finetune["stages"]
        assert stage_is_empty(stage_config(finetune, name))
    cpu = load_run_config("cpu")
    refine, sharpen = stage_config(cpu, "refine"), stage_config(cpu, "sharpen")
    assert not stage_is_empty(refine) and not stage_is_empty(sharpen)
    assert refine["optim"]["alpha"] == 40.0 and refine["trainer"]["max_steps"] == 1500
    assert refine["optim"]["grad_target_scale"] == 1.0
    # v6's step: v5's settings with the gradient target 1.1 x the sharper source's
    assert {k: v for k, v in sharpen["optim"].items() if k != "grad_target_scale"} == {
        k: v for k, v in refine["optim"].items() if k != "grad_target_scale"
    }
    assert sharpen["optim"]["grad_target_scale"] == 1.1


@pytest.mark.slow
@needs_shared
def test_detect_stage_can_come_from_a_weights_file(tmp_path: Path) -> None:
    first = train(
        tiny_staged_config(
            "stages.fusion.trainer={max_epochs: 1, max_steps: null, max_time: null}"
        ),
        tmp_path / "a",
        progress=False,
    )
    weights = first / "moefusion.safetensors"
    config = tiny_staged_config(
        f"stages.detect.init_weights={weights}",
        "stages.detect.trainer={max_epochs: 0, max_steps: null}",
        "stages.fusion.trainer={max_epochs: 1, max_steps: null, max_time: null}",
        "seed=3",
    )
    second = train(config, tmp_path / "b", progress=False)
    assert not (second / "stage1-detect").exists()
    a = load_weights(weights).state_dict()
    b = load_weights(second / "moefusion.safetensors").state_dict()
    # the attention branch is the file's; the fusion branch was trained afresh
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("attention."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("fusion."))


def _stage_scheduler_after(stage: str, steps: int) -> tuple[dict, Any, Any]:
    """(stage config, module, its scheduler) of a tiny `cpu` stage, the scheduler
    stepped ``steps`` times (a checkpoint's state)."""
    from moefusion.training.stages import DetectorStageModule, FusionStageModule

    config = stage_config(
        load_run_config(
            "cpu", ["model.detector.fpn_channels=16", "model.decoder_channels=[8, 8, 8]"]
        ),
        stage,
    )
    module = (DetectorStageModule if stage == "detect" else FusionStageModule)(config)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
    return config, module, scheduler


def _resume_with(module: Any, scheduler: Any, optim: dict) -> None:
    """Start ``module`` as a resumed launch whose config has ``optim``."""
    from types import SimpleNamespace

    module.run_config["optim"] = optim
    module._trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    module.on_train_start()


def test_detector_stage_resumes_with_the_configs_learning_rate_schedule() -> None:
    # a checkpoint past the old first milestone (50): rate x0.1
    config, module, scheduler = _stage_scheduler_after("detect", 55)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)
    # the resumed launch's config moved the milestones and the rate
    _resume_with(module, scheduler, dict(config["optim"], lr=2e-3, milestones=[60, 70]))
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert sorted(scheduler.milestones) == [60, 70]


def test_fusion_stage_resumes_with_the_configs_learning_rate() -> None:
    from moefusion.training.stages import lr_factor

    # a checkpoint past the warm-up, on the cosine
    config, module, scheduler = _stage_scheduler_after("fusion", 300)
    optim = config["optim"]
    factor = lr_factor(
        "cosine",
        warmup_steps=optim["warmup_steps"],
        total_steps=config["trainer"]["max_steps"],
        min_factor=optim["min_lr_factor"],
    )(300)
    assert scheduler.get_last_lr()[0] == pytest.approx(optim["lr"] * factor)
    # the resumed launch's config halves the rate: the cosine goes on from the new base
    _resume_with(module, scheduler, dict(optim, lr=optim["lr"] / 2))
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(optim["lr"] / 2 * factor)
    scheduler.optimizer.step()
    scheduler.step()
    assert scheduler.base_lrs == [pytest.approx(optim["lr"] / 2)]


@pytest.mark.slow
@needs_shared
def test_a_stage_1_from_weights_gives_a_seeded_fusion_start(tmp_path: Path) -> None:
    from moefusion.weights import bundled_weights_path

    weights = bundled_weights_path()
    assert weights is not None
    runs = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # whatever the process drew before must not matter
        config = tiny_staged_config(
            "model.detector.fpn_channels=64",  # the bundled attention branch's width
            "model.decoder_channels=[16, 16, 8]",
            f"stages.detect.init_weights={weights}",
            "stages.detect.trainer={max_epochs: 0, max_steps: null}",
            "stages.fusion.trainer={max_epochs: 1, max_steps: null, max_time: null}",
        )
        runs.append(
            load_weights(
                train(config, tmp_path / f"r{i}", progress=False) / "moefusion.safetensors"
            )
        )
    a, b = (r.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
