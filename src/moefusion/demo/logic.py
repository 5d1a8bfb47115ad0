"""The demo's work, without any web framework: load a pair, fuse it, draw the gate bars
and the attention heat-map, fuse it with a classical baseline, tabulate the metrics and
write the files to download.

Everything here is numpy in, numpy out (and files), so the tests exercise it without
gradio; :mod:`moefusion.demo.app` only lays the results out on a page. Each step is the
project's own: images are read as ``moefusion fuse`` reads them
(:func:`moefusion.data.load_pair`), fused by :class:`moefusion.Fuser` (tiled when an
untiled pass would not fit, as ``fuse`` does), baselines come from
:mod:`moefusion.baselines` and the metrics from :func:`moefusion.metrics.compute`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from moefusion.baselines import BASELINES, fuse_baseline, to_u8
from moefusion.data.color import colorize, colorize_u8
from moefusion.data.io import (
    IMAGE_EXTENSIONS,
    LoadedPair,
    image_size,
    load_pair,
    save_gray_u8,
    save_image_atomic,
)
from moefusion.data.pairs import PAIR_ERRORS, Pair, match_pairs
from moefusion.errors import MoEFusionError, PairError
from moefusion.metrics import HIGHER_IS_BETTER, TABLE1_METRICS, compute, to_gray_u8

if TYPE_CHECKING:
    from moefusion.fuser import Fuser, FusionResult

__all__ = [
    "DEFAULT_BASELINE",
    "GATE_TITLES",
    "METHOD_NAME",
    "Demo",
    "DemoOutcome",
    "DemoPair",
    "DemoResult",
    "attention_overlay",
    "bundled_samples_dir",
    "fuse_pair",
    "gate_bars",
    "load_demo_pair",
    "metrics_markdown",
    "paper_metrics",
    "sample_pairs",
    "save_downloads",
]

#: Gate name -> the mixture it routes (paper section 3).
GATE_TITLES: Mapping[str, str] = {
    "mole_fg": "MoLE foreground",
    "mole_bg": "MoLE background",
    "moge": "MoGE",
}
#: The baseline compared by default: the strongest classical method on the held-out split.
DEFAULT_BASELINE = "laplacian"
#: Row name of the network in the metrics table and the download file names.
METHOD_NAME = "moefusion"
#: Metric convention of the table: the scales of MoE-Fusion Table 1.
CONVENTION = "paper"
#: Longer side of the images shown on the page (a browser chokes on 8000x6000 PNGs).
PANEL_SIDE = 1280

#: Bars of experts that fired (non-zero weight) and of the idle ones.
_FIRED_COLOR, _IDLE_COLOR = "#e4572e", "#b8b8b8"


# ------------------------------------------------------------------------------ inputs


def bundled_samples_dir() -> Path | None:
    """The repository's ``samples/`` folder (``ir/`` and ``vi/``), when this package runs
    from a source checkout (``pip install -e .``); None for an installed wheel."""
    folder = Path(__file__).resolve().parents[3] / "samples"
    return folder if (folder / "ir").is_dir() and (folder / "vi").is_dir() else None


def sample_pairs(folder: Path | None) -> dict[str, Pair]:
    """``{stem: pair}`` of the pairs in ``folder/ir`` and ``folder/vi`` (paired by stem,
    unpaired files ignored); empty when ``folder`` is None."""
    if folder is None:
        return {}
    pairs, _, _ = match_pairs(folder / "ir", folder / "vi")
    return {p.stem: p for p in pairs}


@dataclass
class DemoPair:
    """A decoded pair and the 8-bit gray sources its metrics are computed against.

    Attributes:
        name: the infrared file's stem (names the downloads).
        pair: the images as ``moefusion fuse`` decodes them (float32 in [0, 1]).
        ir_u8, vi_u8: ``HxW`` uint8 sources of the metrics: the decoded images rounded to
            8 bits, the visible one turned gray with the paper convention's MATLAB
            ``rgb2gray`` (for 8-bit files: exactly what ``moefusion evaluate`` reads).
    """

    name: str
    pair: LoadedPair
    ir_u8: np.ndarray
    vi_u8: np.ndarray


def _file_name(path: Path) -> str:
    # uploads live in long temporary paths: the file's own name is what the user knows
    return path.name


def _safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "pair"
    return stem[:80]


def load_demo_pair(
    ir_path: str | Path | None,
    vi_path: str | Path | None,
    *,
    resize: bool = False,
    high_bit: str = "percentile",
) -> DemoPair:
    """Decode an uploaded (or sample) pair; any size and format ``moefusion fuse`` reads.

    Args:
        resize: when the two images differ in size, resize the visible image to the
            infrared one's size (``fuse --resize ir``) instead of refusing.

    Raises:
        MoEFusionError: an image is missing; ImageReadError: unreadable; PairError: the
            sizes differ and ``resize`` is off. Messages name the files, not their paths.
    """
    if ir_path is None or vi_path is None:
        missing = " and ".join(
            n for n, p in (("an infrared", ir_path), ("a visible", vi_path)) if p is None
        )
        raise MoEFusionError(f"upload {missing} image, or pick a sample pair")
    ir, vi = Path(ir_path), Path(vi_path)
    for role, p in (("infrared", ir), ("visible", vi)):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise MoEFusionError(
                f"the {role} file {_file_name(p)} is not an image of a supported kind "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
    try:
        if not resize:
            # sizes from the headers: a mismatch is reported before decoding both images
            (iw, ih), (vw, vh) = image_size(ir), image_size(vi)
            if (iw, ih) != (vw, vh):
                raise PairError(
                    f"the infrared image {_file_name(ir)} is {iw}x{ih} but the visible image "
                    f"{_file_name(vi)} is {vw}x{vh} (width x height); use aligned images of "
                    "one size, or tick 'resize the visible image to the infrared one'"
                )
        pair = load_pair(ir, vi, high_bit=high_bit, resize="ir" if resize else None)
    except MoEFusionError as exc:
        raise type(exc)(_short_paths(str(exc), (ir, vi))) from exc
    return DemoPair(
        name=_safe_stem(ir),
        pair=pair,
        ir_u8=to_u8(pair.ir),
        vi_u8=to_gray_u8(to_u8(pair.vi_rgb), CONVENTION),
    )


def _short_paths(message: str, paths: Sequence[Path]) -> str:
    for p in paths:
        message = message.replace(str(p), p.name)
    return message


# ------------------------------------------------------------------------------ fusing


def fuse_pair(fuser: Fuser, dp: DemoPair) -> FusionResult:
    """Fuse a pair with details (gates, attention) and colour; in tiles when the whole
    image would not fit in the available memory (``moefusion fuse``'s rule)."""
    height, width = dp.pair.ir.shape
    tile = fuser.auto_tile(height, width)
    result = fuser.fuse_arrays([dp.pair.ir], [dp.pair.vi], tile=tile, details=True)[0]
    result.color = colorize(result.fused, dp.pair.vi_rgb)
    return result


def fired_experts(weights: np.ndarray) -> list[int]:
    """Indices of the experts with a non-zero gate weight, largest weight first."""
    w = np.asarray(weights)
    return [int(i) for i in np.argsort(-w, kind="stable") if w[i] > 0]


def gate_bars(gates: Mapping[str, np.ndarray], *, dpi: int = 100) -> np.ndarray:
    """The gate weights of each mixture as bar charts side by side -> ``HxWx3`` uint8.

    One panel per gate (MoLE foreground, MoLE background, MoGE), one bar per expert;
    the experts that fired (non-zero weight) are coloured, the others grey.

    Raises:
        MoEFusionError: no gates (a model variant without mixtures).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not gates:
        raise MoEFusionError("this model has no gates to show")
    fig = Figure(figsize=(3.6 * len(gates), 2.2), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(gates), squeeze=False)[0]
    for ax, (name, weights) in zip(axes, gates.items(), strict=True):
        w = np.asarray(weights, dtype=np.float64)
        fired = set(fired_experts(w))
        x = np.arange(len(w))
        colors = [_FIRED_COLOR if i in fired else _IDLE_COLOR for i in x]
        # idle experts get a sliver, so that every expert of the mixture is visible
        ax.bar(x, np.maximum(w, 0.015), color=colors, width=0.7)
        for i, v in enumerate(w):
            if v > 0:
                ax.text(i, v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        # 1-based, as the paper, the report and `moefusion inspect` number experts
        ax.set_xticks(x, [f"E{i + 1}" for i in x], fontsize=8)
        ax.set_ylim(0.0, 1.1)
        ax.set_yticks([0.0, 0.5, 1.0])
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"{GATE_TITLES.get(name, name)}: {len(fired)} fired", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("gate weight", fontsize=8)
    fig.tight_layout(pad=0.4)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def attention_overlay(attention: np.ndarray, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The attention map as a heat-map (jet, fixed 0..1 scale) over ``image`` -> ``HxWx3``
    uint8. ``image`` is ``HxW`` or ``HxWx3`` in [0, 1], shown gray so the colours read.

    Raises:
        MoEFusionError: the two differ in size.
    """
    att = np.asarray(attention, dtype=np.float32)
    base = np.asarray(image, dtype=np.float32)
    if base.ndim == 3:
        base = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if att.shape != base.shape:
        raise MoEFusionError(f"attention map {att.shape} and image {base.shape} differ in size")
    heat = cv2.applyColorMap(to_u8(np.clip(att, 0.0, 1.0)), cv2.COLORMAP_JET)[..., ::-1]
    gray = np.repeat(base[..., None], 3, axis=2) * 255.0
    out = (1.0 - alpha) * gray + alpha * heat.astype(np.float32)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def fuse_with_baseline(dp: DemoPair, method: str) -> np.ndarray:
    """The pair fused by a classical method (:data:`moefusion.baselines.BASELINES`) from
    the same gray images the network got -> ``HxW`` float64 in [0, 1]."""
    return fuse_baseline(dp.pair.ir, dp.pair.vi, method)


# ----------------------------------------------------------------------------- metrics


def paper_metrics(dp: DemoPair, fused: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{method: {metric: value}}``: the eight metrics of MoE-Fusion Table 1 (paper
    convention) of each fused ``HxW`` [0, 1] image, rounded to 8 bits as it is saved."""
    return {
        method: compute(dp.ir_u8, dp.vi_u8, to_u8(np.asarray(f)), CONVENTION, TABLE1_METRICS)
        for method, f in fused.items()
    }


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def metrics_markdown(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table, one row per method, one column per metric; the better value of
    each metric in bold (every one is higher-is-better except MSE)."""
    methods = list(metrics)
    names = list(next(iter(metrics.values()))) if methods else []
    lines = [
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    best: dict[str, float] = {}
    for m in names:
        values = [metrics[k][m] for k in methods if np.isfinite(metrics[k][m])]
        if len(values) > 1:
            best[m] = max(values) if HIGHER_IS_BETTER.get(m, True) else min(values)
    for k in methods:
        cells = []
        for m in names:
            text = _fmt(metrics[k][m])
            cells.append(f"**{text}**" if best.get(m) == metrics[k][m] else text)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ result


@dataclass
class DemoResult:
    """Everything the page shows for one pair.

    Attributes:
        pair: the decoded pair.
        fusion: the network's result (``fused``, ``color``, ``gates``, ``attention``).
        baseline: the classical method compared; ``baseline_fused`` its ``HxW`` output.
        metrics: ``{method: {metric: value}}`` for the network and the baseline.
        seconds: time the network took.
    """

    pair: DemoPair
    fusion: FusionResult
    baseline: str
    baseline_fused: np.ndarray
    metrics: dict[str, dict[str, float]]
    seconds: float

    def panels(self, max_side: int = PANEL_SIDE) -> dict[str, np.ndarray]:
        """The images to show, ``HxW`` or ``HxWx3`` uint8, longer side at most
        ``max_side`` (the downloads keep the full size): ``ir``, ``vi``, ``fused``,
        ``fused_color``, ``attention`` (over the fused image), ``baseline``."""
        from moefusion.figures import thumbnail

        p, f = self.pair.pair, self.fusion
        assert f.color is not None

        def small(image: np.ndarray) -> np.ndarray:
            return to_u8(np.clip(thumbnail(image, max_side), 0.0, 1.0))

        fused = thumbnail(f.fused, max_side)
        return {
            "ir": small(p.ir),
            "vi": small(p.vi_rgb) if p.vi_is_color else small(p.vi),
            "fused": to_u8(fused),
            "fused_color": small(f.color),
            "attention": attention_overlay(thumbnail(f.attention, max_side), fused),
            "baseline": small(self.baseline_fused),
        }

    def summary(self, weights_name: str) -> str:
        """One Markdown line: what was fused, how, and which experts fired."""
        h, w = self.pair.pair.ir.shape
        tiles = f" in {self.fusion.tiles} tiles" if self.fusion.tiles > 1 else ""
        fired = "; ".join(
            f"{GATE_TITLES.get(k, k)} E{', E'.join(str(i + 1) for i in sorted(fired_experts(v)))}"
            for k, v in self.fusion.gates.items()
        )
        return (
            f"Fused **{self.pair.name}** ({w}x{h}){tiles} in {self.seconds:.1f} s with "
            f"`{weights_name}`. Experts that fired: {fired}."
        )


def save_downloads(result: DemoResult, folder: Path) -> list[Path]:
    """Write the fused gray, fused colour and baseline images as 8-bit PNGs (the files
    ``moefusion fuse --color`` and ``moefusion baseline`` would write) into ``folder``."""
    name, f = result.pair.name, result.fusion
    assert f.color is not None
    return [
        save_gray_u8(folder / f"{name}_{METHOD_NAME}.png", f.fused),
        save_image_atomic(
            folder / f"{name}_{METHOD_NAME}_color.png",
            colorize_u8(f.fused, result.pair.pair.vi_rgb),
        ),
        save_gray_u8(folder / f"{name}_{result.baseline}.png", result.baseline_fused),
    ]


@dataclass
class DemoOutcome:
    """What one request gives the page: a result and its files, or only a message."""

    message: str
    result: DemoResult | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Demo:
    """The demo's state: the loaded network, the sample pairs, where downloads go, and
    the last fused pair (changing only the baseline does not fuse again).

    Args:
        fuser: the network.
        out_dir: folder for the files to download (one sub-folder per request).
        weights_name: shown in the summary line.
        samples: ``{name: pair}`` offered on the page (:func:`sample_pairs`).
    """

    def __init__(
        self,
        fuser: Fuser,
        out_dir: Path,
        *,
        weights_name: str = "bundled weights",
        samples: Mapping[str, Pair] | None = None,
    ) -> None:
        self.fuser = fuser
        self.out_dir = Path(out_dir)
        self.weights_name = weights_name
        self.samples = dict(samples or {})
        self._lock = threading.Lock()  # one forward pass at a time, whatever the page does
        self._last: tuple[tuple, DemoPair, FusionResult, float] | None = None
        self._requests = 0

    def sample(self, name: str | None) -> tuple[str | None, str | None]:
        """The ``(ir, vi)`` file paths of a sample pair (``(None, None)`` for none)."""
        pair = self.samples.get(name or "")
        return (str(pair.ir), str(pair.vi)) if pair else (None, None)

    def run(
        self,
        ir_path: str | Path | None,
        vi_path: str | Path | None,
        baseline: str = DEFAULT_BASELINE,
        *,
        resize: bool = False,
    ) -> DemoOutcome:
        """Load, fuse, compare and write the downloads; a bad input gives an outcome with
        only a one-line message (never an exception)."""
        try:
            if baseline not in BASELINES:
                raise MoEFusionError(
                    f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}"
                )
            with self._lock:
                dp, fusion, seconds = self._fused(ir_path, vi_path, resize)
                base = fuse_with_baseline(dp, baseline)
                metrics = paper_metrics(dp, {METHOD_NAME: fusion.fused, baseline: base})
                result = DemoResult(dp, fusion, baseline, base, metrics, seconds)
                self._requests += 1
                files = save_downloads(result, self.out_dir / f"{self._requests:05d}")
        except PAIR_ERRORS as exc:
            return DemoOutcome(message=_one_line(exc))
        return DemoOutcome(message=result.summary(self.weights_name), result=result, files=files)

    def _fused(
        self, ir_path: str | Path | None, vi_path: str | Path | None, resize: bool
    ) -> tuple[DemoPair, FusionResult, float]:
        key = (str(ir_path), str(vi_path), resize, *(_mtime(p) for p in (ir_path, vi_path)))
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2], self._last[3]
        dp = load_demo_pair(ir_path, vi_path, resize=resize)
        start = time.perf_counter()
        fusion = fuse_pair(self.fuser, dp)
        seconds = time.perf_counter() - start
        self._last = (key, dp, fusion, seconds)
        return dp, fusion, seconds


def _mtime(path: str | Path | None) -> float | None:
    try:
        return Path(path).stat().st_mtime if path is not None else None
    except OSError:
        return None
