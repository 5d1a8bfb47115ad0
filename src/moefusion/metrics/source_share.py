"""Source share: how much of each source's edges the fused image keeps (the halves of Qabf).

Qabf (Xydeas & Petrovic 2000, :mod:`moefusion.metrics.qabf`) scores a fused image F by
how well it preserves the edges of both sources A (infrared) and B (visible):

    Qabf = sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB)

with ``Q^{XF}`` the per-pixel edge preservation (strength and orientation) of source X in
F, and ``gX`` the Sobel gradient strength of X. Splitting the sum by source gives one
number per source, each weighted by that source's own edge strength and normalised by
that source's own weights:

    q_ir = sum(Q^{AF} gA) / sum(gA),    q_vi = sum(Q^{BF} gB) / sum(gB),

so ``Qabf = (GA q_ir + GB q_vi) / (GA + GB)`` with ``GX = sum(gX)``: Qabf is the
edge-strength-weighted mean of the two halves. Each half lies in [0, :data:`Q_MAX`]
(``Q_MAX`` ~ 0.975 is reached where F copies the source's gradients exactly). The
relative **infrared share**

    ir_share = q_ir / (q_ir + q_vi)    (vi_share = 1 - ir_share)

is 0.5 when the fused image keeps both sources' edges equally well, above 0.5 when it
keeps relatively more of the infrared image. Unlike Qabf it does not depend on which
source has more edges: a night visible image with few, weak edges does not drown in the
infrared's weights. The halves are computed on [0, 255] float64 (the ``float``
convention's Qabf, which is scale-invariant), so ``qabf`` here equals
``qabf(ir, vi, fused)`` of :mod:`moefusion.metrics.qabf` up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from moefusion.metrics._inputs import make_triple
from moefusion.metrics.qabf import _DA, _KA, _TA, _TG, grey_levels, preservation_maps

#: Upper bound of the per-pixel preservation, ``Tg * Qa(equal orientation)``: a source
#: copied into the fused image gets a half within about 1e-3 of it (the original rule
#: ``G = gF`` where the strengths are equal makes ``Qg`` tend to ``Tg`` on strong edges).
Q_MAX: float = _TG * _TA / (1 + math.exp(_KA * (1 - _DA)))


@dataclass(frozen=True)
class SourceShare:
    """How much of each source one fused image keeps.

    Attributes:
        q_ir: infrared half of Qabf, ``sum(Q^{AF} gA) / sum(gA)``, in [0, Q_MAX]; NaN if
            the infrared image has no edges.
        q_vi: visible half, ``sum(Q^{BF} gB) / sum(gB)``; NaN if the visible has no edges.
        ir_share: ``q_ir / (q_ir + q_vi)`` in [0, 1]; NaN if both halves are 0 or NaN.
        qabf: Qabf of the triple (``float`` convention), the weighted mean of the halves.
        ir_weight: ``sum(gA) / (sum(gA) + sum(gB))``, the infrared's share of the edge
            strength, i.e. of Qabf's weights (a property of the sources, not of F).
    """

    q_ir: float
    q_vi: float
    ir_share: float
    qabf: float
    ir_weight: float

    @property
    def vi_share(self) -> float:
        """``1 - ir_share``."""
        return 1.0 - self.ir_share

    def as_dict(self) -> dict[str, float]:
        return {
            "q_ir": self.q_ir,
            "q_vi": self.q_vi,
            "ir_share": self.ir_share,
            "vi_share": self.vi_share,
            "qabf": self.qabf,
            "ir_weight": self.ir_weight,
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def source_share(ir: Any, vi: Any, fused: Any) -> SourceShare:
    """The :class:`SourceShare` of one (H, W) 8-bit triple (arrays or tensors, see
    :func:`moefusion.metrics.compute` for what is accepted).

    Raises:
        MetricInputError: invalid images or sizes that differ.
    """
    t = make_triple(ir, vi, fused)
    num_a, num_b, den_a, den_b = (
        float(np.sum(m)) for m in preservation_maps(t.ir, t.vi, t.fused, grey_levels())
    )
    q_ir, q_vi = _ratio(num_a, den_a), _ratio(num_b, den_b)
    total = (0.0 if math.isnan(q_ir) else q_ir) + (0.0 if math.isnan(q_vi) else q_vi)
    share = math.nan if total <= 0 or math.isnan(q_ir) or math.isnan(q_vi) else q_ir / total
    return SourceShare(
        q_ir=q_ir,
        q_vi=q_vi,
        ir_share=share,
        qabf=_ratio(num_a + num_b, den_a + den_b),
        ir_weight=_ratio(den_a, den_a + den_b),
    )
