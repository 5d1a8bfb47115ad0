"""MoE-Fusion: multi-modal gated mixture of local-to-global experts for infrared-visible fusion."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
