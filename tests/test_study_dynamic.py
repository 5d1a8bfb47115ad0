"""``moefusion study dynamic``: groups, the two-group tests, and the command end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.cli import main
from moefusion.errors import MoEFusionError
from moefusion.studies import dynamic

# ------------------------------------------------------------------------------ groups


def test_msrs_suffix_gives_day_before_night_and_names_bad_stems() -> None:
    mapping = dynamic.msrs_groups(["00012N", "00095D", "00100d"])
    assert mapping == {"00095D": "day", "00100d": "day", "00012N": "night"}
    labels, order = dynamic.group_labels(["00012N", "00095D"], mapping)
    assert (labels, order) == (["night", "day"], ["day", "night"])
    with pytest.raises(MoEFusionError, match="FLIR_1.*--groups"):
        dynamic.msrs_groups(["00012N", "FLIR_1"])


def test_groups_csv_header_comments_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "g.csv"
    f.write_text("stem,group\n# a comment\na,urban\n\nb, rural\n")
    assert dynamic.read_groups_csv(f) == {"a": "urban", "b": "rural"}
    _, order = dynamic.group_labels(["b", "a"], dynamic.read_groups_csv(f))
    assert order == ["urban", "rural"]  # the CSV's order, not the pairs'
    f.write_text("a,x\na,y\n")
    with pytest.raises(MoEFusionError, match="line 2.*twice"):
        dynamic.read_groups_csv(f)
    f.write_text("a\n")
    with pytest.raises(MoEFusionError, match="stem,group"):
        dynamic.read_groups_csv(f)
    with pytest.raises(MoEFusionError, match="1 pair.*no group: c"):
        dynamic.group_labels(["a", "c"], {"a": "x"})
    with pytest.raises(MoEFusionError, match="two groups.*3"):
        dynamic.group_labels(["a", "b", "c"], {"a": "x", "b": "y", "c": "z"})


# -------------------------------------------------------------------------- statistics


def test_group_comparison_finds_a_shift_and_not_a_null() -> None:
    rng = np.random.default_rng(1)
    labels = ["day"] * 20 + ["night"] * 20
    shifted = np.r_[rng.normal(0.3, 0.03, 20), rng.normal(0.5, 0.03, 20)]
    t = dynamic.compare_groups(shifted, labels, ["day", "night"], permutations=999)
    assert t.difference == pytest.approx(0.2, abs=0.03)
    assert t.ci95[0] < t.difference < t.ci95[1] and t.ci95[0] > 0.1
    assert t.p_value == pytest.approx(1 / 1000)
    null = dynamic.compare_groups(
        rng.normal(0.4, 0.03, 40), labels, ["day", "night"], permutations=999
    )
    assert null.p_value > 0.05 and null.ci95[0] < 0 < null.ci95[1]
    # reproducible with the seed; NaN values are dropped; too few pairs give NaN
    again = dynamic.compare_groups(shifted, labels, ["day", "night"], permutations=999)
    assert again == t
    with_nan = dynamic.compare_groups(np.r_[shifted, np.nan], [*labels, "day"], ["day", "night"])
    assert with_nan.counts == (20, 20)
    few = dynamic.compare_groups([0.1, 0.2, 0.3], ["day", "night", "night"], ["day", "night"])
    assert math.isnan(few.p_value) and few.counts == (1, 2)


def test_gate_comparison_uses_weights_and_selections() -> None:
    labels = ["day"] * 12 + ["night"] * 12
    day = np.tile([0.6, 0.4, 0.0, 0.0], (12, 1))
    night = np.tile([0.0, 0.0, 0.5, 0.5], (12, 1))
    t = dynamic.compare_gates(np.vstack([day, night]), labels, ["day", "night"], permutations=499)
    assert t.l1 == pytest.approx(2.0)
    assert t.p_value == pytest.approx(1 / 500) and t.selection_p_value == pytest.approx(1 / 500)
    np.testing.assert_allclose(t.mean, [[0.6, 0.4, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(t.selected, [[1, 1, 0, 0], [0, 0, 1, 1]])
    same = dynamic.compare_gates(np.vstack([day, day]), labels, ["day", "night"], permutations=99)
    assert same.l1 == 0 and same.p_value == 1.0


# ----------------------------------------------------------------------------- command


def _write_pairs(root: Path, stems: list[str], size: tuple[int, int] = (40, 48)) -> None:
    """Synthetic pairs: warm blobs in the infrared, texture in the visible, brighter by day."""
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    for i, stem in enumerate(stems):
        ir = 30 + 180 * (((y - 10 - i) ** 2 + (x - 20) ** 2) < 40) + rng.integers(0, 8, size)
        light = 1.0 if stem.endswith("D") else 0.25
        vi = light * (120 + 80 * np.sin(x / (2.0 + i)) * np.cos(y / 3.0)) + rng.integers(0, 8, size)
        Image.fromarray(np.clip(ir, 0, 255).astype(np.uint8)).save(root / "ir" / f"{stem}.png")
        rgb = np.repeat(np.clip(vi, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        Image.fromarray(rgb).save(root / "vi" / f"{stem}.png")


STEMS = ["0001D", "0002D", "0003D", "0004N", "0005N", "0006N"]


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write_pairs(root, STEMS)
    return root


def test_command_writes_pairs_gates_summary_and_figure(
    pairs_dir: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copies = tmp_path / "copy_ir"  # a "method" that returns the infrared image
    copies.mkdir()
    for stem in STEMS[:4]:
        (copies / f"{stem}.png").write_bytes((pairs_dir / "ir" / f"{stem}.png").read_bytes())
    out = tmp_path / "out"
    args = ["study", "dynamic", "--data", str(pairs_dir), "--weights", str(tiny_weights),
            "--out", str(out), "--baselines", "average,max", "--fused", str(copies),
            "--permutations", "199"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "moe-fusion: IR share median day" in printed and "gates moge" in printed
    for name in ("pairs.csv", "gates.csv", "summary.json", "summary.md", "dynamic.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(rows) == 6 * 3 + 4  # model and two baselines on every pair, copies on four
    assert {r["group"] for r in rows if r["stem"].endswith("N")} == {"night"}
    copy_rows = [r for r in rows if r["method"] == "copy_ir"]
    assert all(float(r["ir_share"]) > 0.7 for r in copy_rows)
    assert all(float(r["q_ir"]) > 0.97 for r in copy_rows)
    gates = list(csv.DictReader((out / "gates.csv").open()))
    assert len(gates) == 6 * 3
    assert {r["mixture"] for r in gates} == {"mole_fg", "mole_bg", "moge"}
    for r in gates:
        assert sum(float(r[f"e{i}"]) for i in range(1, 5)) == pytest.approx(1, abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == ["day", "night"] and summary["pairs"] == {"day": 3, "night": 3}
    assert set(summary["share"]) == {"moe-fusion", "average", "max", "copy_ir"}
    assert summary["reference"] == "average"
    assert "minus_reference" in summary["share"]["moe-fusion"]
    assert "minus_reference" not in summary["share"]["average"]
    assert summary["share"]["copy_ir"]["test"]["counts"] == [3, 1]
    test = summary["share"]["moe-fusion"]["test"]
    assert test["permutations"] == 199 and 0 < test["p_value"] <= 1
    assert set(summary["gates"]) == {"mole_fg", "mole_bg", "moge"}
    assert len(summary["gates"]["moge"]["mean"]["day"]) == 4
    assert summary["command"].startswith("moefusion study dynamic --data")
    md = (out / "summary.md").read_text()
    assert "| moe-fusion | 3+3 |" in md and "MoLE foreground" in md
    assert Image.open(out / "dynamic.png").size[0] < 1400

    # the same command again continues the run (here: nothing left, same numbers); other
    # settings are refused without --overwrite; --report-only recomputes from the CSVs
    assert main(args) == 0
    capsys.readouterr()
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["share"] == summary["share"] and rerun["gates"] == summary["gates"]
    assert main([*args, "--baselines", "average"]) == 2
    assert "other data, weights, methods or groups" in capsys.readouterr().err
    before = summary["share"]["moe-fusion"]["test"]["median_difference"]
    again = ["study", "dynamic", "--report-only", "--out", str(out), "--permutations", "99"]
    assert main(again) == 0
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["share"]["moe-fusion"]["test"]["median_difference"] == pytest.approx(before)
    assert summary2["command"] == summary["command"]
    assert summary2["gates"]["moge"]["mean"] == summary["gates"]["moge"]["mean"]


def test_an_interrupted_run_continues_from_its_cache(pairs_dir: Path, tmp_path: Path) -> None:
    from moefusion.data import dataset_pairs

    pairs = dataset_pairs(pairs_dir)
    mapping = dynamic.msrs_groups([p.stem for p in pairs])
    order = dynamic.processing_order(pairs, mapping)
    assert [mapping[p.stem] for p in order] == ["day", "night"] * 3  # groups alternate
    settings = {"baselines": ["average"]}
    cache = tmp_path / "out" / dynamic.CACHE
    kw = {"baselines": ["average"], "cache": cache, "settings": settings}
    first = dynamic.measure_pairs(pairs, mapping, progress=lambda ps: list(ps)[:3], **kw)
    assert len(first.stems) == 3 and first.total == 6 and not first.complete
    assert set(first.labels) == {"day", "night"}
    assert len(cache.read_text().splitlines()) == 1 + 3
    measured: list[str] = []

    def track(ps: list) -> list:
        measured.extend(p.stem for p in ps)
        return ps

    done = dynamic.measure_pairs(pairs, mapping, progress=track, **kw)
    assert len(measured) == 3 and not set(measured) & set(first.stems)
    assert done.complete and done.stems == STEMS  # the pairs' order, not the processing's
    fresh = dynamic.measure_pairs(pairs, mapping, baselines=["average"])
    assert done.rows == fresh.rows
    with pytest.raises(MoEFusionError, match="other data"):
        dynamic.measure_pairs(pairs, mapping, baselines=["max"], cache=cache, settings={})
    stopped = dynamic.measure_pairs(pairs, mapping, baselines=["average"], deadline=0.0)
    assert stopped.stems == [] and stopped.total == 6


def test_command_without_model_and_with_a_groups_csv(pairs_dir: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text("".join(f"{s},{'a' if i % 2 else 'b'}\n" for i, s in enumerate(STEMS)))
    out = tmp_path / "out"
    code = main(["study", "dynamic", "--data", str(pairs_dir), "--no-model", "--groups",
                 str(groups), "--baselines", "average,gff", "--out", str(out),
                 "--permutations", "99"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == ["b", "a"] and summary["gates"] == {}
    assert summary["weights"] is None and set(summary["share"]) == {"average", "gff"}
    assert not (out / "gates.csv").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baselines", "average,median"], "unknown median"),
        (["--no-model", "--baselines", "none"], "nothing to measure"),
        (["--groups", "missing.csv"], "not a file"),
        (["--fused", "nope"], "not a folder"),
        (["--permutations", "0"], "--permutations must be >= 1"),
        (["--time-limit", "0"], "--time-limit must be > 0"),
        # options this run would ignore
        (["--no-model", "--threads", "1"], "--threads has no effect with --no-model"),
        (["--no-model", "--steps", "5"], "--steps is for the studies that train"),
        (["--no-model", "--set", "optim.lr=1e-3"], "--set is for the studies that train"),
        (["--no-model", "--weights", "w.safetensors"], "--weights has no effect with --no-model"),
        (["--no-model", "--device", "cuda"], "--device has no effect with --no-model"),
        (["--report-only"], "--data has no effect with --report-only"),
    ],
)
def test_bad_input_is_one_line(
    pairs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    argv = ["study", "dynamic", "--data", str(pairs_dir), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "study: error" in err
    assert not (tmp_path / "o" / "pairs.csv").exists()


def test_non_msrs_stems_without_groups_and_missing_report_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "d"
    _write_pairs(root, ["a1", "b2"])
    assert main(["study", "dynamic", "--data", str(root), "--no-model", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "do not end in D (day) or N (night): a1, b2" in capsys.readouterr().err
    assert main(["study", "dynamic", "--report-only", "--out", str(tmp_path / "o")]) == 2
    assert "pairs.csv: not found" in capsys.readouterr().err


def test_threads_sets_the_networks_torch_threads(
    pairs_dir: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--threads is read by study dynamic (its network's torch threads), not ignored."""
    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    args = ["study", "dynamic", "--data", str(pairs_dir), "--weights", str(tiny_weights),
            "--out", str(tmp_path / "out"), "--baselines", "none", "--permutations", "99",
            "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    assert calls == [1]
    assert main([*args[:-1], "0", "--overwrite"]) == 2
