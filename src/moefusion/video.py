"""Video input and output: frame sources, frame matching between two streams, a writer.

Sources (:func:`open_source`):

* a video file, any container and codec the installed OpenCV (FFmpeg backend) decodes
  (:class:`VideoSource`): frames come with the container's timestamps and frame rate;
* a folder of numbered frames (:class:`SequenceSource`, ``--sequence``): the images of
  the folder, ordered by the last number in their names (``frame_9.png`` before
  ``frame_10.png``), decoded like any image (8 or 16 bit); no timestamps.

Everything streams: a source holds one decoded frame (plus one look-ahead frame of the
visible stream when resampling), the writer writes each frame as it comes, so memory
does not grow with the length of the video.

Matching (:func:`match_frames`): frame ``i`` with frame ``i`` (by index) unless both are
videos with different frame rates; then every infrared frame is paired with the visible
frame nearest in time (timestamps, both streams taken to start together), i.e. the
visible stream is resampled to the infrared one's rate. Lengths that disagree are an
error unless ``trim`` (fuse the common part).

Writing (:func:`open_writer`): into a hidden temporary file beside the target (same
extension: OpenCV picks the container from it), renamed onto the target when the block
completes and removed if it raises (``KeyboardInterrupt`` included), so an interrupted
run leaves no file rather than an unplayable one.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from moefusion.errors import MoEFusionError, PairError

__all__ = [
    "VIDEO_EXTENSIONS",
    "VIDEO_FORMATS",
    "Frame",
    "FrameMatch",
    "SequenceSource",
    "Source",
    "VideoSource",
    "is_video_file",
    "match_frames",
    "open_source",
    "open_writer",
]

#: File suffixes taken for videos (any other non-image file is tried as a video too).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
    ".ts", ".mts", ".m2ts", ".ogv", ".3gp", ".asf", ".y4m",
)  # fmt: skip

#: ``--video-format`` -> (FourCC, extension, description).
VIDEO_FORMATS: dict[str, tuple[str, str, str]] = {
    "mp4": ("mp4v", ".mp4", "MPEG-4 part 2 in MP4"),
    "avi": ("MJPG", ".avi", "Motion JPEG in AVI"),
    "mkv": ("FFV1", ".mkv", "FFV1 (lossless) in Matroska"),
}

#: Frame rate given to frame sequences when nothing else says (``--fps``).
DEFAULT_FPS = 25.0


def is_video_file(path: str | Path) -> bool:
    """True when the file name ends in one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: position in its stream, from 0.
        time: seconds since the stream's first frame (container timestamps), or None
            (frame sequences).
        image: ``HxW`` or ``HxWx3`` RGB, uint8 (uint16 for 16-bit sequence frames).
        name: the file of a sequence frame, else ``""``.
    """

    index: int
    time: float | None
    image: np.ndarray
    name: str = ""


class Source:
    """A stream of frames: a video file or a folder of numbered frames.

    Attributes:
        path: the file or folder.
        kind: ``"video"`` or ``"sequence"``.
        fps: frames per second (None: unknown, e.g. a sequence).
        count: number of frames (a video's is the container's figure; None: unknown).
        size: ``(width, height)``.
    """

    path: Path
    kind: str
    fps: float | None
    count: int | None
    size: tuple[int, int]

    @property
    def has_timestamps(self) -> bool:
        return self.kind == "video" and self.fps is not None

    def frames(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def describe(self) -> str:
        w, h = self.size
        rate = f", {self.fps:g} fps" if self.fps else ""
        count = f"{self.count} frames" if self.count is not None else "? frames"
        return f"{self.path} ({self.kind}, {w}x{h}, {count}{rate})"


class VideoSource(Source):
    """A video file read with ``cv2.VideoCapture`` (frames as RGB)."""

    kind = "video"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise MoEFusionError(f"no such video file: {self.path}")
        if self.path.is_dir():
            raise MoEFusionError(
                f"{self.path} is a folder; pass --sequence to read a folder of numbered frames"
            )
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise MoEFusionError(
                f"cannot read video {self.path}: OpenCV cannot open it (not a video, or a "
                "codec this OpenCV build lacks)"
            )
        ok, first = self._cap.read()
        if not ok or first is None:
            self.close()
            raise MoEFusionError(f"cannot read video {self.path}: no frame could be decoded")
        self._first: np.ndarray | None = first
        self._first_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.count = count if count > 0 else None
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self._used = False

    def frames(self) -> Iterator[Frame]:
        if self._used:
            raise RuntimeError("a VideoSource can be read once")
        self._used = True
        index = 0
        bgr, ms = self._first, self._first_ms
        self._first = None
        last_time = -1.0
        while bgr is not None:
            time = (ms - self._first_ms) / 1000.0
            if self.fps is not None and (time <= last_time or (index and ms == 0)):
                time = index / self.fps  # a backend without timestamps: the nominal rate
            last_time = time
            yield Frame(index, time, _bgr_to_rgb(bgr))
            index += 1
            ok, bgr = self._cap.read()
            if not ok:
                break
            ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        self.close()

    def close(self) -> None:
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()
            self._cap = None


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return bgr
    if bgr.shape[2] == 1:
        return bgr[..., 0]
    return cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)


_NUMBER = re.compile(r"\d+")


class SequenceSource(Source):
    """A folder of numbered frames, ordered by the last number in each file name."""

    kind = "sequence"

    def __init__(self, folder: str | Path, fps: float | None = None) -> None:
        from moefusion.data.io import image_size, is_image_file

        self.path = Path(folder)
        if not self.path.is_dir():
            what = "no such folder" if not self.path.exists() else "not a folder"
            raise MoEFusionError(f"sequence of numbered frames: {what}: {self.path}")
        files = [
            p
            for p in self.path.iterdir()
            if p.is_file() and not p.name.startswith(".") and is_image_file(p)
        ]
        if not files:
            raise MoEFusionError(f"no frames (image files) in sequence folder {self.path}")
        unnumbered = [p.name for p in files if not _NUMBER.search(p.stem)]
        if unnumbered:
            raise MoEFusionError(
                f"sequence folder {self.path}: frame file(s) without a number in the name: "
                + ", ".join(sorted(unnumbered)[:5])
            )
        numbers: dict[int, str] = {}
        for p in files:
            n = int(_NUMBER.findall(p.stem)[-1])
            if n in numbers:
                raise MoEFusionError(
                    f"sequence folder {self.path}: {numbers[n]} and {p.name} have the same "
                    f"frame number {n}"
                )
            numbers[n] = p.name
        self.files = [self.path / numbers[n] for n in sorted(numbers)]
        self.fps = fps
        self.count = len(self.files)
        self.size = image_size(self.files[0])

    @property
    def has_timestamps(self) -> bool:
        return False

    def frames(self) -> Iterator[Frame]:
        from moefusion.data.io import read_image

        for i, p in enumerate(self.files):
            image = read_image(p)
            if (image.shape[1], image.shape[0]) != self.size:
                w, h = self.size
                raise MoEFusionError(
                    f"sequence folder {self.path}: frame {p.name} is "
                    f"{image.shape[1]}x{image.shape[0]}, the first frame {w}x{h}"
                )
            yield Frame(i, None, image, p.name)


def open_source(path: str | Path, *, sequence: bool, fps: float | None = None) -> Source:
    """A folder -> :class:`SequenceSource` (needs ``sequence``), a file ->
    :class:`VideoSource`.

    Raises:
        MoEFusionError: missing, unreadable or empty input (one line naming it).
    """
    p = Path(path)
    if p.is_dir():
        if not sequence:
            raise MoEFusionError(
                f"{p} is a folder; pass --sequence to read it as numbered video frames"
            )
        return SequenceSource(p, fps)
    return VideoSource(p)


# ------------------------------------------------------------------------------ matching


@dataclass
class FrameMatch:
    """How two streams are paired frame by frame (:func:`match_frames`).

    Attributes:
        by_time: pair by timestamps (resampling the visible stream), else by index.
        total: frame pairs expected (None: unknown).
        fps: frame rate of the output (the infrared stream's).
        note: one line saying what was chosen, for stderr.
    """

    ir: Source
    vi: Source
    by_time: bool
    total: int | None
    fps: float
    note: str

    def pairs(self) -> Iterator[tuple[Frame, Frame]]:
        """``(infrared frame, visible frame)`` in infrared order, streamed."""
        ir_frames = self.ir.frames()
        vi_frames = self.vi.frames()
        try:
            if self.by_time:
                yield from self._by_time(ir_frames, vi_frames)
            else:
                for n, pair in enumerate(zip(ir_frames, vi_frames, strict=False)):
                    if self.total is not None and n >= self.total:
                        break
                    yield pair
        finally:
            self.ir.close()
            self.vi.close()

    def _by_time(
        self, ir_frames: Iterator[Frame], vi_frames: Iterator[Frame]
    ) -> Iterator[tuple[Frame, Frame]]:
        period = 1.0 / self.vi.fps if self.vi.fps else 0.0
        cur = next(vi_frames, None)
        nxt = next(vi_frames, None)
        for n, f in enumerate(ir_frames):
            if cur is None or (self.total is not None and n >= self.total):
                break
            t = f.time or 0.0
            while nxt is not None and abs((nxt.time or 0.0) - t) <= abs((cur.time or 0.0) - t):
                cur, nxt = nxt, next(vi_frames, None)
            if nxt is None and t > (cur.time or 0.0) + period:
                break  # the visible stream has ended
            yield f, cur


def _duration(src: Source) -> float | None:
    if src.count is None or not src.fps:
        return None
    return src.count / src.fps


def match_frames(
    ir: Source, vi: Source, *, trim: bool = False, fps: float | None = None
) -> FrameMatch:
    """Decide how to pair the frames of two streams (see the module docstring).

    Args:
        fps: the output rate when the infrared stream has none (a sequence): default
            the visible video's rate, else :data:`DEFAULT_FPS`.

    Raises:
        PairError: the streams' lengths (frames, or durations when matching by time)
            differ and ``trim`` is False.
    """
    out_fps = ir.fps or fps or vi.fps or DEFAULT_FPS
    rates_differ = (
        ir.has_timestamps
        and vi.has_timestamps
        and abs(ir.fps - vi.fps) > 1e-3 * max(ir.fps, vi.fps)  # type: ignore[operator]
    )
    if rates_differ:
        d_ir, d_vi = _duration(ir), _duration(vi)
        total = ir.count
        if d_ir is not None and d_vi is not None:
            slack = 1.0 / ir.fps + 1.0 / vi.fps  # type: ignore[operator]
            if abs(d_ir - d_vi) > slack:
                if not trim:
                    raise PairError(
                        f"the streams differ in length: infrared {ir.path} lasts {d_ir:.2f} s "
                        f"({ir.count} frames at {ir.fps:g} fps) but visible {vi.path} "
                        f"{d_vi:.2f} s ({vi.count} frames at {vi.fps:g} fps); pass --trim to "
                        "fuse the common part"
                    )
                total = min(ir.count or 0, math.floor(d_vi * ir.fps + 1e-6))  # type: ignore[operator]
        note = (
            f"infrared {ir.fps:g} fps, visible {vi.fps:g} fps: each infrared frame is fused "
            f"with the visible frame nearest in time (timestamps); output at {out_fps:g} fps"
        )
        return FrameMatch(ir, vi, True, total, out_fps, note)

    counts = [c for c in (ir.count, vi.count) if c is not None]
    total = min(counts) if counts else None
    if len(counts) == 2 and ir.count != vi.count and not trim:
        raise PairError(
            f"the streams differ in length: infrared {ir.path} has {ir.count} frames but "
            f"visible {vi.path} has {vi.count} (matched by index); pass --trim to fuse "
            f"the first {total}"
        )
    why = (
        f"both {out_fps:g} fps"
        if ir.has_timestamps and vi.has_timestamps
        else "frame sequences have no timestamps"
    )
    note = f"frames matched by index ({why}); output at {out_fps:g} fps"
    return FrameMatch(ir, vi, False, total, out_fps, note)


# ------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def open_writer(
    path: str | Path, *, fps: float, size: tuple[int, int], color: bool, fmt: str = "mp4"
) -> Iterator[Callable[[np.ndarray], None]]:
    """Yield ``write(frame)`` (``HxW`` uint8 gray, or ``HxWx3`` uint8 RGB with ``color``)
    for a video at ``path`` that appears only when the block completes.

    Raises:
        MoEFusionError: unknown format, or OpenCV cannot open a writer for it.
    """
    from moefusion.atomic import atomic_path

    if fmt not in VIDEO_FORMATS:
        raise MoEFusionError(f"unknown video format {fmt!r}; use {', '.join(VIDEO_FORMATS)}")
    fourcc, _, what = VIDEO_FORMATS[fmt]
    target = Path(path)
    with atomic_path(target, keep_suffix=True) as tmp:
        writer = cv2.VideoWriter(
            str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), size, isColor=color
        )
        try:
            if not writer.isOpened():
                raise MoEFusionError(
                    f"cannot write video {target}: this OpenCV build has no {what} encoder; "
                    "try another --video-format"
                )
            width, height = size

            def write(frame: np.ndarray) -> None:
                if frame.shape[:2] != (height, width):
                    raise MoEFusionError(
                        f"internal error: frame of {frame.shape[1]}x{frame.shape[0]} for a "
                        f"{width}x{height} video"
                    )
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if color else frame)

            yield write
        finally:
            writer.release()
