"""Deterministic stratified splits and split files."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from moefusion.data.splits import load_split, msrs_day_night, save_split, split_stems
from moefusion.errors import ConfigError, MoEFusionError

MSRS_LIKE = [f"{i:05d}{'D' if i % 3 else 'N'}" for i in range(40)]


def test_deterministic_and_order_independent() -> None:
    train, test = split_stems(MSRS_LIKE, 0.25, seed=7, group_fn=msrs_day_night)
    shuffled = MSRS_LIKE[:]
    random.Random(1).shuffle(shuffled)
    assert split_stems(shuffled, 0.25, seed=7, group_fn=msrs_day_night) == (train, test)
    assert train == sorted(train) and test == sorted(test)
    assert split_stems(MSRS_LIKE, 0.25, seed=8, group_fn=msrs_day_night) != (train, test)


def test_disjoint_covering_and_stratified() -> None:
    for frac in (0.1, 0.3, 0.5, 0.9):
        train, test = split_stems(MSRS_LIKE, frac, seed=0, group_fn=msrs_day_night)
        assert not set(train) & set(test) and sorted(train + test) == sorted(MSRS_LIKE)
        for group in ("D", "N"):
            n = sum(msrs_day_night(s) == group for s in MSRS_LIKE)
            n_test = sum(msrs_day_night(s) == group for s in test)
            assert n_test >= math.ceil(frac * n - 1e-9)
    # Float noise must not add an extra item: 0.3 * 10 is 3.0000000000000004.
    _, test = split_stems([f"s{i}" for i in range(10)], 0.3, seed=0)
    assert len(test) == 3


def test_small_groups() -> None:
    stems = ["01D", "02D", "03N"]
    train, test = split_stems(stems, 0.1, seed=0, group_fn=msrs_day_night)
    assert {"01D", "02D"} & set(test)  # a 2-item group gives at least one test item
    assert sorted(train + test) == stems
    # A single-item group is decided by a seeded hash, reproducibly.
    assert split_stems(["x"], 0.5, seed=3) == split_stems(["x"], 0.5, seed=3)
    assert split_stems(["x"], 0.0, seed=3) == (["x"], [])
    assert split_stems(["x"], 1.0, seed=3) == ([], ["x"])


def test_bad_inputs() -> None:
    with pytest.raises(MoEFusionError, match="test_fraction"):
        split_stems(["a", "b"], 1.5, seed=0)
    with pytest.raises(MoEFusionError, match="duplicate"):
        split_stems(["a", "a"], 0.5, seed=0)
    with pytest.raises(MoEFusionError, match="00012X"):
        msrs_day_night("00012X")
    assert msrs_day_night("night/00012N") == "N"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    train, test = split_stems(MSRS_LIKE, 0.25, seed=1, group_fn=msrs_day_night)
    split = {"seed": 1, "test_fraction": 0.25, "datasets": {"msrs": {"train": train, "test": test}}}
    path = save_split(tmp_path / "splits" / "s.json", split)
    assert load_split(path) == split
    assert json.loads(path.read_text())["datasets"]["msrs"]["test"] == test


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.json"):
        load_split(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_split(bad)
    overlap = tmp_path / "overlap.json"
    overlap.write_text(
        json.dumps(
            {"seed": 0, "test_fraction": 0.5, "datasets": {"m": {"train": ["a"], "test": ["a"]}}}
        )
    )
    with pytest.raises(ConfigError, match="overlap.json.*both train and test"):
        load_split(overlap)
    with pytest.raises(ConfigError, match="missing"):
        save_split(tmp_path / "x.json", {"seed": 0})


def test_val_part_is_optional_and_disjoint(tmp_path: Path) -> None:
    split = {
        "seed": 0,
        "test_fraction": 0.2,
        "datasets": {"m": {"train": ["a", "b"], "val": ["c"], "test": ["d"]}},
    }
    path = save_split(tmp_path / "v.json", split)
    assert load_split(path)["datasets"]["m"]["val"] == ["c"]
    split["datasets"]["m"]["val"] = ["a"]
    path.write_text(json.dumps(split))
    with pytest.raises(ConfigError, match="both train and val: a"):
        load_split(path)


def test_shipped_v2_split_keeps_v1_held_out(tmp_path: Path) -> None:
    from importlib import resources

    folder = resources.files("moefusion.configs.splits")
    v1 = json.loads((folder / "shared-data-v1.json").read_text())["datasets"]
    v2 = json.loads((folder / "shared-data-v2.json").read_text())["datasets"]
    assert set(v2) == set(v1) | {"tno_extra", "vifb"}
    for name, parts in v1.items():
        assert v2[name]["test"] == parts["test"]
        assert sorted(v2[name]["train"] + v2[name]["val"]) == parts["train"]
    tno = v2["tno_extra"]
    # sequences stay whole: Tree held out, Duine trained on, none in val
    assert all(s in tno["test"] for s in tno["train"] + tno["test"] if s.startswith("seq_tree"))
    assert not any(s.startswith("seq_") for s in tno["val"])
    assert not any(s.startswith("seq_tree") for s in tno["train"])
    for parts in v2.values():
        assert parts["val"] and parts["test"]


def _write_dataset(root: Path, stems: list[str]) -> None:
    from PIL import Image

    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
        for stem in stems:
            Image.new("L", (4, 4)).save(root / sub / f"{stem}.png")


def test_split_part_pairs_follow_the_split(tmp_path: Path) -> None:
    from moefusion.data import SHARED_DATASETS, split_part_pairs

    _write_dataset(tmp_path / "a", ["a1", "a2", "a3", "a4"])
    _write_dataset(tmp_path / "b", ["b1", "b2"])
    split = {
        "seed": 0,
        "test_fraction": 0.25,
        "datasets": {
            "a": {"train": ["a1", "a3"], "val": ["a2"], "test": ["a4"]},
            "b": {"train": ["b1"], "test": ["b2"]},
        },
    }
    parts = split_part_pairs(tmp_path, split, "train")
    assert {k: [p.stem for p in v] for k, v in parts.items()} == {"a": ["a1", "a3"], "b": ["b1"]}
    assert parts["a"][0].ir == tmp_path / "a" / "ir" / "a1.png"
    # order of the datasets argument; a dataset without the part maps to []
    val = split_part_pairs(tmp_path, split, "val", ["b", "a"])
    assert list(val) == ["b", "a"] and val["b"] == [] and [p.stem for p in val["a"]] == ["a2"]
    with pytest.raises(ConfigError, match="'c' is not in the split"):
        split_part_pairs(tmp_path, split, "train", ["c"])
    # datasets that lie apart: {name: folder}
    _write_dataset(tmp_path / "elsewhere" / "b-copy", ["b1", "b2"])
    apart = split_part_pairs({"a": tmp_path / "a", "b": tmp_path / "elsewhere" / "b-copy"},
                             split, "test")  # fmt: skip
    assert [p.stem for p in apart["b"]] == ["b2"]
    assert apart["b"][0].vi == tmp_path / "elsewhere" / "b-copy" / "vi" / "b2.png"
    with pytest.raises(ConfigError, match="no folder given for dataset 'b'"):
        split_part_pairs({"a": tmp_path / "a"}, split, "train")
    (tmp_path / "a" / "ir" / "a4.png").unlink()
    (tmp_path / "a" / "vi" / "a4.png").unlink()
    with pytest.raises(ConfigError, match="1 test stem.*'a'.*a4"):
        split_part_pairs(tmp_path, split, "test")
    assert set(SHARED_DATASETS) == {"roadscene", "msrs", "llvip", "tno_extra", "vifb"}


def test_resolve_split_by_name_or_path(tmp_path: Path) -> None:
    from moefusion.data import resolve_split

    assert resolve_split(None) is None
    shipped = resolve_split("shared-data-v2")
    assert shipped is not None and set(shipped["datasets"]) >= {"msrs", "vifb"}
    path = save_split(tmp_path / "s.json", {"seed": 0, "test_fraction": 0.5, "datasets": {}})
    assert resolve_split(str(path)) == load_split(path)
    with pytest.raises(ConfigError, match="unknown split 'nope'"):
        resolve_split("nope")
    with pytest.raises(ConfigError, match="split file not found"):
        resolve_split(str(tmp_path / "missing.json"))


def test_shipped_v3_split_keeps_v2_and_holds_msrs_eval_out() -> None:
    from importlib import resources

    folder = resources.files("moefusion.configs.splits")
    v2 = json.loads((folder / "shared-data-v2.json").read_text())["datasets"]
    v3_split = json.loads((folder / "shared-data-v3.json").read_text())
    v3 = v3_split["datasets"]
    assert set(v3) == set(v2) | {"llvip_extra", "m3fd", "m3svd", "msrs_eval"}
    for name, parts in v2.items():
        assert v3[name] == parts  # every v2 part, held-out stems included, is unchanged
    for name in ("llvip_extra", "m3fd", "m3svd"):
        assert v3[name]["train"] and v3[name]["val"] and v3[name]["test"] == []
    # M3SVD frames of one clip stay in one part
    clip = lambda stem: stem.rsplit("_", 1)[0]  # noqa: E731
    assert not {clip(s) for s in v3["m3svd"]["train"]} & {clip(s) for s in v3["m3svd"]["val"]}
    assert v3["msrs_eval"]["train"] == [] and v3["msrs_eval"]["val"] == []
    assert len(v3["msrs_eval"]["test"]) == 180
    assert {msrs_day_night(s) for s in v3["msrs_eval"]["test"]} == {"D", "N"}
    assert v3_split["eval_only"] == ["msrs_eval"]


def test_eval_only_datasets_are_refused(tmp_path: Path) -> None:
    from moefusion.data import check_trainable

    check_trainable(["msrs", "roadscene"])
    with pytest.raises(ConfigError, match="'msrs_eval' is evaluation only"):
        check_trainable(["msrs", "msrs_eval"])
    split = {"seed": 0, "test_fraction": 1.0, "eval_only": ["bench"],
             "datasets": {"bench": {"train": [], "test": ["x"]}}}  # fmt: skip
    with pytest.raises(ConfigError, match="'bench' is evaluation only"):
        check_trainable(["bench"], split)
    # a split cannot put train stems in an eval-only dataset, and eval_only survives a save
    assert load_split(save_split(tmp_path / "s.json", split))["eval_only"] == ["bench"]
    split["datasets"]["bench"]["train"] = ["y"]
    with pytest.raises(ConfigError, match="eval-only dataset 'bench' has train or val"):
        save_split(tmp_path / "t.json", split)


@pytest.mark.parametrize("how", ["root", "name"])
def test_training_on_msrs_eval_is_refused_in_one_line(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from moefusion.training.data import build_train_dataset

    _write_dataset(tmp_path / "msrs_eval", ["00001D", "00002N"])
    _write_dataset(tmp_path / "mine", ["00001D", "00002N"])
    entry = (
        {"root": str(tmp_path / "msrs_eval"), "name": "renamed"}
        if how == "root"
        else {"root": str(tmp_path / "mine"), "name": "msrs_eval"}
    )
    with pytest.raises(ConfigError, match="'msrs_eval' is evaluation only") as err:
        build_train_dataset({"datasets": [entry]})
    assert "\n" not in str(err.value)
    # the CLI says it in one line, without a traceback, before anything is written
    from moefusion.cli import main

    code = main(["train", "--config", "cpu", "--data", str(tmp_path / "msrs_eval"),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "evaluation only" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "stage2-fusion").exists()
