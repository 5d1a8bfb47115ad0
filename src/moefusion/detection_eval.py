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
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from moefusion.data import (
    IMAGE_EXTENSIONS,
    Annotation,
    Pair,
    PairedFusionDataset,
    RandomCrop,
    read_image,
    to_gray,
    to_unit_float,
)
from moefusion.data.pairs import format_names
from moefusion.errors import ConfigError, ImageReadError, MoEFusionError, PairError

__all__ = [
    "DETECTOR_FORMAT",
    "INFRARED",
    "VISIBLE",
    "DatasetSelection",
    "DetectionImage",
    "DetectionTable",
    "TableRow",
    "average_precision",
    "build_detector",
    "detect",
    "evaluation_inputs",
    "load_detector",
    "read_detector_info",
    "prepare_image",
    "resolve_device",
    "resolve_fused_images",
    "run_detection_eval",
    "save_detector",
    "select_datasets",
    "training_images",
    "train_detector",
]

VISIBLE = "Visible"
INFRARED = "Infrared"
DETECTOR_FORMAT = "moefusion-detector/1"
INTERPOLATION = (
    "COCO 101-point interpolated AP (precision envelope sampled at recall 0, 0.01, ..., 1)"
)

_RESNETS: dict[str, list[int]] = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "resnet101": [256, 512, 1024, 2048],
}
_FPN_LEVELS = 5  # P2..P5 from layer1..layer4 plus a max-pooled P6


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class DetectionImage:
    """One image to train on or evaluate, with its ground truth.

    Attributes:
        path: the image file.
        boxes: ``(K, 4)`` float32 ``x1, y1, x2, y2`` pixels of the original image.
        labels: ``(K,)`` int64 indices into the class list.
        size: ``(width, height)`` of the pair the boxes belong to.
        dataset, stem: which pair it comes from.
    """

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]
    dataset: str
    stem: str


@dataclass
class DatasetSelection:
    """The pairs of one dataset folder chosen for training or testing.

    Attributes:
        name: dataset name (the folder name; the key into a split file).
        root: the folder.
        pairs: selected pairs, sorted by stem.
        annotations: stem -> Annotation, or None for an unlabelled pair.
        sizes: stem -> ``(width, height)``.
    """

    name: str
    root: Path
    pairs: list[Pair]
    annotations: dict[str, Annotation | None]
    sizes: dict[str, tuple[int, int]]

    @property
    def labelled(self) -> list[Pair]:
        return [p for p in self.pairs if self.annotations.get(p.stem) is not None]


def _dataset_name(folder: Path) -> str:
    return folder.resolve().name


def _open_selection(
    folder: Path,
    stems: Sequence[str] | None,
    classes: Sequence[str],
    class_map: Mapping[str, str] | None,
    label_set: str | None,
) -> DatasetSelection:
    if not folder.is_dir():
        raise PairError(f"dataset folder not found: {folder} (needs ir/ and vi/ inside)")
    extra: dict[str, Any] = {} if label_set is None else {"label_set": label_set}
    ds = PairedFusionDataset(
        folder,
        classes=classes,
        class_map=class_map,
        stems=stems,
        name=_dataset_name(folder),
        **extra,
    )
    return DatasetSelection(
        name=ds.name,
        root=folder,
        pairs=ds.pairs,
        annotations=ds.annotations,
        sizes=ds.image_sizes,
    )


def _unique_names(folders: Sequence[Path], option: str) -> None:
    names = [_dataset_name(f) for f in folders]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MoEFusionError(
            f"{option} folders must have different names (the name selects the split entry "
            f"and the fused subfolder); repeated: {', '.join(dupes)}"
        )


def select_datasets(
    train_dirs: Sequence[str | Path],
    test_dirs: Sequence[str | Path],
    *,
    classes: Sequence[str],
    split: Mapping[str, Any] | None = None,
    class_map: Mapping[str, str] | None = None,
    label_set: str | None = None,
) -> tuple[list[DatasetSelection], list[DatasetSelection]]:
    """Choose the training and test pairs; never lets a pair file be in both.

    With ``split`` (a loaded split dict), a ``--train`` folder keeps the ``train`` stems
    and a ``--test`` folder the ``test`` stems of ``split["datasets"][folder name]``.
    Without it every pair of a folder is used. Either way a pair whose infrared or visible
    file (resolved path) is selected for both training and testing raises
    :class:`MoEFusionError`.
    """
    train_p, test_p = [Path(d) for d in train_dirs], [Path(d) for d in test_dirs]
    _unique_names(train_p, "--train")
    _unique_names(test_p, "--test")

    def stems_for(folder: Path, part: str) -> list[str] | None:
        if split is None:
            return None
        name = _dataset_name(folder)
        entries = split.get("datasets", {})
        if name not in entries:
            raise ConfigError(
                f"the split has no entry for dataset {name!r} ({folder}); it has: "
                f"{', '.join(sorted(entries)) or 'none'}"
            )
        return list(entries[name][part])

    train = [
        _open_selection(f, stems_for(f, "train"), classes, class_map, label_set) for f in train_p
    ]
    test = [_open_selection(f, stems_for(f, "test"), classes, class_map, label_set) for f in test_p]

    train_files = {
        path.resolve(): f"{sel.name}/{p.stem}"
        for sel in train
        for p in sel.pairs
        for path in (p.ir, p.vi)
    }
    shared = sorted(
        {
            f"{sel.name}/{p.stem}"
            for sel in test
            for p in sel.pairs
            if p.ir.resolve() in train_files or p.vi.resolve() in train_files
        }
    )
    if shared:
        hint = "" if split is not None else "; pass --split to separate train and test stems"
        raise MoEFusionError(
            f"{len(shared)} pair(s) are selected for both training and testing: "
            f"{format_names(shared)}{hint}"
        )
    return train, test


def training_images(selections: Iterable[DatasetSelection]) -> list[DetectionImage]:
    """Two training images (infrared, visible) per labelled pair, sharing its boxes."""
    images = []
    for sel in selections:
        for pair in sel.labelled:
            ann = sel.annotations[pair.stem]
            assert ann is not None
            for path in (pair.ir, pair.vi):
                images.append(
                    DetectionImage(
                        path, ann.boxes, ann.labels, sel.sizes[pair.stem], sel.name, pair.stem
                    )
                )
    return images


def _image_index(folder: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(p.stem, []).append(p)
    return index


def resolve_fused_images(
    folder: str | Path, selections: Sequence[DatasetSelection]
) -> dict[tuple[str, str], Path]:
    """``{(dataset, stem): fused image}`` for every labelled test pair.

    For each test dataset the images are looked up in ``folder/<dataset name>/`` when that
    subfolder exists, else in ``folder`` itself (flat). Flat lookup for two datasets that
    share a stem is ambiguous and refused. Missing images, or two files with one stem,
    raise :class:`MoEFusionError` naming them.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"fused image folder not found: {root}")
    found: dict[tuple[str, str], Path] = {}
    missing: list[str] = []
    flat_owner: dict[str, str] = {}
    indexes: dict[Path, dict[str, list[Path]]] = {}
    for sel in selections:
        sub = root / sel.name
        where = sub if sub.is_dir() else root
        index = indexes.setdefault(where, _image_index(where))
        for pair in sel.labelled:
            if where == root:
                other = flat_owner.setdefault(pair.stem, sel.name)
                if other != sel.name:
                    raise MoEFusionError(
                        f"fused folder {root}: stem {pair.stem!r} is a test pair of both "
                        f"{other!r} and {sel.name!r}; put each dataset's images in a "
                        f"subfolder named after it ({root}/{other}/, {root}/{sel.name}/)"
                    )
            files = index.get(pair.stem, [])
            if not files:
                missing.append(f"{where / pair.stem}.*")
            elif len(files) > 1:
                raise MoEFusionError(
                    f"fused folder {where} has several images for stem {pair.stem!r}: "
                    f"{', '.join(f.name for f in files)}"
                )
            else:
                found[(sel.name, pair.stem)] = files[0]
    if missing:
        raise MoEFusionError(
            f"fused folder {root} lacks {len(missing)} image(s) of labelled test pairs: "
            f"{format_names(missing)}"
        )
    return found


def evaluation_inputs(
    selections: Sequence[DatasetSelection], fused: Mapping[str, str | Path]
) -> dict[str, list[DetectionImage]]:
    """Rows of the table -> their images: ``Visible``, ``Infrared``, then each method.

    Only labelled test pairs are evaluated; every row uses the same pairs and boxes.
    """
    reserved = {VISIBLE.lower(), INFRARED.lower()}
    for name in fused:
        if not name or name.lower() in reserved:
            raise MoEFusionError(
                f"fused method name {name!r} is empty or clashes with the {VISIBLE}/{INFRARED} rows"
            )
    lowered = [n.lower() for n in fused]
    if len(set(lowered)) != len(lowered):
        raise MoEFusionError(f"fused method names must be unique: {', '.join(fused)}")
    pairs = [(sel, p) for sel in selections for p in sel.labelled]
    if not pairs:
        raise MoEFusionError("no labelled test pairs: nothing to evaluate")

    def row(pick: Callable[[DatasetSelection, Pair], Path]) -> list[DetectionImage]:
        out = []
        for sel, p in pairs:
            ann = sel.annotations[p.stem]
            assert ann is not None
            out.append(
                DetectionImage(
                    pick(sel, p), ann.boxes, ann.labels, sel.sizes[p.stem], sel.name, p.stem
                )
            )
        return out

    rows = {VISIBLE: row(lambda s, p: p.vi), INFRARED: row(lambda s, p: p.ir)}
    for name, folder in fused.items():
        files = resolve_fused_images(folder, selections)
        rows[name] = row(lambda s, p, f=files: f[(s.name, p.stem)])  # type: ignore[misc]
    return rows


# ---------------------------------------------------------------------------- images


def load_gray_image(image: DetectionImage) -> Tensor:
    """The image as ``[1, H, W]`` float32 gray in [0, 1]; its size must match the pair's."""
    arr = to_gray(to_unit_float(read_image(image.path)))
    h, w = arr.shape
    if (w, h) != tuple(image.size):
        raise PairError(
            f"{image.path} is {w}x{h} but pair {image.dataset}/{image.stem} is "
            f"{image.size[0]}x{image.size[1]} (width x height); boxes would not line up"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def prepare_image(gray: Tensor, long_side: int) -> tuple[Tensor, tuple[float, float]]:
    """Resize ``[1, H, W]`` so its longer side is ``long_side``.

    Returns the resized image and the ``(sx, sy)`` factors mapping original pixel
    coordinates to it. Antialiased when shrinking (LLVIP's 1280 px frames would alias).
    """
    h, w = gray.shape[-2:]
    scale = long_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return gray, (1.0, 1.0)
    out = F.interpolate(
        gray[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
    )[0]
    return out.clamp_(0.0, 1.0), (nw / w, nh / h)


def _scale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


# -------------------------------------------------------------------------- detector


class _PresizedTransform(GeneralizedRCNNTransform):
    """Normalises and batches but does not resize: images arrive at their working size,
    so training-time scale jitter is not undone and test images are not rescaled twice."""

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        # 32 groups divide every ResNet width (64 .. 2048).
        return partial(nn.GroupNorm, 32)  # type: ignore[return-value]
    if kind == "frozen":
        return FrozenBatchNorm2d
    raise ConfigError(f"model.norm must be batch, group or frozen, got {kind!r}")


def _load_backbone_weights(body: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.backbone_weights: file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(
            f"model.backbone_weights {p} does not fit the backbone: missing "
            f"{format_names(missing, 5) or 'none'}; unexpected {format_names(unexpected, 5) or 'none'}"
        )


def build_detector(model_cfg: Mapping[str, Any], num_classes: int) -> FasterRCNN:
    """Faster R-CNN with a ResNet-FPN backbone (P2-P6), built with ``weights=None``.

    ``model_cfg`` is the ``model`` section of a detect config; ``num_classes`` excludes
    the background. Input: list of ``[3, H, W]`` images in [0, 1] at their working size.
    """
    cfg = dict(model_cfg)
    name = str(cfg.get("backbone", "resnet18"))
    if name not in _RESNETS:
        raise ConfigError(f"model.backbone must be one of {', '.join(_RESNETS)}, got {name!r}")
    import torchvision.models as tvm

    body = getattr(tvm, name)(weights=None, norm_layer=_norm_layer(str(cfg.get("norm", "batch"))))
    if cfg.get("backbone_weights"):
        _load_backbone_weights(body, str(cfg["backbone_weights"]))
    channels = int(cfg.get("fpn_channels", 128))
    backbone = BackboneWithFPN(
        body,
        {f"layer{i}": str(i - 1) for i in range(1, 5)},
        _RESNETS[name],
        channels,
        extra_blocks=LastLevelMaxPool(),
    )
    sizes = list(cfg.get("anchor_sizes", [16, 32, 64, 128, 256]))
    if len(sizes) != _FPN_LEVELS:
        raise ConfigError(f"model.anchor_sizes needs {_FPN_LEVELS} entries (P2..P6), got {sizes}")
    ratios = tuple(float(r) for r in cfg.get("aspect_ratios", [0.5, 1.0, 2.0]))
    anchors = AnchorGenerator(
        tuple(tuple(int(v) for v in (s if isinstance(s, list | tuple) else [s])) for s in sizes),
        (ratios,) * _FPN_LEVELS,
    )
    rep = int(cfg.get("box_representation", 1024))
    mean, std = float(cfg.get("image_mean", 0.45)), float(cfg.get("image_std", 0.25))
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        rpn_pre_nms_top_n_train=int(cfg.get("rpn_pre_nms_top_n_train", 2000)),
        rpn_post_nms_top_n_train=int(cfg.get("rpn_post_nms_top_n_train", 2000)),
        rpn_pre_nms_top_n_test=int(cfg.get("rpn_pre_nms_top_n_test", 1000)),
        rpn_post_nms_top_n_test=int(cfg.get("rpn_post_nms_top_n_test", 1000)),
        box_batch_size_per_image=int(cfg.get("box_batch_size_per_image", 512)),
        box_score_thresh=float(cfg.get("box_score_thresh", 0.001)),
        box_detections_per_img=int(cfg.get("box_detections_per_img", 100)),
    )
    # Gray inputs repeated to 3 channels: one mean/std for all three.
    model.transform = _PresizedTransform(1, 1, [mean] * 3, [std] * 3)
    return model


def resolve_device(name: str | None) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``..."""
    text = str(name or "cpu")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {text!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {text!r} requested but CUDA is not available")
    return device


def _check_classes(classes: Sequence[str]) -> list[str]:
    out = [str(c).strip() for c in classes]
    if not out or any(not c for c in out) or len({c.lower() for c in out}) != len(out):
        raise ConfigError(f"classes must be distinct, non-empty names, got {list(classes)}")
    return out


def save_detector(
    model: FasterRCNN, path: str | Path, config: Mapping[str, Any], meta: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write the weights (``.safetensors``) and a same-stem ``.json`` with config and classes."""
    from safetensors.torch import save_file

    weights = Path(path).with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": DETECTOR_FORMAT})
    sidecar = weights.with_suffix(".json")
    info = {"format": DETECTOR_FORMAT, "config": dict(config), **dict(meta)}
    sidecar.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return weights, sidecar


def _detector_files(path: str | Path) -> tuple[Path, Path]:
    weights = Path(path).with_suffix(".safetensors")
    return weights, weights.with_suffix(".json")


def read_detector_info(path: str | Path) -> dict[str, Any]:
    """The ``.json`` sidecar of a saved detector (config, classes, training pairs)."""
    weights, sidecar = _detector_files(path)
    for p in (weights, sidecar):
        if not p.is_file():
            raise MoEFusionError(f"detector file not found: {p} (need both .safetensors and .json)")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoEFusionError(f"cannot read detector config {sidecar}: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != DETECTOR_FORMAT:
        raise MoEFusionError(f"{sidecar} is not a moefusion detector config ({DETECTOR_FORMAT})")
    _check_classes(info.get("classes") or [])
    return info


def load_detector(path: str | Path) -> tuple[FasterRCNN, dict[str, Any]]:
    """Load a detector saved by :func:`save_detector`: ``(model in eval mode, sidecar dict)``.

    ``path`` may name the ``.safetensors`` or the ``.json`` file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_detector_info(path)
    weights, _ = _detector_files(path)
    model = build_detector(info["config"]["model"], len(info["classes"]))
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise MoEFusionError(f"cannot load detector weights {weights}: {exc}") from exc
    return model.eval(), info


# -------------------------------------------------------------------------- training


def _lr_factor(it: int, total: int, train_cfg: Mapping[str, Any], iters_per_epoch: int) -> float:
    warmup = int(train_cfg.get("warmup_iters", 0))
    factor = 1.0
    if str(train_cfg.get("schedule", "cosine")) == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * it / max(total, 1)))
    else:
        epoch = it // max(iters_per_epoch, 1)
        passed = sum(epoch >= int(m) for m in train_cfg.get("milestones", []))
        factor = float(train_cfg.get("gamma", 0.1)) ** passed
    if it < warmup:
        factor *= 0.001 + (1.0 - 0.001) * it / warmup
    return factor


def _augment(
    gray: Tensor, boxes: Tensor, labels: Tensor, data_cfg: Mapping[str, Any], gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random scale, flip, crop and gamma on a ``[1, H, W]`` image, its boxes and labels."""
    lo, hi = (float(v) for v in data_cfg.get("scale_jitter") or (1.0, 1.0))
    base = int(data_cfg.get("image_size", 512))
    s = lo + (hi - lo) * float(torch.rand((), generator=gen))
    img, (sx, sy) = prepare_image(gray, max(32, round(base * s)))
    boxes = _scale_boxes(boxes, sx, sy)
    if float(torch.rand((), generator=gen)) < float(data_cfg.get("hflip", 0.0)):
        w = img.shape[-1]
        img = img.flip(-1)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    crop = data_cfg.get("crop")
    if crop:
        # Crops cut the cost per image; the detector is fully convolutional up to the RoI
        # heads, so it is still tested on whole images.
        h, w = img.shape[-2:]
        sample = RandomCrop((min(int(crop), h), min(int(crop), w)))(
            {"ir": img, "boxes": boxes, "labels": labels}
        )
        img, boxes, labels = sample["ir"], sample["boxes"], sample["labels"]
    g = float(data_cfg.get("gamma_jitter", 0.0))
    if g > 0:
        # Gamma in [exp(-g), exp(g)]: brightness/contrast differ between IR, VI and fused.
        gamma = math.exp(g * (2.0 * float(torch.rand((), generator=gen)) - 1.0))
        img = img.clamp(min=1e-6).pow(gamma)
    return img, boxes, labels


def train_detector(
    images: Sequence[DetectionImage],
    config: Mapping[str, Any],
    *,
    progress: bool = True,
) -> tuple[FasterRCNN, list[dict[str, float]]]:
    """Train a detector from scratch on ``images`` (seeded by ``config["seed"]``).

    Returns the model in eval mode and the per-epoch history
    (``{"epoch", "loss", "lr", "seconds"}``).
    """
    from tqdm.auto import tqdm

    if not images:
        raise MoEFusionError("no labelled training pairs: the detector has nothing to learn")
    data_cfg, train_cfg = config["data"], config["train"]
    classes = _check_classes(data_cfg["classes"])
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    device = resolve_device(config.get("device", "cpu"))
    model = build_detector(config["model"], len(classes)).to(device)
    model.train()
    gen = torch.Generator().manual_seed(seed)

    # Decoding once keeps the loop compute-bound; images are kept at the working size.
    base = int(data_cfg.get("image_size", 512))
    cache: list[tuple[Tensor, Tensor, Tensor]] = []
    for im in images:
        gray, (sx, sy) = prepare_image(load_gray_image(im), base)
        boxes = _scale_boxes(torch.from_numpy(np.array(im.boxes, dtype=np.float32)), sx, sy)
        cache.append((gray, boxes.reshape(-1, 4), torch.from_numpy(np.array(im.labels)) + 1))

    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(train_cfg.get("lr", 0.02))
    wd = float(train_cfg.get("weight_decay", 1e-4))
    opt_name = str(train_cfg.get("optimizer", "sgd")).lower()
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=float(train_cfg.get("momentum", 0.9)), weight_decay=wd
        )
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    else:
        raise ConfigError(f"train.optimizer must be sgd or adamw, got {opt_name!r}")

    batch = int(train_cfg.get("batch_size", 4))
    per_epoch = math.ceil(len(cache) / batch)
    epochs = int(train_cfg.get("epochs", 1))
    total = epochs * per_epoch
    if train_cfg.get("max_iters") is not None:
        total = min(total, int(train_cfg["max_iters"]))
    clip = train_cfg.get("grad_clip")
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc="train detector", unit="it", disable=not progress)
    it = 0
    for epoch in range(epochs):
        if it >= total:
            break
        order = torch.randperm(len(cache), generator=gen).tolist()
        start, losses = time.perf_counter(), []
        for b in range(per_epoch):
            if it >= total:
                break
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(it, total, train_cfg, per_epoch)
            imgs, targets = [], []
            for idx in order[b * batch : (b + 1) * batch]:
                gray, boxes, labels = cache[idx]
                img, bx, lab = _augment(gray, boxes, labels, data_cfg, gen)
                imgs.append(img.expand(3, -1, -1).to(device))
                targets.append({"boxes": bx.to(device), "labels": lab.to(device)})
            loss_dict = model(imgs, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise MoEFusionError(
                    f"detector loss became {float(loss)} at iteration {it}; lower train.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, float(clip))
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - start,
            }
        )
    bar.close()
    return model.eval(), history


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def detect(
    model: FasterRCNN,
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
                    "boxes": _scale_boxes(pred["boxes"].cpu(), 1.0 / sx, 1.0 / sy),
                    "scores": pred["scores"].cpu(),
                    "labels": pred["labels"].cpu() - 1,
                }
            )
    return out


def _map_backend() -> str:
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
        backend=_map_backend(),
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


# ---------------------------------------------------------------------------- table


@dataclass
class TableRow:
    """One input of the table: per-class AP and mAP in percent (None: no GT boxes)."""

    name: str
    ap: dict[str, float | None]
    map: float | None
    n_images: int


@dataclass
class DetectionTable:
    """The result of a detection evaluation, like the paper's Table 3."""

    classes: list[str]
    rows: list[TableRow]
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    def footer(self) -> str:
        m = self.meta
        counts = ", ".join(f"{c} {n}" for c, n in m.get("gt_boxes", {}).items())
        return (
            f"AP at IoU {m.get('iou_threshold', 0.5)} in percent, {INTERPOLATION}, "
            f"torchmetrics MeanAveragePrecision ({m.get('backend', '?')}); mAP is the mean "
            f"over classes with ground truth. {m.get('n_test_pairs', '?')} labelled test "
            f"pairs ({m.get('test_pairs_by_dataset', {})}); ground-truth boxes: {counts}."
        )

    def to_markdown(self) -> str:
        head = ["Input", *self.classes, "mAP"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, *(self._fmt(r.ap[c]) for c in self.classes), self._fmt(r.map)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + self.footer() + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", *self.classes, "mAP", "n_images"])
        for r in self.rows:
            writer.writerow(
                [
                    r.name,
                    *("" if r.ap[c] is None else f"{r.ap[c]:.4f}" for c in self.classes),
                    "" if r.map is None else f"{r.map:.4f}",
                    r.n_images,
                ]
            )
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": "percent",
            "classes": self.classes,
            "rows": [
                {"input": r.name, "ap": r.ap, "map": r.map, "n_images": r.n_images}
                for r in self.rows
            ],
            "meta": self.meta,
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        paths["csv"].write_text(self.to_csv(), encoding="utf-8")
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return paths


def _percent(v: float | None) -> float | None:
    return None if v is None else round(100.0 * v, 4)


def run_detection_eval(
    train_dirs: Sequence[str | Path],
    test_dirs: Sequence[str | Path],
    fused: Mapping[str, str | Path],
    config: Mapping[str, Any],
    *,
    out_dir: str | Path,
    split: Mapping[str, Any] | None = None,
    split_name: str | None = None,
    detector: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DetectionTable:
    """The whole protocol: select pairs, train (or load) the detector, evaluate every row.

    Writes ``detector.safetensors`` + ``detector.json`` (when trained) and the table files
    to ``out_dir``. With ``detector`` the saved model is reused and nothing is trained; its
    classes must equal ``config["data"]["classes"]`` and its training pairs must not be
    test pairs.
    """
    t0 = time.perf_counter()
    config = dict(config)
    threads = config.get("threads")
    if threads:
        # On a shared machine one thread per process beats oversubscribed OpenMP spinning
        # by up to 10x; restored afterwards because the setting is process-wide.
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return run_detection_eval(
                train_dirs,
                test_dirs,
                fused,
                {**config, "threads": None},
                out_dir=out_dir,
                split=split,
                split_name=split_name,
                detector=detector,
                progress=progress,
                log=log,
            )
        finally:
            torch.set_num_threads(previous)
    data_cfg = dict(config["data"])
    classes = _check_classes(data_cfg["classes"])
    info: dict[str, Any] | None = None
    if detector is not None:
        # Checked before any model is built, so a wrong file fails fast.
        info = read_detector_info(detector)
        det_classes = list(info["classes"])
        if [c.lower() for c in det_classes] != [c.lower() for c in classes]:
            raise MoEFusionError(
                f"detector {detector} was trained for classes {','.join(det_classes)}, "
                f"not {','.join(classes)}; pass --classes {','.join(det_classes)}"
            )
        classes = det_classes
        # The detector was trained at its own working size; test at that size.
        data_cfg["image_size"] = info["config"]["data"]["image_size"]
        config["data"] = data_cfg
    elif not train_dirs:
        raise MoEFusionError("give --train folders, or --detector to reuse a trained detector")

    class_map = data_cfg.get("class_map")
    label_set = data_cfg.get("label_set")
    train_sel, test_sel = select_datasets(
        train_dirs,
        test_dirs,
        classes=classes,
        split=split,
        class_map=class_map,
        label_set=label_set,
    )
    rows_in = evaluation_inputs(test_sel, fused)
    test_keys = {f"{im.dataset}/{im.stem}" for im in rows_in[VISIBLE]}
    out = Path(out_dir)

    train_seconds = 0.0
    if info is not None:
        leaked = sorted(test_keys & set(info.get("train_pairs", [])))
        if leaked:
            raise MoEFusionError(
                f"detector {detector} was trained on {len(leaked)} of the test pairs: "
                f"{format_names(leaked)}"
            )
        model, _ = load_detector(detector)  # type: ignore[arg-type]
        model.to(resolve_device(config.get("device", "cpu")))
        log(f"reusing detector {detector} (no training)")
        detector_path = _detector_files(detector)[0]  # type: ignore[arg-type]
    else:
        images = training_images(train_sel)
        log(
            f"training on {len(images)} images ({len(images) // 2} labelled pairs: "
            + ", ".join(f"{s.name} {len(s.labelled)}" for s in train_sel)
            + ")"
        )
        t_train = time.perf_counter()
        model, history = train_detector(images, config, progress=progress)
        train_seconds = time.perf_counter() - t_train
        train_pairs = sorted({f"{im.dataset}/{im.stem}" for im in images})
        detector_path, _ = save_detector(
            model,
            out / "detector.safetensors",
            config,
            {
                "classes": classes,
                "train_pairs": train_pairs,
                "history": history,
                "train_seconds": round(train_seconds, 1),
                "split": split_name,
            },
        )
        log(f"detector saved to {detector_path} ({train_seconds / 60:.1f} min)")

    size = int(data_cfg.get("image_size", 512))
    eval_bs = int(config.get("eval", {}).get("batch_size", 4))
    iou = float(config.get("eval", {}).get("iou_threshold", 0.5))
    rows: list[TableRow] = []
    targets: list[dict[str, Tensor]] | None = None
    t_eval = time.perf_counter()
    for name, images in rows_in.items():
        preds = detect(
            model, images, image_size=size, batch_size=eval_bs, progress=progress, desc=name
        )
        if targets is None:
            targets = [
                {"boxes": torch.from_numpy(im.boxes), "labels": torch.from_numpy(im.labels)}
                for im in images
            ]
        scores = average_precision(preds, targets, classes, iou_threshold=iou)
        rows.append(
            TableRow(
                name,
                {c: _percent(v) for c, v in scores["ap"].items()},
                _percent(scores["map"]),
                len(images),
            )
        )
    eval_seconds = time.perf_counter() - t_eval

    gt = np.bincount(
        np.concatenate([im.labels for im in rows_in[VISIBLE]] or [np.zeros(0, np.int64)]),
        minlength=len(classes),
    )
    by_ds: dict[str, int] = {}
    for im in rows_in[VISIBLE]:
        by_ds[im.dataset] = by_ds.get(im.dataset, 0) + 1
    table = DetectionTable(
        classes=classes,
        rows=rows,
        meta={
            "iou_threshold": iou,
            "interpolation": INTERPOLATION,
            "backend": _map_backend(),
            "n_test_pairs": len(rows_in[VISIBLE]),
            "test_pairs_by_dataset": by_ds,
            "gt_boxes": {c: int(n) for c, n in zip(classes, gt.tolist(), strict=True)},
            "fused": {k: str(v) for k, v in fused.items()},
            "split": split_name,
            "detector": str(detector_path),
            "trained_here": info is None,
            "image_size": size,
            "seed": config.get("seed"),
            "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    table.write(out)
    return table
