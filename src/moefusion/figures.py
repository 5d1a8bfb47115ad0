"""Side-by-side comparison figures: one row per pair (infrared, visible, fused, colour).

Uses matplotlib's object API with the Agg canvas (no pyplot, no GUI backend, no global
state), so it is safe in scripts, tests and worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from moefusion.errors import MoEFusionError

if TYPE_CHECKING:
    from moefusion.data.io import LoadedPair

__all__ = [
    "DEFAULT_COLUMNS",
    "MAX_ROWS",
    "FigureRow",
    "save_pair_figure",
    "thumbnail",
    "write_figure",
]

#: Column titles of :func:`save_pair_figure`.
DEFAULT_COLUMNS: tuple[str, ...] = ("infrared", "visible", "fused", "fused (colour)")
#: At most this many rows (pairs) per figure; more would make every panel tiny.
MAX_ROWS = 6


@dataclass
class FigureRow:
    """One pair's panels, all float in [0, 1].

    Attributes:
        title: row label (usually the pair's stem).
        ir: ``HxW`` infrared.
        vi: ``HxW`` gray or ``HxWx3`` RGB visible.
        fused: ``HxW`` fused gray.
        fused_color: ``HxWx3`` colourised fused image, or None (panel left blank).
    """

    title: str
    ir: np.ndarray
    vi: np.ndarray
    fused: np.ndarray
    fused_color: np.ndarray | None = None

    @classmethod
    def from_pair(cls, title: str, pair: LoadedPair, fused: np.ndarray) -> FigureRow:
        """Thumbnails of a decoded pair and its fused image; the colour panel is the
        thumbnail colourised (:func:`moefusion.data.colorize`), the visible panel RGB
        only when the visible image has colour."""
        from moefusion.data.color import colorize

        small_fused, small_rgb = thumbnail(fused), thumbnail(pair.vi_rgb)
        return cls(
            title=title,
            ir=thumbnail(pair.ir),
            vi=small_rgb if pair.vi_is_color else thumbnail(pair.vi),
            fused=small_fused,
            fused_color=colorize(small_fused, small_rgb),
        )


def write_figure(fig: Any, path: str | Path, *, dpi: int = 100, pad: float | None = None) -> Path:
    """Lay out ``fig`` tightly, write it to ``path`` atomically and release it.

    The format follows ``path``'s extension (a temporary file with the same extension is
    renamed onto ``path`` when complete, so a failure never leaves a half-written or
    replaced file); a pyplot figure is closed afterwards, an Agg ``Figure`` simply
    dropped.

    Raises:
        MoEFusionError: the file cannot be written (one line, naming the path).
    """
    from moefusion.atomic import atomic_path

    path = Path(path)
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure(): draw with Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    try:
        if pad is None:
            fig.tight_layout()
        else:
            fig.tight_layout(pad=pad)
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise MoEFusionError(f"cannot save figure {path}: {exc}") from exc
    finally:
        if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot: release it
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def thumbnail(image: np.ndarray, max_side: int = 480) -> np.ndarray:
    """Downscale ``HxW`` / ``HxWx3`` so that its longer side is at most ``max_side`` (area filter).

    Figures of 8000x6000 inputs would otherwise keep full-size copies alive.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(
        np.ascontiguousarray(image, dtype=np.float32), size, interpolation=cv2.INTER_AREA
    )


def save_pair_figure(
    rows: Sequence[FigureRow],
    path: str | Path,
    *,
    max_rows: int = MAX_ROWS,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Save a grid figure with one row per pair (the first ``max_rows``).

    The format follows the file extension (png, pdf, svg, jpg...). Each panel keeps its
    image's aspect ratio; rows may come from images of different sizes.

    Written to a temporary file beside ``path`` and renamed when complete: an existing
    figure is replaced only by a whole new one.

    Returns:
        the path written.

    Raises:
        MoEFusionError: no rows, or the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)[:max_rows]
    if not rows:
        raise MoEFusionError("no pairs to draw in the figure")
    ratio = max(r.ir.shape[0] / r.ir.shape[1] for r in rows)
    fig = Figure(figsize=(panel_inches * len(columns), panel_inches * ratio * len(rows) + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        panels = (row.ir, row.vi, row.fused, row.fused_color)
        for c, image in enumerate(panels[: len(columns)]):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row.title, fontsize=8)
            if image is None:
                ax.set_frame_on(False)
                continue
            image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
            if image.ndim == 2:
                ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
    return write_figure(fig, path, dpi=dpi, pad=0.3)
