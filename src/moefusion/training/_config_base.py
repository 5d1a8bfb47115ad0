"""Value checks and the ``from_dict`` / ``to_dict`` base of the run-config dataclasses
(:mod:`moefusion.training.config`). Every check raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, ClassVar, NoReturn, Self

from moefusion.errors import ConfigError


def fail(message: str) -> NoReturn:
    raise ConfigError(message)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_int(value: Any, key: str, minimum: int | None = None) -> int:
    if not is_number(value) or (isinstance(value, float) and not value.is_integer()):
        fail(f"{key} must be an integer, got {value!r}")
    out = int(value)
    if minimum is not None and out < minimum:
        fail(f"{key} must be >= {minimum}, got {out}")
    return out


def opt_int(value: Any, key: str, minimum: int | None = None) -> int | None:
    return None if value is None else as_int(value, key, minimum)


def as_float(
    value: Any, key: str, minimum: float | None = None, maximum: float | None = None
) -> float:
    if not is_number(value):
        fail(f"{key} must be a number, got {value!r}")
    out = float(value)
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        fail(f"{key} must be in [{low}, {high}], got {out:g}")
    return out


def as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        fail(f"{key} must be true or false, got {value!r}")
    return value


def opt_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, PurePath)):
        fail(f"{key} must be text, got {value!r}")
    return str(value)


def choice(value: Any, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        fail(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def int_list(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        fail(f"{key} must be a list of integers, got {value!r}")
    return tuple(as_int(v, f"{key}[{i}]") for i, v in enumerate(value))


def mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a dict (``null`` is empty); anything else than a mapping is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        fail(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def reject_unknown(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        fail(f"unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(known)})")


def to_builtin(value: Any) -> Any:
    """Sections (and the model config) as dicts, tuples as lists, recursively."""
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    return value


class Section:
    """``from_dict`` / ``to_dict`` / ``coerce`` shared by the config dataclasses.

    In :meth:`from_dict` a key set to ``null`` takes its default, except for fields whose
    default is None (there ``null`` is a value of its own) or that :meth:`nullable` names.
    """

    #: Where the section sits in a run config (error messages).
    WHERE: ClassVar[str] = "the run config"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def nullable(cls, name: str) -> bool:
        """Whether ``null`` is a value of its own for field ``name`` (its default is None)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
        return f.default is None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Self:
        """Build from a (possibly partial) mapping; unknown keys raise :class:`ConfigError`."""
        values = mapping(data, cls.WHERE)
        reject_unknown(values, cls.field_names(), cls.WHERE)
        return cls(**{k: v for k, v in values.items() if v is not None or cls.nullable(k)})

    @classmethod
    def coerce(cls, value: Self | Mapping[str, Any] | None) -> Self:
        """``value`` itself, or the section built from a mapping."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of built-in types (tuples become lists): YAML-friendly."""
        return {
            f.name: to_builtin(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }
