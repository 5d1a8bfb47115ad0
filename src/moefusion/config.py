"""Run configurations: YAML files shipped in ``moefusion/configs`` plus dotted overrides.

A run config is plain data (timm style): ``model`` (a :class:`MoEFusionConfig` dict),
``data``, ``optim``, ``trainer``. ``load_run_config("cpu", ["optim.lr=2e-4"])`` returns the
resolved dict that is saved beside every checkpoint.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from moefusion.errors import ConfigError

CONFIG_PACKAGE = "moefusion.configs"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-3``); ``optim.lr=1e-3``
    would otherwise become the string ``"1e-3"``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: a SafeLoader subclass


def available_configs() -> list[str]:
    """Names of the configs shipped with the package (``paper``, ``cpu``, ...)."""
    files = resources.files(CONFIG_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a config must be a YAML mapping")
    return data


def load_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """Read a shipped config by name, or any YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return _read_yaml(path.read_text(), str(path))
    name = str(name_or_path)
    resource = resources.files(CONFIG_PACKAGE) / f"{name}.yaml"
    if not resource.is_file():
        raise ConfigError(
            f"unknown config {name!r}; shipped configs: {', '.join(available_configs())} "
            "(or give a path to a .yaml file)"
        )
    return _read_yaml(resource.read_text(), f"config {name!r}")


#: Keys whose numeric default may also be given as text (``trainer.devices=auto``).
TEXT_ALLOWED: frozenset[str] = frozenset({"trainer.devices", "trainer.precision"})
#: Per-mixture mappings that also take one value for every mixture
#: (``model.balance_loss=switch`` over ``{mole: cv2, moge: switch}``).
PER_MIXTURE: frozenset[str] = frozenset(
    {"model.balance_loss", "model.gate_input_scale", "model.router_z_weight"}
)
#: Lists of mixtures that also take true (every mixture) or false (none).
MIXTURE_LISTS: frozenset[str] = frozenset({"model.gate_input_norm", "model.noisy_gating"})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "true/false"
    if _is_number(v):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _check_value(item: str, key: str, old: Any, new: Any) -> None:
    """Refuse a value of another kind than the config's (``optim.lr=fast``, ``data.crop=abc``).

    Numbers may replace numbers or lists (``data.crop=[256, 320]``) and anything may
    replace or be replaced by ``null``; a list of numbers must stay numbers. The
    per-mixture settings take one value for every mixture (:data:`PER_MIXTURE`,
    :data:`MIXTURE_LISTS`), as the model config does.
    """
    if old is None or new is None:
        return
    problem = None
    if isinstance(old, bool):
        if not isinstance(new, bool):
            problem = "true or false"
    elif _is_number(old):
        if not (_is_number(new) or isinstance(new, list)) and not (
            isinstance(new, str) and key in TEXT_ALLOWED
        ):
            problem = "a number"
    elif isinstance(old, list):
        if isinstance(new, bool) and key in MIXTURE_LISTS:
            pass
        elif not (isinstance(new, list) or _is_number(new)):
            problem = "a list, e.g. [1, 2]"
        elif (
            isinstance(new, list)
            and old
            and all(_is_number(x) for x in old)
            and not all(_is_number(x) for x in new)
        ):
            problem = "a list of numbers"
    elif isinstance(old, dict) and not isinstance(new, dict) and key not in PER_MIXTURE:
        problem = "a mapping, e.g. {a: 1}"
    if problem is not None:
        raise ConfigError(
            f"override {item!r}: {key} must be {problem} (the config has {old!r}), "
            f"got {_kind(new)}: {new!r}"
        )


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b.c=value`` overrides applied.

    Values are parsed as YAML (``3`` -> int, ``[1, 2]`` -> list, ``null`` -> None). A key
    must already exist, so that typos fail loudly instead of being ignored, and the value
    must be of the same kind as the config's (a number for a number...; see
    :func:`_check_value`).
    """
    result = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: no key {'.'.join(parts[: depth + 1])!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {item!r}: no key {key!r} in the config")
        try:
            value = _yaml_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        _check_value(item, key.strip(), node[parts[-1]], value)
        node[parts[-1]] = value
    return result


def load_run_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load a config (name or path) and apply overrides."""
    return apply_overrides(load_config_file(name_or_path), overrides)


def save_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write ``config`` as YAML; atomically, so an interrupted write leaves the old file."""
    from moefusion.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
