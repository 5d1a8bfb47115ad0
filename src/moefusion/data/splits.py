"""Deterministic, stratified train/test splits of pair stems, and their JSON files.

Split file format::

    {"seed": 0, "test_fraction": 0.25,
     "datasets": {"msrs": {"train": ["00556D", ...], "test": [...], "val": [...]}, ...}}

``val`` is optional: a validation part carved out of the training data (for fit
reports and recipe decisions); ``train``, ``val`` and ``test`` are disjoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moefusion.errors import ConfigError, MoEFusionError

if TYPE_CHECKING:
    from moefusion.data.pairs import Pair

__all__ = [
    "EVAL_ONLY_DATASETS",
    "SHARED_DATASETS",
    "check_trainable",
    "load_split",
    "msrs_day_night",
    "resolve_split",
    "save_split",
    "split_part_pairs",
    "split_stems",
]

#: The dataset folders of ``../shared/data`` that the shipped splits cover, in the order
#: the report lists them (split files keep their datasets sorted by name).
SHARED_DATASETS = ("roadscene", "msrs", "llvip", "tno_extra", "vifb")

SPLIT_PACKAGE = "moefusion.configs.splits"

#: Dataset folders that are evaluation only (the official MSRS test pairs, the field's
#: benchmark): no fusion training, validation or selection may read them. A split file
#: can name more under ``eval_only``.
EVAL_ONLY_DATASETS: tuple[str, ...] = ("msrs_eval",)

# Guards ceil() against float noise such as 0.3 * 10 == 3.0000000000000004.
_EPS = 1e-9


def _rank(seed: int, stem: str) -> str:
    # A hash of (seed, stem) orders the stems independently of the input order and of
    # Python's per-process hash randomisation.
    return hashlib.sha256(f"{seed}\x00{stem}".encode()).hexdigest()


def msrs_day_night(stem: str) -> str:
    """MSRS group of a stem: ``"D"`` (day) or ``"N"`` (night), its last character."""
    last = Path(stem).name[-1:].upper()
    if last not in ("D", "N"):
        raise MoEFusionError(f"MSRS stem {stem!r} does not end in D (day) or N (night)")
    return last


def split_stems(
    stems: Iterable[str],
    test_fraction: float,
    *,
    seed: int,
    group_fn: Callable[[str], str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split stems into sorted ``(train, test)`` lists, stratified by ``group_fn``.

    Each group with ``n >= 2`` stems puts exactly ``ceil(test_fraction * n)`` of them in
    test; a single-stem group goes to test when a seeded hash of it falls below
    ``test_fraction``. The result depends only on the set of stems, the seed and the
    fraction, never on the input order.
    """
    items = [str(s) for s in stems]
    if len(set(items)) != len(items):
        dupes = sorted({s for s in items if items.count(s) > 1})
        raise MoEFusionError(f"duplicate stems in split input: {', '.join(dupes[:10])}")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise MoEFusionError(f"test_fraction must be in [0, 1], got {test_fraction}")
    groups: dict[str, list[str]] = {}
    for s in items:
        groups.setdefault(group_fn(s) if group_fn else "", []).append(s)

    train: list[str] = []
    test: list[str] = []
    for members in groups.values():
        ordered = sorted(members, key=lambda s: (_rank(seed, s), s))
        n = len(ordered)
        if n == 1:
            u = int(_rank(seed, ordered[0])[:13], 16) / float(16**13)
            n_test = int(u < test_fraction)
        else:
            n_test = math.ceil(test_fraction * n - _EPS)
        test.extend(ordered[:n_test])
        train.extend(ordered[n_test:])
    return sorted(train), sorted(test)


def _validate(split: Any, source: str) -> dict[str, Any]:
    if not isinstance(split, dict):
        raise ConfigError(f"{source}: a split must be a JSON object")
    missing = [k for k in ("seed", "test_fraction", "datasets") if k not in split]
    if missing:
        raise ConfigError(f"{source}: split is missing {', '.join(missing)}")
    if not isinstance(split["datasets"], dict):
        raise ConfigError(f"{source}: 'datasets' must map dataset names to train/test lists")
    for name, parts in split["datasets"].items():
        if not isinstance(parts, dict) or not (
            {"train", "test"} <= set(parts) <= {"train", "val", "test"}
        ):
            raise ConfigError(
                f"{source}: dataset {name!r} needs 'train' and 'test' lists (and optionally 'val')"
            )
        for part in parts:
            if not isinstance(parts[part], list) or not all(
                isinstance(s, str) for s in parts[part]
            ):
                raise ConfigError(f"{source}: {name}.{part} must be a list of stems")
        names = [p for p in ("train", "val", "test") if p in parts]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = sorted(set(parts[a]) & set(parts[b]))
                if both:
                    raise ConfigError(
                        f"{source}: dataset {name!r} has stems in both {a} and {b}: "
                        f"{', '.join(both[:10])}"
                    )
    eval_only = split.get("eval_only", [])
    if not isinstance(eval_only, list) or not all(isinstance(n, str) for n in eval_only):
        raise ConfigError(f"{source}: 'eval_only' must be a list of dataset names")
    for name in eval_only:
        parts = split["datasets"].get(name, {})
        if parts.get("train") or parts.get("val"):
            raise ConfigError(f"{source}: eval-only dataset {name!r} has train or val stems")
    return split


def check_trainable(names: Iterable[str], split: Mapping[str, Any] | None = None) -> None:
    """Refuse evaluation-only datasets (:data:`EVAL_ONLY_DATASETS`, a split's ``eval_only``).

    Raises:
        ConfigError: one line naming the dataset and why it cannot be trained on.
    """
    refused = set(EVAL_ONLY_DATASETS) | set((split or {}).get("eval_only", []))
    for name in names:
        if name in refused:
            raise ConfigError(
                f"dataset {name!r} is evaluation only (MSRS test pairs, the field's benchmark): "
                "fusion weights must not be trained, validated or selected on it; "
                "remove it from data.datasets / --data"
            )


def save_split(path: str | Path, split: dict[str, Any]) -> Path:
    """Write a split dict as JSON (stem lists sorted); parent folders are created."""
    p = Path(path)
    _validate(split, str(p))
    out = {
        "seed": int(split["seed"]),
        "test_fraction": float(split["test_fraction"]),
        "datasets": {
            name: {part: sorted(parts[part]) for part in ("train", "val", "test") if part in parts}
            for name, parts in sorted(split["datasets"].items())
        },
    }
    if split.get("eval_only"):
        out["eval_only"] = sorted(split["eval_only"])
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return p


def load_split(path: str | Path) -> dict[str, Any]:
    """Read and validate a split JSON file.

    Raises:
        ConfigError: missing file, invalid JSON or wrong structure (names the file).
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"split file not found: {p}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read split file {p}: {exc}") from exc
    return _validate(data, str(p))


def resolve_split(name_or_path: str | None) -> dict[str, Any] | None:
    """A split by shipped name (``configs/splits/NAME.json``) or by path; None means no split."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"split file not found: {path}")
        return load_split(path)
    resource = resources.files(SPLIT_PACKAGE) / f"{name_or_path}.json"
    if not resource.is_file():
        raise ConfigError(f"unknown split {name_or_path!r} (give a shipped name or a .json path)")
    with resources.as_file(resource) as p:
        return load_split(p)


def split_part_pairs(
    data_root: str | Path | Mapping[str, str | Path],
    split: dict[str, Any],
    part: str,
    datasets: Sequence[str] | None = None,
) -> dict[str, list[Pair]]:
    """The pairs of one split part, per dataset folder ``data_root/NAME``.

    Args:
        data_root: folder holding one ``NAME/ir``, ``NAME/vi`` dataset per split dataset,
            or ``{NAME: folder}`` where the datasets lie apart (a run config's roots).
        split: a loaded split (:func:`load_split`, :func:`resolve_split`).
        part: ``"train"``, ``"val"`` or ``"test"``.
        datasets: which datasets, in this order; default: every dataset of the split.

    Returns:
        ``{NAME: [Pair, ...]}`` in the folder's pair order; a dataset without that part
        maps to ``[]``.

    Raises:
        ConfigError: a requested dataset is not in the split, or a stem of the part has
            no pair in its folder (the data and the split do not match).
    """
    from moefusion.data.pairs import dataset_pairs

    names = list(split["datasets"]) if datasets is None else list(datasets)
    if isinstance(data_root, Mapping):
        folders = {name: Path(data_root[name]) for name in names if name in data_root}
    else:
        folders = {name: Path(data_root) / name for name in names}
    out: dict[str, list[Pair]] = {}
    for name in names:
        if name not in split["datasets"]:
            raise ConfigError(f"dataset {name!r} is not in the split")
        stems = set(split["datasets"][name].get(part, []))
        if not stems:
            out[name] = []
            continue
        if name not in folders:
            raise ConfigError(f"no folder given for dataset {name!r}")
        pairs = [p for p in dataset_pairs(folders[name]) if p.stem in stems]
        missing = sorted(stems - {p.stem for p in pairs})
        if missing:
            raise ConfigError(
                f"{len(missing)} {part} stem(s) of {name!r} have no pair under "
                f"{folders[name]}: {', '.join(missing[:5])}"
            )
        out[name] = pairs
    return out
