"""``moefusion evaluate`` and the reusable evaluation functions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from moefusion.cli import main
from moefusion.errors import PairError
from moefusion.evaluation import (
    EvaluationResults,
    Summary,
    _rank,
    evaluate_folders,
    markdown_table,
    parse_resize,
    summarise,
    write_tables,
)
from moefusion.metrics import CONVENTION_DESCRIPTIONS, compute, to_gray_u8

SIZE = (48, 64)  # (H, W): big enough for VIF's 41-pixel minimum


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """ir/vi sources (vi in colour, as JPEG-free PNG) and two fused folders for stems a, b."""
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        ir = rng.integers(0, 256, SIZE, dtype=np.uint8)
        vi = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        _write(tmp_path / "ir" / f"{stem}.png", ir)
        _write(tmp_path / "vi" / f"{stem}.png", vi)
        gray = to_gray_u8(vi, "paper").astype(np.uint16)
        _write(tmp_path / "avg" / f"{stem}.png", ((ir + gray + 1) // 2).astype(np.uint8))
        _write(tmp_path / "copy" / f"{stem}.bmp", ir)
    return {k: tmp_path / k for k in ("ir", "vi", "avg", "copy")}


def _read(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p))


def test_evaluate_folders_matches_compute(folders: dict[str, Path]) -> None:
    res = evaluate_folders(
        folders["ir"],
        folders["vi"],
        {"avg": folders["avg"], "copy": folders["copy"]},
        "all",
        progress=False,
    )
    assert res.conventions == ("paper", "float", "cddfuse") and res.stems == ("a", "b")
    for conv in res.conventions:
        for stem in ("a", "b"):
            ir = _read(folders["ir"] / f"{stem}.png")
            vi = to_gray_u8(_read(folders["vi"] / f"{stem}.png"), conv)
            f = _read(folders["avg"] / f"{stem}.png")
            assert res.values[conv]["avg"][stem] == compute(ir, vi, f, conv)
    s = summarise(res)["paper"]
    for k in s.metrics:
        want = np.mean([res.values["paper"]["avg"][x][k] for x in ("a", "b")])
        assert s.means["avg"][k] == pytest.approx(want, rel=1e-15)
    # MSE is lower-is-better, EN higher-is-better: ranks follow each metric's direction.
    mse = {m: s.means[m]["MSE"] for m in ("avg", "copy")}
    best = min(mse, key=mse.get)
    assert s.ranks[best]["MSE"] == 1 and s.ranks[next(m for m in mse if m != best)]["MSE"] == 2
    en = {m: s.means[m]["EN"] for m in ("avg", "copy")}
    assert s.ranks[max(en, key=en.get)]["EN"] == 1


def test_ranking_marks_three_best() -> None:
    vals = {
        "paper": {
            m: {"x": {"EN": v, "MSE": v}} for m, v in zip("pqrs", (1.0, 4.0, 3.0, 2.0), strict=True)
        }
    }
    res = EvaluationResults(("paper",), tuple("pqrs"), ("x",), vals)
    # A hand-made two-metric Summary: summarise() always uses every metric of a convention.
    ranks_en = _rank({m: vals["paper"][m]["x"]["EN"] for m in "pqrs"}, True)
    ranks_mse = _rank({m: vals["paper"][m]["x"]["MSE"] for m in "pqrs"}, False)
    assert ranks_en == {"q": 1, "r": 2, "s": 3, "p": 0}
    assert ranks_mse == {"p": 1, "s": 2, "r": 3, "q": 0}
    assert _rank({"a": 1.0, "b": 1.0, "c": math.nan, "d": 0.5}, True) == {
        "a": 1,
        "b": 1,
        "c": 0,
        "d": 3,
    }
    summary = Summary(
        "paper",
        CONVENTION_DESCRIPTIONS["paper"],
        ("EN", "MSE"),
        1,
        {m: vals["paper"][m]["x"] for m in "pqrs"},
        {m: {"EN": ranks_en[m], "MSE": ranks_mse[m]} for m in "pqrs"},
    )
    md = markdown_table(summary)
    assert CONVENTION_DESCRIPTIONS["paper"] in md and "**bold** = best" in md
    assert "| q | **4.0000** | 4.0000 |" in md
    assert "| p | 1.0000 | **1.0000** |" in md
    assert "| r | _3.0000_ | 3.0000† |" in md
    assert "| s | 2.0000† | _2.0000_ |" in md
    assert res.rows("paper")[0] == {"method": "p", "stem": "x", "EN": 1.0, "MSE": 1.0}


def test_cli_writes_tables(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert main(_argv(folders, out, "--convention", "cddfuse")) == 0
    printed = capsys.readouterr().out
    assert CONVENTION_DESCRIPTIONS["cddfuse"] in printed and "| copy |" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"{k}_cddfuse.{e}"
        for k, e in (
            ("per_image", "csv"),
            ("summary", "csv"),
            ("summary", "json"),
            ("summary", "md"),
        )
    ]
    with (out / "per_image_cddfuse.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["stem"]) for r in rows] == [
        ("avg", "a"),
        ("avg", "b"),
        ("copy", "a"),
        ("copy", "b"),
    ]
    assert "SSIM" in rows[0]
    data = json.loads((out / "summary_cddfuse.json").read_text())
    assert data["convention"] == "cddfuse" and data["n_images"] == 2
    assert data["means"]["avg"]["EN"] == pytest.approx(np.mean([float(r["EN"]) for r in rows[:2]]))
    assert data["higher_is_better"]["MSE"] is False
    md = (out / "summary_cddfuse.md").read_text()
    assert "† = third" in md and CONVENTION_DESCRIPTIONS["cddfuse"] in md


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_cli_errors(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--ir", str(folders["ir"]), "--vi", str(folders["vi"]), "--no-progress"]
    two = ["--fused", f"avg={folders['avg']}", "--fused", f"copy={folders['copy']}"]
    # a fused image whose stem is in neither source folder (e.g. a figure) is skipped
    _write(folders["avg"] / "c.png", np.zeros(SIZE, np.uint8))
    assert main([*base, *two, "--out", str(tmp_path / "skip")]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) in fused 'avg' are not pairs" in out and "skipped: c" in out
    # a stem one source has: the other source and a method missing it are errors
    _write(folders["ir"] / "c.png", np.zeros(SIZE, np.uint8))
    code, err = _run([*base, *two, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "fused 'copy' lacks c" in err and "vi folder lacks c" in err
    (folders["avg"] / "c.png").unlink()
    (folders["ir"] / "c.png").unlink()
    # no fused image pairs with the sources at all
    _write(tmp_path / "other" / "z.png", np.zeros(SIZE, np.uint8))
    code, err = _run(
        [*base, "--fused", f"x={tmp_path / 'other'}", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "no fused image has a source pair" in err
    # never write into an input folder
    code, err = _run(
        [*base, "--fused", f"avg={folders['avg']}", "--out", str(folders["avg"] / "x")], capsys
    )
    assert code == 2 and "inside input folder" in err
    # size mismatch without --resize, then resized
    _write(folders["copy"] / "a.bmp", np.zeros((24, 32), np.uint8))
    code, err = _run(
        [*base, "--fused", f"copy={folders['copy']}", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "a: fused 'copy' is 32x24" in err and "--resize" in err
    code, _ = _run(
        [
            *base,
            "--fused",
            f"copy={folders['copy']}",
            "--out",
            str(tmp_path / "o"),
            "--resize",
            "fused",
        ],
        capsys,
    )
    assert code == 0
    code, err = _run([*base, "--fused", f"copy={folders['copy']}", "--resize", "64by48"], capsys)
    assert code == 2 and "--resize must be WxH" in err
    code, err = _run([*base, "--fused", "=x"], capsys)
    assert code == 2 and "NAME=DIR" in err


def test_resize_modes(folders: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small"
    for stem in ("a", "b"):
        f = _read(folders["avg"] / f"{stem}.png")
        _write(small / f"{stem}.png", cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA))
    with pytest.raises(PairError, match="pass --resize"):
        evaluate_folders(folders["ir"], folders["vi"], {"s": small}, "float", progress=False)
    res = evaluate_folders(
        folders["ir"], folders["vi"], {"s": small}, "float", resize="fused", progress=False
    )
    ir = _read(folders["ir"] / "a.png")
    vi = to_gray_u8(_read(folders["vi"] / "a.png"), "float")
    up = cv2.resize(_read(small / "a.png"), (64, 48), interpolation=cv2.INTER_LINEAR)
    assert res.values["float"]["s"]["a"] == compute(ir, vi, up, "float")
    res = evaluate_folders(
        folders["ir"],
        folders["vi"],
        {"s": folders["avg"]},
        "float",
        resize=(64, 41),
        progress=False,
    )
    assert res.values["float"]["s"]["a"]["EN"] > 0
    with pytest.raises(Exception, match="VIF needs"):
        evaluate_folders(
            folders["ir"], folders["vi"], {"s": small}, "float", resize="source", progress=False
        )
    assert parse_resize("640x480") == (640, 480) and parse_resize("source") == "source"


def test_write_tables_returns_paths(folders: dict[str, Path], tmp_path: Path) -> None:
    res = evaluate_folders(
        folders["ir"], folders["vi"], {"avg": folders["avg"]}, ["paper", "float"], progress=False
    )
    paths = write_tables(res, summarise(res), tmp_path / "t")
    assert len(paths) == 8 and all(p.is_file() for p in paths)


DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "msrs"


def test_evaluate_real_msrs_pair(tmp_path: Path) -> None:
    if not (DATA / "ir").is_dir():
        pytest.skip(f"{DATA} not available")
    stem = "00008N"
    fused_dir = tmp_path / "fused"
    ir = _read(DATA / "ir" / f"{stem}.png")
    vi = to_gray_u8(_read(DATA / "vi" / f"{stem}.png"), "paper")
    _write(fused_dir / f"{stem}.png", np.maximum(ir, vi))
    res = evaluate_folders(DATA / "ir", DATA / "vi", {"max": fused_dir}, "paper", progress=False)
    assert res.stems == (stem,) and len(res.skipped_sources) == 15
    assert res.values["paper"]["max"][stem] == compute(ir, vi, np.maximum(ir, vi), "paper")


def _argv(folders: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--ir",
        str(folders["ir"]),
        "--vi",
        str(folders["vi"]),
        "--fused",
        f"avg={folders['avg']}",
        "--fused",
        str(folders["copy"]),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_metrics_selection(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sel"
    assert main(_argv(folders, out, "--metrics", "Nabf,EN,FMI_pixel")) == 0
    capsys.readouterr()
    with (out / "per_image_paper.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[2:5] == ["Nabf", "EN", "FMI_pixel"] and "MI" not in rows[0]
    ir = _read(folders["ir"] / "a.png")
    vi = to_gray_u8(_read(folders["vi"] / "a.png"), "paper")
    f = _read(folders["avg"] / "a.png")
    want = compute(ir, vi, f, "paper", metrics=["Nabf", "EN", "FMI_pixel"])
    assert float(rows[0]["Nabf"]) == want["Nabf"]
    data = json.loads((out / "summary_paper.json").read_text())
    # Nabf is lower-is-better: the copy of a source has no artefact, so it ranks first.
    assert data["higher_is_better"]["Nabf"] is False and data["ranks"]["copy"]["Nabf"] == 1
    # Outside the block the conventions compute their default set again.
    assert "Nabf" not in compute(ir, vi, f, "paper")


def test_cli_vifb_convention(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vifb"
    assert (
        main(_argv(folders, out, "--convention", "vifb", "--metrics", "Qcv,Psnr,MEF_MS_SSIM")) == 0
    )
    printed = capsys.readouterr().out
    assert "| method | Qcv ↓ | Psnr ↑ | MEF_MS_SSIM ↑ |" in printed


def test_cli_metrics_errors(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(_argv(folders, tmp_path / "e", "--metrics", "FMI_pix,Qcb"), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "closest: FMI_pixel" in err and "Qcb (a metric of convention vifb)" in err
    assert not (tmp_path / "e").exists()


def test_cli_help_lists_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for name in ("Qcb", "Cross_entropy", "FMI_w", "Nabf_tang2022", "MEF_MS_SSIM", "SSIM"):
        assert name in text
