"""Class names: raw label names to class indices (case-insensitive, after ``class_map``),
and the warning for objects of classes outside the class list."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from moefusion.errors import MoEFusionError

__all__ = ["ClassResolver", "warn_unknown_classes"]


class ClassResolver:
    """Maps raw class names to indices: case-insensitive, after ``class_map``."""

    def __init__(self, classes: Sequence[str], class_map: Mapping[str, str] | None) -> None:
        if isinstance(classes, str) or not classes:
            raise MoEFusionError(f"classes must be a non-empty list of names, got {classes!r}")
        self.index: dict[str, int] = {}
        for i, name in enumerate(classes):
            key = str(name).strip().lower()
            if key in self.index:
                raise MoEFusionError(f"class {name!r} appears twice in the class list {classes}")
            self.index[key] = i
        self.map = {
            str(k).strip().lower(): str(v).strip().lower() for k, v in (class_map or {}).items()
        }

    def __call__(self, name: str) -> int | None:
        key = name.strip().lower()
        return self.index.get(self.map.get(key, key))


def warn_unknown_classes(source: Path, unknown: Mapping[str, int], classes: Sequence[str]) -> None:
    """One warning per file naming each dropped class and how many of its objects."""
    if not unknown:
        return
    total = sum(unknown.values())
    listed = ", ".join(f"{name} x{n}" for name, n in sorted(unknown.items()))
    warnings.warn(
        f"{source}: dropped {total} object(s) of class(es) not in the class list "
        f"{list(classes)}: {listed} (map them with class_map / data.class_map, or add "
        "them to the classes)",
        stacklevel=3,
    )
