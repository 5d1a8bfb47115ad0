"""Fusion-quality metrics that reproduce the reference toolboxes exactly.

``compute(ir, vi, fused, convention="paper")`` returns EN, SF, SD, MI, VIF, AG, SCD, Qabf,
CC, PSNR, MSE (plus SSIM for ``cddfuse``) for one (H, W) 8-bit triple. The conventions:

* ``paper``: TANG-2022 MATLAB toolbox, the scales of MoE-Fusion Table 1 (uint8 quirks);
* ``float``: TANG-2023 MATLAB toolbox (float [0, 255]);
* ``cddfuse``: the CDDFuse Python Evaluator (float32, MI in nats, SSIM).

``compute(ir, vi, fused, convention="vifb")`` returns the 13 metrics of the VIFB toolbox
(``VIFB_METRICS``), and ``compute(..., metrics=[...])`` in any convention also computes
the ``EXTRA_METRICS`` by name: FMI (pixel/edge, DCT, wavelet), Nabf and MEF-MS-SSIM of the
TANG toolbox.

Print ``CONVENTION_DESCRIPTIONS[convention]`` with any table of values: the same metric
name means different numbers in different conventions.
"""

from __future__ import annotations

from moefusion.metrics._inputs import MetricInputError
from moefusion.metrics.api import compute, compute_batch
from moefusion.metrics.conventions import (
    ALL_CONVENTIONS,
    CONVENTION_DESCRIPTIONS,
    CONVENTIONS,
    EXTRA_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    TABLE1_METRICS,
    VIFB_METRICS,
    all_metric_names,
    describe,
)
from moefusion.metrics.gray import to_gray_u8

__all__ = [
    "ALL_CONVENTIONS",
    "CONVENTIONS",
    "CONVENTION_DESCRIPTIONS",
    "EXTRA_METRICS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "TABLE1_METRICS",
    "VIFB_METRICS",
    "MetricInputError",
    "all_metric_names",
    "compute",
    "compute_batch",
    "describe",
    "to_gray_u8",
]
