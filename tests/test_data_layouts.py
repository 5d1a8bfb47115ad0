"""The official folder layouts of M3FD, LLVIP, FLIR-aligned and MSRS, read as they are
downloaded (issue 38, point 4); tiny fixtures in those layouts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from moefusion.data.layouts import detect_layouts, resolve_layout
from moefusion.data.pairs import dataset_pairs
from moefusion.errors import PairError
from moefusion.training.data import build_train_dataset

H, W = 32, 40


def _image(path: Path, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    shape = (H, W, 3) if rgb else (H, W)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _voc(path: Path, name: str = "People") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>4</xmin>"
        "<ymin>4</ymin><xmax>20</xmax><ymax>24</ymax></bndbox></object></annotation>"
    )


def m3fd(root: Path) -> Path:
    """M3FD: Ir/, Vis/, Annotation/ (VOC)."""
    for stem in ("00000", "00001"):
        _image(root / "Ir" / f"{stem}.png")
        _image(root / "Vis" / f"{stem}.png", rgb=True)
    _voc(root / "Annotation" / "00000.xml")
    return root


def llvip(root: Path) -> Path:
    """LLVIP: infrared/{train,test}, visible/{train,test}, Annotations/ (VOC, both parts)."""
    for part, stems in (("train", ("010001", "010002")), ("test", ("190001",))):
        for stem in stems:
            _image(root / "infrared" / part / f"{stem}.jpg")
            _image(root / "visible" / part / f"{stem}.jpg", rgb=True)
            _voc(root / "Annotations" / f"{stem}.xml", "person")
    return root


def flir(root: Path) -> Path:
    """FLIR-aligned: JPEGImages/FLIR_x_PreviewData.jpeg + FLIR_x_RGB.jpg, Annotations/."""
    for stem in ("FLIR_00002", "FLIR_00003"):
        _image(root / "JPEGImages" / f"{stem}_PreviewData.jpeg")
        _image(root / "JPEGImages" / f"{stem}_RGB.jpg", rgb=True)
    _voc(root / "Annotations" / "FLIR_00002_PreviewData.xml", "car")
    return root


def msrs(root: Path) -> Path:
    """MSRS: train|test/{ir,vi}."""
    for part, stem in (("train", "00001D"), ("test", "00002N")):
        _image(root / part / "ir" / f"{stem}.png")
        _image(root / part / "vi" / f"{stem}.png", rgb=True)
    return root


def msrs_named(root: Path) -> Path:
    """MSRS packaged as Infrared/ + Visible/."""
    _image(root / "Infrared" / "00001D.png")
    _image(root / "Visible" / "00001D.png", rgb=True)
    return root


def _dataset(root: Path, **options: Any) -> Any:
    data = {"datasets": [{"root": str(root), **options}], "split": None}
    return build_train_dataset(data).datasets[0]


def test_m3fd_as_downloaded(tmp_path: Path) -> None:
    root = m3fd(tmp_path / "M3FD")
    assert resolve_layout(root).name == "m3fd"
    ds = _dataset(root)
    assert ds.stems == ["00000", "00001"]
    ann = ds.annotations
    assert ann["00001"] is None and ann["00000"].labels.tolist() == [0]  # People -> person
    assert [p.stem for p in dataset_pairs(root)] == ["00000", "00001"]


def test_llvip_parts_and_shared_annotations(tmp_path: Path) -> None:
    root = llvip(tmp_path / "LLVIP")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test part's labels are no reason to warn
        train = _dataset(root)
    assert train.stems == ["010001", "010002"] and train.n_labelled == 2
    test = _dataset(root, part="test")
    assert test.stems == ["190001"] and test.n_labelled == 1
    assert [p.stem for p in dataset_pairs(root, part="test")] == ["190001"]


def test_flir_aligned_pairs_in_one_folder(tmp_path: Path) -> None:
    root = flir(tmp_path / "FLIR_aligned")
    ds = _dataset(root)
    assert ds.stems == ["FLIR_00002_PreviewData", "FLIR_00003_PreviewData"]
    pair = ds.pairs[0]
    assert pair.ir.name == "FLIR_00002_PreviewData.jpeg" and pair.vi.name == "FLIR_00002_RGB.jpg"
    assert ds.annotations["FLIR_00002_PreviewData"].labels.tolist() == [1]  # car
    assert ds.annotations["FLIR_00003_PreviewData"] is None


@pytest.mark.parametrize("make", [msrs, msrs_named])
def test_msrs_both_packagings(tmp_path: Path, make: Any) -> None:
    root = make(tmp_path / "MSRS")
    assert resolve_layout(root).name == "msrs"
    assert _dataset(root).stems == ["00001D"]
    if make is msrs:
        assert _dataset(root, part="test").stems == ["00002N"]


def test_the_project_layout_is_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _image(root / "ir" / "a.png")
    _image(root / "vi" / "a.png", rgb=True)
    assert detect_layouts(root) == {"moefusion": ["ir/", "vi/"]}
    assert _dataset(root).stems == ["a"]


def test_ambiguous_and_unknown_folders_name_what_was_found(tmp_path: Path) -> None:
    both = llvip(m3fd(tmp_path / "both"))
    with pytest.raises(PairError) as err:
        _dataset(both)
    message = str(err.value)
    assert "m3fd (Ir/, Vis/)" in message and "llvip (infrared/, visible/)" in message
    assert "layout: NAME" in message and "--layout NAME" in message
    assert _dataset(both, layout="m3fd").stems == ["00000", "00001"]
    other = tmp_path / "other"
    (other / "thermal").mkdir(parents=True)
    with pytest.raises(PairError, match=r"fits no known layout \(found: thermal/\)"):
        _dataset(other)
    with pytest.raises(PairError, match="not in the flir layout .*it fits m3fd"):
        _dataset(m3fd(tmp_path / "m"), layout="flir")
    with pytest.raises(PairError, match="no train/test parts"):
        _dataset(m3fd(tmp_path / "m2"), part="test")


def test_train_command_takes_an_official_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``moefusion train --data M3FD`` failed with 'infrared image folder not found: .../ir'."""
    from moefusion.cli import main
    from moefusion.commands import train as train_command

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        "moefusion.training.run.train", lambda config, out, **kw: seen.update(config) or out
    )
    monkeypatch.setattr(train_command, "check_memory", lambda config: None)
    root = m3fd(tmp_path / "M3FD")
    assert (
        main(["train", "--config", "cpu", "--data", str(root), "--out", str(tmp_path / "r")]) == 0
    )
    both = llvip(m3fd(tmp_path / "both"))
    args = ["train", "--config", "cpu", "--data", str(both), "--out", str(tmp_path / "r2")]
    assert main(args) == 2
    assert "--layout NAME" in capsys.readouterr().err
    assert main([*args, "--layout", "llvip", "--part", "test"]) == 0
    assert seen["data"]["datasets"] == [{"root": str(both), "layout": "llvip", "part": "test"}]
