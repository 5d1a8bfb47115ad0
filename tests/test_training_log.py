"""The training log holds what a user can act on (issue 38, point 3): no ``Mean of empty
slice`` from the fit report, no DDP ``Grad strides do not match bucket view strides``
from channels-last gradients, no per-metric ``sync_dist`` advice for the fit report."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from moefusion.config import load_run_config
from moefusion.training.fit_report import finite_mean, model_fit

V4 = Path(__file__).resolve().parents[1] / "src/moefusion/pretrained/moefusion-cpu-v6.safetensors"
NOISE = ("Mean of empty slice", "Grad strides do not match", "sync_dist")


def test_finite_mean_of_nothing_defined_is_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(finite_mean([math.nan, math.nan]))
        assert math.isnan(finite_mean([]))
        assert finite_mean([1.0, math.nan, 3.0]) == 2.0


def test_fit_report_of_a_constant_output_says_nan_quietly(make_tiny_model: Any) -> None:
    """Early on a tiny data set the fused image can be constant: its correlations are
    undefined (NaN in the report), which is no reason for a warning."""
    from moefusion.training.cache import attention_map

    model = make_tiny_model()
    fusion = model.fusion
    original = fusion.forward

    def constant(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        return dataclasses.replace(out, fused=torch.zeros_like(out.fused))

    fusion.forward = constant  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2):
        ir, vi = (torch.from_numpy(rng.random((1, 32, 40), dtype=np.float32)) for _ in "iv")
        with torch.no_grad():
            att = attention_map(model, ir, vi)
        pairs.append({"ir": ir, "vi": vi, "attention": att, "boxes": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = model_fit(model, pairs, pixel_target="max", alpha=10.0)
    assert math.isnan(stats["corr_ir"]) and math.isnan(stats["corr_vi"])
    assert math.isfinite(stats["loss"])


def _tiny_data(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        for sub, shape in (("ir", (48, 64)), ("vi", (48, 64, 3))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                root / sub / f"{i:04d}.png"
            )
    return root


@pytest.mark.slow
@pytest.mark.skipif(not V4.is_file(), reason="bundled weights absent")
def test_fusion_stage_under_ddp_logs_no_library_noise(tmp_path: Path) -> None:
    """One DDP process (Lightning's DDP strategy, gloo, in this process): the fusion stage
    with its fit report on channels-last convolutions."""
    import torch.distributed as dist

    from moefusion.training.run import train

    config = load_run_config(
        "cpu",
        [
            f"data.datasets=[{{root: {_tiny_data(tmp_path / 'data')}}}]",
            "data.split=null",
            "data.num_workers=0",
            "model.decoder_channels=[8, 8, 8]",
            f"stages.detect.init_weights={V4}",
            "stages.detect.trainer.max_epochs=0",
            "stages.fusion.trainer={max_epochs: 1, max_steps: null, max_time: null}",
            "stages.refine.trainer.max_steps=0",
            "stages.sharpen.trainer.max_steps=0",
            "stages.fusion.data={crop: 32, batch_size: 2, repeat: 1}",
            "stages.fusion.optim.schedule=constant",
            "stages.fusion.optim.warmup_steps=0",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.strategy=ddp_find_unused_parameters_true",
            "trainer.log_every_n_steps=1",
        ],
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = train(config, tmp_path / "run", progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    noise = [str(w.message) for w in caught if any(n in str(w.message) for n in NOISE)]
    assert noise == []
    # the fit report still reaches the logs
    metrics = (out / "stage2-fusion/logs/csv/version_0/metrics.csv").read_text()
    assert "fit/loss" in metrics.splitlines()[0]
    assert (out / "fit_report.jsonl").is_file()
