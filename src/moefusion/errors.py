"""Exceptions for user mistakes: the CLI prints them as one clear line, never a traceback."""

from __future__ import annotations


class MoEFusionError(Exception):
    """Base class for errors caused by user input (bad files, bad options)."""


class ImageReadError(MoEFusionError):
    """An image file is missing, unreadable or of an unsupported kind."""


class PairError(MoEFusionError):
    """An infrared/visible pair is incomplete or its two images do not match."""


class AnnotationError(MoEFusionError):
    """An annotation file is malformed or names boxes outside its image."""


class ConfigError(MoEFusionError):
    """A configuration file or override is invalid."""
