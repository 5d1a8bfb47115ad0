"""Detection evaluation (paper Table 3): AP values, split hygiene, label formats, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moefusion import detection as de
from moefusion.cli import main
from moefusion.detection import protocol
from moefusion.errors import ConfigError, MoEFusionError

CLASSES = ["car", "person", "bicycle"]

# --------------------------------------------------------------------------- helpers


def _pair(root: Path, stem: str, boxes: list[tuple[int, int, int, int]], size=(64, 48)) -> None:
    """Write ir/vi images (dark, bright squares at ``boxes``, 0-based x1, y1, x2, y2)."""
    w, h = size
    img = np.full((h, w), 30, np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 230
    for sub, arr in (("ir", img), ("vi", np.stack([img, img // 2 + 10, img], axis=-1))):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / sub / f"{stem}.png")


def _voc(root: Path, stem: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    # VOC pixel indices are 1-based and inclusive: 0-based [x1, x2) -> x1 + 1 .. x2.
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0] + 1}</xmin>"
        f"<ymin>{b[1] + 1}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / f"{stem}.xml").write_text(f"<annotation>{body}</annotation>")


def _dataset(root: Path, stems: list[str], size=(64, 48)) -> None:
    for i, stem in enumerate(stems):
        box = (8 + 2 * i, 10, 28 + 2 * i, 26)
        _pair(root, stem, [box], size)
        _voc(root, stem, [("car", box)])


def _t(boxes, labels, scores=None) -> dict[str, torch.Tensor]:
    d = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if scores is not None:
        d["scores"] = torch.tensor(scores, dtype=torch.float32)
    return d


# ----------------------------------------------------------------------------- AP

GT_A, GT_B = [0, 0, 10, 10], [20, 20, 30, 30]
MISS = [40, 40, 50, 50]  # IoU 0 with both ground-truth boxes


def _ap(preds: list[dict], gts: list[dict]) -> dict:
    return de.average_precision(preds, gts, CLASSES, iou_threshold=0.5)


@pytest.mark.parametrize(
    ("boxes", "scores", "expected"),
    [
        # both found: precision 1 at every recall -> 1
        ([GT_A, GT_B], [0.9, 0.8], 1.0),
        # one of two found: precision 1 for recall 0..0.5 (51 of the 101 points), then 0
        ([GT_A], [0.9], 51 / 101),
        # false positive ranked first: P = 0, 1/2, 2/3 at R = 0, 1/2, 1; the envelope is
        # 2/3 everywhere -> 2/3
        ([MISS, GT_A, GT_B], [0.9, 0.8, 0.7], 2 / 3),
        # TP, FP, TP: envelope 1 up to R = 0.5 (51 points), 2/3 above (50 points)
        ([GT_A, MISS, GT_B], [0.9, 0.8, 0.7], (51 + 50 * 2 / 3) / 101),
        # FP first, one of two found: envelope 1/2 up to R = 0.5 (51 points)
        ([MISS, GT_A], [0.9, 0.8], 0.5 * 51 / 101),
    ],
)
def test_ap_matches_hand_computed_101_point(boxes, scores, expected) -> None:
    result = _ap([_t(boxes, [0] * len(boxes), scores)], [_t([GT_A, GT_B], [0, 0])])
    assert result["ap"]["car"] == pytest.approx(expected, abs=1e-6)
    # classes without ground truth are n/a and left out of the mean
    assert result["ap"]["person"] is None and result["ap"]["bicycle"] is None
    assert result["map"] == pytest.approx(expected, abs=1e-6)


def test_map_is_mean_over_classes_with_ground_truth() -> None:
    gts = [_t([GT_A, GT_B], [0, 1]), _t([GT_A], [0])]
    preds = [_t([GT_A], [0], [0.9]), _t([GT_A], [0], [0.8])]  # person missed
    result = _ap(preds, gts)
    assert result["ap"] == {"car": pytest.approx(1.0), "person": 0.0, "bicycle": None}
    assert result["map"] == pytest.approx(0.5)


def test_iou_threshold_is_half() -> None:
    gt = [_t([[0, 0, 10, 10]], [0])]
    # IoU 50/150 = 1/3 < 0.5 -> miss; IoU 60/100 = 0.6 -> hit
    assert _ap([_t([[5, 0, 15, 10]], [0], [0.9])], gt)["ap"]["car"] == 0.0
    assert _ap([_t([[0, 0, 6, 10]], [0], [0.9])], gt)["ap"]["car"] == pytest.approx(1.0)


# ------------------------------------------------------------------------- split


def test_split_selection_never_leaks(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    stems = [f"s{i}" for i in range(6)]
    _dataset(root, stems)
    split = {
        "seed": 0,
        "test_fraction": 0.34,
        "datasets": {"toy": {"train": stems[:4], "test": stems[4:]}},
    }
    train, test = de.select_datasets([root], [root], classes=CLASSES, split=split)
    train_stems = {p.stem for s in train for p in s.pairs}
    test_stems = {p.stem for s in test for p in s.pairs}
    assert train_stems == set(stems[:4]) and test_stems == set(stems[4:])
    assert not train_stems & test_stems
    images = de.training_images(train)
    assert len(images) == 8  # infrared + visible of each labelled pair
    assert {im.path.parent.name for im in images} == {"ir", "vi"}
    rows = de.evaluation_inputs(test, {})
    assert [im.stem for im in rows["Visible"]] == stems[4:]


def test_same_pair_in_train_and_test_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    _dataset(root, ["a", "b"])
    with pytest.raises(MoEFusionError, match="both training and testing"):
        de.select_datasets([root], [root], classes=CLASSES)
    # same files reached through another path still count as the same pair
    (tmp_path / "alias").symlink_to(root)
    with pytest.raises(MoEFusionError, match="both training and testing"):
        de.select_datasets([root], [tmp_path / "alias" / "."], classes=CLASSES)


def test_split_without_the_dataset_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    _dataset(root, ["a", "b"])
    split = {"seed": 0, "test_fraction": 0.5, "datasets": {"other": {"train": [], "test": []}}}
    with pytest.raises(ConfigError, match="no entry for dataset 'toy'"):
        de.select_datasets([root], [root], classes=CLASSES, split=split)


# ------------------------------------------------------------------ label formats


def test_voc_yolo_coco_give_the_same_boxes(tmp_path: Path) -> None:
    w, h = 64, 48
    objects = [("car", (4, 6, 30, 20)), ("person", (40, 10, 47, 40)), ("bicycle", (0, 30, 12, 48))]
    roots = {fmt: tmp_path / fmt / "toy" for fmt in ("voc", "yolo", "coco")}
    for root in roots.values():
        _pair(root, "img0", [b for _, b in objects], (w, h))
    _voc(roots["voc"], "img0", objects)

    yolo = roots["yolo"] / "labels"
    yolo.mkdir()
    names = ["person", "bicycle", "car"]  # MSRS order, unlike CLASSES
    (yolo / "classes.txt").write_text("\n".join(names) + "\n")
    lines = [
        f"{names.index(n)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
        for n, (x1, y1, x2, y2) in objects
    ]
    (yolo / "img0.txt").write_text("\n".join(lines) + "\n")

    coco = {
        "images": [{"id": 1, "file_name": "img0.png", "width": w, "height": h}],
        "categories": [{"id": 7 + i, "name": n} for i, n in enumerate(names)],
        "annotations": [
            {
                "id": k,
                "image_id": 1,
                "category_id": 7 + names.index(n),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
            for k, (n, (x1, y1, x2, y2)) in enumerate(objects)
        ],
    }
    (roots["coco"] / "labels").mkdir()
    (roots["coco"] / "labels" / "instances.json").write_text(json.dumps(coco))

    expected_boxes = np.array([b for _, b in objects], np.float32)
    expected_labels = np.array([CLASSES.index(n) for n, _ in objects])
    for fmt, root in roots.items():
        # the evaluation's own path: selection -> ground truth of the Visible row
        _, test = de.select_datasets([], [root], classes=CLASSES)
        (gt,) = de.evaluation_inputs(test, {})["Visible"]
        np.testing.assert_allclose(gt.boxes, expected_boxes, atol=1e-4, err_msg=fmt)
        np.testing.assert_array_equal(gt.labels, expected_labels, err_msg=fmt)


# ------------------------------------------------------------------- fused folders


def test_fused_lookup_subfolders_flat_and_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "data" / "alpha", tmp_path / "data" / "beta"
    _dataset(a, ["x1", "x2"])
    _dataset(b, ["x1", "y1"])
    _, test = de.select_datasets([], [a, b], classes=CLASSES)
    img = Image.fromarray(np.zeros((48, 64), np.uint8))

    per_ds = tmp_path / "per_ds"
    for ds, stems in (("alpha", ["x1", "x2"]), ("beta", ["x1", "y1"])):
        (per_ds / ds).mkdir(parents=True)
        for s in stems:
            img.save(per_ds / ds / f"{s}.jpg")
    found = de.resolve_fused_images(per_ds, test)
    assert found[("beta", "x1")] == per_ds / "beta" / "x1.jpg"

    flat = tmp_path / "flat"
    flat.mkdir()
    for s in ("x1", "x2", "y1"):
        img.save(flat / f"{s}.png")
    with pytest.raises(MoEFusionError, match="subfolder named after it"):
        de.resolve_fused_images(flat, test)  # x1 is a test pair of both datasets
    _, only_a = de.select_datasets([], [a], classes=CLASSES)
    (flat / "x2.png").unlink()
    with pytest.raises(MoEFusionError, match=r"lacks 1 image.*x2"):
        de.resolve_fused_images(flat, only_a)


# ---------------------------------------------------------------------------- CLI

TINY = [
    "train.max_iters=2",
    "train.epochs=1",
    "train.batch_size=2",
    "train.warmup_iters=0",
    "data.image_size=64",
    "threads=1",
    "model.fpn_channels=16",
    "data.crop=null",
    "model.box_representation=32",
    "model.rpn_pre_nms_top_n_test=50",
    "model.rpn_post_nms_top_n_test=20",
]


def _tiny_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    train, test = tmp_path / "toytrain", tmp_path / "toytest"
    _dataset(train, ["t0", "t1", "t2", "t3"], (64, 64))
    _dataset(test, ["e0", "e1"], (64, 64))
    fused = tmp_path / "fused_avg"
    fused.mkdir()
    for s in ("e0", "e1"):
        Image.open(test / "ir" / f"{s}.png").save(fused / f"{s}.png")
    return train, test, fused


def test_cli_end_to_end_then_reuse_detector(tmp_path: Path, monkeypatch, capsys) -> None:
    train, test, fused = _tiny_setup(tmp_path)
    out = tmp_path / "out"
    args = [
        "detect-eval",
        "--test",
        str(test),
        "--fused",
        f"avg={fused}",
        "--fused",
        f"ir2={fused}",
    ]
    rc = main(
        [*args, "--train", str(train), "--out", str(out), "--no-progress", "--seed", "3", *TINY]
    )
    assert rc == 0
    for name in ("table.md", "table.csv", "table.json", "detector.safetensors", "detector.json"):
        assert (out / name).is_file(), name
    table = json.loads((out / "table.json").read_text())
    assert [r["input"] for r in table["rows"]] == ["Visible", "Infrared", "avg", "ir2"]
    # the config's class order, the same as the fusion training configs'
    assert table["classes"] == ["person", "car", "bicycle"]
    assert table["meta"]["n_test_pairs"] == 2
    assert (out / "table.csv").read_text().splitlines()[
        0
    ] == "input,person,car,bicycle,mAP,n_images"
    assert "| Visible |" in (out / "table.md").read_text()
    info = json.loads((out / "detector.json").read_text())
    assert info["classes"] == table["classes"] and info["config"]["seed"] == 3
    assert info["train_pairs"] == [f"toytrain/t{i}" for i in range(4)]

    def no_training(*a, **k):
        raise AssertionError("--detector must not retrain")

    monkeypatch.setattr(protocol, "train_detector", no_training)
    out2 = tmp_path / "out2"
    det = str(out / "detector.safetensors")
    rc = main([*args, "--detector", det, "--out", str(out2), "--no-progress", "threads=1"])
    assert rc == 0
    again = json.loads((out2 / "table.json").read_text())
    assert [r["input"] for r in again["rows"]] == ["Visible", "Infrared", "avg", "ir2"]
    # same detector, same images -> same numbers
    assert [r["map"] for r in again["rows"]] == [r["map"] for r in table["rows"]]
    assert not (out2 / "detector.safetensors").exists()

    capsys.readouterr()
    rc = main([*args, "--detector", det, "--out", str(out2), "--no-progress", "threads=1"])
    assert rc == 2  # out2 holds the tables of the run above
    assert "already exist" in capsys.readouterr().err
    out2_args = ["--out", str(out2), "--overwrite"]
    rc = main([*args, "--detector", det, *out2_args, "--classes", "car,person,bicycle"])
    assert rc == 2
    assert "trained for classes person,car,bicycle" in capsys.readouterr().err
    # the detector remembers its training pairs: testing on them is refused
    rc = main(["detect-eval", "--test", str(train), "--detector", det, *out2_args])
    assert rc == 2
    assert "trained on 4 of the test pairs" in capsys.readouterr().err


def test_cli_refuses_outputs_it_must_not_write(tmp_path: Path, capsys) -> None:
    from moefusion.weights import bundled_weights_path

    train, test, fused = _tiny_setup(tmp_path)
    base = ["detect-eval", "--train", str(train), "--test", str(test), "--no-progress", *TINY]
    assert main([*base, "--out", str(test / "eval")]) == 2
    assert "is inside input folder" in capsys.readouterr().err
    assert main([*base, "--fused", f"m={fused}", "--out", str(fused)]) == 2
    assert "input folder" in capsys.readouterr().err
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "table.md").write_text("an earlier run's table")
    assert main([*base, "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "table.md").read_text() == "an earlier run's table"
    fusion = bundled_weights_path()
    if fusion is not None:
        rc = main(
            [
                "detect-eval",
                "--test",
                str(test),
                "--detector",
                str(fusion),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        assert rc == 2 and "fusion weights" in capsys.readouterr().err


def test_cli_refuses_overlap_and_missing_fused(tmp_path: Path, capsys) -> None:
    train, test, fused = _tiny_setup(tmp_path)
    rc = main(["detect-eval", "--train", str(test), "--test", str(test), "--out", str(tmp_path)])
    assert rc == 2
    assert "both training and testing" in capsys.readouterr().err
    (fused / "e1.png").unlink()
    rc = main(
        ["detect-eval", "--train", str(train), "--test", str(test), "--fused", f"m={fused}"]
        + ["--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "e1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # fails before any training


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bootstrap-seed", "3"], "--bootstrap-seed seeds the resamples; it needs --bootstrap"),
        (["--detector", "d.safetensors", "--seed", "3"], "--seed seeds the detector's training"),
        (["--detector", "d.safetensors", "train.epochs=2"], "'train.epochs=2' sets the detector"),
        (["--detector", "d.safetensors", "seed=1"], "'seed=1' sets the detector's training"),
        (
            ["--detector", "d.safetensors", "model.box_detections_per_img=5"],
            "sets the detector's model; it does not go with --detector",
        ),
        (["--detector", "d.safetensors", "data.crop=null"], "'data.crop=null' sets the detector"),
    ],
)
def test_cli_refuses_options_the_run_would_ignore(
    tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    """A bootstrap seed without resamples, and the training's seed or overrides with a
    saved detector (nothing trains), are refused in one line before any work."""
    _, test, _ = _tiny_setup(tmp_path)
    out = tmp_path / "o"
    assert main(["detect-eval", "--test", str(test), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moefusion detect-eval: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_training_is_seeded(tmp_path: Path) -> None:
    from moefusion.config import load_run_config

    root = tmp_path / "toy"
    _dataset(root, ["a", "b", "c"], (64, 64))
    train, _ = de.select_datasets([root], [], classes=CLASSES)
    images = de.training_images(train)
    overrides = [o for o in TINY if not o.startswith("threads")] + ["data.crop=48"]
    config = load_run_config("detect_cpu", [o for o in overrides if o != "data.crop=null"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [de.train_detector(images, config, progress=False)[0] for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    a, b = (m.state_dict() for m in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ typed config


def test_config_defaults_are_detect_cpu() -> None:
    from moefusion.config import load_config_file

    assert de.DetectConfig.from_dict(load_config_file("detect_cpu")) == de.DetectConfig()
    paper = de.DetectConfig.from_dict(load_config_file("detect_paper"))
    assert paper.model.backbone == "resnet50" and paper.train.milestones == (8, 11)
    # round trip through the dict saved beside a detector
    assert de.DetectConfig.from_dict(paper.to_dict()) == paper
    assert json.loads(json.dumps(paper.to_dict())) == paper.to_dict()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, r"unknown detect config key\(s\): bogus; known: seed"),
        ({"model": {"fpn_chanels": 8}}, r"model\.fpn_chanels; known in model: backbone"),
        ({"train": {"epochs": "many"}}, r"train\.epochs must be a number"),
        ({"data": {"classes": ["car", "Car"]}}, "distinct"),
        ({"model": {"norm": "layer"}}, "model.norm must be batch, group or frozen"),
        ({"train": {"optimizer": "adam"}}, "train.optimizer must be sgd or adamw"),
        ({"model": {"anchor_sizes": [16, 32]}}, "needs 5 entries"),
        ({"data": "x"}, "must be a mapping"),
    ],
)
def test_config_refuses_unknown_keys_and_bad_values(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        de.DetectConfig.from_dict(data)


def test_config_converts_yaml_values() -> None:
    cfg = de.DetectConfig.from_dict(
        {"data": {"hflip": 0, "crop": None, "scale_jitter": None}, "train": {"lr": "1e-3"}}
    )
    assert cfg.data.hflip == 0.0 and isinstance(cfg.data.hflip, float)
    assert cfg.data.crop is None and cfg.data.scale_jitter is None
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.image_size == 512  # missing keys take the defaults


def test_saved_config_without_image_size_uses_the_default(tmp_path: Path) -> None:
    det = tmp_path / "old.safetensors"
    det.write_bytes(b"")  # only the sidecar is read here
    info = {"format": de.DETECTOR_FORMAT, "classes": CLASSES, "config": {"data": {}}}
    det.with_suffix(".json").write_text(json.dumps(info))
    cfg, read = de.effective_config(
        de.DetectConfig.from_dict({"data": {"image_size": 96, "classes": CLASSES}}), det
    )
    assert cfg.data.image_size == 512 and read is not None and read["classes"] == CLASSES
    # the model settings are the saved detector's (the bootstrap matches with its cap)
    info["config"]["model"] = {"box_detections_per_img": 7}
    det.with_suffix(".json").write_text(json.dumps(info))
    cfg, _ = de.effective_config(
        de.DetectConfig.from_dict(
            {"data": {"classes": CLASSES}, "model": {"box_detections_per_img": 50}}
        ),
        det,
    )
    assert cfg.model.box_detections_per_img == 7
    with pytest.raises(MoEFusionError, match="trained for classes"):
        de.effective_config(de.DetectConfig.from_dict({"data": {"classes": ["car"]}}), det)


def test_cli_refuses_unknown_config_key(tmp_path: Path, capsys) -> None:
    import yaml

    from moefusion.config import load_config_file

    raw = load_config_file("detect_cpu")
    raw["train"]["epoch"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc = main(["detect-eval", "--test", str(tmp_path), "--config", str(path)])
    assert rc == 2
    assert "unknown detect config key(s): train.epoch" in capsys.readouterr().err


def test_detector_uses_the_shared_backbone_weight_loader(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    # a DataParallel checkpoint wrapped in {"model": ...}, without the classifier
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "r18.pth"
    torch.save({"model": state}, path)
    cfg = de.ModelConfig(backbone_weights=str(path), fpn_channels=16, box_representation=32)
    model = de.build_detector(cfg, len(CLASSES))
    assert torch.equal(model.backbone.body.conv1.weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match="not found"):
        de.build_detector(de.ModelConfig(backbone_weights=str(tmp_path / "none.pth")), 3)
