"""Studies: definitions against the paper, verdict logic, and a tiny real study run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moefusion.cli import main
from moefusion.data.splits import save_split
from moefusion.studies import STUDIES, Budget, StudySettings, Variant, run_study
from moefusion.studies.definitions import PAPER_METRICS, TABLE2, Study, wins_in_table
from moefusion.studies.report import Score, check_claims, compare, write_report
from moefusion.studies.runner import resolve_run
from moefusion.weights import bundled_weights_path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "msrs").is_dir(), reason="../shared/data absent")


def _score(values: list[float], spread: float = 0.0, seeds: int = 1) -> Score:
    return Score(
        dict(zip(PAPER_METRICS, values, strict=True)),
        dict.fromkeys(PAPER_METRICS, spread),
        seeds,
        10,
        1.0,
    )


def test_studies_have_the_papers_variants_and_claims() -> None:
    assert [v.name for v in STUDIES["ablation"].variants] == [
        "full",
        "w/o MoLE",
        "w/o MoGE",
        "Att-Local",
    ]
    assert [v.name for v in STUDIES["experts"].variants] == [
        "E2K2",
        "E4K2",
        "E6K2",
        "E8K2",
        "E4K1",
        "E4K3",
        "E4K4",
    ]
    assert [v.x for v in STUDIES["alpha"].variants] == [1, 5, 10, 20, 40]
    # Table 2 as printed: the full model is ahead of every ablation on all 8 metrics,
    # on each of the three datasets (the paper's "all the metrics ... decrease")
    for dataset, rows in TABLE2.items():
        assert len(rows) == 4, dataset
        for ablation in ("w/o MoLE", "w/o MoGE", "Att-Local"):
            assert wins_in_table(rows, "full", ablation) == 8
    assert TABLE2["FLIR"]["w/o MoGE"]["SCD"] == 1.6629
    claims = {(c.better, c.worse): c.paper_count for c in STUDIES["experts"].claims}
    assert claims[("E4K2", "E8K2")] == (5,) and claims[("E4K2", "E4K4")] == (8,)


def test_the_three_full_models_resolve_to_one_run(tmp_path: Path) -> None:
    weights = bundled_weights_path()
    assert weights is not None
    settings = StudySettings(weights=weights, budget=Budget(steps=50))
    keys = {
        resolve_run(settings, STUDIES[s].variant(v), 0, tmp_path)[2]
        for s, v in (("ablation", "full"), ("experts", "E4K2"), ("alpha", "alpha 10"))
    }
    assert len(keys) == 1
    other = resolve_run(settings, STUDIES["alpha"].variant("alpha 5"), 0, tmp_path)[2]
    reseeded = resolve_run(settings, STUDIES["alpha"].variant("alpha 10"), 1, tmp_path)[2]
    assert len(keys | {other, reseeded}) == 3
    config = resolve_run(settings, STUDIES["experts"].variant("E8K2"), 0, tmp_path)[0]
    assert config["model"]["num_experts"] == 8 and config["model"]["top_k"] == 2
    # the paper's K for both mixtures: E2K2 must not keep the cpu config's 3 MoLE experts
    config = resolve_run(settings, STUDIES["experts"].variant("E2K2"), 0, tmp_path)[0]
    assert config["model"]["mole_top_k"] is None and config["optim"]["alpha"] == 10.0
    assert config["stages"]["fusion"]["trainer"]["max_steps"] == 50
    assert config["stages"]["detect"]["init_weights"] == str(weights.resolve())


def test_compare_calls_differences_within_the_seed_spread_ties() -> None:
    a, b = _score([1.0] * 8), _score([0.9] * 7 + [1.1])
    assert [compare(a, b, m) for m in PAPER_METRICS] == [1] * 7 + [-1]
    spread_a, spread_b = _score([1.0] * 8, 0.1, 3), _score([0.9] * 7 + [1.5], 0.05, 3)
    # |1.0 - 0.9| = 0.1 <= hypot(0.1, 0.05) = 0.112: a tie; 0.5 > 0.112: a loss
    assert [compare(spread_a, spread_b, m) for m in PAPER_METRICS] == [0] * 7 + [-1]


def test_claims_agree_when_both_sides_see_the_same_majority() -> None:
    study = STUDIES["experts"]
    scores = {n: _score([0.5] * 8) for n in ("E4K2", "E2K2", "E4K4")}
    scores["E4K2"] = _score([1.0] * 6 + [0.0] * 2)  # beats both on 6 of 8
    verdicts = {v.claim.worse: v for v in check_claims(study, scores)}
    assert verdicts["E2K2"].wins == 6 and verdicts["E2K2"].agrees is True
    assert "E4K2 beats E2K2 on 6 of 8 metrics; the paper says 7" in verdicts["E2K2"].sentence()
    assert verdicts["E6K2"].agrees is None  # not run
    scores["E4K2"] = _score([1.0] * 3 + [0.0] * 5)
    assert {v.claim.worse: v for v in check_claims(study, scores)}["E4K4"].agrees is False


def tiny_study() -> Study:
    return Study(
        name="alpha",
        title="tiny alpha",
        variants=(
            Variant("alpha 1", ("optim.alpha=1.0",), x=1.0),
            Variant("alpha 10", ("optim.alpha=10.0",), x=10.0),
        ),
        reference="alpha 10",
        claims=STUDIES["alpha"].claims[:1],
        plot="lines",
        x_label="alpha",
    )


TINY = (
    f"data.datasets=[{{root: {SHARED / 'msrs'}, label_set: infrared}}]",
    "data.max_side=96",
    "stages.fusion.data={crop: 48, batch_size: 2, repeat: 1}",
    "stages.fusion.optim.warmup_steps=0",
    "stages.fusion.optim.alpha_warmup_steps=0",
    "trainer.log_every_n_steps=1",
)


def tiny_split(path: Path) -> Path:
    stems = sorted(p.stem for p in (SHARED / "msrs" / "ir").iterdir())
    parts = {"train": stems[:4], "val": stems[4:5], "test": stems[5:7]}
    return save_split(path, {"seed": 0, "test_fraction": 0.25, "datasets": {"msrs": parts}})


@pytest.mark.slow
@needs_shared
def test_tiny_study_trains_evaluates_marks_the_best_and_resumes(tmp_path: Path) -> None:
    weights = bundled_weights_path()
    assert weights is not None
    settings = StudySettings(
        weights=weights,
        budget=Budget(steps=2),
        split=str(tiny_split(tmp_path / "split.json")),
        overrides=TINY,
    )
    out = tmp_path / "study"
    study = tiny_study()
    results = run_study(study, settings, out)
    assert [r.variant for r in results] == ["alpha 1", "alpha 10"]
    for r in results:
        assert r.steps == 2 and r.pairs == 2
        assert (r.folder / "moefusion.safetensors").is_file()
        assert sorted(p.name for p in (r.folder / "heldout" / "msrs").iterdir()) == [
            f"{s}.png"
            for s in sorted(
                json.loads((tmp_path / "split.json").read_text())["datasets"]["msrs"]["test"]
            )
        ]
        assert all(r.means[m] == r.means[m] for m in PAPER_METRICS)  # no NaN
    # same seed, same start; alpha alone changed the trained weights
    first, second = (load_file(str(r.folder / "moefusion.safetensors")) for r in results)
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("fusion."))

    paths = write_report(study, results, out)
    table = paths["md"].read_text()
    payload = json.loads(paths["json"].read_text())
    for metric in PAPER_METRICS:
        best = payload["best"][metric]
        other = next(n for n in payload["variants"] if n != best)
        assert (
            payload["variants"][best]["mean"][metric] >= payload["variants"][other]["mean"][metric]
        )
        assert f"**{payload['variants'][best]['mean'][metric]:.4f}**" in table
    assert "alpha 10 beats alpha 1 on" in table and paths["figure"].stat().st_size > 0
    assert paths["csv"].read_text().splitlines()[0].startswith("variant,seeds,steps")

    # resume: finished runs are reused as they are, not retrained
    logs = {r.variant: (r.folder / "train.log").read_text() for r in results}
    again = run_study(study, settings, out)
    assert [r.means for r in again] == [r.means for r in results]
    assert {r.variant: (r.folder / "train.log").read_text() for r in again} == logs

    # a run interrupted after its checkpoints but before evaluation continues from them
    first = results[0].folder
    (first / "heldout.json").unlink()
    (first / "moefusion.safetensors").unlink()
    (first / "stage2-fusion" / "done.json").unlink()
    resumed = run_study(study, settings, out)[0]
    assert "--resume auto" in (first / "train.log").read_text()
    assert resumed.steps == 2 and resumed.means == pytest.approx(results[0].means)


def test_study_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["study", "ablation", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    )
    assert "not a folder" in capsys.readouterr().err
    assert main(["study", "alpha", "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    code = main(["study", "alpha", "--config", "paper", "--out", str(tmp_path / "o")])
    assert code == 2 and "staged" in capsys.readouterr().err
    assert main(["study", "experts", "--report-only", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no finished runs of experts" in err or "dataset folder not found" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--groups", "g.csv"], "--groups is for study dynamic, not study alpha"),
        (["--overwrite"], "--overwrite is for study dynamic, not study alpha"),
        (["--permutations", "99"], "--permutations is for study dynamic, not study alpha"),
        (["--report-only", "--threads", "1"], "--threads sets the training runs' threads"),
    ],
)
def test_study_refuses_options_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    """The dynamic study's options in a training study, and --threads when nothing
    trains, are refused in one line before any run (they did nothing)."""
    # a missing --data folder: without the check the command stops there, not on the option
    argv = ["study", "alpha", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moefusion study: error: ") and err.count("\n") == 1
    assert message in err and not (tmp_path / "o").exists()


def test_routing_permutation_test_separates_different_from_equal_routing() -> None:
    from moefusion.studies.routing import permutation_test, selections

    rng = np.random.default_rng(0)

    def gates_choosing(pairs: list[tuple[int, int]]) -> np.ndarray:
        g = np.zeros((len(pairs), 4))
        for row, (a, b) in enumerate(pairs):
            g[row, a], g[row, b] = 0.6, 0.4
        return g

    day = gates_choosing([(0, 1)] * 9 + [(2, 3)])
    night = gates_choosing([(2, 3)] * 9 + [(0, 1)])
    labels = ["D"] * 10 + ["N"] * 10
    result = permutation_test(np.vstack([day, night]), labels, permutations=2000)
    assert result.groups == ("D", "N") and result.counts == (10, 10)
    np.testing.assert_allclose(result.frequencies[0], [0.9, 0.9, 0.1, 0.1])
    assert result.statistic == pytest.approx(20 * 0.8)  # pairs x TV distance (0.8)
    assert result.p_value < 0.01 and result.significant()

    mixed = gates_choosing([tuple(rng.choice(4, 2, replace=False)) for _ in range(40)])
    same = permutation_test(mixed, ["a", "b"] * 20, permutations=2000)
    assert same.p_value > 0.05 and not same.significant()
    again = permutation_test(mixed, ["a", "b"] * 20, permutations=2000)
    assert again.p_value == same.p_value  # seeded
    assert selections(day).sum(axis=1).tolist() == [2.0] * 10
    with pytest.raises(ValueError, match="two groups"):
        permutation_test(day, ["D"] * 10)


@needs_shared
def test_user_data_gets_an_auto_split_carved_once(tmp_path: Path) -> None:
    weights = bundled_weights_path()
    assert weights is not None
    settings = StudySettings(
        weights=weights, budget=Budget(minutes=2), data=(SHARED / "msrs",), split="auto"
    )
    config, overrides, _ = resolve_run(settings, STUDIES["alpha"].variant("alpha 5"), 0, tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())["datasets"]["msrs"]
    stems = sorted(p.stem for p in (SHARED / "msrs" / "ir").iterdir())
    assert sorted(split["train"] + split["val"] + split["test"]) == stems
    assert len(split["test"]) == -(-len(stems) // 5)  # ceil(20 %)
    assert config["data"]["datasets"] == [{"root": str((SHARED / "msrs").resolve())}]
    assert config["data"]["split"] == str((tmp_path / "split.json").resolve())
    assert config["optim"]["alpha"] == 5.0
    fusion = config["stages"]["fusion"]
    assert fusion["trainer"]["max_time"] == {"minutes": 2}
    assert fusion["optim"]["schedule"] == "constant"
    # the split is kept: a resumed study evaluates on the same held-out pairs
    before = (tmp_path / "split.json").read_text()
    resolve_run(settings, STUDIES["alpha"].variant("alpha 1"), 0, tmp_path)
    assert (tmp_path / "split.json").read_text() == before
