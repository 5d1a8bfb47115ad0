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


#: Sections that ``stages.<name>`` may set again for one stage of a staged run.
STAGE_SECTIONS: tuple[str, ...] = ("data", "optim", "trainer")
#: ``trainer`` keys that give a stage its length; they do not turn on a stage that the
#: config (or a ``stages.<name>`` override) turns off (``max_epochs: 0``).
LENGTH_KEYS: frozenset[str] = frozenset({"max_epochs", "max_steps", "max_time"})


def _split(item: str) -> tuple[str, list[str], str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    key, raw = item.split("=", 1)
    return key.strip(), key.strip().split("."), raw


def _set(result: dict[str, Any], item: str, key: str, parts: list[str], raw: str) -> Any:
    """Set one ``a.b.c=value`` in place (the key must exist); returns the value."""
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
    _check_value(item, key, node[parts[-1]], value)
    node[parts[-1]] = value
    return value


def _stage_is_off(config: Mapping[str, Any], stage: Mapping[str, Any]) -> bool:
    """Whether a stage's trainer (its keys over the top-level ones) trains nothing, as
    :meth:`moefusion.training.config.TrainerConfig.is_empty` says."""
    trainer = {**(config.get("trainer") or {}), **(stage.get("trainer") or {})}
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    return steps == 0 or (steps in (None, -1) and epochs == 0 and not trainer.get("max_time"))


def _explicit(explicit: list[list[str]], stage: str, section: str, key: str) -> bool:
    """Whether the command sets ``stages.<stage>.<section>.<key>`` itself (the key, its
    section or its whole stage): it then wins over a top-level override of the key."""
    path = ["stages", stage, section, key]
    return any(p[: len(path)] == path or path[: len(p)] == p for p in explicit)


def _optim_targets(parts: list[str], value: Any) -> list[tuple[str | None, str, Any]]:
    """(stage or None for the top level, key, value) of each ``optim`` key an override
    sets: ``optim.K``, ``optim={...}``, ``stages.S.optim.K``, ``stages.S.optim={...}``,
    ``stages.S={optim: {...}}`` or ``stages={S: {optim: {...}}}``."""
    if parts[0] == "optim":
        if len(parts) == 2:
            return [(None, parts[1], value)]
        whole = len(parts) == 1 and isinstance(value, dict)
        return [(None, str(k), v) for k, v in value.items()] if whole else []
    if parts[0] != "stages" or len(parts) > 4 or (len(parts) > 2 and parts[2] != "optim"):
        return []
    stages: Any = {parts[1]: value} if len(parts) == 2 else value
    if len(parts) > 2:
        stages = {parts[1]: {"optim": value if len(parts) == 3 else {parts[3]: value}}}
    out: list[tuple[str | None, str, Any]] = []
    for name, stage in stages.items() if isinstance(stages, dict) else ():
        optim = stage.get("optim") if isinstance(stage, dict) else None
        if isinstance(optim, dict):
            out += [(str(name), str(k), v) for k, v in optim.items()]
    return out


def _check_optim_effect(
    result: dict[str, Any], sets: list[tuple[str, list[str], Any]], explicit: list[list[str]]
) -> None:
    """Refuse an ``optim`` override that no stage which trains reads
    (:func:`moefusion.training.optim_keys.check_optim_overrides`)."""
    found = [
        (item, stage, key, value)
        for item, parts, value in sets
        for stage, key, value in _optim_targets(parts, value)
    ]
    if not found:
        return
    from moefusion.training.config import STAGES
    from moefusion.training.optim_keys import OptimTarget, check_optim_overrides

    targets = [
        OptimTarget(
            item,
            key,
            value,
            stage,
            tuple(s for s in STAGES if not _explicit(explicit, s, "optim", key)),
        )
        for item, stage, key, value in found
    ]
    check_optim_overrides(result, targets)


def _propagate(
    result: dict[str, Any],
    parts: list[str],
    value: Any,
    explicit: list[list[str]],
    off: set[str],
) -> list[str]:
    """Give a top-level ``data``/``optim``/``trainer`` override to every stage that sets
    the key itself, unless the command sets that stage's key too (the more specific
    override wins, in any order) or the key is a length of a stage that is off.

    Returns the names of the stages left off.
    """
    stages = result.get("stages")
    if not isinstance(stages, dict):
        return []
    left_off = []
    for name, stage in stages.items():
        section = stage.get(parts[0]) if isinstance(stage, dict) else None
        if not isinstance(section, dict) or parts[1] not in section:
            continue  # the stage inherits the top-level value anyway
        if _explicit(explicit, name, parts[0], parts[1]):
            continue
        if parts[0] == "trainer" and parts[1] in LENGTH_KEYS and name in off:
            left_off.append(name)
            continue
        node = section
        for part in parts[1:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = copy.deepcopy(value)
    return left_off


def apply_overrides(
    config: Mapping[str, Any], overrides: Iterable[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b.c=value`` overrides applied.

    Values are parsed as YAML (``3`` -> int, ``[1, 2]`` -> list, ``null`` -> None). A key
    must already exist, so that typos fail loudly instead of being ignored, and the value
    must be of the same kind as the config's (a number for a number...; see
    :func:`_check_value`).

    In a staged config (one with ``stages``), an override of ``data``, ``optim`` or
    ``trainer`` also replaces the key in every ``stages.<name>`` section that sets it,
    so that ``trainer.max_epochs=1`` is not silently undone by a stage's own value;
    ``stages.<name>.<section>.<key>=...`` on the same command wins for its stage, and a
    length (``max_epochs``, ``max_steps``, ``max_time``) does not turn on a stage that is
    off (``stages.joint.trainer.max_epochs: 0``): that is said in ``notes`` when given.

    An ``optim`` key set here that no stage which trains reads under its resolved
    schedule (``optim.milestones`` when only a cosine fusion stage trains,
    ``stages.fusion.optim.step_milestones`` under ``schedule: cosine``) is refused with a
    :class:`ConfigError` saying why and what to set instead
    (:func:`moefusion.training.optim_keys.check_optim_overrides`).
    """
    result = copy.deepcopy(dict(config))
    items = [(item, *_split(item)) for item in overrides]
    explicit = [parts for _, _, parts, _ in items if parts[0] == "stages"]
    # a top-level section key (or whole section) reaches the stages; the rest goes first,
    # so that which stages are off is known
    reaching = [parts[0] in STAGE_SECTIONS for _, _, parts, _ in items]
    sets: list[tuple[str, list[str], Any]] = []  # (override, key parts, value) as applied
    for (item, key, parts, raw), late in zip(items, reaching, strict=True):
        if not late:
            sets.append((item, parts, _set(result, item, key, parts, raw)))
    stages = result.get("stages")
    off = (
        {n for n, s in stages.items() if isinstance(s, dict) and _stage_is_off(result, s)}
        if isinstance(stages, dict)
        else set()
    )
    for (item, key, parts, raw), late in zip(items, reaching, strict=True):
        if not late:
            continue
        value = _set(result, item, key, parts, raw)
        sets.append((item, parts, value))
        # a whole section (trainer={max_epochs: 1}) counts as one override per key
        each = (
            [([parts[0], k], v) for k, v in value.items()]
            if len(parts) == 1 and isinstance(value, dict)
            else [(parts, value)]
            if len(parts) > 1
            else []
        )
        for sub, sub_value in each:
            left_off = _propagate(result, sub, sub_value, explicit, off)
            if left_off and notes is not None:
                where = ".".join(sub)
                notes.append(
                    f"{where}={_yaml_dump(sub_value)} applies to the stages that train; "
                    f"{', '.join(left_off)} stays off (set stages.{left_off[0]}.{where} "
                    "to train it)"
                )
    _check_optim_effect(result, sets, explicit)
    return result


def _yaml_dump(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    )


def load_run_config(
    name_or_path: str | Path, overrides: Iterable[str] = (), notes: list[str] | None = None
) -> dict[str, Any]:
    """Load a config (name or path) and apply overrides (see :func:`apply_overrides`)."""
    return apply_overrides(load_config_file(name_or_path), overrides, notes)


def save_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write ``config`` as YAML; atomically, so an interrupted write leaves the old file."""
    from moefusion.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
