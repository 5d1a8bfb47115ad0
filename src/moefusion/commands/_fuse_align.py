"""``fuse --align``: register each visible image (or video frame) onto its infrared one.

The registration itself is :mod:`moefusion.registration`'s; this module decides when to
estimate, says what was found (one stderr line per pair, or per video estimate), and falls
back to the unregistered pair, with a note, when registration fails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from moefusion.data import LoadedPair, to_gray
from moefusion.registration import (
    Registration,
    RegistrationError,
    estimate_transform,
    identity,
    warp_to,
)


@dataclass
class Aligner:
    """Registers pairs; for a video, once and then every ``every`` frames.

    Attributes:
        method, model: as :func:`~moefusion.registration.estimate_transform`.
        every: videos: refine every N frames (0: never).
        say: where the one-line reports go.
    """

    method: str
    model: str = "affine"
    every: int = 0
    say: Callable[[str], None] = lambda line: tqdm.write(line, file=sys.stderr)
    current: Registration | None = None
    failures: int = 0
    refinements: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Aligner | None:
        method = getattr(args, "align", "none")
        if method == "none":
            return None
        model = getattr(args, "align_model", None) or "affine"
        return cls(method, model, getattr(args, "align_every", None) or 0)

    def align_pair(self, lp: LoadedPair, stem: str) -> LoadedPair:
        """One image pair: estimate, report, warp (or the pair as is, with a note)."""
        try:
            reg = estimate_transform(lp.ir, lp.vi, self.method, self.model)
        except RegistrationError as exc:
            self.failures += 1
            self.say(f"moefusion fuse: {stem}: registration failed ({exc}); fused unregistered")
            return lp
        self.say(f"moefusion fuse: {stem}: {reg.describe()}")
        return apply(lp, reg)

    def align_frame(self, lp: LoadedPair, index: int) -> tuple[LoadedPair, Registration]:
        """Frame ``index`` of a video: the first estimate, a refinement every ``every``
        frames, else the current registration."""
        if self.current is None or self.current.method == "none":
            if index == 0 or (self.every and index % self.every == 0):
                self._estimate(lp, index)
        elif self.every and index % self.every == 0:
            self._refine(lp, index)
        reg = self.current or identity(lp.ir.shape, lp.vi.shape)
        return apply(lp, reg), reg

    def _estimate(self, lp: LoadedPair, index: int) -> None:
        try:
            self.current = estimate_transform(lp.ir, lp.vi, self.method, self.model)
        except RegistrationError as exc:
            self.failures += 1
            then = f"; trying again at frame {index + self.every}" if self.every else ""
            self.say(
                f"moefusion fuse: frame {index}: registration failed ({exc}); fusing "
                f"unregistered{then}"
            )
            self.current = identity(lp.ir.shape, lp.vi.shape)
            return
        self.say(f"moefusion fuse: frame {index}: {self.current.describe()}")

    def _refine(self, lp: LoadedPair, index: int) -> None:
        assert self.current is not None
        try:
            reg = estimate_transform(lp.ir, lp.vi, "ecc", self.model, init=self.current)
        except RegistrationError as exc:
            self.failures += 1
            self.say(
                f"moefusion fuse: frame {index}: refining the registration failed ({exc}); "
                "keeping the previous one"
            )
            return
        self.refinements += 1
        self.current = replace(reg, method=self.current.method)


def apply(lp: LoadedPair, reg: Registration) -> LoadedPair:
    """The pair with its visible image warped onto the infrared grid."""
    if reg.method == "none" and lp.vi.shape == lp.ir.shape:
        return lp
    vi_rgb = np.clip(warp_to(lp.ir.shape, lp.vi_rgb, reg), 0.0, 1.0)
    return replace(lp, vi=to_gray(vi_rgb), vi_rgb=vi_rgb)
