"""Mean ranks over the paper metrics and the published networks' per-image values
(``moefusion.evaluation``), as the quality report (scripts/make_report.py) uses them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from moefusion.errors import MoEFusionError, PairError
from moefusion.evaluation import (
    PAPER_METRICS,
    EvaluationResults,
    join_methods,
    mean_ranks,
    metric_ranks,
    rank_positions,
    read_peer_metrics,
    select_stems,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS_CSV = ROOT.parent / "shared" / "reference" / "peers" / "metrics_per_image.csv"
DATA = ROOT.parent / "shared" / "data"


def _means(table: dict[str, list[float]], metrics: tuple[str, ...]) -> dict:
    return {m: dict(zip(metrics, vals, strict=True)) for m, vals in table.items()}


def test_metric_ranks_ties_share_the_best_rank():
    means = _means({"a": [3.0, 1.0], "b": [3.0, 2.0], "c": [1.0, 2.0]}, ("EN", "SF"))
    ranks = metric_ranks(means, ("EN", "SF"))
    assert ranks == {"a": {"EN": 1, "SF": 3}, "b": {"EN": 1, "SF": 1}, "c": {"EN": 3, "SF": 1}}
    assert mean_ranks(means, ("EN", "SF")) == {"a": 2.0, "b": 1.0, "c": 2.0}
    # 'average' ties: the two tied methods share (1 + 2) / 2
    avg = metric_ranks(means, ("EN", "SF"), ties="average")
    assert avg["a"]["EN"] == avg["b"]["EN"] == 1.5 and avg["c"]["EN"] == 3.0


def test_mean_ranks_lower_is_better_metric_and_nan():
    # MSE: lower is better; NaN takes no part in the ranking of its metric
    means = _means({"a": [0.1, 5.0], "b": [0.2, math.nan], "c": [0.05, 4.0]}, ("MSE", "EN"))
    ranks = metric_ranks(means, ("MSE", "EN"))
    assert [ranks[m]["MSE"] for m in "abc"] == [2.0, 3.0, 1.0]
    assert ranks["a"]["EN"] == 1.0 and ranks["c"]["EN"] == 2.0 and math.isnan(ranks["b"]["EN"])
    assert mean_ranks(means, ("MSE", "EN")) == {"a": 1.5, "b": 3.0, "c": 1.5}


def test_mean_ranks_over_the_eight_paper_metrics():
    # "ours" is best on 6 metrics and last on 2 of three methods: (6 * 1 + 2 * 3) / 8
    ours = [9, 9, 9, 9, 9, 9, 0, 0]
    other = [5, 5, 5, 5, 5, 5, 5, 5]
    third = [1, 1, 1, 1, 1, 1, 9, 9]
    means = _means({"ours": ours, "other": other, "third": third}, PAPER_METRICS)
    ranks = mean_ranks(means)
    assert ranks == {"ours": 1.5, "other": 2.0, "third": 2.5}
    assert rank_positions(ranks) == {"ours": 1, "other": 2, "third": 3}
    assert rank_positions({"a": 2.0, "b": 1.5, "c": 1.5, "d": math.nan}) == {
        "a": 3,
        "b": 1,
        "c": 1,
        "d": 4,
    }


METRICS = ("EN", "SF")


def _write_csv(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "dataset", "stem", "method", "convention", "H", "W", *METRICS])
        w.writerows(rows)
    return path


def _rows(methods=("seafusion", "ifcnn"), stems=("00012N", "00095D")) -> list[tuple]:
    return [
        ("test70", "msrs", s, m, c, 480, 640, i + 0.5, j + 0.25)
        for i, m in enumerate(methods)
        for j, s in enumerate(stems)
        for c in ("paper", "float")
    ]


def test_read_peer_metrics_keeps_stems_as_text(tmp_path):
    rows = _rows() + [("msrs180", "msrs_eval", "00111D", "seafusion", "paper", 480, 640, 7, 8)]
    peers = read_peer_metrics(_write_csv(tmp_path / "m.csv", rows))
    assert set(peers) == {("test70", "msrs"), ("msrs180", "msrs_eval")}
    res = peers[("test70", "msrs")]
    assert res.stems == ("00012N", "00095D")  # leading zeros kept
    assert res.methods == ("seafusion", "ifcnn") and res.conventions == ("paper", "float")
    assert res.values["float"]["ifcnn"]["00095D"] == {"EN": 1.5, "SF": 1.25}
    assert peers[("msrs180", "msrs_eval")].values["paper"]["seafusion"]["00111D"]["SF"] == 8.0


def test_read_peer_metrics_refuses_gaps_and_repeats(tmp_path):
    rows = _rows()
    with pytest.raises(MoEFusionError, match="lacks 00095D"):
        read_peer_metrics(_write_csv(tmp_path / "gap.csv", rows[:-1]))
    with pytest.raises(MoEFusionError, match="repeated row"):
        read_peer_metrics(_write_csv(tmp_path / "rep.csv", rows + rows[:1]))


def _result(methods, stems, value=1.0) -> EvaluationResults:
    values = {
        "paper": {m: {s: {"EN": value, "SF": value} for s in stems} for m in methods},
    }
    return EvaluationResults(("paper",), tuple(methods), tuple(stems), values)


def test_join_methods_requires_the_same_stems():
    ours = _result(["ours"], ["a", "b"])
    joined = join_methods(ours, _result(["peer"], ["b", "a"], 2.0))
    assert joined.methods == ("ours", "peer") and joined.stems == ("a", "b")
    assert joined.values["paper"]["peer"]["a"]["EN"] == 2.0
    with pytest.raises(PairError, match="1 only in the other"):
        join_methods(ours, _result(["peer"], ["a", "b", "c"]))
    with pytest.raises(PairError, match="1 only in the first"):
        join_methods(ours, _result(["peer"], ["a"]))
    with pytest.raises(MoEFusionError, match="in both"):
        join_methods(ours, _result(["ours"], ["a", "b"]))
    day = select_stems(joined, ["a"])
    assert day.stems == ("a",) and set(day.values["paper"]["peer"]) == {"a"}


@pytest.mark.skipif(not PEERS_CSV.exists(), reason="../shared/reference/peers not present")
def test_peers_cover_exactly_the_report_test_pairs():
    from moefusion.data import SHARED_DATASETS, dataset_pairs, resolve_split

    split = resolve_split("shared-data-v3")
    peers = read_peer_metrics(PEERS_CSV)
    wanted = {("test70", n): set(split["datasets"][n]["test"]) for n in SHARED_DATASETS}
    wanted[("msrs180", "msrs_eval")] = set(split["datasets"]["msrs_eval"]["test"])
    assert set(peers) == set(wanted)
    for key, stems in wanted.items():
        assert set(peers[key].stems) == stems, key
        assert set(peers[key].methods) >= {"seafusion", "ifcnn", "tardal"}
        assert {"paper", "float"} <= set(peers[key].conventions)
        assert all(len(summarise(peers[key])[c].means) for c in peers[key].conventions)
    if (DATA / "msrs_eval").is_dir():
        files = {p.stem for p in dataset_pairs(DATA / "msrs_eval")}
        assert set(peers[("msrs180", "msrs_eval")].stems) == files


def test_table_legend_names_the_lower_is_better_metrics() -> None:
    from moefusion.evaluation import direction_note

    assert direction_note(["EN", "MSE"]) == (
        "Higher is better for every metric except MSE (lower is better)."
    )
    assert "Nabf" in direction_note(["Qabf", "Nabf", "Rmse"])
    assert "Rmse" in direction_note(["Qabf", "Nabf", "Rmse"])
    assert direction_note(["EN", "SF"]) == "Higher is better for every metric."


def test_report_cache_key_follows_content_not_file_names(tmp_path: Path, load_script) -> None:
    make_report = load_script("make_report")
    a, b = tmp_path / "v5.safetensors", tmp_path / "renamed.safetensors"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert make_report.digest([a]) == make_report.digest([b])  # a rename is no change
    b.write_bytes(b"weights2")
    assert make_report.digest([a]) != make_report.digest([b])
    code = tmp_path / "pkg"
    (code / "sub").mkdir(parents=True)
    (code / "sub" / "m.py").write_text("x = 1\n")
    before = make_report.digest([code])
    (code / "sub" / "m.py").rename(code / "n.py")  # a moved module is a change
    assert make_report.digest([code]) != before


def test_report_states_the_published_network_targets_with_their_gaps(load_script) -> None:
    mr = load_script("make_report")
    ours, sea = mr.MODEL, mr.SEAFUSION
    others = {"CC": 0.5, "PSNR": 60.0, "MSE": 0.03}  # the tables' other columns, all equal

    def results(per_method: dict[str, list[float]]) -> EvaluationResults:
        values = {
            c: {
                m: {"s1": {**dict(zip(PAPER_METRICS, v, strict=True)), **others}}
                for m, v in per_method.items()
            }
            for c in mr.CONVENTIONS
        }
        return EvaluationResults(tuple(mr.CONVENTIONS), tuple(per_method), ("s1",), values)

    # columns: EN SF SD MI VIF AG SCD Qabf
    msrs = results(
        {
            ours: [1, 5, 1, 1, 1, 5, 5, 2],
            sea: [5, 4, 5, 5, 5, 4, 1, 1],
            "max": [3, 1, 3, 3, 3, 1, 1, 3],
        }
    )
    held = results({ours: [1, 1, 1, 1, 1, 1, 9, 1], sea: [2, 2, 2, 2, 2, 2, 1, 2]})
    tables = [(mr.MSRS_EVAL, "MSRS test", msrs), ("roadscene", "held-out RoadScene", held)]
    rendered = {key: mr.ranked_tables(res) for key, _, res in tables}
    text = "\n".join(mr.published_targets(tables, rendered))
    # MSRS: ours ranks 3 1 3 3 3 1 1 2 (2.125), SeAFusion 1 2 1 1 1 2 2 3 (1.625)
    assert "| MSRS test | 1 | 2.12 | 1.62 | NOT met, +0.50 |" in text
    # held-out: ours 2 2 2 2 2 2 1 2 (1.875), SeAFusion 1 1 1 1 1 1 2 1 (1.125)
    assert "| held-out RoadScene | 1 | 1.88 | 1.12 | NOT met, +0.75 |" in text
    assert "SF 5.0000 against SeAFusion's 4.0000 (met)" in text
    assert "SCD best of all methods: met (5.0000)" in text
    assert "Qabf best of all methods: NOT met (2.0000; max 3.0000)" in text

    ahead = results({ours: [2] * 8, sea: [1] * 8})
    text = "\n".join(mr.published_targets([("x", "x", ahead)], {"x": mr.ranked_tables(ahead)}))
    assert "| x | 1 | 1.00 | 2.00 | met |" in text
    assert "msrs_eval" not in text  # no MSRS test split in the run: no line about it
    assert mr.published_targets([], {}) == []
