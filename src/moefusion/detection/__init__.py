"""Detection evaluation of fused images: the protocol of the paper's Table 3 (sec. 4.6).

1. Train a torchvision Faster R-CNN on the labelled *training* pairs, using the infrared
   and the visible image of every pair as two training images.
2. Run it on the *test* pairs' visible images, infrared images and the fused images of
   every method.
3. Report per-class AP at IoU 0.5 and mAP (COCO 101-point interpolated AP, computed by
   torchmetrics' ``MeanAveragePrecision``), one row per input.

All inputs are gray (visible colour images are reduced to BT.601 luma, fused images too)
and repeated to three channels, so the detector sees the same kind of image for every row.
Ground truth is the pair's labels (for MSRS-style layouts the ``infrared`` label set, the
data layer's default), the same boxes for every row of a test pair.

Modules, one job each:

- :mod:`~moefusion.detection.config`: :class:`DetectConfig`, the typed run config;
- :mod:`~moefusion.detection.selection`: which pairs train and test, the rows' images;
- :mod:`~moefusion.detection.images`: reading and resizing gray images;
- :mod:`~moefusion.detection.detector`: building, saving and loading the detector;
- :mod:`~moefusion.detection.train`: training it;
- :mod:`~moefusion.detection.scoring`: detections and AP / mAP;
- :mod:`~moefusion.detection.bootstrap`: AP from matched detections, paired bootstrap
  confidence intervals over the test images;
- :mod:`~moefusion.detection.table`: the result table;
- :mod:`~moefusion.detection.protocol`: the steps of a run, :func:`run_detection_eval`.
"""

from __future__ import annotations

from moefusion.detection.config import (
    DataConfig,
    DetectConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    check_classes,
    resolve_device,
)
from moefusion.detection.detector import (
    DETECTOR_FORMAT,
    build_detector,
    detector_config,
    load_detector,
    read_detector_info,
    save_detector,
)
from moefusion.detection.images import load_gray_image, prepare_image
from moefusion.detection.protocol import (
    Bootstrap,
    Detector,
    bootstrap_table_rows,
    effective_config,
    run_detection_eval,
    score_rows,
    train_or_load,
    write_results,
)
from moefusion.detection.scoring import average_precision, detect
from moefusion.detection.selection import (
    INFRARED,
    VISIBLE,
    DatasetSelection,
    DetectionImage,
    evaluation_inputs,
    resolve_fused_images,
    select_datasets,
    training_images,
)
from moefusion.detection.table import INTERPOLATION, DetectionTable, DifferenceRow, TableRow
from moefusion.detection.train import train_detector

__all__ = [
    "DETECTOR_FORMAT",
    "INFRARED",
    "INTERPOLATION",
    "VISIBLE",
    "Bootstrap",
    "DataConfig",
    "DatasetSelection",
    "DetectConfig",
    "DetectionImage",
    "DetectionTable",
    "Detector",
    "DifferenceRow",
    "EvalConfig",
    "ModelConfig",
    "TableRow",
    "TrainConfig",
    "average_precision",
    "bootstrap_table_rows",
    "build_detector",
    "check_classes",
    "detect",
    "detector_config",
    "effective_config",
    "evaluation_inputs",
    "load_detector",
    "load_gray_image",
    "prepare_image",
    "read_detector_info",
    "resolve_device",
    "resolve_fused_images",
    "run_detection_eval",
    "save_detector",
    "score_rows",
    "select_datasets",
    "train_detector",
    "train_or_load",
    "training_images",
    "write_results",
]
