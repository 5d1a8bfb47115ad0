"""Source share (the two halves of Qabf): copies, symmetry, and agreement with Qabf."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moefusion.metrics import MetricInputError
from moefusion.metrics.qabf import qabf
from moefusion.metrics.source_share import Q_MAX, source_share


def _sources(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Infrared: warm blobs on a smooth background; visible: textured stripes. Both 8-bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:80].astype(np.float64)
    ir = 40 + 0.5 * x
    for cy, cx in ((20, 20), (40, 60)):
        ir += 150 * (((y - cy) ** 2 + (x - cx) ** 2) < 64)
    vi = 100 + 60 * np.sin(x / 3.0) * np.cos(y / 5.0) + rng.normal(0, 4, x.shape)
    return (np.clip(ir, 0, 255).astype(np.uint8), np.clip(vi, 0, 255).astype(np.uint8))


def test_a_copied_source_is_kept_entirely_and_the_other_less() -> None:
    ir, vi = _sources()
    s = source_share(ir, vi, ir)
    assert s.q_ir == pytest.approx(Q_MAX, abs=1e-3)
    assert s.q_vi < 0.5 * s.q_ir
    assert s.ir_share > 0.75
    assert s.vi_share == pytest.approx(1 - s.ir_share)
    v = source_share(ir, vi, vi)
    assert v.q_vi == pytest.approx(Q_MAX, abs=1e-3)
    assert v.ir_share < 0.25


def test_swapping_the_sources_swaps_the_halves() -> None:
    ir, vi = _sources(1)
    fused = ((ir.astype(np.int32) * 3 + vi) // 4).astype(np.uint8)
    a = source_share(ir, vi, fused)
    b = source_share(vi, ir, fused)
    assert (b.q_ir, b.q_vi) == pytest.approx((a.q_vi, a.q_ir), abs=1e-12)
    assert b.ir_share == pytest.approx(1 - a.ir_share, abs=1e-12)
    assert b.ir_weight == pytest.approx(1 - a.ir_weight, abs=1e-12)
    assert b.qabf == pytest.approx(a.qabf, abs=1e-12)


def test_more_infrared_in_the_mix_raises_the_infrared_share() -> None:
    ir, vi = _sources(2)
    shares = [
        source_share(ir, vi, np.round(w * ir + (1 - w) * vi.astype(np.float64)).astype(np.uint8))
        for w in (0.2, 0.5, 0.8)
    ]
    assert shares[0].ir_share < shares[1].ir_share < shares[2].ir_share


@pytest.mark.parametrize("seed", [0, 3])
def test_the_halves_recombine_to_the_float_convention_qabf(seed: int) -> None:
    ir, vi = _sources(seed)
    fused = np.maximum(ir, vi)
    s = source_share(ir, vi, fused)
    assert s.qabf == pytest.approx(qabf(ir, vi, fused), rel=1e-12)
    recombined = s.ir_weight * s.q_ir + (1 - s.ir_weight) * s.q_vi
    assert recombined == pytest.approx(s.qabf, rel=1e-12)
    assert 0 <= s.q_vi <= Q_MAX and 0 <= s.q_ir <= Q_MAX


def test_a_flat_source_has_no_half_and_no_share() -> None:
    ir, vi = _sources()
    flat = np.zeros_like(ir)  # not 90: the zero frame of the Sobel filter makes border edges
    s = source_share(flat, vi, vi)
    assert math.isnan(s.q_ir) and math.isnan(s.ir_share)
    assert s.q_vi == pytest.approx(Q_MAX, abs=1e-3)


def test_invalid_inputs_are_refused() -> None:
    ir, vi = _sources()
    with pytest.raises(MetricInputError, match="sizes differ"):
        source_share(ir, vi, ir[:10])
    with pytest.raises(MetricInputError, match="whole grey levels"):
        source_share(ir / 255.0, vi, ir)
