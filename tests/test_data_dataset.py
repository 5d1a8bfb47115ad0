"""PairedFusionDataset, its validation errors, and batch collation (synthetic + real data)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from moefusion.data.dataset import DEFAULT_CLASS_MAP, PairedFusionDataset, collate_pairs
from moefusion.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from moefusion.errors import AnnotationError, ImageReadError, MoEFusionError, PairError

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")
RNG = np.random.default_rng(0)


def _voc(path: Path, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{body}</annotation>")


def _pair(root: Path, stem: str, w: int = 32, h: int = 24, ir16: bool = False) -> None:
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if ir16:
        ir = RNG.integers(20000, 30000, size=(h, w)).astype(np.uint16)
    else:
        ir = RNG.integers(0, 256, size=(h, w), dtype=np.uint8)
    Image.fromarray(ir).save(root / "ir" / f"{stem}.png")
    Image.fromarray(RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(
        root / "vi" / f"{stem}.jpg"
    )


def _make(root: Path) -> Path:
    _pair(root, "a")
    _pair(root, "b", w=40, h=20)
    _pair(root, "c")
    _voc(root / "labels" / "a.xml", [("People", (3, 4, 10, 12)), ("car", (1, 1, 32, 24))])
    _voc(root / "labels" / "b.xml", [])  # labelled, no objects
    return root


def test_samples_shapes_and_labels(tmp_path: Path) -> None:
    ds = PairedFusionDataset(_make(tmp_path / "set"))
    assert len(ds) == 3 and ds.stems == ["a", "b", "c"] and ds.n_labelled == 2
    assert ds.name == "set" and ds.skipped == []
    a, b, c = ds[0], ds[1], ds[2]
    assert a["ir"].shape == (1, 24, 32) and a["ir"].dtype == torch.float32
    assert a["vi"].shape == (1, 24, 32) and a["vi_rgb"].shape == (3, 24, 32)
    assert float(a["ir"].min()) >= 0.0 and float(a["vi_rgb"].max()) <= 1.0
    # "People" maps to person through DEFAULT_CLASS_MAP; VOC is 1-based.
    torch.testing.assert_close(a["boxes"], torch.tensor([[2.0, 3, 10, 12], [0, 0, 32, 24]]))
    assert a["labels"].tolist() == [0, 1] and a["labels"].dtype == torch.int64
    assert b["boxes"].shape == (0, 4) and b["labels"].shape == (0,)
    assert c["boxes"] is None and c["labels"] is None
    assert a["stem"] == "a" and a["dataset"] == "set"
    assert ds.image_sizes["b"] == (40, 20)
    assert DEFAULT_CLASS_MAP["pedestrian"] == "person"


def test_options(tmp_path: Path) -> None:
    root = _make(tmp_path / "set")
    assert PairedFusionDataset(root, labels=None).n_labelled == 0
    sub = PairedFusionDataset(root, stems=["c", "a"], name="mine")
    assert sub.stems == ["a", "c"] and sub[0]["dataset"] == "mine"
    with pytest.raises(PairError, match="zzz"):
        PairedFusionDataset(root, stems=["a", "zzz"])
    # Without the synonym map "People" is an unknown class and is dropped (counted).
    plain = PairedFusionDataset(root, class_map={})
    assert plain.annotations["a"].n_ignored == 1 and len(plain.annotations["a"]) == 1
    alt = PairedFusionDataset(ir_dir=root / "ir", vi_dir=root / "vi", labels=root / "labels")
    assert alt.n_labelled == 2 and alt.name == "set"
    with pytest.raises(MoEFusionError, match="high_bit"):
        PairedFusionDataset(root, high_bit="nope")


def test_16bit_infrared(tmp_path: Path) -> None:
    _pair(tmp_path, "x", ir16=True)
    s = PairedFusionDataset(tmp_path)[0]
    assert float(s["ir"].min()) == 0.0 and float(s["ir"].max()) == 1.0
    scaled = PairedFusionDataset(tmp_path, high_bit="scale")[0]
    assert float(scaled["ir"].max()) < 0.5


def test_error_paths_name_the_file(tmp_path: Path) -> None:
    root = _make(tmp_path / "missing")
    (root / "vi" / "c.jpg").unlink()
    with pytest.raises(PairError, match="c.png"):
        PairedFusionDataset(root)

    root = _make(tmp_path / "size")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "vi" / "c.jpg")
    with pytest.raises(PairError) as err:
        PairedFusionDataset(root)
    assert "c.png" in str(err.value) and "c.jpg" in str(err.value) and "10x10" in str(err.value)

    root = _make(tmp_path / "unreadable")
    (root / "ir" / "b.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="b.png"):
        PairedFusionDataset(root)

    root = _make(tmp_path / "box")
    _voc(root / "labels" / "c.xml", [("car", (1, 1, 50, 10))])
    with pytest.raises(AnnotationError, match="c.xml"):
        PairedFusionDataset(root)


def test_skip_bad_counts_and_warns_once(tmp_path: Path) -> None:
    root = _make(tmp_path / "set")
    _pair(root, "d")
    _pair(root, "e")
    (root / "vi" / "e.jpg").unlink()  # unpaired
    (root / "ir" / "b.png").write_bytes(b"garbage")  # unreadable
    _voc(root / "labels" / "c.xml", [("car", (1, 1, 50, 10))])  # box outside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = PairedFusionDataset(root, skip_bad=True)
    skip_msgs = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skip_msgs) == 1 and "skipped 3" in skip_msgs[0]
    assert ds.stems == ["a", "d"]
    assert sorted(s for s, _ in ds.skipped) == ["b", "c", "e"]
    reasons = dict(ds.skipped)
    assert "b.png" in reasons["b"] and "c.xml" in reasons["c"] and "e.png" in reasons["e"]


def test_collate_pads_and_masks(tmp_path: Path) -> None:
    ds = PairedFusionDataset(_make(tmp_path / "set"))
    batch = collate_pairs([ds[0], ds[1], ds[2]])
    assert batch["ir"].shape == (3, 1, 24, 40) and batch["vi_rgb"].shape == (3, 3, 24, 40)
    assert batch["sizes"] == [(24, 32), (20, 40), (24, 32)]
    assert batch["valid"].dtype == torch.bool
    assert int(batch["valid"][0].sum()) == 24 * 32 and int(batch["valid"][1].sum()) == 20 * 40
    assert float(batch["ir"][1, :, 20:].abs().sum()) == 0.0
    torch.testing.assert_close(batch["ir"][0, :, :24, :32], ds[0]["ir"])
    assert batch["boxes"][2] is None and batch["labels"][0].tolist() == [0, 1]
    assert batch["stems"] == ["a", "b", "c"] and batch["datasets"] == ["set"] * 3


def test_dataloader_with_transforms(tmp_path: Path) -> None:
    t = Compose([RandomHorizontalFlip(), RandomCrop(28)])
    ds = PairedFusionDataset(_make(tmp_path / "set"), transform=t)
    torch.manual_seed(0)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_pairs))
    assert [b["ir"].shape[0] for b in batches] == [2, 1]
    first = batches[0]
    assert first["ir"].shape[-2:] == (28, 28)
    # "b" is 20 high, so the crop padded it: its mask marks only 20 real rows.
    assert int(first["valid"][1, 0, :, 0].sum()) == 20


@needs_data
@pytest.mark.parametrize(
    ("name", "n_pairs", "n_labelled"), [("roadscene", 171, 88), ("msrs", 16, 16), ("llvip", 32, 9)]
)
def test_real_datasets(name: str, n_pairs: int, n_labelled: int) -> None:
    ds = PairedFusionDataset(DATA / name)
    assert len(ds) == n_pairs and ds.n_labelled == n_labelled and ds.name == name
    for stem, ann in ds.annotations.items():
        if ann is not None:
            w, h = ds.image_sizes[stem]
            assert ann.boxes.shape[1] == 4 and len(ann) > 0
            assert (
                (ann.boxes[:, :2] >= 0).all()
                and (ann.boxes[:, 2] <= w).all()
                and (ann.boxes[:, 3] <= h).all()
            )
    index = next(i for i, s in enumerate(ds.stems) if ds.annotations[s] is not None)
    sample = ds[index]
    _, h, w = sample["ir"].shape
    assert sample["vi_rgb"].shape == (3, h, w) and sample["vi"].shape == (1, h, w)
    boxes = sample["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@needs_data
def test_real_msrs_visible_label_set() -> None:
    ir = PairedFusionDataset(DATA / "msrs")
    vis = PairedFusionDataset(DATA / "msrs", label_set="visible")
    count = lambda d: sum(len(a) for a in d.annotations.values() if a is not None)  # noqa: E731
    assert vis.n_labelled == 16 and count(ir) > count(vis)
