"""Device names, one spelling everywhere: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

:func:`parse_device` checks the spelling only and imports nothing heavy (the command line
checks ``--device`` before torch is loaded; configs check their ``device`` when they are
read); :func:`resolve_device` gives the :class:`torch.device` and checks that it exists.
Commands (:mod:`moefusion.commands._common`) and the detection protocol
(:mod:`moefusion.detection.config`) both use these.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from moefusion.errors import MoEFusionError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_CHOICES", "parse_device", "resolve_device"]

#: The device names accepted, in words (help texts, error messages).
DEVICE_CHOICES = "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps"

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def parse_device(text: str, error: type[MoEFusionError] = MoEFusionError) -> str:
    """``text`` lower-cased and stripped when it names a device, else ``error`` is raised.

    Only the spelling is checked; whether the device exists is checked by
    :func:`resolve_device` when the model is put on it.
    """
    value = str(text).strip().lower()
    if not _DEVICE.fullmatch(value):
        raise error(f"unknown device {text!r}; use {DEVICE_CHOICES}")
    return value


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` of a device name (``None``: ``auto``).

    Raises:
        MoEFusionError: a name :func:`parse_device` refuses, or a cuda / mps device that
            is not available.
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    else:
        name = parse_device("auto" if device is None else device)
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MoEFusionError(
                f"device {dev} requested but CUDA is not available; use cpu instead"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MoEFusionError(
                f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) "
                "are visible"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MoEFusionError("device mps requested but MPS is not available; use cpu instead")
    return dev
