"""Run a study: train every variant with one recipe and budget, evaluate it on held-out pairs.

Each (variant, seed) is one ``moefusion train`` process (a staged config: the fusion
stage only, on the attention maps of a given weights file's attention branch), in
``<out>/runs/<variant>-s<seed>-<key>/``, followed by an evaluation of its weights on
the held-out (``test``) part of the split in the ``paper`` metric convention, written
to ``heldout.json`` in the run folder. ``key`` is a digest of the resolved config and
budget, so variants that resolve to the same config (the full model of the ablation
is E4K2 of the experts study and alpha 10 of the alpha study) share one run when the
studies share an ``--out``, and a changed recipe never reuses a stale run.

Resumable: a finished run (``heldout.json`` present) is not repeated; a run with
checkpoints continues with ``--resume auto``; a run folder without either starts
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moefusion.atomic import atomic_write_text
from moefusion.config import load_run_config
from moefusion.data import dataset_pairs, load_pair, save_gray_u8
from moefusion.data.splits import save_split, split_stems
from moefusion.errors import ConfigError, MoEFusionError
from moefusion.studies.definitions import PAPER_METRICS, Study, Variant
from moefusion.training.config import FUSION_STAGES

#: Held-out metrics are computed in this convention (the paper's toolbox).
CONVENTION = "paper"
#: Fraction of each dataset held out by ``split="auto"``, and of the rest kept for validation.
AUTO_TEST_FRACTION = 0.2
AUTO_VAL_FRACTION = 0.15
#: Fusion-stage steps per run when no budget is given.
DEFAULT_STEPS = 1000


@dataclass(frozen=True)
class Budget:
    """Training budget of every run: fusion-stage steps, or wall-clock minutes.

    With ``steps`` the learning rate follows the config's schedule over exactly those
    steps (cosine in ``cpu``); with ``minutes`` it is held constant after the warm-up
    (a cosine needs its length in advance) and runs stop at the time limit, so runs
    on a busy machine get fewer steps.
    """

    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.minutes is not None:
            raise ConfigError("give a study budget in steps or in minutes, not both")
        if self.steps is None and self.minutes is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.minutes}")

    def overrides(self) -> list[str]:
        if self.steps is not None:
            return [f"stages.fusion.trainer.max_steps={self.steps}"]
        return [
            "stages.fusion.trainer.max_steps=-1",
            f"stages.fusion.trainer.max_time={{minutes: {self.minutes}}}",
            "stages.fusion.optim.schedule=constant",
        ]

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.minutes:g} min"


@dataclass
class StudySettings:
    """What every run of a study shares.

    Attributes:
        config: base run config (name or YAML path); must use ``schedule: staged``.
        weights: the ``.safetensors`` whose attention branch every run uses (stage 1).
        budget: training budget per run.
        seeds: one run per variant and seed.
        data: dataset folders replacing the config's (None: the config's datasets).
        split: split name or JSON path; ``"auto"`` carves one (20 % test, 15 % of the
            rest validation) into ``<out>/split.json``; None: the config's split.
        overrides: extra ``KEY=VALUE`` overrides for every run.
        threads: torch threads of each training process (None: torch's default).
    """

    config: str = "cpu"
    weights: Path | None = None
    budget: Budget = field(default_factory=Budget)
    seeds: tuple[int, ...] = (0,)
    data: tuple[Path, ...] | None = None
    split: str | None = None
    overrides: tuple[str, ...] = ()
    threads: int | None = None


@dataclass
class RunResult:
    """One trained and evaluated (variant, seed)."""

    variant: str
    seed: int
    folder: Path
    means: dict[str, float]
    per_dataset: dict[str, dict[str, float]]
    pairs: int
    steps: int
    train_seconds: float
    eval_seconds: float


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def auto_split(datasets: Sequence[Path], path: Path, seed: int = 0) -> Path:
    """Write a train/val/test split of ``datasets`` to ``path`` (kept if it exists)."""
    if path.is_file():
        return path
    parts: dict[str, dict[str, list[str]]] = {}
    for root in datasets:
        stems = [p.stem for p in dataset_pairs(root)]
        if len(stems) < 3:
            raise MoEFusionError(f"{root}: a study needs at least 3 pairs per dataset")
        rest, test = split_stems(stems, AUTO_TEST_FRACTION, seed=seed)
        train, val = split_stems(rest, AUTO_VAL_FRACTION, seed=seed)
        parts[root.name] = {"train": train, "val": val, "test": test}
    save_split(path, {"seed": seed, "test_fraction": AUTO_TEST_FRACTION, "datasets": parts})
    return path


def _has_stage(config: str, stage: str) -> bool:
    """Whether the config file sets ``stages.<stage>`` (overrides need an existing key)."""
    stages = load_run_config(config).get("stages")
    return isinstance(stages, dict) and isinstance(stages.get(stage), dict)


def base_overrides(settings: StudySettings, out: Path) -> list[str]:
    """Overrides every run gets: fusion stage only, from ``settings.weights``, at the
    paper's alpha 10 and top-K for every mixture (the variants set their own)."""
    if settings.weights is None:
        raise ConfigError("a study needs weights whose attention branch the runs share")
    items = [
        "stages.detect.trainer.max_epochs=0",
        "stages.detect.trainer.max_steps=null",
        f"stages.detect.init_weights={Path(settings.weights).resolve()}",
        "stages.joint.trainer.max_epochs=0",
        # the variants differ in the fusion stage alone (a config's later stages are off)
        *(
            f"stages.{later}.trainer.max_steps=0"
            for later in FUSION_STAGES[1:]
            if _has_stage(settings.config, later)
        ),
        "stages.fusion.checkpoint_every=1",
        # the paper's studies vary around its alpha 10 (the `cpu` config trains with 20)
        "optim.alpha=10.0",
        # and around its one K for both mixtures (`cpu` keeps 3 MoLE experts, deviation 34)
        "model.mole_top_k=null",
        *settings.budget.overrides(),
    ]
    if settings.data is not None:
        roots = ", ".join(f"{{root: {Path(d).resolve()}}}" for d in settings.data)
        items.append(f"data.datasets=[{roots}]")
    split = settings.split
    if split == "auto":
        if settings.data is None:
            raise ConfigError("--split auto needs --data (the shipped data has its split)")
        split = str(auto_split(settings.data, out / "split.json").resolve())
    if split is not None:
        items.append(f"data.split={split}")
    return items + list(settings.overrides)


def resolve_run(
    settings: StudySettings, variant: Variant, seed: int, out: Path
) -> tuple[dict[str, Any], list[str], str]:
    """(resolved config, the override list, its key) of one run."""
    from moefusion.training.config import RunConfig

    schedule = RunConfig.from_dict(load_run_config(settings.config)).schedule
    if schedule != "staged":
        raise ConfigError(
            f"config {settings.config!r} uses schedule {schedule!r}; a study trains the "
            "fusion stage of a staged config (e.g. --config cpu)"
        )
    overrides = [*base_overrides(settings, out), *variant.overrides, f"seed={seed}"]
    config = load_run_config(settings.config, overrides)
    RunConfig.from_dict(config)  # a bad override fails here, not in every training process
    text = yaml.safe_dump(config, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:8]
    return config, overrides, key


def run_folder(out: Path, variant: Variant, seed: int, key: str) -> Path:
    """The run's folder; an existing folder of the same key under another name is reused."""
    runs = out / "runs"
    for existing in sorted(runs.glob(f"*-s{seed}-{key}")):
        if existing.is_dir():
            return existing
    return runs / f"{variant.slug}-s{seed}-{key}"


def heldout_pairs(config: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{dataset name: its held-out pairs} from the run config's datasets and split."""
    from moefusion.data import resolve_split, split_part_pairs
    from moefusion.training.config import DataConfig

    data = DataConfig.coerce(config["data"])
    split = resolve_split(data.split)
    if split is None:
        raise ConfigError("a study evaluates on the split's test part: the config has no split")
    roots = {e.dataset_name: e.root for e in data.datasets if e.dataset_name in split["datasets"]}
    per_dataset = split_part_pairs(roots, split, "test", list(roots))
    pairs: dict[str, list[Any]] = {name: chosen for name, chosen in per_dataset.items() if chosen}
    if not pairs:
        raise MoEFusionError("the split holds no test pairs for these datasets")
    return pairs


def evaluate_heldout(
    weights: Path, pairs: Mapping[str, Sequence[Any]], folder: Path, *, progress: bool = False
) -> dict[str, Any]:
    """Fuse the held-out pairs with ``weights`` into ``folder/<dataset>/`` and score them.

    Returns ``{"per_pair": {dataset: {stem: {metric: value}}}, "per_dataset": {dataset:
    means}, "means": {metric: mean over all pairs}, "pairs": n}`` in the ``paper``
    convention (pooled over pairs, as the report's "all test pairs" table).
    """
    from moefusion.evaluation import evaluate_folders
    from moefusion.fuser import Fuser

    fuser = Fuser.from_file(weights, device="cpu")
    per_pair: dict[str, dict[str, dict[str, float]]] = {}
    for name, items in pairs.items():
        fused_dir = folder / name
        for p in items:
            loaded = load_pair(p.ir, p.vi)
            save_gray_u8(fused_dir / f"{p.stem}.png", fuser.fuse(loaded.ir, loaded.vi))
        first = items[0]
        result = evaluate_folders(
            first.ir.parent, first.vi.parent, {"model": fused_dir}, (CONVENTION,), progress=progress
        )
        per_pair[name] = {
            stem: {m: result.values[CONVENTION]["model"][stem][m] for m in PAPER_METRICS}
            for stem in result.stems
        }
    return summarise_pairs(per_pair)


def summarise_pairs(per_pair: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Means per dataset and over all pairs of ``{dataset: {stem: {metric: value}}}``."""

    def mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return {m: sum(r[m] for r in rows) / len(rows) for m in PAPER_METRICS}

    every = [row for stems in per_pair.values() for row in stems.values()]
    return {
        "per_pair": {d: dict(s) for d, s in per_pair.items()},
        "per_dataset": {d: mean(list(s.values())) for d, s in per_pair.items()},
        "means": mean(every),
        "pairs": len(every),
    }


def _has_checkpoint(folder: Path) -> bool:
    return any(folder.glob("stage*/checkpoints/last.ckpt"))


def train_run(settings: StudySettings, overrides: Sequence[str], folder: Path, log: Path) -> float:
    """Train one run in a ``moefusion train`` process; returns its wall time in seconds."""
    resume = _has_checkpoint(folder)
    command = [
        sys.executable, "-m", "moefusion.cli", "train", "--config", settings.config,
        "--out", str(folder), "--no-progress",
        *(["--resume", "auto"] if resume else ["--overwrite"]),
        *overrides,
    ]  # fmt: skip
    env = dict(os.environ)
    if settings.threads:
        env.update(OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(command)}\n")
        fh.flush()
        code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0 or not (folder / "moefusion.safetensors").is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise MoEFusionError(
            f"training {folder.name} failed (exit {code}); see {log}: " + " | ".join(tail)
        )
    return time.perf_counter() - start


def _steps_of(folder: Path) -> int:
    done = folder / "stage2-fusion" / "done.json"
    return int(json.loads(done.read_text())["global_step"]) if done.is_file() else 0


def run_variant(
    study: Study,
    variant: Variant,
    seed: int,
    settings: StudySettings,
    out: Path,
    *,
    progress: bool = False,
) -> RunResult:
    """Train (or resume, or reuse) and evaluate one (variant, seed) of ``study``."""
    config, overrides, key = resolve_run(settings, variant, seed, out)
    folder = run_folder(out, variant, seed, key)
    result_file = folder / "heldout.json"
    if result_file.is_file():
        data = json.loads(result_file.read_text())
    else:
        train_seconds = 0.0
        weights = folder / "moefusion.safetensors"
        if not (weights.is_file() and (folder / "stage2-fusion" / "done.json").is_file()):
            _log(
                f"{study.name}: training {variant.name} (seed {seed}, {settings.budget.describe()})"
            )
            train_seconds = train_run(settings, overrides, folder, folder / "train.log")
        _log(f"{study.name}: evaluating {variant.name} (seed {seed}) on the held-out pairs")
        start = time.perf_counter()
        scores = evaluate_heldout(
            weights, heldout_pairs(config), folder / "heldout", progress=progress
        )
        data = {
            "variant": variant.name,
            "seed": seed,
            "key": key,
            "overrides": list(overrides),
            "steps": _steps_of(folder),
            "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1),
            **scores,
        }
        atomic_write_text(result_file, json.dumps(data, indent=1) + "\n")
    return RunResult(
        variant=variant.name,
        seed=seed,
        folder=folder,
        means=data["means"],
        per_dataset=data["per_dataset"],
        pairs=int(data["pairs"]),
        steps=int(data["steps"]),
        train_seconds=float(data["train_seconds"]),
        eval_seconds=float(data["eval_seconds"]),
    )


def run_study(
    study: Study,
    settings: StudySettings,
    out: Path,
    *,
    progress: bool = False,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every (variant, seed) of ``study``, seeds outermost (a first full pass comes first)."""
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in settings.seeds:
        for variant in study.variants:
            result = run_variant(study, variant, seed, settings, out, progress=progress)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
