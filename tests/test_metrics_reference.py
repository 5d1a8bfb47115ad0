"""The metrics against the 48 reference cases in shared/reference/metrics/values.json.

Tolerances (see shared/reference/metrics/README.md): relative 1e-6 for every value except
``paper`` Qabf, which is compared with an absolute 1e-2 (float noise of the [0, 1] Sobel
makes two faithful implementations differ by up to 5e-3). The ``cddfuse`` values were
computed from the original source files with CDDFuse's own gray conversion, so those
cases read the sources from shared/data and are skipped when it is absent.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.metrics import compute, to_gray_u8

SHARED = Path(__file__).parents[1] / ".." / "shared"
REFERENCE = SHARED / "reference" / "metrics"
VALUES = REFERENCE / "values.json"

if not VALUES.is_file():
    pytest.skip(f"reference values not found at {VALUES}", allow_module_level=True)

CASES: list[dict] = json.loads(VALUES.read_text())["cases"]
CASE_IDS = [
    Path(c["fused"]).parent.name.removeprefix("fused_") + "/" + Path(c["fused"]).stem for c in CASES
]


@cache
def _gray(rel: str) -> np.ndarray:
    return np.asarray(Image.open(REFERENCE / rel))


def _source_path(case: dict, role: str) -> Path:
    # "data/msrs/{ir,vi}/00008N.png" -> shared/data/msrs/<role>/00008N.png
    head, tail = case["source_pair"].split("{ir,vi}")
    return SHARED / head / role / tail.lstrip("/")


@cache
def _cddfuse_source(path: Path) -> np.ndarray:
    return to_gray_u8(np.asarray(Image.open(path)), "cddfuse")


@cache
def _computed(index: int, convention: str) -> dict[str, float]:
    case = CASES[index]
    fused = _gray(case["fused"])
    if convention == "cddfuse":
        paths = [_source_path(case, r) for r in ("ir", "vi")]
        if not all(p.is_file() for p in paths):
            pytest.skip(f"cddfuse case needs the original sources {paths[0].parent.parent}")
        ir, vi = (_cddfuse_source(p) for p in paths)
    else:
        ir, vi = _gray(case["ir"]), _gray(case["vi"])
    return compute(ir, vi, fused, convention)


def _assert_close(got: dict[str, float], want: dict[str, float], qabf_abs: float | None) -> None:
    errors = []
    for name, ref in want.items():
        value = got[name]
        if name == "Qabf" and qabf_abs is not None:
            ok = abs(value - ref) <= qabf_abs
        else:
            ok = math.isclose(value, ref, rel_tol=1e-6, abs_tol=0.0)
        if not ok:
            errors.append(f"{name}: got {value!r}, reference {ref!r}")
    assert not errors, "; ".join(errors)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_paper(index: int) -> None:
    got = _computed(index, "paper")
    assert set(got) == set(CASES[index]["paper"])
    _assert_close(got, CASES[index]["paper"], qabf_abs=1e-2)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_float(index: int) -> None:
    got = _computed(index, "float")
    assert set(got) == set(CASES[index]["float"])
    _assert_close(got, CASES[index]["float"], qabf_abs=None)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_cddfuse(index: int) -> None:
    got = _computed(index, "cddfuse")
    assert set(got) == set(CASES[index]["cddfuse"])
    _assert_close(got, CASES[index]["cddfuse"], qabf_abs=None)


OCTAVE = [i for i, c in enumerate(CASES) if "paper_octave" in c]


@pytest.mark.parametrize("index", OCTAVE, ids=[CASE_IDS[i] for i in OCTAVE])
def test_paper_matches_octave_running_the_original_code(index: int) -> None:
    got = _computed(index, "paper")
    _assert_close(got, CASES[index]["paper_octave"], qabf_abs=1e-2)


@pytest.mark.parametrize("role", ["ir", "vi"])
@pytest.mark.parametrize("index", range(0, len(CASES), 6), ids=CASE_IDS[::6])
def test_paper_gray_conversion_matches_reference_images(index: int, role: str) -> None:
    path = _source_path(CASES[index], role)
    if not path.is_file():
        pytest.skip(f"source image {path} not available")
    got = to_gray_u8(np.asarray(Image.open(path)), "paper")
    np.testing.assert_array_equal(got, _gray(CASES[index][role]))
