"""The msrs_eval detector split and bootstrap confidence intervals of detect-eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion import detection as de
from moefusion.cli import main
from moefusion.data import msrs_day_night, resolve_split, split_stems
from moefusion.detection.bootstrap import (
    ClassMatches,
    ap_from_matches,
    average_precision_from_matches,
    bootstrap_counts,
    bootstrap_rows,
    default_comparisons,
    match_detections,
    percentile_interval,
)
from moefusion.detection.scoring import average_precision
from moefusion.detection.table import DetectionTable, TableRow
from moefusion.errors import MoEFusionError

# ----------------------------------------------------------------------------- split


def test_msrs_eval_detect_split_is_stratified_disjoint_and_reproducible(load_script) -> None:
    split = resolve_split("msrs-eval-detect-v1")
    assert split is not None
    parts = split["datasets"]["msrs_eval"]
    train, test = parts["train"], parts["test"]
    assert set(parts) == {"train", "test"}
    assert not set(train) & set(test)
    assert len(train) == len(test) == 90
    for part in (train, test):
        groups = [msrs_day_night(s) for s in part]
        assert groups.count("D") == groups.count("N") == 45
    # The same 180 stems as the evaluation-only test part of shared-data-v3.
    v3 = resolve_split("shared-data-v3")
    assert v3 is not None
    assert sorted(train + test) == sorted(v3["datasets"]["msrs_eval"]["test"])
    # Made by scripts/make_detect_split.py: the same stems, seed and fraction give it back.
    script = load_script("make_detect_split")
    assert split["seed"] == script.SEED
    again = split_stems(
        train + test, script.TEST_FRACTION, seed=script.SEED, group_fn=msrs_day_night
    )
    assert again == (train, test)


# ------------------------------------------------------------- AP from matched detections


def _synthetic(seed: int, n_images: int = 12) -> tuple[list[dict], list[dict]]:
    """Ground truth of classes 0 and 1 (class 2 has none) and detections of all three:
    jittered true boxes, duplicates and background boxes, every score distinct."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, size=(k, 2))
        wh = rng.uniform(6, 30, size=(k, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
        gl = rng.integers(0, 2, size=k)
        boxes, labels = [], []
        for b, lab in zip(gt, gl, strict=True):
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per box (duplicates)
                boxes.append(b + rng.normal(0, 3, size=4))
                labels.append(lab if rng.random() < 0.85 else int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 4))):  # background
            x, y = rng.uniform(0, 90, size=2)
            boxes.append(np.array([x, y, x + 10, y + 12]))
            labels.append(int(rng.integers(0, 3)))
        scores = rng.uniform(0.01, 1.0, size=len(boxes))
        preds.append(
            {
                "boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
        targets.append(
            {
                "boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(gl, dtype=torch.int64),
            }
        )
    return preds, targets


CLASSES = ["person", "car", "bicycle"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_from_matches_equals_the_table_ap(seed: int) -> None:
    preds, targets = _synthetic(seed)
    reference = average_precision(preds, targets, CLASSES)
    ours = average_precision_from_matches(match_detections(preds, targets, 3), CLASSES)
    assert reference["ap"]["bicycle"] is None and ours["ap"]["bicycle"] is None
    for c in ("person", "car"):
        assert ours["ap"][c] == pytest.approx(reference["ap"][c], abs=1e-6)
    assert ours["map"] == pytest.approx(reference["map"], abs=1e-6)


def test_ap_from_matches_coco_interpolation() -> None:
    # One hit of two boxes: 51 of the 101 recall points (docs/detection.md).
    target = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
        "labels": torch.tensor([0, 0]),
    }
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
    }
    (m,) = match_detections([pred], [target], 1)
    assert float(ap_from_matches(m)) == pytest.approx(51 / 101)
    assert average_precision([pred], [target], ["person"])["ap"]["person"] == pytest.approx(
        51 / 101
    )


def test_weighted_resample_equals_the_table_ap_of_the_repeated_images() -> None:
    preds, targets = _synthetic(3, n_images=8)
    matches = match_detections(preds, targets, 3)
    counts = np.array([3, 0, 1, 2, 0, 1, 0, 1])
    idx = np.repeat(np.arange(8), counts)
    reference = average_precision([preds[i] for i in idx], [targets[i] for i in idx], CLASSES)
    for k, c in enumerate(CLASSES):
        got = ap_from_matches(matches[k], counts)
        if reference["ap"][c] is None:
            assert np.isnan(got)
        else:
            assert float(got) == pytest.approx(reference["ap"][c], abs=1e-6)
    # The [B, n] form gives the same as one resample at a time.
    many = bootstrap_counts(8, 5, seed=1)
    batch = ap_from_matches(matches[0], many)
    assert np.allclose(batch, [ap_from_matches(matches[0], row) for row in many], equal_nan=True)


# ----------------------------------------------------------------------------- bootstrap


def _matches(seed: int) -> list[ClassMatches]:
    preds, targets = _synthetic(seed, n_images=30)
    return match_detections(preds, targets, 3)


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic() -> None:
    rows_in = {"Visible": _matches(4), "Infrared": _matches(4)}
    rows, _ = bootstrap_rows(rows_in, CLASSES, n_resamples=300, seed=7)
    again, _ = bootstrap_rows(rows_in, CLASSES, n_resamples=300, seed=7)
    other, _ = bootstrap_rows(rows_in, CLASSES, n_resamples=300, seed=8)
    for r, a, o in zip(rows, again, other, strict=True):
        assert r.map is not None and r.map_ci is not None
        assert r.map_ci[0] <= r.map <= r.map_ci[1]
        assert r.map_ci[0] < r.map_ci[1]
        assert r.map_ci == a.map_ci and np.array_equal(r.map_samples, a.map_samples)
        assert r.map_ci != o.map_ci
        assert r.ap_ci["bicycle"] is None  # no ground truth
        for c in ("person", "car"):
            lo, hi = r.ap_ci[c]
            assert lo <= r.ap[c] <= hi


def test_paired_difference_of_identical_rows_is_exactly_zero() -> None:
    m = _matches(5)
    rows_in = {"Visible": _matches(6), "Infrared": m, "same": m}
    comparisons = default_comparisons(list(rows_in), "Visible", "Infrared")
    assert comparisons == [
        ("Infrared", "Visible"),
        ("same", "Infrared"),
        ("same", "Visible"),
    ]
    rows, diffs = bootstrap_rows(rows_in, CLASSES, n_resamples=200, seed=0, comparisons=comparisons)
    same = {(d.row, d.reference): d for d in diffs}
    d = same[("same", "Infrared")]
    assert d.diff == 0.0 and d.ci == (0.0, 0.0) and d.share_positive == 0.0
    # Paired: every resample of one row minus the same resample of the other.
    vis = same[("same", "Visible")]
    assert vis.diff == pytest.approx(rows[2].map - rows[0].map)
    assert vis.ci == percentile_interval(rows[2].map_samples - rows[0].map_samples)


def test_bootstrap_counts() -> None:
    counts = bootstrap_counts(10, 50, seed=3)
    assert counts.shape == (50, 10) and (counts.sum(axis=1) == 10).all()
    assert np.array_equal(counts, bootstrap_counts(10, 50, seed=3))
    assert percentile_interval(np.array([np.nan, np.nan])) != percentile_interval(np.ones(3))


# ------------------------------------------------------------------------- table and CLI


def test_bootstrapped_table_files(tmp_path: Path) -> None:
    from moefusion.detection.protocol import Bootstrap, bootstrap_table_rows
    from moefusion.detection.selection import DetectionImage

    preds, targets = _synthetic(9, n_images=10)
    images = [
        DetectionImage(
            dataset="toy",
            stem=f"s{i}",
            path=tmp_path / f"s{i}.png",
            boxes=t["boxes"].numpy(),
            labels=t["labels"].numpy(),
            size=(100, 100),
        )
        for i, t in enumerate(targets)
    ]
    config = de.DetectConfig.from_dict({})
    ref = average_precision(preds, targets, config.classes)

    def row(name: str) -> TableRow:
        ap = {c: None if v is None else 100 * v for c, v in ref["ap"].items()}
        return TableRow(name, ap, 100 * ref["map"], len(images))

    rows_in = [row("Visible"), row("Infrared"), row("ours")]
    rows, diffs, meta = bootstrap_table_rows(
        rows_in, {r.name: preds for r in rows_in}, images, config, Bootstrap(100, 0)
    )
    assert meta["max_abs_ap_diff_vs_table"] < 1e-3
    assert all(r.map_ci is not None for r in rows)
    assert [(d.row, d.reference, d.diff) for d in diffs] == [
        ("Infrared", "Visible", 0.0),
        ("ours", "Infrared", 0.0),
        ("ours", "Visible", 0.0),
    ]
    table = DetectionTable(config.classes, rows, {"bootstrap": meta}, diffs)
    paths = table.write(tmp_path / "out")
    md = paths["md"].read_text()
    assert "mAP 95 % CI" in md and "| ours - Infrared | +0.00 | [+0.00, +0.00] |" in md
    assert paths["csv"].read_text().splitlines()[0].endswith("n_images,mAP_ci_low,mAP_ci_high")
    assert paths["differences"].read_text().splitlines()[1].startswith("Infrared,Visible,0.0000")
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["map_ci"] == list(rows[0].map_ci)
    assert len(data["differences"]) == 3


def test_cli_bootstrap(tmp_path: Path) -> None:
    from test_detect_eval import TINY, _tiny_setup

    train, test, fused = _tiny_setup(tmp_path)
    out = tmp_path / "out"
    rc = main(
        [
            "detect-eval",
            "--train",
            str(train),
            "--test",
            str(test),
            "--fused",
            f"avg={fused}",
            "--bootstrap",
            "20",
            "--bootstrap-seed",
            "1",
            "--out",
            str(out),
            "--no-progress",
            *TINY,
        ]
    )
    assert rc == 0
    data = json.loads((out / "table.json").read_text())
    assert data["meta"]["bootstrap"]["n_resamples"] == 20
    assert [(d["row"], d["reference"]) for d in data["differences"]] == [
        ("Infrared", "Visible"),
        ("avg", "Infrared"),
        ("avg", "Visible"),
    ]
    assert (out / "differences.csv").is_file()


# ------------------------------------------------------------------- resumable training


def test_detector_training_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from moefusion.config import load_run_config
    from moefusion.detection import train as train_mod
    from test_detect_eval import TINY, _tiny_setup

    train_dir, test_dir, _ = _tiny_setup(tmp_path)
    overrides = [o for o in TINY if not o.startswith("train.max_iters")] + ["train.epochs=3"]
    config = de.DetectConfig.from_dict(load_run_config("detect_cpu", overrides))
    train_sel, _ = de.select_datasets(
        [train_dir], [test_dir], classes=config.classes, split=None, class_map=None, label_set=None
    )
    images = de.training_images(train_sel)  # 8 images, batch 2: 4 iterations per epoch
    ckpt = tmp_path / "resume.pt"
    model_a, hist_a = de.train_detector(images, config, progress=False, checkpoint=ckpt)
    assert ckpt.is_file() and len(hist_a) == 3
    ckpt.unlink()

    calls = {"n": 0}
    real = train_mod._augment

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 8 + 3:  # in the middle of the second epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_augment", killed)
    with pytest.raises(KeyboardInterrupt):
        de.train_detector(images, config, progress=False, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert (state["epoch"], state["batch"], state["it"]) == (1, 0, 4)
    monkeypatch.setattr(train_mod, "_augment", real)
    model_b, hist_b = de.train_detector(
        images, config, progress=False, checkpoint=ckpt, resume=True
    )
    assert [h["epoch"] for h in hist_b] == [1, 2, 3]
    for key in ("loss", "lr"):  # not "seconds"
        assert [h[key] for h in hist_b] == pytest.approx([h[key] for h in hist_a], rel=1e-5)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    # Another config refuses the checkpoint.
    other = de.DetectConfig.from_dict(load_run_config("detect_cpu", [*overrides, "seed=5"]))
    with pytest.raises(MoEFusionError, match="another config"):
        de.train_detector(images, other, progress=False, checkpoint=ckpt, resume=True)


def test_cli_refuses_a_leftover_checkpoint_without_resume(tmp_path: Path, capsys) -> None:
    from test_detect_eval import _tiny_setup

    train_dir, test_dir, _ = _tiny_setup(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "detector-resume.pt").write_bytes(b"x")
    rc = main(
        ["detect-eval", "--train", str(train_dir), "--test", str(test_dir), "--out", str(out)]
    )
    assert rc == 2
    assert "--resume" in capsys.readouterr().err
