"""Folder layouts of the data sets as they are downloaded, so that none must be renamed.

A layout says where a data set folder keeps its infrared images, its visible images and
its labels, and how the two images of a pair are named:

========== ================================================ =====================
layout     images                                           labels
========== ================================================ =====================
moefusion  ``ir/``, ``vi/``                                 ``labels/`` (any format)
m3fd       ``Ir/``, ``Vis/``                                ``Annotation/`` (VOC)
llvip      ``infrared/<part>``, ``visible/<part>``          ``Annotations/`` (VOC)
flir       ``JPEGImages/X_PreviewData.jpeg`` + ``X_RGB.jpg``  ``Annotations/`` (VOC)
msrs       ``<part>/ir``, ``<part>/vi``; or ``Infrared/``,   ``labels/`` if present
           ``Visible/`` (``<part>`` inside when present)
========== ================================================ =====================

``<part>`` is ``train`` or ``test`` (default ``train``). :func:`resolve_layout` detects
the layout from the folder's sub-folders (exact case, so ``ir/`` and ``Ir/`` differ on
any file system) or takes the one asked for, and refuses in one line, naming the folders
it found and the option to pass, when none or several fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moefusion.errors import PairError

__all__ = ["LAYOUTS", "LAYOUT_PARTS", "DatasetLayout", "detect_layouts", "resolve_layout"]

#: Accepted layouts (``auto``: detected from the folder).
LAYOUTS: tuple[str, ...] = ("moefusion", "m3fd", "llvip", "flir", "msrs")
#: Parts of the layouts that ship a train/test division (llvip, msrs).
LAYOUT_PARTS: tuple[str, ...] = ("train", "test")
#: The option that chooses a layout, as errors name it.
LAYOUT_OPTION = "layout: NAME in the data.datasets entry (moefusion train: --layout NAME)"

#: FLIR-aligned: ``FLIR_08865_PreviewData.jpeg`` (thermal) + ``FLIR_08865_RGB.jpg``.
FLIR_IR_SUFFIX, FLIR_VI_SUFFIX = "_PreviewData", "_RGB"


@dataclass(frozen=True)
class DatasetLayout:
    """Where one data set folder keeps its pairs and labels.

    Attributes:
        name: one of :data:`LAYOUTS`.
        ir_dir, vi_dir: the image folders (the same folder for ``flir``).
        labels: the label folder; ``"auto"``: ``root/labels`` when present (moefusion).
        ir_suffix, vi_suffix: the end of the file stems that marks the infrared and the
            visible image of a pair (``flir``); the pair is named after the infrared file.
    """

    name: str
    ir_dir: Path
    vi_dir: Path
    labels: Path | str | None = "auto"
    ir_suffix: str = ""
    vi_suffix: str = ""

    def dataset_options(self) -> dict[str, object]:
        """Keyword arguments of :class:`~moefusion.data.PairedFusionDataset`."""
        return {
            "ir_dir": self.ir_dir,
            "vi_dir": self.vi_dir,
            "labels": self.labels,
            "ir_suffix": self.ir_suffix,
            "vi_suffix": self.vi_suffix,
        }


def _subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders, exact case (``Path.is_dir`` ignores case on
    macOS and Windows, where ``Ir/`` would pass for ``ir/``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(".") and (folder / n).is_dir())


def _has_flir_pairs(folder: Path) -> bool:
    try:
        return any(Path(n).stem.endswith(FLIR_IR_SUFFIX) for n in os.listdir(folder))
    except OSError:
        return False


def detect_layouts(root: str | Path) -> dict[str, list[str]]:
    """``{layout: the sub-folders that show it}`` for every layout ``root`` fits."""
    root = Path(root)
    subs = set(_subdirs(root))
    found: dict[str, list[str]] = {}
    if {"ir", "vi"} <= subs:
        found["moefusion"] = ["ir/", "vi/"]
    if {"Ir", "Vis"} <= subs:
        found["m3fd"] = ["Ir/", "Vis/"]
    if {"infrared", "visible"} <= subs:
        found["llvip"] = ["infrared/", "visible/"]
    if "JPEGImages" in subs and _has_flir_pairs(root / "JPEGImages"):
        found["flir"] = ["JPEGImages/"]
    msrs = [f"{p}/ir/, {p}/vi/" for p in LAYOUT_PARTS if {"ir", "vi"} <= set(_subdirs(root / p))]
    if {"Infrared", "Visible"} <= subs:
        msrs.append("Infrared/, Visible/")
    if msrs:
        found["msrs"] = msrs
    return found


def _part_dir(folder: Path, part: str, layout: str, required: bool) -> Path:
    if part in _subdirs(folder):
        return folder / part
    if required:
        raise PairError(
            f"{layout} layout: no '{part}' folder in {folder} (found: "
            f"{', '.join(_subdirs(folder)) or 'no folders'}); pass part: "
            f"{' or '.join(LAYOUT_PARTS)}"
        )
    return folder


def resolve_layout(
    root: str | Path, layout: str = "auto", part: str | None = None
) -> DatasetLayout:
    """The layout of the data set folder ``root`` (detected with ``layout="auto"``).

    ``part`` picks ``train`` or ``test`` of the layouts that have both (default
    ``train``); the others refuse it.

    Raises:
        PairError: an unknown layout or part, a folder that fits no layout or several,
            or a chosen layout whose folders are not there (each naming what was found).
    """
    root = Path(root)
    if layout not in ("auto", *LAYOUTS):
        raise PairError(f"unknown layout {layout!r}; layouts: auto, {', '.join(LAYOUTS)}")
    if part is not None and part not in LAYOUT_PARTS:
        raise PairError(f"unknown part {part!r}; parts: {', '.join(LAYOUT_PARTS)}")
    if not root.is_dir():
        raise PairError(f"dataset folder not found: {root}")
    found = detect_layouts(root)
    subs = _subdirs(root)
    listed = ", ".join(f"{s}/" for s in subs) or "no folders"
    if layout == "auto":
        if not found:
            raise PairError(
                f"dataset folder {root} fits no known layout (found: {listed}); expected "
                "ir/ + vi/ (moefusion), Ir/ + Vis/ (m3fd), infrared/ + visible/ (llvip), "
                "JPEGImages/ with *_PreviewData + *_RGB files (flir), train|test/{ir,vi} or "
                "Infrared/ + Visible/ (msrs); see docs/data.md"
            )
        if len(found) > 1:
            fits = "; ".join(f"{name} ({', '.join(dirs)})" for name, dirs in found.items())
            raise PairError(
                f"dataset folder {root} fits several layouts: {fits}; choose one with "
                f"{LAYOUT_OPTION}"
            )
        layout = next(iter(found))
    elif layout not in found:
        raise PairError(
            f"dataset folder {root} is not in the {layout} layout (found: {listed}); "
            + (
                f"it fits {', '.join(found)}: pass that layout or layout: auto"
                if found
                else "see docs/data.md for the layouts"
            )
        )
    if part is not None and layout not in ("llvip", "msrs"):
        raise PairError(f"the {layout} layout has no train/test parts; leave part out")
    chosen = part or "train"
    if layout == "moefusion":
        return DatasetLayout("moefusion", root / "ir", root / "vi", "auto")
    if layout == "m3fd":
        return DatasetLayout("m3fd", root / "Ir", root / "Vis", _labels(root, "Annotation"))
    if layout == "llvip":
        ir = _part_dir(root / "infrared", chosen, "llvip", required=True)
        vi = _part_dir(root / "visible", chosen, "llvip", required=True)
        return DatasetLayout("llvip", ir, vi, _labels(root, "Annotations"))
    if layout == "flir":
        images = root / "JPEGImages"
        return DatasetLayout(
            "flir",
            images,
            images,
            _labels(root, "Annotations"),
            ir_suffix=FLIR_IR_SUFFIX,
            vi_suffix=FLIR_VI_SUFFIX,
        )
    # msrs: train|test/{ir,vi}, else Infrared/ + Visible/ (with the part inside if present)
    if {"ir", "vi"} <= set(_subdirs(root / chosen)):
        return DatasetLayout("msrs", root / chosen / "ir", root / chosen / "vi", "auto")
    if {"Infrared", "Visible"} <= set(subs):
        ir = _part_dir(root / "Infrared", chosen, "msrs", required=False)
        vi = _part_dir(root / "Visible", chosen, "msrs", required=False)
        return DatasetLayout("msrs", ir, vi, "auto")
    raise PairError(
        f"msrs layout: no {chosen}/ir and {chosen}/vi in {root} (found: {listed}); "
        f"pass part: {' or '.join(p for p in LAYOUT_PARTS if p != chosen)}"
    )


def _labels(root: Path, name: str) -> Path | None:
    """The layout's VOC folder, or None (unlabelled) when the download left it out."""
    return root / name if name in _subdirs(root) else None
