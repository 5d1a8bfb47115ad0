"""The protocol of the paper's Table 3, step by step.

:func:`run_detection_eval` selects the pairs and the rows' images, then runs three steps:
:func:`train_or_load` (train a detector on the training pairs, or reuse a saved one),
:func:`score_rows` (AP per class and mAP for every row) and :func:`write_results`
(the table files). :func:`effective_config` decides, before anything is read, which
classes and image size the run uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from moefusion.data.pairs import format_names
from moefusion.detection.bootstrap import (
    DEFAULT_LEVEL,
    average_precision_from_matches,
    bootstrap_rows,
    default_comparisons,
    match_detections,
)
from moefusion.detection.config import DetectConfig, resolve_device
from moefusion.detection.detector import (
    detector_config,
    detector_files,
    load_detector,
    read_detector_info,
    save_detector,
)
from moefusion.detection.scoring import average_precision, detect, map_backend, targets_of
from moefusion.detection.selection import (
    INFRARED,
    VISIBLE,
    DatasetSelection,
    DetectionImage,
    evaluation_inputs,
    pair_keys,
    select_datasets,
    training_images,
)
from moefusion.detection.table import (
    INTERPOLATION,
    DetectionTable,
    DifferenceRow,
    TableRow,
    percent,
)
from moefusion.detection.train import train_detector
from moefusion.errors import MoEFusionError

__all__ = [
    "RESUME_FILE",
    "Bootstrap",
    "Detector",
    "bootstrap_table_rows",
    "effective_config",
    "run_detection_eval",
    "score_rows",
    "train_or_load",
    "write_results",
]


#: The resume checkpoint a training run keeps in its output folder until it is done.
RESUME_FILE = "detector-resume.pt"


@dataclass
class Detector:
    """A detector ready to score rows.

    Attributes:
        model: the detector, in eval mode on the run's device.
        path: its ``.safetensors`` file.
        trained_here: trained by this run (False: loaded with ``--detector``).
        train_seconds: training time (0 when loaded).
    """

    model: GeneralizedRCNN
    path: Path
    trained_here: bool
    train_seconds: float = 0.0


@dataclass(frozen=True)
class Bootstrap:
    """Bootstrap confidence intervals over the test images (``--bootstrap``).

    Attributes:
        n_resamples: resamples of the test images (0: no intervals).
        seed: seed of the draws (numpy ``default_rng``).
        level: confidence level of the percentile intervals.
    """

    n_resamples: int = 0
    seed: int = 0
    level: float = DEFAULT_LEVEL


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for the block; restored afterwards (it is process-wide).

    On a shared machine one thread per process beats oversubscribed OpenMP spinning by up
    to 10x.
    """
    if not threads:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def effective_config(
    config: DetectConfig, detector: str | Path | None
) -> tuple[DetectConfig, dict[str, Any] | None]:
    """The run's config and, with a saved ``detector``, its sidecar.

    A saved detector fixes the classes (they must equal the config's, case-insensitively;
    its spelling is kept), the image size (it is tested at the size it was trained at;
    a sidecar without ``data.image_size`` means the default) and the model settings.
    Checked before any model is built, so a wrong file fails fast.
    """
    if detector is None:
        return config, None
    info = read_detector_info(detector)
    det_classes = list(info["classes"])
    classes = config.classes
    if [c.lower() for c in det_classes] != [c.lower() for c in classes]:
        raise MoEFusionError(
            f"detector {detector} was trained for classes {','.join(det_classes)}, "
            f"not {','.join(classes)}; pass --classes {','.join(det_classes)}"
        )
    saved = detector_config(info, detector)
    data = dataclasses.replace(
        config.data, classes=tuple(det_classes), image_size=saved.data.image_size
    )
    # the detector is rebuilt from its saved model settings, so the bootstrap's matching
    # (model.box_detections_per_img) reads the same ones
    return dataclasses.replace(config, data=data, model=saved.model), info


def train_or_load(
    config: DetectConfig,
    train_sel: Sequence[DatasetSelection],
    test_images: Sequence[DetectionImage],
    *,
    out_dir: str | Path,
    detector: str | Path | None = None,
    info: Mapping[str, Any] | None = None,
    split_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> Detector:
    """Train a detector on ``train_sel`` and save it to ``out_dir``, or load ``detector``.

    A loaded detector must not have been trained on any of ``test_images``' pairs
    (``info`` is its sidecar, from :func:`effective_config`). Training keeps a resume
    checkpoint in ``out_dir/`` :data:`RESUME_FILE` until the detector is saved; with
    ``resume`` an existing one is continued.
    """
    if detector is not None:
        info = info if info is not None else read_detector_info(detector)
        leaked = sorted(pair_keys(test_images) & set(info.get("train_pairs", [])))
        if leaked:
            raise MoEFusionError(
                f"detector {detector} was trained on {len(leaked)} of the test pairs: "
                f"{format_names(leaked)}"
            )
        model, _ = load_detector(detector)
        model.to(resolve_device(config.device))
        log(f"reusing detector {detector} (no training)")
        return Detector(model, detector_files(detector)[0], trained_here=False)

    images = training_images(train_sel)
    log(
        f"training on {len(images)} images ({len(images) // 2} labelled pairs: "
        + ", ".join(f"{s.name} {len(s.labelled)}" for s in train_sel)
        + ")"
    )
    start = time.perf_counter()
    checkpoint = Path(out_dir) / RESUME_FILE
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if resume and checkpoint.is_file():
        log(f"resuming the detector training from {checkpoint}")
    model, history = train_detector(
        images, config, progress=progress, checkpoint=checkpoint, resume=resume
    )
    seconds = time.perf_counter() - start
    path, _ = save_detector(
        model,
        Path(out_dir) / "detector.safetensors",
        config,
        {
            "classes": config.classes,
            "train_pairs": sorted(pair_keys(images)),
            "history": history,
            "train_seconds": round(seconds, 1),
            "split": split_name,
        },
    )
    checkpoint.unlink(missing_ok=True)
    log(f"detector saved to {path} ({seconds / 60:.1f} min)")
    return Detector(model, path, trained_here=True, train_seconds=seconds)


def score_rows(
    model: GeneralizedRCNN,
    rows_in: Mapping[str, Sequence[DetectionImage]],
    config: DetectConfig,
    *,
    progress: bool = True,
    predictions: dict[str, list[dict[str, Tensor]]] | None = None,
) -> list[TableRow]:
    """One :class:`TableRow` (AP in percent) per row of ``rows_in``, in its order.

    Every row has the same pairs and boxes; images are tested at ``data.image_size``.
    ``predictions``, when given, receives every row's detections (for the bootstrap).
    """
    rows: list[TableRow] = []
    targets = None
    for name, images in rows_in.items():
        preds = detect(
            model,
            images,
            image_size=config.data.image_size,
            batch_size=config.eval.batch_size,
            progress=progress,
            desc=name,
        )
        if predictions is not None:
            predictions[name] = preds
        if targets is None:
            targets = targets_of(images)
        scores = average_precision(
            preds, targets, config.classes, iou_threshold=config.eval.iou_threshold
        )
        rows.append(
            TableRow(
                name,
                {c: percent(v) for c, v in scores["ap"].items()},
                percent(scores["map"]),
                len(images),
            )
        )
    return rows


def bootstrap_table_rows(
    rows: Sequence[TableRow],
    predictions: Mapping[str, Sequence[Mapping[str, Tensor]]],
    test_images: Sequence[DetectionImage],
    config: DetectConfig,
    boot: Bootstrap,
) -> tuple[list[TableRow], list[DifferenceRow], dict[str, Any]]:
    """Add paired-bootstrap intervals to ``rows`` and the differences Table 3 claims.

    Detections are matched to the ground truth once per row; each resample of the test
    images recomputes the AP from the matches (:mod:`moefusion.detection.bootstrap`).
    Returns the rows with intervals, the differences (every fused row against Infrared and
    Visible, Infrared against Visible; percent points) and the bootstrap's metadata,
    which records how far the matches' AP on the full test set is from the table's
    (torchmetrics) AP.
    """
    classes = config.classes
    targets = targets_of(test_images)
    matches = {
        r.name: match_detections(
            predictions[r.name],
            targets,
            len(classes),
            iou_threshold=config.eval.iou_threshold,
            max_dets=config.model.box_detections_per_img,
        )
        for r in rows
    }
    names = [r.name for r in rows]
    boots, diffs = bootstrap_rows(
        matches,
        classes,
        n_resamples=boot.n_resamples,
        seed=boot.seed,
        comparisons=default_comparisons(names, VISIBLE, INFRARED),
        level=boot.level,
    )
    check = 0.0
    for r in rows:
        full = average_precision_from_matches(matches[r.name], classes)
        for c in classes:
            a, b = r.ap[c], percent(full["ap"][c])
            if (a is None) != (b is None):
                check = float("inf")
            elif a is not None and b is not None:
                check = max(check, abs(a - b))

    def pct(ci: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if ci is None else (round(100 * ci[0], 4), round(100 * ci[1], 4))

    out_rows = [
        dataclasses.replace(r, map_ci=pct(b.map_ci), ap_ci={c: pct(v) for c, v in b.ap_ci.items()})
        for r, b in zip(rows, boots, strict=True)
    ]
    out_diffs = [
        DifferenceRow(
            d.row,
            d.reference,
            round(100 * d.diff, 4),
            (round(100 * d.ci[0], 4), round(100 * d.ci[1], 4)),
            round(d.share_positive, 4),
        )
        for d in diffs
    ]
    meta = {
        "n_resamples": boot.n_resamples,
        "seed": boot.seed,
        "level": boot.level,
        "method": "paired percentile bootstrap over test images; AP recomputed from "
        "detections matched once per row",
        "max_abs_ap_diff_vs_table": round(check, 6),
    }
    return out_rows, out_diffs, meta


def write_results(
    rows: Sequence[TableRow],
    test_images: Sequence[DetectionImage],
    config: DetectConfig,
    detector: Detector,
    *,
    out_dir: str | Path,
    fused: Mapping[str, str | Path],
    split_name: str | None = None,
    timings: Mapping[str, float] | None = None,
    differences: Sequence[DifferenceRow] = (),
    bootstrap: Mapping[str, Any] | None = None,
) -> DetectionTable:
    """The :class:`DetectionTable` with its footer counts and run metadata, written to
    ``out_dir`` (``table.md``, ``table.csv``, ``table.json``).

    ``test_images`` are one row's images (their pairs and boxes are every row's);
    ``timings`` holds ``eval_seconds`` and ``total_seconds``.
    """
    classes = config.classes
    labels = [im.labels for im in test_images] or [np.zeros(0, np.int64)]
    gt = np.bincount(np.concatenate(labels), minlength=len(classes))
    by_ds: dict[str, int] = {}
    for im in test_images:
        by_ds[im.dataset] = by_ds.get(im.dataset, 0) + 1
    times = dict(timings or {})
    table = DetectionTable(
        classes=classes,
        rows=list(rows),
        meta={
            "iou_threshold": config.eval.iou_threshold,
            "interpolation": INTERPOLATION,
            "backend": map_backend(),
            "n_test_pairs": len(test_images),
            "test_pairs_by_dataset": by_ds,
            "gt_boxes": {c: int(n) for c, n in zip(classes, gt.tolist(), strict=True)},
            "fused": {k: str(v) for k, v in fused.items()},
            "split": split_name,
            "detector": str(detector.path),
            "trained_here": detector.trained_here,
            "image_size": config.data.image_size,
            "seed": config.seed,
            "train_seconds": round(detector.train_seconds, 1),
            "eval_seconds": round(times.get("eval_seconds", 0.0), 1),
            "total_seconds": round(times.get("total_seconds", 0.0), 1),
            **({"bootstrap": dict(bootstrap)} if bootstrap else {}),
        },
        differences=list(differences),
    )
    table.write(out_dir)
    return table


def run_detection_eval(
    train_dirs: Sequence[str | Path],
    test_dirs: Sequence[str | Path],
    fused: Mapping[str, str | Path],
    config: DetectConfig | Mapping[str, Any],
    *,
    out_dir: str | Path,
    split: Mapping[str, Any] | None = None,
    split_name: str | None = None,
    detector: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    bootstrap: Bootstrap | None = None,
    resume: bool = False,
) -> DetectionTable:
    """The whole protocol: select pairs, train (or load) the detector, evaluate every row.

    Writes ``detector.safetensors`` + ``detector.json`` (when trained) and the table files
    to ``out_dir``. With ``detector`` the saved model is reused and nothing is trained; its
    classes must equal the config's ``data.classes`` and its training pairs must not be
    test pairs. ``config`` is a :class:`DetectConfig` or its dict form. With
    ``bootstrap`` (``n_resamples > 0``) every row gets a confidence interval and the table
    the differences of :func:`bootstrap_table_rows`. ``resume`` continues a killed
    training run from its checkpoint in ``out_dir`` (:func:`train_or_load`).
    """
    t0 = time.perf_counter()
    cfg = DetectConfig.coerce(config)
    with _torch_threads(cfg.threads):
        cfg, info = effective_config(cfg, detector)
        if detector is None and not train_dirs:
            raise MoEFusionError("give --train folders, or --detector to reuse a trained detector")
        train_sel, test_sel = select_datasets(
            train_dirs,
            test_dirs,
            classes=cfg.classes,
            split=split,
            class_map=cfg.data.class_map,
            label_set=cfg.data.label_set,
        )
        # Resolved before training, so a missing fused image fails fast.
        rows_in = evaluation_inputs(test_sel, fused)
        test_images = rows_in[VISIBLE]
        trained = train_or_load(
            cfg,
            train_sel,
            test_images,
            out_dir=out_dir,
            detector=detector,
            info=info,
            split_name=split_name,
            progress=progress,
            log=log,
            resume=resume,
        )
        t_eval = time.perf_counter()
        boot = bootstrap if bootstrap is not None and bootstrap.n_resamples > 0 else None
        preds: dict[str, list[dict[str, Tensor]]] | None = {} if boot else None
        rows = score_rows(trained.model, rows_in, cfg, progress=progress, predictions=preds)
        differences: list[DifferenceRow] = []
        boot_meta: dict[str, Any] | None = None
        if boot is not None and preds is not None:
            t_boot = time.perf_counter()
            rows, differences, boot_meta = bootstrap_table_rows(rows, preds, test_images, cfg, boot)
            boot_meta["seconds"] = round(time.perf_counter() - t_boot, 1)
            log(f"bootstrap: {boot.n_resamples} resamples in {boot_meta['seconds']} s")
        eval_seconds = time.perf_counter() - t_eval
        return write_results(
            rows,
            test_images,
            cfg,
            trained,
            out_dir=out_dir,
            fused=fused,
            split_name=split_name,
            timings={
                "eval_seconds": eval_seconds,
                "total_seconds": time.perf_counter() - t0,
            },
            differences=differences,
            bootstrap=boot_meta,
        )
