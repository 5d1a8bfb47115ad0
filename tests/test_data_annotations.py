"""VOC / YOLO / COCO annotation loading, validation and discovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.data.annotations import (
    find_annotations,
    load_coco,
    load_voc,
    load_yolo,
    read_class_names,
)
from moefusion.data.pairs import dataset_pairs
from moefusion.errors import AnnotationError

CLASSES = ("person", "car", "bicycle")
W, H = 200, 100
DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _voc(path: Path, objects: list[tuple[str, tuple[float, ...], int]], size=(W, H)) -> Path:
    """objects: (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)."""
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{body}</annotation>"
    )
    return path


def _img(path: Path, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(path)


def _dataset(root: Path, stems: list[str]) -> Path:
    for s in stems:
        _img(root / "ir" / f"{s}.png")
        _img(root / "vi" / f"{s}.png")
    return root


def test_voc_converts_one_based_pixels(tmp_path: Path) -> None:
    f = _voc(tmp_path / "a.xml", [("car", (11, 21, 60, 80), 0)])
    ann = load_voc(f, CLASSES)
    assert ann.boxes.dtype == np.float32 and ann.labels.dtype == np.int64
    np.testing.assert_array_equal(ann.boxes, [[10, 20, 60, 80]])
    np.testing.assert_array_equal(ann.labels, [1])
    assert ann.source == f and ann.n_ignored == 0 and len(ann) == 1


def test_same_object_in_three_formats_gives_same_box(tmp_path: Path) -> None:
    # Pixel columns 10..59 and rows 20..79 (0-based, inclusive): box [10, 20, 60, 80].
    voc = load_voc(_voc(tmp_path / "img.xml", [("person", (11, 21, 60, 80), 0)]), CLASSES)
    cx, cy, bw, bh = 35 / W, 50 / H, 50 / W, 60 / H
    (tmp_path / "img.txt").write_text(f"0 {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    yolo = load_yolo(tmp_path / "img.txt", (W, H), ["person"], CLASSES)
    coco_doc = {
        "images": [{"id": 7, "file_name": "img.jpg", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 50, 60]}],
        "categories": [{"id": 3, "name": "person"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco_doc))
    coco = load_coco(tmp_path / "c.json", CLASSES)["img"]
    for ann in (voc, yolo, coco):
        np.testing.assert_allclose(ann.boxes, [[10, 20, 60, 80]], atol=1e-3)
        np.testing.assert_array_equal(ann.labels, [0])


def test_class_map_case_and_ignored_counts(tmp_path: Path) -> None:
    f = _voc(
        tmp_path / "a.xml",
        [
            ("People", (1, 1, 10, 10), 0),
            ("CAR", (1, 1, 10, 10), 0),
            ("Lamp", (1, 1, 10, 10), 0),
            ("car", (1, 1, 10, 10), 1),
            ("Motorcycle", (1, 1, 10, 10), 0),
        ],
    )
    ann = load_voc(f, CLASSES, class_map={"people": "Person", "motorcycle": "bicycle"})
    np.testing.assert_array_equal(ann.labels, [0, 1, 2])
    assert ann.n_ignored == 2  # the lamp and the difficult car
    assert load_voc(f, CLASSES).n_ignored == 4


def test_box_tolerance_and_clipping(tmp_path: Path) -> None:
    # VOC xmin 0 means -1 in pixel edges: within 1 px, clipped to 0.
    ok = load_voc(_voc(tmp_path / "ok.xml", [("car", (0, 1, W + 1, H), 0)]), CLASSES)
    np.testing.assert_array_equal(ok.boxes, [[0, 0, W, H]])
    bad = _voc(tmp_path / "bad.xml", [("car", (10, 10, W + 5, 50), 0)])
    with pytest.raises(AnnotationError) as err:
        load_voc(bad, CLASSES)
    msg = str(err.value)
    assert "bad.xml" in msg and f"{W}x{H}" in msg and "205" in msg
    # The real image size wins over the file's <size> (with a warning).
    with pytest.warns(UserWarning, match="states image size"):
        ann = load_voc(
            _voc(tmp_path / "s.xml", [("car", (1, 1, 10, 10), 0)]), CLASSES, image_size=(50, 40)
        )
    assert ann.image_size == (50, 40)


def test_degenerate_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="empty.*deg.xml|deg.xml.*empty"):
        load_voc(_voc(tmp_path / "deg.xml", [("car", (30, 10, 29, 50), 0)]), CLASSES)
    # Edges [W + 0.2, W + 0.7]: beyond the border by under 1 px, empty after clipping.
    with pytest.raises(AnnotationError, match="edge.xml"):
        load_voc(_voc(tmp_path / "edge.xml", [("car", (W + 1.2, 10, W + 0.7, 50), 0)]), CLASSES)
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="broken.xml"):
        load_voc(tmp_path / "broken.xml", CLASSES)
    (tmp_path / "nobox.xml").write_text(
        "<annotation><object><name>car</name></object></annotation>"
    )
    with pytest.raises(AnnotationError, match="nobox.xml"):
        load_voc(tmp_path / "nobox.xml", CLASSES)
    (tmp_path / "y.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")
    with pytest.raises(AnnotationError, match=r"y.txt, line 2"):
        load_yolo(tmp_path / "y.txt", (W, H), ["person"], CLASSES)
    (tmp_path / "y2.txt").write_text("4 0.5 0.5 0.1 0.1\n")
    with pytest.raises(AnnotationError, match="class id 4"):
        load_yolo(tmp_path / "y2.txt", (W, H), ["person"], CLASSES)
    (tmp_path / "y3.txt").write_text("0 0.9 0.5 0.4 0.1\n")
    with pytest.raises(AnnotationError, match="y3.txt.*outside"):
        load_yolo(tmp_path / "y3.txt", (W, H), ["person"], CLASSES)
    (tmp_path / "c.json").write_text('{"images": []}')
    with pytest.raises(AnnotationError, match="c.json"):
        load_coco(tmp_path / "c.json", CLASSES)


def test_empty_yolo_file_is_labelled_without_objects(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("\n")
    ann = load_yolo(tmp_path / "e.txt", (W, H), ["person"], CLASSES)
    assert ann.boxes.shape == (0, 4) and ann.labels.shape == (0,)


def test_coco_crowd_and_images_without_boxes(tmp_path: Path) -> None:
    doc = {
        "images": [
            {"id": 1, "file_name": "sub/a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(doc))
    anns = load_coco(tmp_path / "c.json", CLASSES)
    assert set(anns) == {"a", "b"}
    np.testing.assert_array_equal(anns["a"].boxes, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(anns["a"].labels, [2])
    assert anns["a"].n_ignored == 1 and len(anns["b"]) == 0


def test_class_names_files(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("person\ntraffic light\n\n")
    (tmp_path / "indexed.txt").write_text("1 bicycle\n0 person\n2 car\n")
    (tmp_path / "gap.txt").write_text("0 person\n2 car\n")
    assert read_class_names(tmp_path / "plain.txt") == ["person", "traffic light"]
    assert read_class_names(tmp_path / "indexed.txt") == ["person", "bicycle", "car"]
    with pytest.raises(AnnotationError, match="gap.txt"):
        read_class_names(tmp_path / "gap.txt")


def test_find_voc_with_unlabelled_pairs_and_orphans(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a", "b"])
    _voc(root / "labels" / "a.xml", [("car", (1, 1, 10, 10), 0)])
    _voc(root / "labels" / "zzz.xml", [])
    with pytest.warns(UserWarning, match="1 label.*zzz"):
        anns = find_annotations(root, dataset_pairs(root), CLASSES)
    assert anns["b"] is None
    assert anns["a"] is not None and len(anns["a"]) == 1
    # No labels folder at all: every pair is unlabelled.
    other = _dataset(tmp_path / "other", ["x"])
    assert find_annotations(other, dataset_pairs(other), CLASSES) == {"x": None}


def test_find_yolo_label_sets(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a", "b"])
    lab = root / "labels"
    for sub, lines in (("infrared", "2 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n"), ("visible", "")):
        (lab / sub).mkdir(parents=True)
        (lab / sub / "a.txt").write_text(lines)
    (lab / "classes.txt").write_text("0 person\n1 bicycle\n2 car\n")
    pairs = dataset_pairs(root)
    anns = find_annotations(root, pairs, CLASSES)  # default: infrared
    assert anns["b"] is None
    np.testing.assert_array_equal(anns["a"].labels, [1, 0])
    np.testing.assert_allclose(anns["a"].boxes[0], [80, 40, 120, 60], atol=1e-4)
    vis = find_annotations(root, pairs, CLASSES, label_set="visible")
    assert vis["a"] is not None and len(vis["a"]) == 0
    with pytest.raises(AnnotationError, match="thermal.*infrared, visible"):
        find_annotations(root, pairs, CLASSES, label_set="thermal")
    (lab / "classes.txt").unlink()
    with pytest.raises(AnnotationError, match="classes.txt"):
        find_annotations(root, pairs, CLASSES)


def test_find_coco_and_mixed_formats(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a", "b"])
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
        "categories": [{"id": 1, "name": "car"}],
    }
    (root / "labels").mkdir()
    (root / "labels" / "instances.json").write_text(json.dumps(doc))
    anns = find_annotations(root, dataset_pairs(root), CLASSES)
    assert anns["b"] is None
    np.testing.assert_array_equal(anns["a"].boxes, [[5, 5, 15, 15]])
    _voc(root / "labels" / "a.xml", [])
    with pytest.raises(AnnotationError, match="mixes label formats"):
        find_annotations(root, dataset_pairs(root), CLASSES)
    with pytest.raises(AnnotationError, match="label folder not found"):
        find_annotations(root, dataset_pairs(root), CLASSES, label_dir=tmp_path / "none")


def test_find_checks_boxes_against_real_image(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a"])
    # The file claims a larger image than the real 200x100 one.
    _voc(root / "labels" / "a.xml", [("car", (1, 1, 300, 50), 0)], size=(400, 100))
    with pytest.warns(UserWarning), pytest.raises(AnnotationError, match="a.xml.*200x100"):
        find_annotations(root, dataset_pairs(root), CLASSES)


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")
def test_real_msrs_label_sets_differ() -> None:
    root = DATA / "msrs"
    pairs = dataset_pairs(root)
    counts = {}
    for label_set in ("infrared", "visible", "fusion"):
        anns = find_annotations(root, pairs, CLASSES, label_set=label_set)
        assert all(a is not None for a in anns.values())
        counts[label_set] = sum(len(a) for a in anns.values() if a is not None)
    # The infrared set has the most boxes (the reason it is the default).
    assert counts["infrared"] == max(counts.values())
    default = find_annotations(root, pairs, CLASSES)
    assert sum(len(a) for a in default.values() if a is not None) == counts["infrared"]
