"""Matching infrared and visible files into pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.data.pairs import Pair, dataset_pairs, find_pairs
from moefusion.errors import ImageReadError, PairError


def _img(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5), value, np.uint8)).save(path)
    return path


def _dataset(root: Path, ir: list[str], vi: list[str]) -> Path:
    for name in ir:
        _img(root / "ir" / name)
    for name in vi:
        _img(root / "vi" / name)
    return root


def test_matches_by_stem_sorted_across_extensions(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["b.png", "a.jpg", "c.BMP"], ["c.png", "a.png", "b.tif"])
    (root / "ir" / "notes.txt").write_text("not an image")
    (root / "vi" / "Thumbs.db").write_bytes(b"\0")
    _img(root / "ir" / ".hidden.png")
    pairs = dataset_pairs(root)
    assert [p.stem for p in pairs] == ["a", "b", "c"]
    assert pairs[0] == Pair("a", root / "ir" / "a.jpg", root / "vi" / "a.png")
    assert pairs[2].ir.name == "c.BMP"


def test_two_files_make_one_pair(tmp_path: Path) -> None:
    ir = _img(tmp_path / "x" / "scene_ir.png")
    vi = _img(tmp_path / "y" / "scene_vi.jpg")
    assert find_pairs(ir, vi) == [Pair("scene_ir", ir, vi)]
    (tmp_path / "y" / "v.txt").write_text("x")
    with pytest.raises(ImageReadError, match="v.txt"):
        find_pairs(ir, tmp_path / "y" / "v.txt")


def test_missing_partner_names_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a.png", "b.png", "lonely.png"], ["a.png", "b.png", "extra.png"])
    with pytest.raises(PairError) as err:
        dataset_pairs(root)
    msg = str(err.value)
    assert "lonely.png" in msg and "extra.png" in msg
    assert "1 infrared image(s)" in msg and "1 visible image(s)" in msg


def test_allow_unpaired_warns_with_count(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a.png", "b.png", "c.png"], ["a.png"])
    with pytest.warns(UserWarning, match="2 unpaired"):
        pairs = find_pairs(root / "ir", root / "vi", allow_unpaired=True)
    assert [p.stem for p in pairs] == ["a"]


def test_long_lists_are_truncated_with_total(tmp_path: Path) -> None:
    root = _dataset(tmp_path, [f"{i:03d}.png" for i in range(25)], ["000.png"])
    with pytest.raises(PairError) as err:
        dataset_pairs(root)
    msg = str(err.value)
    assert "24 infrared image(s)" in msg and "(+14 more)" in msg
    assert "010.png" in msg and "011.png" not in msg


def test_duplicate_stem_in_one_folder(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a.png", "a.jpg"], ["a.png"])
    with pytest.raises(PairError, match=r"a \(a\.jpg / a\.png\)"):
        dataset_pairs(root)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a.png"], [])
    (root / "vi").mkdir()
    (root / "vi" / "readme.txt").write_text("x")
    with pytest.raises(PairError, match="no image files.*vi"):
        dataset_pairs(root)
    with pytest.raises(PairError, match="nowhere"):
        find_pairs(root / "ir", tmp_path / "nowhere")
    with pytest.raises(PairError, match="fits no known layout"):
        dataset_pairs(tmp_path / "ir")


def test_file_vs_folder_mismatch(tmp_path: Path) -> None:
    root = _dataset(tmp_path, ["a.png"], ["a.png"])
    with pytest.raises(PairError, match="both be files or both be folders"):
        find_pairs(root / "ir" / "a.png", root / "vi")


def test_recursive_uses_relative_paths(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path,
        ["day/001.png", "night/001.png", "top.png"],
        ["day/001.jpg", "night/001.png", "top.png"],
    )
    pairs = find_pairs(root / "ir", root / "vi", recursive=True)
    assert [p.stem for p in pairs] == ["day/001", "night/001", "top"]
    assert pairs[0].vi == root / "vi" / "day" / "001.jpg"
    # Without recursion only the top level is seen.
    assert [p.stem for p in find_pairs(root / "ir", root / "vi")] == ["top"]
