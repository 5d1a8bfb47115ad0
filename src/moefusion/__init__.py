"""MoE-Fusion: multi-modal gated mixture of local-to-global experts for infrared-visible fusion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Fuser", "__version__"]

if TYPE_CHECKING:
    from moefusion.fuser import Fuser


def __getattr__(name: str) -> Any:
    # Lazy: `import moefusion` (and `moefusion --help`) must not import torch.
    if name == "Fuser":
        from moefusion.fuser import Fuser

        return Fuser
    raise AttributeError(f"module 'moefusion' has no attribute {name!r}")
