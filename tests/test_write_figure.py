"""moefusion.figures.write_figure: atomic, format by extension, pyplot figures released."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from moefusion.errors import MoEFusionError  # noqa: E402
from moefusion.figures import write_figure  # noqa: E402


def test_writes_png_and_pdf_by_extension_and_closes_pyplot_figures(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    number = fig.number
    png = write_figure(fig, tmp_path / "sub" / "a.png", dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(number)
    bare = Figure(figsize=(2, 2))  # no pyplot, no canvas of its own
    bare.subplots().plot([0, 1])
    pdf = write_figure(bare, tmp_path / "b.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "b.pdf"]


def test_a_failed_write_keeps_the_old_file_and_says_so_in_one_line(tmp_path: Path) -> None:
    target = tmp_path / "c.png"
    target.write_bytes(b"old")
    fig = Figure()
    fig.subplots().plot([0, 1])
    with pytest.raises(MoEFusionError, match=r"cannot save figure .*c\.png") as err:
        write_figure(fig, target, dpi=-5)  # matplotlib refuses a negative dpi
    assert "\n" not in str(err.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # no temporary left behind
