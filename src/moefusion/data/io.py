"""Image file input/output: decoding to arrays, [0, 1] normalisation, gray conversion, saving.

Arrays follow the numpy/PIL convention: ``HxW`` (one channel) or ``HxWx3`` (RGB order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from moefusion.errors import ImageReadError, MoEFusionError, PairError

__all__ = [
    "HIGH_BIT_MODES",
    "IMAGE_EXTENSIONS",
    "HighBitMode",
    "LoadedPair",
    "PairResize",
    "decode_pil",
    "image_size",
    "is_image_file",
    "load_gray",
    "load_pair",
    "pair_from_arrays",
    "parse_size",
    "read_image",
    "resize_image",
    "save_gray_u8",
    "save_image_atomic",
    "save_rgb_u8",
    "to_gray",
    "to_unit_float",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

HighBitMode = Literal["percentile", "minmax", "scale", "shift8"]
HIGH_BIT_MODES: tuple[str, ...] = ("percentile", "minmax", "scale", "shift8")

# ITU-R BT.601 luma weights, the ones cv2.COLOR_BGR2GRAY uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_EXIF_ORIENTATION = 0x0112
# Orientations 5..8 include a 90/270 degree rotation, which swaps width and height.
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# PIL refuses images above ~179 Mpixel (decompression-bomb guard); report that as a read
# error naming the file rather than letting PIL's own exception type escape.
_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``HxW`` or ``HxWx3`` (RGB), dtype uint8 or uint16.

    EXIF orientation is applied, alpha is dropped, palette images become RGB and
    16-bit data (1- or 3-channel PNG/TIFF) stays uint16. A 3-channel file whose three
    channels are equal stays 3-channel; use :func:`to_gray` if one channel is wanted.

    Raises:
        ImageReadError: the file is missing, not an image, corrupt or of an unsupported kind.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image file not found: {p}")
    if not p.is_file():
        raise ImageReadError(f"not a file: {p}")
    fmt: str | None = None
    try:
        with Image.open(p) as im:
            fmt = im.format
            if _needs_opencv(im, p):
                # PIL silently truncates 16-bit RGB(A) PNG/TIFF to 8 bits.
                arr = _read_with_opencv(p)
            else:
                im.load()
                arr = decode_pil(im, p)
                if arr.dtype.kind == "f":
                    arr = _float_to_u16(arr, p)
    except ImageReadError:
        raise
    except _PIL_ERRORS as exc:
        arr = _opencv_fallback(p, fmt, exc)
    return np.ascontiguousarray(arr)


def _opencv_fallback(p: Path, fmt: str | None, exc: Exception) -> np.ndarray:
    """The image OpenCV decodes where PIL failed with ``exc``, or :class:`ImageReadError`.

    Files PIL cannot identify, and TIFF compressions it lacks, may still decode in OpenCV.
    Other decode failures (a truncated JPEG/PNG) must not: OpenCV can return a partly grey
    image for those, with a stray warning of its own on stderr, instead of failing.
    """
    if not (isinstance(exc, UnidentifiedImageError) or fmt == "TIFF"):
        raise ImageReadError(f"cannot read image {p}: {exc}") from exc
    try:
        return _read_with_opencv(p)
    except ImageReadError:
        raise ImageReadError(f"cannot read image {p}: {exc}") from exc


def _needs_opencv(im: Image.Image, path: Path) -> bool:
    if im.mode not in ("RGB", "RGBA"):
        return False
    if im.format == "PNG":
        with path.open("rb") as fh:
            header = fh.read(26)
        # PNG IHDR: the bit depth is byte 24 of the file.
        return len(header) > 24 and header[24] == 16
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(int(b) > 8 for b in bits)
    return False


def decode_pil(im: Image.Image, source: str | Path = "PIL image") -> np.ndarray:
    """The one PIL decoder: ``HxW`` or ``HxWx3`` (RGB), EXIF orientation applied.

    uint8 for 1/L/LA/RGB/palette/CMYK/YCbCr... (alpha dropped), uint16 for 16-bit and
    32-bit integer data in 0..65535, float32 as stored for mode F (32-bit float): files
    map it to uint16 (:func:`read_image`), in-memory images keep it (``Fuser``).
    ``source`` names the file (or object) in error messages.

    Raises:
        ImageReadError: unsupported mode, or integer data outside 0..65535.
    """
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.asarray(im, dtype=np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.uint8)
    if mode in ("RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La"):
        return np.asarray(im.convert("RGBA" if mode in ("P", "PA") else "RGB"))[..., :3].copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # I;16B is big-endian: astype gives native byte order.
        return np.asarray(im).astype(np.uint16)
    if mode == "I" or mode.startswith("I;"):
        return _integer_to_u16(np.asarray(im), source)
    if mode == "F":
        return np.array(im, dtype=np.float32)  # a writable copy, as torch wants
    raise ImageReadError(f"unsupported image mode {mode!r} in {source}")


def _integer_to_u16(arr: np.ndarray, path: str | Path) -> np.ndarray:
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ImageReadError(
            f"unsupported pixel range [{arr.min()}, {arr.max()}] in {path}: "
            "expected 8- or 16-bit unsigned data"
        )
    return arr.astype(np.uint16)


def _float_to_u16(arr: np.ndarray, path: Path) -> np.ndarray:
    """Float frames: [0, 1] data is scaled to 16 bits, integral [0, 65535] data kept."""
    if not np.all(np.isfinite(arr)):
        raise ImageReadError(f"non-finite pixel values in {path}")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.floor(arr.astype(np.float64) * 65535.0 + 0.5).astype(np.uint16)
    if lo >= 0.0 and hi <= 65535.0:
        return np.floor(arr.astype(np.float64) + 0.5).astype(np.uint16)
    raise ImageReadError(f"unsupported float pixel range [{lo}, {hi}] in {path}")


def _read_with_opencv(path: Path) -> np.ndarray:
    try:
        buf = np.fromfile(path, dtype=np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except (OSError, cv2.error) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    if arr is None:
        raise ImageReadError(f"cannot read image {path}: not a supported image file")
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            arr = arr[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
        else:
            raise ImageReadError(f"unsupported channel count {arr.shape[2]} in {path}")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind in "iu":
        return _integer_to_u16(arr, path)
    if arr.dtype.kind == "f":
        return _float_to_u16(arr, path)
    raise ImageReadError(f"unsupported pixel type {arr.dtype} in {path}")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image` would return it, without decoding pixels.

    EXIF orientations 5-8 (90/270 degree rotations) swap width and height.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"image file not found: {p}" if not p.exists() else f"not a file: {p}")
    fmt: str | None = None
    try:
        with Image.open(p) as im:
            fmt = im.format
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_ERRORS as exc:
        # rare formats only OpenCV decodes: pay for a full decode rather than fail
        arr = _opencv_fallback(p, fmt, exc)
        return int(arr.shape[1]), int(arr.shape[0])
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)


# ----------------------------------------------------------------------------- conversion


def to_unit_float(img: np.ndarray, *, high_bit: str = "percentile") -> np.ndarray:
    """Convert a decoded image to float32 in [0, 1], same shape.

    uint8 is divided by 255. uint16 depends on ``high_bit``:

    - ``"percentile"`` (default): stretch the 1st..99th percentile to 0..1 and clip.
      Meant for radiometric thermal frames (e.g. 14-bit FLIR data in 16-bit PNG/TIFF)
      whose useful range is a narrow band of the 16-bit scale.
    - ``"minmax"``: stretch the minimum..maximum to 0..1.
    - ``"scale"``: divide by 65535 (for data that really spans the 16-bit range).
    - ``"shift8"``: keep the 8 most significant bits (``>> 8``), then divide by 255.

    The stretch is computed over all channels together so colour balance is kept. A
    constant image cannot be stretched and falls back to ``"scale"``. Float input is
    clipped to [0, 1].

    Raises:
        MoEFusionError: unknown ``high_bit`` mode or unsupported dtype.
    """
    if high_bit not in HIGH_BIT_MODES:
        raise MoEFusionError(
            f"unknown high_bit mode {high_bit!r}; choose one of {', '.join(HIGH_BIT_MODES)}"
        )
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return _high_bit_to_unit(arr, high_bit)
    if arr.dtype.kind == "f":
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    raise MoEFusionError(f"unsupported image dtype {arr.dtype}: expected uint8 or uint16")


def _high_bit_to_unit(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "shift8":
        return (arr >> 8).astype(np.float32) / np.float32(255.0)
    if mode == "percentile":
        lo, hi = np.percentile(arr, [1.0, 99.0])
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max())
    elif mode == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
    else:
        lo, hi = 0.0, 65535.0
    if hi <= lo:
        lo, hi = 0.0, 65535.0
    out = (arr.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def to_gray(img: np.ndarray) -> np.ndarray:
    """``HxWx3`` RGB -> ``HxW`` luma (0.299 R + 0.587 G + 0.114 B); ``HxW`` passes through.

    These are the weights of cv2's BGR2GRAY, which the release applies to RGB data.
    """
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0].astype(np.float32)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return (arr.astype(np.float32) @ _LUMA).astype(np.float32)
    raise MoEFusionError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")


def _channels_equal(arr: np.ndarray) -> bool:
    return bool(
        np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    )


# ------------------------------------------------------------------------------ resizing

#: How :func:`load_pair` resizes a pair whose two images differ in size: None (refuse),
#: ``"ir"`` (the visible image to the infrared one's size), ``"vi"`` (the infrared to
#: the visible one's) or ``(W, H)`` (both).
PairResize = str | tuple[int, int] | None


def parse_size(spec: str) -> tuple[int, int] | None:
    """``"640x480"`` (``x`` or ``X``, spaces allowed) -> ``(640, 480)``; None when ``spec``
    is not of that form or a side is below 2."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < 2:
        return None
    return int(m.group(1)), int(m.group(2))


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``HxW[x3]`` image -> size ``(W, H)``, OpenCV bilinear (``INTER_LINEAR``); an image
    already of that size is returned as is. Any dtype cv2 resizes (uint8, float32...)."""
    if (img.shape[1], img.shape[0]) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


# -------------------------------------------------------------------------------- loading


def load_gray(path: str | Path, *, high_bit: str = "percentile") -> np.ndarray:
    """Read an image as ``HxW`` float32 gray in [0, 1]."""
    return to_gray(to_unit_float(read_image(path), high_bit=high_bit))


@dataclass
class LoadedPair:
    """One decoded infrared/visible pair, all float32 in [0, 1].

    Attributes:
        ir: ``HxW`` infrared.
        vi: ``HxW`` gray visible (BT.601 luma of ``vi_rgb``).
        vi_rgb: ``HxWx3`` visible (gray repeated when the file has one channel).
        vi_is_color: the visible file has three channels that are not all equal.
    """

    ir: np.ndarray
    vi: np.ndarray
    vi_rgb: np.ndarray
    vi_is_color: bool


def load_pair(
    ir_path: str | Path,
    vi_path: str | Path,
    *,
    high_bit: str = "percentile",
    resize: PairResize = None,
) -> LoadedPair:
    """Decode an infrared/visible pair.

    ``resize`` (see :data:`PairResize`) resizes the [0, 1] images (bilinear,
    :func:`resize_image`) before the gray conversion; ``vi_is_color`` then describes
    the resized visible image.

    Raises:
        ImageReadError: either file cannot be read.
        PairError: the two images differ in size and ``resize`` is None (the message
            names both files and sizes).
    """
    return pair_from_arrays(
        read_image(ir_path),
        read_image(vi_path),
        high_bit=high_bit,
        resize=resize,
        names=(str(ir_path), str(vi_path)),
    )


def pair_from_arrays(
    ir_raw: np.ndarray,
    vi_raw: np.ndarray,
    *,
    high_bit: str = "percentile",
    resize: PairResize = None,
    names: tuple[str, str] = ("infrared", "visible"),
) -> LoadedPair:
    """:func:`load_pair` for decoded images (``HxW`` / ``HxWx3`` RGB, uint8/uint16), e.g.
    video frames; ``names`` name the two in the size-mismatch error."""
    ir_path, vi_path = names
    if resize is not None:
        return _resized_pair(
            to_unit_float(ir_raw, high_bit=high_bit),
            to_unit_float(vi_raw, high_bit=high_bit),
            resize,
        )
    if ir_raw.shape[:2] != vi_raw.shape[:2]:
        (ih, iw), (vh, vw) = ir_raw.shape[:2], vi_raw.shape[:2]
        raise PairError(
            f"infrared and visible images differ in size: {ir_path} is {iw}x{ih}, "
            f"{vi_path} is {vw}x{vh} (width x height)"
        )
    ir = to_gray(to_unit_float(ir_raw, high_bit=high_bit))
    vi_f = to_unit_float(vi_raw, high_bit=high_bit)
    if vi_f.ndim == 2:
        vi_rgb = np.repeat(vi_f[..., None], 3, axis=2)
        is_color = False
    else:
        vi_rgb = vi_f
        is_color = not _channels_equal(vi_raw)
    return LoadedPair(ir=ir, vi=to_gray(vi_rgb), vi_rgb=vi_rgb, vi_is_color=is_color)


def _resized_pair(ir_f: np.ndarray, vi_f: np.ndarray, resize: PairResize) -> LoadedPair:
    if resize == "ir":
        size = (ir_f.shape[1], ir_f.shape[0])
    elif resize == "vi":
        size = (vi_f.shape[1], vi_f.shape[0])
    elif isinstance(resize, tuple):
        size = resize
    else:
        raise MoEFusionError(f"resize must be None, 'ir', 'vi' or (W, H), got {resize!r}")
    ir_f, vi_f = resize_image(ir_f, size), resize_image(vi_f, size)
    vi_rgb = vi_f if vi_f.ndim == 3 else np.repeat(vi_f[..., None], 3, axis=2)
    is_color = vi_f.ndim == 3 and not _channels_equal(vi_f)
    return LoadedPair(
        ir=to_gray(ir_f) if ir_f.ndim == 3 else ir_f,
        vi=to_gray(vi_rgb),
        vi_rgb=vi_rgb,
        vi_is_color=is_color,
    )


# --------------------------------------------------------------------------------- saving


def _to_u8(img01: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(np.asarray(img01, dtype=np.float64), nan=0.0)
    return np.clip(np.floor(arr * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _format_for(ext: str) -> str | None:
    """PIL's format name for a file extension. The common formats (PNG, JPEG, BMP, GIF,
    PPM) are known after ``Image.preinit()``; only other extensions load every PIL
    plugin (``registered_extensions``, ~0.1-0.2 s of start-up)."""
    Image.preinit()
    return Image.EXTENSION.get(ext) or Image.registered_extensions().get(ext)


def save_image_atomic(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Save an array or PIL image to ``path`` (format from the extension) atomically.

    The image is encoded into a temporary file beside ``path`` and renamed onto it when
    complete, so an interrupt never leaves a truncated image (see :mod:`moefusion.atomic`).

    Raises:
        MoEFusionError: unknown extension, or the file cannot be written.
    """
    from moefusion.atomic import atomic_path

    p = Path(path)
    fmt = _format_for(p.suffix.lower())
    if fmt is None:
        raise MoEFusionError(f"cannot save image {p}: unknown image extension {p.suffix!r}")
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    try:
        with atomic_path(p) as tmp:
            im.save(tmp, format=fmt)
    except (ValueError, KeyError, OSError) as exc:
        raise MoEFusionError(f"cannot save image {p}: {exc}") from exc
    return p


def _save(path: str | Path, arr: np.ndarray) -> Path:
    return save_image_atomic(path, arr)


def save_gray_u8(path: str | Path, img01: np.ndarray) -> Path:
    """Save an ``HxW`` (or ``HxWx1``) [0, 1] image as 8-bit gray; format from the extension.

    Values map to ``floor(x * 255 + 0.5)`` clipped to 0..255 (NaN -> 0). Parent folders
    are created. Returns the path.
    """
    arr = np.asarray(img01)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MoEFusionError(f"save_gray_u8 expects an HxW image, got shape {arr.shape}")
    return _save(path, _to_u8(arr))


def save_rgb_u8(path: str | Path, rgb01: np.ndarray) -> Path:
    """Save an ``HxWx3`` [0, 1] RGB image as 8-bit RGB; same rounding as :func:`save_gray_u8`."""
    arr = np.asarray(rgb01)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MoEFusionError(f"save_rgb_u8 expects an HxWx3 image, got shape {arr.shape}")
    return _save(path, _to_u8(arr))
