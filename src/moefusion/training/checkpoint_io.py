"""Checkpoint files that are either complete or absent.

Lightning's default writer serialises a checkpoint in memory and then writes the bytes
into the final file, so a run killed during that write (or a full disk) leaves a
truncated ``last.ckpt`` that a later ``--resume auto`` cannot read. This writer saves
to a hidden temporary file beside the target and renames it into place
(:func:`moefusion.atomic.atomic_path`): the previous checkpoint stays until the new one
is whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from moefusion.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose ``save_checkpoint`` writes via a temporary file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(Path(path)) as tmp, tmp.open("wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
