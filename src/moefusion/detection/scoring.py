"""Scoring: running the detector on a row's images and per-class AP / mAP at IoU 0.5."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from moefusion.detection.images import load_gray_image, prepare_image, scale_boxes
from moefusion.detection.selection import DetectionImage

__all__ = ["average_precision", "detect", "map_backend", "targets_of"]


@torch.no_grad()
def detect(
    model: GeneralizedRCNN,
    images: Sequence[DetectionImage],
    *,
    image_size: int,
    batch_size: int = 4,
    progress: bool = False,
    desc: str = "detect",
) -> list[dict[str, Tensor]]:
    """Run the detector; boxes come back in original pixels, labels 0-based class indices.

    Returns one ``{"boxes": [N, 4], "scores": [N], "labels": [N]}`` per image.
    """
    from tqdm.auto import tqdm

    model.eval()
    out: list[dict[str, Tensor]] = []
    for start in tqdm(
        range(0, len(images), batch_size),
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        chunk = images[start : start + batch_size]
        prepared = [prepare_image(load_gray_image(im), image_size) for im in chunk]
        device = next(model.parameters()).device
        preds = model([g.expand(3, -1, -1).to(device) for g, _ in prepared])
        for pred, (_, (sx, sy)) in zip(preds, prepared, strict=True):
            out.append(
                {
                    "boxes": scale_boxes(pred["boxes"].cpu(), 1.0 / sx, 1.0 / sy),
                    "scores": pred["scores"].cpu(),
                    "labels": pred["labels"].cpu() - 1,
                }
            )
    return out


def map_backend() -> str:
    """The COCO evaluation backend torchmetrics uses: faster_coco_eval when installed."""
    import importlib.util

    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def average_precision(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    classes: Sequence[str],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Per-class AP and mAP at one IoU threshold (COCO 101-point interpolation).

    ``predictions``: per image ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``;
    ``targets``: per image ``boxes [K, 4]``, ``labels [K]``; labels are indices into
    ``classes``. Returns ``{"ap": {class: float | None}, "map": float | None}`` as
    fractions; a class without ground-truth boxes gets None and is left out of the mAP.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        iou_thresholds=[float(iou_threshold)],
        class_metrics=True,
        backend=map_backend(),
    )

    def as_input(d: Mapping[str, Tensor], with_scores: bool) -> dict[str, Tensor]:
        item = {
            "boxes": torch.as_tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(d["labels"], dtype=torch.int64).reshape(-1),
        }
        if with_scores:
            item["scores"] = torch.as_tensor(d["scores"], dtype=torch.float32).reshape(-1)
        return item

    metric.update([as_input(p, True) for p in predictions], [as_input(t, False) for t in targets])
    with warnings.catch_warnings():
        # torchmetrics warns about many detections per image; 100 is our cap too.
        warnings.simplefilter("ignore", UserWarning)
        result = metric.compute()
    seen = [int(c) for c in torch.atleast_1d(result["classes"]).tolist()]
    per_class = torch.atleast_1d(result["map_per_class"]).tolist()
    by_index = dict(zip(seen, per_class, strict=True))
    ap: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        v = by_index.get(i)
        ap[name] = None if v is None or v < 0 else float(v)
    valid = [v for v in ap.values() if v is not None]
    total = float(result["map"])
    return {"ap": ap, "map": total if valid and total >= 0 else None}


def targets_of(images: Sequence[DetectionImage]) -> list[dict[str, Tensor]]:
    """The ground truth of ``images`` in :func:`average_precision`'s form."""
    return [
        {"boxes": torch.from_numpy(im.boxes), "labels": torch.from_numpy(im.labels)}
        for im in images
    ]
