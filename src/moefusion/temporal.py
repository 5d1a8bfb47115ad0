"""Temporally stable gates for video, and how to measure flicker.

Fused frame by frame, a video's gates decide afresh on every frame: two nearly equal
logits swap places on sensor noise, another expert pair takes over, and the fused video
flickers. :class:`GateSmoother` smooths each gate's logits over the frames with an
exponential moving average before the top-K selection:

    m_0 = z_0,    m_t = F * m_(t-1) + (1 - F) * z_t,    gates_t = softmax(topK(m_t))

``z_t`` are the clean logits of frame ``t`` (``s_t . W_gate``, eval mode), ``F`` the
factor (``--temporal-smoothing F``): 0 is no smoothing (the hook is not even attached,
so the output is bit for bit the unsmoothed one), 0.5 halves the weight of the past each
frame, 0.9 averages over about 10 frames. Both the choice of the experts and their
weights follow the smoothed logits; the images, features and attention maps are not
smoothed. Rows of a batch are successive frames.

:class:`FlickerMeter` measures a fused video against its sources, frame by frame, with
only the previous frame kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FlickerMeter", "GateSmoother", "mean_abs_change"]


class GateSmoother:
    """Exponential moving average of every gate's logits over successive calls (frames).

    Args:
        factor: ``F`` in [0, 1): the weight of the past (see the module docstring).

    Use through :meth:`attached` (or :meth:`moefusion.Fuser.temporal_smoothing`)::

        with GateSmoother(0.8).attached(model) as smoother:
            for ir, vi in frames:
                out = model(ir, vi)          # gates from the smoothed logits
            smoother.reset()                 # a cut: forget the past

    Each gate call is a time step: a model run tile by tile on its own would smooth the
    tiles of one frame across each other. :meth:`moefusion.Fuser.fuse` with ``tile``
    decides each gate once per frame (:meth:`moefusion.Fuser.shared_gates`) and the
    tiles reuse that decision, so tiled frames are smoothed as whole ones.
    """

    def __init__(self, factor: float) -> None:
        factor = float(factor)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"the smoothing factor must be in [0, 1), got {factor}")
        self.factor = factor
        self._state: dict[str, Tensor] = {}

    def reset(self) -> None:
        """Forget the past frames (a new video, or a scene cut)."""
        self._state.clear()

    def _filter(self, name: str) -> Callable[[Tensor], Tensor]:
        f = self.factor

        def smooth(logits: Tensor) -> Tensor:
            state = self._state.get(name)
            rows = []
            for z in logits.unbind(0):  # rows are successive frames
                state = z.detach().clone() if state is None else state * f + z * (1.0 - f)
                rows.append(state)
            self._state[name] = state  # type: ignore[assignment]
            return torch.stack(rows)

        return smooth

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[GateSmoother]:
        """Hook every :class:`~moefusion.models.NoisyTopKGate` of ``model`` for the block
        (``factor`` 0 attaches nothing); the hooks are removed on exit."""
        from moefusion.models.gating import NoisyTopKGate

        gates = [(n, m) for n, m in model.named_modules() if isinstance(m, NoisyTopKGate)]
        if self.factor > 0:
            for name, gate in gates:
                if gate.logit_filter is not None:
                    raise RuntimeError(f"gate {name} already has a logit filter")
                gate.logit_filter = self._filter(name)
        try:
            yield self
        finally:
            if self.factor > 0:
                for _, gate in gates:
                    gate.logit_filter = None


# ------------------------------------------------------------------------------ flicker


def mean_abs_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two [0, 1] frames, in 8-bit grey levels."""
    a = np.asarray(previous, dtype=np.float32)
    b = np.asarray(current, dtype=np.float32)
    return float(np.abs(b - a).mean()) * 255.0


def _selected(weights: np.ndarray) -> frozenset[int]:
    return frozenset(int(i) for i in np.flatnonzero(np.asarray(weights) > 0))


@dataclass
class FlickerMeter:
    """Frame-to-frame change of a fused video and of its two sources, and gate switches.

    Per frame transition ``t-1 -> t``: the mean absolute change of the fused, infrared and
    visible frames (8-bit grey levels), the gate weights' change (half the L1 distance,
    0..1) and, per gate, whether the set of selected experts (non-zero weight) changed.

    :meth:`summary` gives the means over the transitions and:

    * ``excess``: ``fused - max(infrared, visible)``: how much more the fused video
      changes than the busier of its sources (> 0: flicker the sources do not have);
    * ``switches_per_100``: expert-set changes per 100 frame transitions, summed over
      the gates (and per gate in ``switches_per_100_<gate>``).
    """

    frames: int = 0
    _prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    _prev_gates: dict[str, np.ndarray] = field(default_factory=dict)
    _sums: dict[str, float] = field(default_factory=dict)
    _switches: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        fused: np.ndarray,
        ir: np.ndarray,
        vi: np.ndarray,
        gates: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """One frame: ``HxW`` [0, 1] fused, infrared and gray visible images, and the
        frame's gate weights ``{name: [N]}``."""
        cur = (np.asarray(fused), np.asarray(ir), np.asarray(vi))
        gates = {k: np.asarray(v) for k, v in (gates or {}).items()}
        if self._prev is not None:
            for key, a, b in zip(("fused", "ir", "vi"), self._prev, cur, strict=True):
                self._sums[key] = self._sums.get(key, 0.0) + mean_abs_change(a, b)
            for name, w in gates.items():
                old = self._prev_gates.get(name)
                if old is None:
                    continue
                change = 0.5 * float(np.abs(w - old).sum())
                self._sums[f"gate_{name}"] = self._sums.get(f"gate_{name}", 0.0) + change
                switched = _selected(w) != _selected(old)
                self._switches[name] = self._switches.get(name, 0) + int(switched)
        self._prev = cur
        self._prev_gates = gates
        self.frames += 1

    def summary(self) -> dict[str, float]:
        """Means over the ``frames - 1`` transitions (see the class docstring)."""
        n = max(self.frames - 1, 1)
        out = {"frames": float(self.frames)}
        for key in ("fused", "ir", "vi"):
            out[key] = self._sums.get(key, 0.0) / n
        out["excess"] = out["fused"] - max(out["ir"], out["vi"])
        total = 0.0
        for name in sorted(self._switches):
            rate = 100.0 * self._switches[name] / n
            out[f"switches_per_100_{name}"] = rate
            out[f"gate_change_{name}"] = self._sums.get(f"gate_{name}", 0.0) / n
            total += rate
        out["switches_per_100"] = total
        return out
