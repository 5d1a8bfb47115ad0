"""VIFB's 13 metrics, FMI, Nabf and MEF-MS-SSIM against shared/reference/metrics_extra.

Every value of the 48 cases of ``values.json`` is checked. Tolerances (relative unless
said otherwise) are those of the reference README (its section 5), per metric:

* rel 1e-9: VIFB Cross_entropy, Entropy, Mutinf, Psnr, Avg_gradient, Edge_intensity, Qabf,
  Variance, Spatial_frequency, Rmse, Ssim (integer histograms and plain float formulas);
* rel 1e-6: VIFB Qcv, FMI_dct, Nabf (all three, with an absolute floor of 1e-12 because
  Nabf can be ~1e-7) and MEF-MS-SSIM (and its scales);
* VIFB Qcb: rel 1e-6, except rel 5e-6 on the LLVIP pair 010001 (cases 18-23). That IR image
  has a large area at its minimum level, where the CSF-filtered image is FFT rounding noise
  (~1e-15) and the local contrast is a ratio of two noise values: the value depends on the
  FFT's summation order (numpy's and scipy's FFTs differ by up to 6.5e-7 there, our value
  and Octave's FFTW by up to 1.4e-6). It is the summation-order case the README allows for;
* abs 1e-6: FMI_pixel and FMI_w (README: windows decided by rounding in flat areas);
* the 12 ``*_tang2022`` FMI values (inputs on [0, 1]): abs 1e-6 as above.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moefusion.metrics import VIFB_METRICS, compute

SHARED = Path(__file__).parents[1] / ".." / "shared"
GRAY = SHARED / "reference" / "metrics"
VALUES = SHARED / "reference" / "metrics_extra" / "values.json"

if not VALUES.is_file():
    pytest.skip(f"reference values not found at {VALUES}", allow_module_level=True)

CASES: list[dict] = json.loads(VALUES.read_text())["cases"]
CASE_IDS = [
    Path(c["fused"]).parent.name.removeprefix("fused_") + "/" + Path(c["fused"]).stem for c in CASES
]
#: (relative, absolute) tolerance per metric.
TOLERANCE: dict[str, tuple[float, float]] = {
    **{m: (1e-9, 0.0) for m in VIFB_METRICS},
    "Qcb": (1e-6, 0.0),
    "Qcv": (1e-6, 0.0),
    "FMI_pixel": (0.0, 1e-6),
    "FMI_dct": (1e-6, 0.0),
    "FMI_w": (0.0, 1e-6),
    "FMI_pixel_tang2022": (0.0, 1e-6),
    "FMI_dct_tang2022": (1e-6, 0.0),
    "FMI_w_tang2022": (0.0, 1e-6),
    "Nabf": (1e-6, 1e-12),
    "Nabf_tang2023": (1e-6, 1e-12),
    "Nabf_tang2022": (1e-6, 1e-12),
    "MEF_MS_SSIM": (1e-6, 0.0),
    "MEF_SSIM_scale1": (1e-6, 0.0),
    "MEF_SSIM_scale2": (1e-6, 0.0),
    "MEF_SSIM_scale3": (1e-6, 0.0),
}
#: Cases of the LLVIP pair 010001, where Qcb depends on FFT rounding (see above).
QCB_FFT_NOISE = {i for i, c in enumerate(CASES) if Path(c["fused"]).stem == "010001"}


@cache
def _images(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    case = CASES[index]
    ir, vi, fused = (np.asarray(Image.open(GRAY / case[k])) for k in ("ir", "vi", "fused"))
    return ir, vi, fused


def _assert_close(index: int, got: dict[str, float], want: dict[str, float]) -> None:
    errors = []
    for name, ref in want.items():
        rel, abs_ = TOLERANCE[name]
        if name == "Qcb" and index in QCB_FFT_NOISE:
            rel = 5e-6
        if not math.isclose(got[name], ref, rel_tol=rel, abs_tol=abs_):
            errors.append(f"{name}: got {got[name]!r}, reference {ref!r} (rel {rel}, abs {abs_})")
    assert not errors, "; ".join(errors)


def test_every_reference_metric_has_a_tolerance() -> None:
    for case in CASES:
        for group in ("vifb", "fmi", "nabf", "msssim"):
            assert set(case[group]) <= set(TOLERANCE), group


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_vifb(index: int) -> None:
    got = compute(*_images(index), convention="vifb")
    assert tuple(got) == VIFB_METRICS
    _assert_close(index, got, CASES[index]["vifb"])


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_nabf_and_mef_ms_ssim(index: int) -> None:
    want = {**CASES[index]["nabf"], **CASES[index]["msssim"]}
    got = compute(*_images(index), metrics=list(want))
    _assert_close(index, got, want)


#: FMI cases checked by default: the DCT and wavelet features cost about 1 s of CPU per
#: feature and 640x480 image (both input ranges: 4 such calls per case), so the default
#: run checks every case's pixel feature and one case's all six values; ``-m fmi_full``
#: checks all 168 values (about 6 minutes on one core).
FMI_DEFAULT_CASES = (0,)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_fmi_pixel(index: int) -> None:
    want = {k: v for k, v in CASES[index]["fmi"].items() if k.startswith("FMI_pixel")}
    got = compute(*_images(index), convention="float", metrics=list(want))
    _assert_close(index, got, want)


@pytest.mark.parametrize("index", FMI_DEFAULT_CASES, ids=[CASE_IDS[i] for i in FMI_DEFAULT_CASES])
def test_fmi(index: int) -> None:
    want = CASES[index]["fmi"]
    got = compute(*_images(index), convention="float", metrics=list(want))
    _assert_close(index, got, want)


@pytest.mark.fmi_full
@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_fmi_full(index: int) -> None:
    want = CASES[index]["fmi"]
    got = compute(*_images(index), convention="float", metrics=list(want))
    _assert_close(index, got, want)
