"""The msrs_eval detector split and bootstrap confidence intervals of detect-eval."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from moefusion.data import msrs_day_night, resolve_split, split_stems

ROOT = Path(__file__).resolve().parents[1]


def _make_detect_split_module():
    path = ROOT / "scripts" / "make_detect_split.py"
    spec = importlib.util.spec_from_file_location("make_detect_split", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_detect_split", module)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- split


def test_msrs_eval_detect_split_is_stratified_disjoint_and_reproducible() -> None:
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
    script = _make_detect_split_module()
    assert split["seed"] == script.SEED
    again = split_stems(
        train + test, script.TEST_FRACTION, seed=script.SEED, group_fn=msrs_day_night
    )
    assert again == (train, test)
