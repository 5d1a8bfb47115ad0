"""The video and registration options of ``moefusion fuse``, and their checks.

Kept apart from the modules that do the work (:mod:`._fuse_video`, :mod:`._fuse_align`)
so that building the parser imports nothing heavy (no OpenCV, numpy or torch).
"""

from __future__ import annotations

import argparse

from moefusion.commands._common import refuse_given
from moefusion.errors import MoEFusionError

#: ``--align-model`` values (:data:`moefusion.registration.MODELS`).
ALIGN_MODELS = ("translation", "euclidean", "affine", "homography")
#: ``--video-format`` values (:data:`moefusion.video.VIDEO_FORMATS`).
VIDEO_FORMAT_NAMES = ("mp4", "avi", "mkv")

#: Options only videos take: attribute -> option name (their defaults are None / False).
VIDEO_ONLY = {
    "sequence": "--sequence",
    "fps": "--fps",
    "trim": "--trim",
    "temporal_smoothing": "--temporal-smoothing",
    "video_format": "--video-format",
    "align_every": "--align-every",
}
#: Options only image pairs take: attribute -> (option name, default).
IMAGES_ONLY = {
    "recursive": ("--recursive", False),
    "skip_existing": ("--skip-existing", False),
    "devices": ("--devices", 1),
    "figure": ("--figure", None),
}


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the video and ``--align*`` options to the ``fuse`` parser."""
    v = p.add_argument_group("videos (two video files, or two frame folders with --sequence)")
    v.add_argument(
        "--sequence",
        action="store_true",
        help="--ir/--vi are two folders of numbered frames (frame_0001.png, ...): fuse "
        "them into a video",
    )
    v.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate of --sequence folders (default: the visible video's, else 25)",
    )
    v.add_argument(
        "--trim",
        action="store_true",
        help="streams of different lengths: fuse the common part (default: refuse)",
    )
    v.add_argument(
        "--temporal-smoothing",
        type=float,
        default=None,
        metavar="F",
        help="exponential moving average of each gate's logits over the frames, "
        "m_t = F*m_(t-1) + (1-F)*z_t, before the top-K choice; F in [0, 1), default 0 (off)",
    )
    v.add_argument(
        "--video-format",
        choices=VIDEO_FORMAT_NAMES,
        default=None,
        help="output video: mp4 (MPEG-4 part 2, default), avi (Motion JPEG), mkv (FFV1, lossless)",
    )
    a = p.add_argument_group("registration (images and videos)")
    a.add_argument(
        "--align",
        choices=("none", "ecc", "features"),
        default="none",
        help="register the visible image onto the infrared one before fusing: ecc "
        "(gradient-map ECC, small misalignments), features (ORB + RANSAC on gradient "
        "maps, refined by ECC; larger ones); default none",
    )
    a.add_argument(
        "--align-model",
        choices=ALIGN_MODELS,
        default=None,
        help="the transform --align estimates (default affine); needs --align",
    )
    a.add_argument(
        "--align-every",
        type=int,
        default=None,
        metavar="N",
        help="videos: refine the registration (ECC from the current one) every N frames; "
        "default 0: estimate once, on the first frame",
    )


def check_align_options(args: argparse.Namespace) -> None:
    """``--align-model`` chooses a transform only when ``--align`` estimates one."""
    if getattr(args, "align_model", None) is not None and getattr(args, "align", "none") == "none":
        raise MoEFusionError("--align-model needs --align ecc or --align features")


def check_image_options(args: argparse.Namespace) -> None:
    """Image pairs: refuse the video-only options."""
    check_align_options(args)
    for attr, option in VIDEO_ONLY.items():
        if getattr(args, attr, None) not in (None, False):
            raise MoEFusionError(
                f"{option} is for videos (two video files, or two frame folders with --sequence)"
            )


def check_video_options(args: argparse.Namespace) -> None:
    """Videos: refuse the image-only options and out-of-range values."""
    check_align_options(args)
    refuse_given(args, IMAGES_ONLY, "is for image pairs, not videos")
    smoothing = args.temporal_smoothing or 0.0
    if not 0.0 <= smoothing < 1.0:
        raise MoEFusionError(f"--temporal-smoothing must be in [0, 1), got {smoothing:g}")
    if args.fps is not None and not args.fps > 0:
        raise MoEFusionError(f"--fps must be > 0, got {args.fps:g}")
    if args.save_gates is not None and args.save_gates.suffix.lower() != ".csv":
        raise MoEFusionError(f"for videos --save-gates must end in .csv, got {args.save_gates}")
    every = args.align_every
    if every is not None:
        if every < 0:
            raise MoEFusionError(f"--align-every must be >= 0, got {every}")
        if args.align == "none":
            raise MoEFusionError("--align-every needs --align ecc or --align features")
