"""Register a visible image onto an infrared one (cameras side by side are never aligned).

Functional API::

    from moefusion.registration import estimate_transform, warp_to

    reg = estimate_transform(ir, vi, method="ecc", model="affine")   # Registration
    print(reg.describe())        # "ecc affine: shift (+6.9, -0.1) px, rotation 2.0 deg, ..."
    vi_on_ir = warp_to(ir.shape, vi, reg)                             # the infrared's grid

``Registration.matrix`` is a 3x3 matrix that maps an **infrared** pixel ``(x, y, 1)`` to
the visible pixel that shows the same point (pixel centres at integer coordinates); the
warp samples the visible image there (``cv2.WARP_INVERSE_MAP``), so the fused image keeps
the infrared frame.

Cross-modal, so neither method looks at raw intensities (a hot person is bright in the
infrared and may be dark in the visible image): both work on **gradient maps**,
``log(1 + |grad(G_1 * I)| / median)`` — where edges are, whatever their polarity and
contrast; the logarithm keeps a few very strong edges from outweighing the rest.

* ``ecc`` (small misalignments, a few pixels or degrees): OpenCV's ECC maximisation
  (``cv2.findTransformECC``, Evangelidis & Psarakis 2008) on the gradient maps,
  coarse to fine over a pyramid (1-3 levels, the coarsest at least ~100 px): at the
  coarsest level translation, then rotation + translation, then the chosen model;
  the finer levels refine the chosen model. The confidence is the final ECC
  correlation coefficient of the two gradient maps.
* ``features`` (larger misalignments): ORB key points and descriptors on the gradient
  maps (8-bit), nearest-neighbour matches with Lowe's ratio test, a RANSAC similarity
  (rotation, scale, shift) fitted to them; then ECC refines that to the chosen model.
  ECC from the identity is tried too and the better correlation wins, so ``features``
  is never worse than ``ecc`` on a pair ECC can do alone.

Failure (ECC does not converge, too little correlation, an implausible transform) raises
:class:`RegistrationError`; the ``fuse`` command then fuses the pair unregistered and says
so on one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from moefusion.errors import MoEFusionError

__all__ = [
    "METHODS",
    "MODELS",
    "Registration",
    "RegistrationError",
    "corner_error",
    "estimate_transform",
    "gradient_map",
    "identity",
    "simulate_misalignment",
    "warp_to",
]

#: ``--align`` values (``none`` means no registration).
METHODS: tuple[str, ...] = ("none", "ecc", "features")
#: ``--align-model`` values.
MODELS: tuple[str, ...] = ("translation", "euclidean", "affine", "homography")

_MOTION = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,
}

#: Below this ECC correlation of the gradient maps a registration is refused. Registered
#: real pairs of the samples reach 0.25-0.55; on unrelated images ECC mostly does not
#: converge, and reached 0.16 once (``benchmarks/bench_registration.py``).
MIN_CORRELATION = 0.2
#: The coarsest pyramid level keeps at least this many pixels on its short side.
_MIN_LEVEL_SIDE = 100
_MAX_LEVELS = 3
#: RANSAC inliers a feature estimate needs to be tried.
_MIN_INLIERS = 8


class RegistrationError(MoEFusionError):
    """The two images could not be registered (too little shared structure, no overlap)."""


@dataclass(frozen=True)
class Registration:
    """Where the visible image lies relative to the infrared one.

    Attributes:
        matrix: ``3x3`` float64, infrared pixel ``(x, y, 1)`` -> visible pixel (see the
            module docstring); the last row is ``(0, 0, 1)`` except for homographies.
        method: ``"none"``, ``"ecc"`` or ``"features"``.
        model: ``"translation"``, ``"euclidean"``, ``"affine"`` or ``"homography"``.
        confidence: ECC correlation coefficient of the two gradient maps after
            registration (-1..1; 1.0 for ``method="none"``, which measures nothing).
        matches: feature matches that passed the ratio test (``features`` only).
        inliers: RANSAC inliers among them (``features`` only).
        source: how the winning estimate started (``"identity"``, ``"features"``,
            ``"previous"``).
        shape: ``(H, W)`` of the infrared frame (for :meth:`parameters`), if known.
    """

    matrix: np.ndarray
    method: str = "none"
    model: str = "affine"
    confidence: float = 1.0
    matches: int | None = None
    inliers: int | None = None
    source: str = "identity"
    shape: tuple[int, int] | None = None

    @property
    def inlier_ratio(self) -> float | None:
        """``inliers / matches`` (``features`` only)."""
        if not self.matches or self.inliers is None:
            return None
        return self.inliers / self.matches

    def parameters(self) -> tuple[float, float, float, float]:
        """``(dx, dy, degrees, scale)`` of the affine part, as
        :func:`simulate_misalignment` takes them: where the centre of the infrared frame
        lies in the visible one, minus the centre (the origin when :attr:`shape` is
        unknown); the rotation of the visible content, counter-clockwise on screen
        positive (``cv2.getRotationMatrix2D``'s sign); the scale."""
        a = self.matrix
        h, w = self.shape if self.shape is not None else (1, 1)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        p = a @ np.array([cx, cy, 1.0])
        dx, dy = p[0] / p[2] - cx, p[1] / p[2] - cy
        scale = math.sqrt(abs(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]))
        rotation = math.degrees(math.atan2(a[0, 1] - a[1, 0], a[0, 0] + a[1, 1]))
        return float(dx), float(dy), rotation, scale

    def describe(self) -> str:
        """One line: the method, the transform and the confidence."""
        if self.method == "none":
            return "no registration (identity)"
        dx, dy, rot, scale = self.parameters()
        text = (
            f"{self.method} {self.model}: shift ({dx:+.1f}, {dy:+.1f}) px, rotation "
            f"{rot:+.2f} deg, scale {scale:.4f}, ECC correlation {self.confidence:.3f}"
        )
        if self.matches is not None:
            ratio = self.inlier_ratio
            text += f", {self.inliers}/{self.matches} inliers"
            text += f" ({ratio:.0%})" if ratio is not None else ""
        return text


def identity(ir_shape: tuple[int, ...], vi_shape: tuple[int, ...] | None = None) -> Registration:
    """No registration; when the sizes differ, the visible frame stretched onto the
    infrared one (pixel centres mapped as ``cv2.resize`` does)."""
    matrix = np.eye(3)
    if vi_shape is not None and tuple(vi_shape[:2]) != tuple(ir_shape[:2]):
        sy, sx = vi_shape[0] / ir_shape[0], vi_shape[1] / ir_shape[1]
        matrix = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return Registration(matrix=matrix)


# ------------------------------------------------------------------------------ maps


def _as_gray01(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return a.astype(np.float32, copy=False)


def gradient_map(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``log(1 + |grad(G_sigma * img)| / median)``, float32 ``HxW``: the edges of an image,
    polarity- and contrast-free, for cross-modal registration. ``img``: ``HxW`` or
    ``HxWx3``, uint8/uint16 or float in [0, 1]."""
    a = _as_gray01(img)
    if sigma > 0:
        a = cv2.GaussianBlur(a, (0, 0), sigma)
    gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    return np.log1p(mag / (float(np.median(mag)) + 1e-6)).astype(np.float32)


def _levels(shape: tuple[int, ...]) -> int:
    side = min(shape[:2])
    n = 1
    while n < _MAX_LEVELS and side / 2**n >= _MIN_LEVEL_SIDE:
        n += 1
    return n


def _scale_matrix(s: float) -> np.ndarray:
    """Full-resolution pixel -> pixel of the image resized by ``s`` (pixel centres)."""
    return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])


def _pyramid(img: np.ndarray, levels: int) -> list[tuple[float, np.ndarray]]:
    """``[(scale, gradient map)]`` from coarse to fine."""
    gray = _as_gray01(img)
    out = []
    for level in range(levels - 1, -1, -1):
        s = 2.0**-level
        small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if level else gray
        out.append((s, gradient_map(small)))
    return out


# ------------------------------------------------------------------------------ ECC


def _ecc_step(
    template: np.ndarray, image: np.ndarray, matrix: np.ndarray, model: str, iterations: int
) -> tuple[float, np.ndarray]:
    homography = model == "homography"
    warp = (matrix if homography else matrix[:2]).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    try:
        cc, warp = cv2.findTransformECC(template, image, warp, _MOTION[model], criteria, None, 5)
    except cv2.error as exc:
        raise RegistrationError(
            "ECC did not converge (the images share too little structure or do not overlap)"
        ) from exc
    out = warp.astype(np.float64)
    return float(cc), out if homography else np.vstack([out, [0.0, 0.0, 1.0]])


def _ecc(
    ir_pyr: list[tuple[float, np.ndarray]],
    vi_pyr: list[tuple[float, np.ndarray]],
    init: np.ndarray,
    model: str,
    *,
    warm_up: bool,
    iterations: int = 100,
) -> tuple[float, np.ndarray]:
    """Coarse-to-fine ECC from ``init`` (full-resolution matrix); ``warm_up`` runs the
    coarsest level as translation, then rotation + translation, before ``model``."""
    matrix = init
    cc = -1.0
    for i, ((s, ir_g), (_, vi_g)) in enumerate(zip(ir_pyr, vi_pyr, strict=True)):
        scale = _scale_matrix(s)
        local = scale @ matrix @ np.linalg.inv(scale)
        # the warm-up widens the basin: 2, then 3 parameters before the full model
        stages = MODELS[: MODELS.index(model) + 1] if warm_up and i == 0 else (model,)
        for stage in stages:
            cc, local = _ecc_step(ir_g, vi_g, local, stage, iterations)
        matrix = np.linalg.inv(scale) @ local @ scale
    return cc, matrix


# ------------------------------------------------------------------------------ features


def _to_u8(grad: np.ndarray) -> np.ndarray:
    top = float(np.percentile(grad, 99.5)) + 1e-6
    return np.clip(grad * (255.0 / top), 0, 255).astype(np.uint8)


def _feature_similarity(
    ir_g: np.ndarray, vi_g: np.ndarray, *, ratio: float = 0.9, features: int = 5000
) -> tuple[np.ndarray | None, int, int]:
    """RANSAC similarity from ORB matches on two gradient maps: ``(matrix or None,
    matches, inliers)``."""
    orb = cv2.ORB_create(nfeatures=features, edgeThreshold=15, fastThreshold=5)
    kp_ir, des_ir = orb.detectAndCompute(_to_u8(ir_g), None)
    kp_vi, des_vi = orb.detectAndCompute(_to_u8(vi_g), None)
    if des_ir is None or des_vi is None or len(kp_ir) < 2 or len(kp_vi) < 2:
        return None, 0, 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(des_ir, des_vi, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < 4:
        return None, len(good), 0
    src = np.float32([kp_ir[g.queryIdx].pt for g in good])
    dst = np.float32([kp_vi[g.trainIdx].pt for g in good])
    affine, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0, maxIters=10000, confidence=0.999
    )
    if affine is None or mask is None:
        return None, len(good), 0
    return np.vstack([affine, [0.0, 0.0, 1.0]]), len(good), int(mask.sum())


# ------------------------------------------------------------------------------ API


def corner_error(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (px) between where ``a`` and ``b`` send the four corners of an
    ``HxW`` frame: the accuracy measure of the registration tests and benchmark."""
    h, w = shape[:2]
    pts = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], dtype=np.float64)
    pa, pb = a @ pts, b @ pts
    pa, pb = pa[:2] / pa[2], pb[:2] / pb[2]
    return float(np.sqrt(((pa - pb) ** 2).sum(0)).max())


def _check_plausible(
    matrix: np.ndarray, ir_shape: tuple[int, ...], vi_shape: tuple[int, ...]
) -> None:
    h, w = ir_shape[:2]
    start = identity(ir_shape, vi_shape).matrix
    det = float(np.linalg.det(matrix[:2, :2] @ np.linalg.inv(start[:2, :2])))
    moved = corner_error(matrix, start, ir_shape)
    if not np.all(np.isfinite(matrix)) or not 0.5 < det < 2.0 or moved > 0.35 * math.hypot(w, h):
        raise RegistrationError(
            f"implausible transform (area scale {det:.2f}, corners moved {moved:.0f} px)"
        )


def estimate_transform(
    ir: np.ndarray,
    vi: np.ndarray,
    method: str = "ecc",
    model: str = "affine",
    *,
    init: Registration | None = None,
    min_confidence: float = MIN_CORRELATION,
) -> Registration:
    """Register ``vi`` onto ``ir``.

    Args:
        ir, vi: ``HxW`` or ``HxWx3`` images (uint8, uint16 or float in [0, 1]); their sizes
            may differ (the visible frame starts stretched onto the infrared one).
        method: ``"ecc"``, ``"features"`` or ``"none"`` (identity, nothing measured).
        model: ``"translation"``, ``"euclidean"``, ``"affine"`` or ``"homography"``.
        init: start from this registration (video: refine the previous frame's estimate;
            ECC then runs the chosen model at every level, without the warm-up).
        min_confidence: refuse results whose ECC correlation is lower.

    Returns:
        :class:`Registration` (``matrix``: infrared pixel -> visible pixel).

    Raises:
        RegistrationError: ECC did not converge, the correlation is below
            ``min_confidence``, or the transform is implausible (area scale outside
            0.5..2, corners moved by more than a third of the diagonal).
        MoEFusionError: unknown method or model.
    """
    if method not in METHODS:
        raise MoEFusionError(f"unknown registration method {method!r}; use {', '.join(METHODS)}")
    if model not in MODELS:
        raise MoEFusionError(f"unknown registration model {model!r}; use {', '.join(MODELS)}")
    ir_shape, vi_shape = np.shape(ir), np.shape(vi)
    if method == "none":
        return replace(identity(ir_shape, vi_shape), shape=(int(ir_shape[0]), int(ir_shape[1])))
    levels = min(_levels(ir_shape), _levels(vi_shape))
    ir_pyr, vi_pyr = _pyramid(ir, levels), _pyramid(vi, levels)

    # starting points, each refined by ECC: (matrix, warm-up, name); the best one wins
    candidates: list[tuple[np.ndarray, bool, str]] = []
    if init is not None:
        candidates.append((init.matrix, False, "previous"))
    else:
        candidates.append((identity(ir_shape, vi_shape).matrix, True, "identity"))
    matches = inliers = None
    if method == "features":
        sim, matches, inliers = _feature_similarity(ir_pyr[-1][1], vi_pyr[-1][1])
        if sim is not None and inliers >= _MIN_INLIERS:
            candidates.insert(0, (sim, False, "features"))

    best: Registration | None = None
    errors: list[str] = []
    for start, warm_up, source in candidates:
        try:
            cc, matrix = _ecc(ir_pyr, vi_pyr, start, model, warm_up=warm_up)
            _check_plausible(matrix, ir_shape, vi_shape)
        except RegistrationError as exc:
            errors.append(f"from {source}: {exc}")
            continue
        if best is None or cc > best.confidence:
            best = Registration(
                matrix=matrix,
                shape=(int(ir_shape[0]), int(ir_shape[1])),
                method=method,
                model=model,
                confidence=cc,
                matches=matches if method == "features" else None,
                inliers=inliers if method == "features" else None,
                source=source,
            )
    if best is None:
        found = f"; {inliers}/{matches} feature inliers" if method == "features" and matches else ""
        raise RegistrationError("; ".join(errors) + found)
    if best.confidence < min_confidence:
        raise RegistrationError(
            f"ECC correlation {best.confidence:.3f} is below {min_confidence:.2f} "
            "(the images share too little structure)"
        )
    return best


def warp_to(ir_shape: tuple[int, ...], vi: np.ndarray, registration: Registration) -> np.ndarray:
    """The visible image resampled onto the infrared grid (bilinear).

    Shapes:
        ``vi [Hv, Wv]`` or ``[Hv, Wv, C]`` -> ``[H, W]`` / ``[H, W, C]`` with
        ``(H, W) = ir_shape[:2]``, same dtype. Infrared pixels that fall outside the
        visible frame are 0.
    """
    h, w = ir_shape[:2]
    src = np.asarray(vi)
    m = registration.matrix
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if src.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        src = src.astype(np.float32)
    if np.allclose(m[2], [0.0, 0.0, 1.0]):
        out = cv2.warpAffine(src, m[:2], (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    else:
        out = cv2.warpPerspective(src, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    if src.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[..., None]
    return out


def simulate_misalignment(
    ir: np.ndarray,
    vi: np.ndarray,
    *,
    shift: tuple[float, float] = (0.0, 0.0),
    degrees: float = 0.0,
    scale: float = 1.0,
    margin: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A registered pair turned into one with a known misalignment (tests, benchmarks).

    The infrared image is cropped by ``margin`` px on every side; the visible image is
    moved by ``shift``, rotated by ``degrees`` and scaled by ``scale`` about the crop's
    centre, and cut to the same frame. The margin keeps real visible pixels everywhere
    (no artificial black border that would hand the registration an easy edge).

    Returns:
        ``(ir_crop, vi_moved, known)``: the two images and the 3x3 matrix that maps an
        ``ir_crop`` pixel to the ``vi_moved`` pixel of the same point *if the input pair
        was perfectly registered*; compose it with the registration of the unmoved pair
        (``shift=(0, 0)``, ``degrees=0``, ``scale=1``) for the truth of a real pair.
    """
    h, w = ir.shape[:2]
    ir_crop = ir[margin : h - margin, margin : w - margin]
    hc, wc = ir_crop.shape[:2]
    rot = np.vstack([cv2.getRotationMatrix2D((wc / 2, hc / 2), degrees, scale), [0, 0, 1.0]])
    known = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]]) @ rot
    to_crop = np.array([[1, 0, -margin], [0, 1, -margin], [0, 0, 1.0]])
    moved = cv2.warpAffine(
        np.asarray(vi),
        (known @ to_crop)[:2],
        (wc, hc),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return np.ascontiguousarray(ir_crop), moved, known
