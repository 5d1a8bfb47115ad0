"""AP from matched detections, and bootstrap confidence intervals over test images.

The table's AP (:func:`moefusion.detection.scoring.average_precision`, torchmetrics with
the COCO evaluator) is exact but slow: recomputing it for 1000 resamples of the test
images would take hours. The COCO AP at one IoU threshold depends on the detections only
through three things, which this module computes **once per row**:

1. per image and class, which detections are true positives (greedy matching in score
   order to the unmatched ground-truth box of highest IoU >= the threshold, exactly as
   ``pycocotools.cocoeval.COCOeval.evaluateImg``, up to 100 detections per image and
   class; boxes of negative area are ignored as COCO's area range does);
2. every detection's score (the global score order);
3. the number of ground-truth boxes per image and class.

A bootstrap resample draws the test images with replacement; an image drawn ``c`` times
contributes its detections and boxes ``c`` times. Its AP is the 101-point interpolated
AP (``COCOeval.accumulate``) of the sorted detections with weights ``c``: cumulative
weighted true/false positives, recall over the weighted box count, the precision
envelope, precision sampled at recall 0, 0.01, ..., 1. Repeating a detection ``c``
times adds intermediate points to the precision-recall curve that never change the
sampled envelope (precision rises within a run of true positives and recall is flat
within a run of false positives), so the weighted form is exact. With all weights 1 it is
the table's AP (a test checks it against torchmetrics); detections of *different*
images with exactly equal scores are ordered by image index, which is where COCO's
order of a resample could differ.

Every row is resampled with the **same** image draws (a paired bootstrap), so the
difference between two rows is computed per resample; intervals are percentile
intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_LEVEL",
    "ClassMatches",
    "Difference",
    "RowBootstrap",
    "ap_from_matches",
    "average_precision_from_matches",
    "bootstrap_counts",
    "bootstrap_rows",
    "default_comparisons",
    "match_detections",
    "percentile_interval",
]

#: Confidence level of the reported intervals.
DEFAULT_LEVEL = 0.95
#: The recall thresholds 0, 0.01, ..., 1 as torchmetrics hands them to the COCO evaluator:
#: float32 values (``torch.linspace``), so e.g. a recall of exactly 0.6 (3 of 5 boxes) does
#: not reach the threshold 0.6000000238. Kept, so that the AP equals the table's.
REC_THRS = np.array(torch.linspace(0.0, 1.00, round(1.00 / 0.01) + 1).tolist())
#: COCO's detections per image (and class) at the table's AP.
MAX_DETS = 100
#: COCO's area range "all": boxes outside it are ignored (unmatched detections) or do not
#: count (ground truth).
AREA_RANGE = (0.0, 1e5**2)


@dataclass(frozen=True)
class ClassMatches:
    """One class's detections over a row's test images, in COCO's global score order.

    Attributes:
        scores: ``[D]`` detection scores, highest first (stable: image order, then the
            per-image score order).
        tp: ``[D]`` True where the detection matched a ground-truth box.
        image: ``[D]`` index of the detection's image.
        n_gt: ``[n_images]`` ground-truth boxes of the class per image.
    """

    scores: np.ndarray
    tp: np.ndarray
    image: np.ndarray
    n_gt: np.ndarray


def _xywh(boxes: Tensor | np.ndarray) -> np.ndarray:
    # torchmetrics hands pycocotools float32 xywh boxes; pycocotools computes in double.
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    wh = torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=1)
    return wh.numpy().astype(np.float64)


def _iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[D, G]`` IoU of xywh boxes, computed like ``pycocotools.mask.iou`` (no crowd)."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    dx, dy, dw, dh = (dt[:, i : i + 1] for i in range(4))
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = dw * dh + gw * gh - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(
    ious: np.ndarray, gt_ignore: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of detections (rows, score order) to boxes (columns, ignored last).

    Returns ``(tp, matched_ignored)`` per detection, as ``COCOeval.evaluateImg`` at one
    IoU threshold without crowd boxes.
    """
    n_dt, n_gt = ious.shape
    tp = np.zeros(n_dt, dtype=bool)
    on_ignored = np.zeros(n_dt, dtype=bool)
    taken = np.zeros(n_gt, dtype=bool)
    t = min(threshold, 1 - 1e-10)
    for d in range(n_dt):
        best, m = t, -1
        for g in range(n_gt):
            if taken[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break
            # pycocotools: a later box with an equal IoU replaces the earlier one.
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            taken[m] = True
            on_ignored[d] = gt_ignore[m]
            tp[d] = not gt_ignore[m]
    return tp, on_ignored


def _outside_area(boxes_xywh: np.ndarray) -> np.ndarray:
    # COCO's area range "all" is [0, 1e10]; an inverted box has a negative area.
    area = boxes_xywh[:, 2] * boxes_xywh[:, 3]
    return (area < AREA_RANGE[0]) | (area > AREA_RANGE[1])


def match_detections(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    n_classes: int,
    *,
    iou_threshold: float = 0.5,
    max_dets: int = MAX_DETS,
) -> list[ClassMatches]:
    """Match every image's detections once; one :class:`ClassMatches` per class index.

    ``predictions`` and ``targets`` are :func:`~moefusion.detection.scoring.average_precision`'s
    inputs (per image ``boxes`` xyxy, ``labels``, and ``scores`` for predictions).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    per_class: list[dict[str, list[np.ndarray]]] = [
        {"scores": [], "tp": [], "image": []} for _ in range(n_classes)
    ]
    n_gt = np.zeros((n_classes, len(targets)), dtype=np.int64)
    for i, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        p_boxes = _xywh(pred["boxes"])
        p_labels = torch.as_tensor(pred["labels"]).reshape(-1).numpy()
        # Scores as pycocotools sees them: float32 values.
        p_scores = (
            torch.as_tensor(pred["scores"], dtype=torch.float32).reshape(-1).numpy()
        ).astype(np.float64)
        g_boxes = _xywh(target["boxes"])
        g_labels = torch.as_tensor(target["labels"]).reshape(-1).numpy()
        for c in range(n_classes):
            gt = g_boxes[g_labels == c]
            gt_ignore = _outside_area(gt)
            gt_order = np.argsort(gt_ignore, kind="mergesort")
            gt, gt_ignore = gt[gt_order], gt_ignore[gt_order]
            n_gt[c, i] = int((~gt_ignore).sum())
            sel = np.flatnonzero(p_labels == c)
            if len(sel) == 0:
                continue
            order = sel[np.argsort(-p_scores[sel], kind="mergesort")][:max_dets]
            tp, on_ignored = _match(_iou(p_boxes[order], gt), gt_ignore, iou_threshold)
            # Ignored detections count neither as true nor as false positives.
            keep = ~(on_ignored | (~tp & _outside_area(p_boxes[order])))
            per_class[c]["scores"].append(p_scores[order][keep])
            per_class[c]["tp"].append(tp[keep])
            per_class[c]["image"].append(np.full(int(keep.sum()), i, dtype=np.int64))
    out: list[ClassMatches] = []
    for c in range(n_classes):
        parts = per_class[c]
        if parts["scores"]:
            scores = np.concatenate(parts["scores"])
            tp = np.concatenate(parts["tp"])
            image = np.concatenate(parts["image"])
        else:
            scores, tp, image = np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64)
        order = np.argsort(-scores, kind="mergesort")
        out.append(ClassMatches(scores[order], tp[order], image[order], n_gt[c]))
    return out


def ap_from_matches(
    matches: ClassMatches, counts: np.ndarray | None = None, *, chunk: int = 64
) -> np.ndarray:
    """COCO 101-point AP of one class, per resample.

    Args:
        matches: the class's matched detections (:func:`match_detections`).
        counts: ``[B, n_images]`` how often each image is drawn in each of ``B``
            resamples (``[n_images]`` for one; None: every image once).
        chunk: resamples computed at once (bounds the ``[chunk, D]`` work arrays).

    Returns:
        ``[B]`` AP as fractions (a 0-d array for 1-d ``counts`` or None), NaN where the
        resample holds no ground-truth box of the class.
    """
    n_images = len(matches.n_gt)
    single = counts is None or np.ndim(counts) == 1
    w_img = np.ones((1, n_images), np.int64) if counts is None else np.atleast_2d(counts)
    w_img = w_img.astype(np.int64)
    ap = np.concatenate(
        [_ap_chunk(matches, w_img[i : i + chunk]) for i in range(0, len(w_img), chunk)]
    )
    return ap[0] if single else ap


def _ap_chunk(matches: ClassMatches, w_img: np.ndarray) -> np.ndarray:
    n_pos = w_img @ matches.n_gt  # [B]
    ap = np.full(len(w_img), np.nan)
    has_gt = n_pos > 0
    if matches.scores.size == 0:
        ap[has_gt] = 0.0
        return ap
    w = w_img[:, matches.image]  # [B, D]
    tp_sum = np.cumsum(np.where(matches.tp, w, 0), axis=1).astype(float)
    fp_sum = np.cumsum(np.where(matches.tp, 0, w), axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = tp_sum / n_pos[:, None]
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    # Precision envelope: non-increasing in recall (maximum from the right).
    env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    n_dt = rc.shape[1]
    for b in np.flatnonzero(has_gt):
        inds = np.searchsorted(rc[b], REC_THRS, side="left")
        q = np.where(inds < n_dt, env[b, np.minimum(inds, n_dt - 1)], 0.0)
        ap[b] = np.mean(q)
    return ap


def average_precision_from_matches(
    matches: Sequence[ClassMatches], classes: Sequence[str]
) -> dict[str, Any]:
    """Per-class AP and mAP of the full test set, in ``average_precision``'s form."""
    values = [float(ap_from_matches(m)) for m in matches]
    ap = {c: None if np.isnan(v) else v for c, v in zip(classes, values, strict=True)}
    valid = [v for v in ap.values() if v is not None]
    return {"ap": ap, "map": float(np.mean(valid)) if valid else None}


def bootstrap_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, n_images]`` draw counts: each resample draws ``n_images`` images
    with replacement (numpy ``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(n_resamples, n_images))
    counts = np.zeros((n_resamples, n_images), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1)
    return counts


def _map_samples(per_class: np.ndarray) -> np.ndarray:
    """``[B]`` mean over the classes with ground truth in each resample (NaN: none)."""
    valid = ~np.isnan(per_class)
    n = valid.sum(axis=0)
    total = np.where(valid, per_class, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of the finite ``samples`` (NaN, NaN if none)."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class RowBootstrap:
    """One row's bootstrap: point estimates (full test set) and percentile intervals,
    fractions (not percent).

    Attributes:
        name: the row.
        ap: per-class AP of the full test set (None: no ground truth).
        map: mAP of the full test set.
        ap_ci: per-class interval.
        map_ci: the mAP's interval.
        map_samples: ``[B]`` the mAP of every resample.
    """

    name: str
    ap: dict[str, float | None]
    map: float | None
    ap_ci: dict[str, tuple[float, float] | None]
    map_ci: tuple[float, float] | None
    map_samples: np.ndarray


@dataclass(frozen=True)
class Difference:
    """mAP of ``row`` minus mAP of ``reference`` (fractions), paired over the resamples.

    Attributes:
        row, reference: row names.
        diff: the difference on the full test set.
        ci: its percentile interval.
        share_positive: fraction of the resamples where ``row`` is above ``reference``.
    """

    row: str
    reference: str
    diff: float
    ci: tuple[float, float]
    share_positive: float


def default_comparisons(names: Sequence[str], visible: str, infrared: str) -> list[tuple[str, str]]:
    """The differences Table 3 claims: every fused row against Infrared and against
    Visible, and Infrared against Visible."""
    pairs: list[tuple[str, str]] = []
    if visible in names and infrared in names:
        pairs.append((infrared, visible))
    for name in names:
        if name in (visible, infrared):
            continue
        pairs.extend((name, ref) for ref in (infrared, visible) if ref in names)
    return pairs


def bootstrap_rows(
    matches: Mapping[str, Sequence[ClassMatches]],
    classes: Sequence[str],
    *,
    n_resamples: int,
    seed: int,
    comparisons: Sequence[tuple[str, str]] = (),
    level: float = DEFAULT_LEVEL,
) -> tuple[list[RowBootstrap], list[Difference]]:
    """Paired bootstrap of every row's AP and mAP and of the ``comparisons`` (row, ref).

    Every row must have the same test images (same ``n_gt``); the same ``n_resamples``
    draws (:func:`bootstrap_counts` with ``seed``) serve every row.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    names = list(matches)
    if not names:
        return [], []
    n_images = len(matches[names[0]][0].n_gt)
    counts = bootstrap_counts(n_images, n_resamples, seed)
    rows: list[RowBootstrap] = []
    samples: dict[str, np.ndarray] = {}
    for name in names:
        m = matches[name]
        if len(m) != len(classes):
            raise ValueError(f"row {name}: {len(m)} classes of matches for {len(classes)}")
        full = average_precision_from_matches(m, classes)
        per_class = np.stack([ap_from_matches(cm, counts) for cm in m])  # [C, B]
        map_samples = _map_samples(per_class)
        samples[name] = map_samples
        ap_ci = {
            c: None if full["ap"][c] is None else percentile_interval(per_class[k], level)
            for k, c in enumerate(classes)
        }
        rows.append(
            RowBootstrap(
                name,
                full["ap"],
                full["map"],
                ap_ci,
                None if full["map"] is None else percentile_interval(map_samples, level),
                map_samples,
            )
        )
    by_name = {r.name: r for r in rows}
    diffs: list[Difference] = []
    for row, ref in comparisons:
        if row not in by_name or ref not in by_name:
            raise ValueError(f"comparison {row} - {ref}: no such row (rows: {', '.join(names)})")
        a, b = by_name[row].map, by_name[ref].map
        if a is None or b is None:
            continue
        d = samples[row] - samples[ref]
        finite = d[np.isfinite(d)]
        diffs.append(
            Difference(
                row,
                ref,
                a - b,
                percentile_interval(d, level),
                float(np.mean(finite > 0)) if finite.size else float("nan"),
            )
        )
    return rows, diffs
