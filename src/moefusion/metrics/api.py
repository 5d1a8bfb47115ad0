"""Public entry points: metric values for one triple or many."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from moefusion.metrics._inputs import MetricInputError, Triple, make_triple
from moefusion.metrics.conventions import (
    MIN_SIDE,
    get_convention,
    metric_function,
    unknown_metric_message,
)


def _select(convention: str, metrics: Iterable[str] | None) -> tuple[str, ...]:
    conv = get_convention(convention)
    if metrics is None:
        return conv.metrics
    names = tuple(metrics)
    msg = unknown_metric_message(convention, names)
    if msg:
        raise MetricInputError(msg)
    return names


def _compute_triple(t: Triple, convention: str, names: Sequence[str]) -> dict[str, float]:
    fns = {m: metric_function(convention, m) for m in names}
    side = min(t.fused.shape)
    for m in names:
        if side < MIN_SIDE.get(m, 2):
            raise MetricInputError(
                f"{m} needs images of at least {MIN_SIDE[m]}x{MIN_SIDE[m]} pixels, "
                f"got {t.fused.shape[1]}x{t.fused.shape[0]}"
            )
    # Degenerate images (flat, identical to a source) give 0/0 or log(0): the metric is
    # then NaN or inf, as in the references, without numpy warnings.
    with np.errstate(divide="ignore", invalid="ignore"):
        return {m: float(fns[m](t)) for m in names}  # type: ignore[misc]


def compute(
    ir: Any,
    vi: Any,
    fused: Any,
    convention: str = "paper",
    metrics: Iterable[str] | None = None,
) -> dict[str, float]:
    """Metric values of one fused image: {metric name: value}, in the convention's order.

    ``ir``, ``vi``, ``fused``: (H, W) numpy arrays or torch tensors of the same size,
    ``uint8``, or floating point holding whole grey levels in [0, 255] (anything else,
    e.g. a [0, 1] network output, raises :class:`MetricInputError`; round it to 8 bits
    first, as the saved image would be). Colour images must go through
    :func:`moefusion.metrics.to_gray_u8` with the same ``convention`` first.
    ``metrics``: names to compute (default: all of the convention's metrics): any of the
    convention's own, plus the extra metrics that every convention computes on request
    (``FMI_pixel``, ``FMI_dct``, ``FMI_w``, ``Nabf``, ``MEF_MS_SSIM``, ...; see
    :data:`moefusion.metrics.EXTRA_METRICS`). ``convention="vifb"`` gives the 13 VIFB
    metrics (:data:`moefusion.metrics.VIFB_METRICS`).
    """
    names = _select(convention, metrics)
    return _compute_triple(make_triple(ir, vi, fused), convention, names)


def compute_batch(
    irs: Sequence[Any],
    vis: Sequence[Any],
    fuseds: Sequence[Any],
    convention: str = "paper",
    metrics: Iterable[str] | None = None,
) -> list[dict[str, float]]:
    """:func:`compute` for many triples: sequences (or (N, H, W) arrays/tensors) of equal
    length; returns one dict per triple. Images may differ in size between triples."""
    names = _select(convention, metrics)
    if not (len(irs) == len(vis) == len(fuseds)):
        raise MetricInputError(
            f"batch lengths differ: {len(irs)} ir, {len(vis)} vi, {len(fuseds)} fused"
        )
    return [
        _compute_triple(make_triple(a, b, f), convention, names)
        for a, b, f in zip(irs, vis, fuseds, strict=True)
    ]
