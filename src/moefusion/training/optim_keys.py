"""Which ``optim`` keys each kind of training reads, and the refusal of a command-line
override that no stage which trains reads (:func:`check_optim_overrides`).

What reads what (``training/module.py``, ``training/stages.py``, ``training/run.py``):

- every module: ``lr``, ``weight_decay`` (Adam) and ``grad_clip`` (the Trainer);
- epoch schedules, ``MultiStepLR`` (the detector stage ``detect``, the end-to-end stage
  ``joint`` and a ``schedule: joint`` run): ``milestones`` (epochs) and ``gamma`` (which
  does nothing without milestones); the end-to-end module also ``alpha`` and
  ``grad_target_scale``, always with the release's pixel target (boxes) and no alpha
  ramp; the ``joint`` stage of a staged run also passes ``pixel_target`` and ``alpha``
  to its fit report. The detector stage reads no loss setting (detection losses only);
- per-step schedules, ``LambdaLR`` of :func:`~moefusion.training.stages.lr_factor` (the
  fusion-type stages ``fusion``, ``refine``, ``sharpen``): ``schedule``,
  ``warmup_steps``; ``step`` also ``step_milestones`` and ``gamma`` (which does nothing
  without step milestones), ``cosine`` also ``min_lr_factor``; and the loss settings
  ``alpha``, ``alpha_warmup_steps``, ``pixel_target``, ``grad_target_scale``. Epoch
  ``milestones`` are not read there.

Only overrides are checked: a config file lists every key with its default on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from moefusion.errors import ConfigError
from moefusion.training.config import FUSION_STAGES, STAGES, RunConfig, stage_config

__all__ = ["OptimTarget", "Unread", "check_optim_overrides", "unread_reason"]

#: Read by every module that trains.
ALWAYS_READ: frozenset[str] = frozenset({"lr", "weight_decay", "grad_clip"})
#: Keys of the fusion stages' per-step schedule (``optim.schedule``).
STEP_SCHEDULE_KEYS: frozenset[str] = frozenset(
    {"schedule", "warmup_steps", "min_lr_factor", "step_milestones"}
)
#: Loss settings of the fusion stages.
FUSION_LOSS_KEYS: frozenset[str] = frozenset(
    {"alpha", "alpha_warmup_steps", "pixel_target", "grad_target_scale"}
)
#: Values that ask for what happens anyway where the key is not read (no milestones, no
#: warm-up): an override with one of them is never refused.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "milestones": ([],),
    "step_milestones": ([],),
    "warmup_steps": (0,),
    "alpha_warmup_steps": (0,),
}


class OptimTarget(NamedTuple):
    """One ``optim`` key a command-line override sets.

    Attributes:
        item: the override as given (``optim.gamma=0.5``, ``"optim={gamma: 0.5}"``).
        key: the ``optim`` key.
        value: the value it sets.
        stage: the stage whose ``stages.<stage>.optim`` it sets; None: the top level.
        reached: the stages a top-level key reaches (those whose key the same command
            does not set itself); ignored for a stage's key.
    """

    item: str
    key: str
    value: Any
    stage: str | None
    reached: tuple[str, ...] = STAGES


class Unread(NamedTuple):
    """Why a stage does not read a key (a predicate after its name: ``stages.fusion
    <why>``) and what to set instead (a whole clause: ``add stages.fusion.optim.schedule=step``)."""

    why: str
    fix: str


def _path(config: Mapping[str, Any], stage: str | None, key: str) -> str:
    """The override that sets ``key`` for ``stage``: the stage's own when its section has
    the key (overrides need an existing key) or the top level lacks it."""
    if stage is None:
        return f"optim.{key}"
    own = ((config.get("stages") or {}).get(stage) or {}).get("optim") or {}
    top = config.get("optim") or {}
    return f"stages.{stage}.optim.{key}" if key in own or key not in top else f"optim.{key}"


def unread_reason(
    config: Mapping[str, Any], stage: str | None, cfg: RunConfig, key: str
) -> Unread | None:
    """Why training ``stage`` (None: a ``schedule: joint`` run) with its resolved config
    ``cfg`` does not read ``optim.<key>``, and what to set instead; None when it reads it.

    ``config`` is the run config (plain dict) the overrides were applied to; it decides
    which override the fix names (:func:`_path`).
    """
    optim = cfg.optim
    if key in ALWAYS_READ:
        return None

    def p(name: str) -> str:
        return _path(config, stage, name)

    if stage in FUSION_STAGES:
        schedule = optim.schedule
        follows = f"follows optim.schedule={schedule} (per step)"
        if key in FUSION_LOSS_KEYS or key in ("schedule", "warmup_steps"):
            return None
        if key == "milestones":
            steps = f"{p('step_milestones')}=[...] (in steps)"
            first = "" if schedule == "step" else f"{p('schedule')}=step "
            return Unread(
                f"{follows}, which has no epoch milestones", f"set {first}{steps} instead"
            )
        if key == "step_milestones" and schedule != "step":
            return Unread(f"{follows}, which has no milestones", f"add {p('schedule')}=step")
        if key == "gamma" and schedule != "step":
            return Unread(
                f"{follows}, which never multiplies the rate by gamma",
                f"add {p('schedule')}=step {p('step_milestones')}=[...]",
            )
        if key == "gamma" and not optim.step_milestones:
            return Unread(
                "follows optim.schedule=step with no step_milestones, so gamma never applies",
                f"add {p('step_milestones')}=[...]",
            )
        if key == "min_lr_factor" and schedule != "cosine":
            return Unread(
                f"{follows}, which has no min_lr_factor (only cosine has)",
                f"add {p('schedule')}=cosine",
            )
        return None
    # epoch schedules: the detector stage, the joint stage, a joint run
    if key == "milestones":
        return None
    if key == "gamma":
        if optim.milestones:
            return None
        return Unread(
            "steps the rate at epochs but has no optim.milestones, so gamma never applies",
            f"add {p('milestones')}=[...] (in epochs)",
        )
    if key in STEP_SCHEDULE_KEYS:
        epochs = "steps the rate at the epochs in optim.milestones, with no per-step schedule"
        if key == "step_milestones":
            return Unread(epochs, f"set {p('milestones')}=[...] (in epochs) instead")
        return Unread(epochs, f"set {p('milestones')}=[...] (in epochs) and {p('gamma')} instead")
    if stage == "detect":  # every loss setting is the fusion loss's
        return Unread(
            "trains the detectors alone (detection losses only)",
            "train a fusion stage (stages.fusion.trainer.max_steps=N)",
        )
    if key == "alpha_warmup_steps":
        return Unread(
            "trains end to end with the full alpha from the first step",
            "drop it (only the fusion stages ramp alpha)",
        )
    if key == "pixel_target" and stage is None:
        return Unread(
            "trains end to end with the release's pixel target (boxes)",
            "drop it (only the fusion stages choose the pixel target)",
        )
    return None


def _neutral(key: str, value: Any) -> bool:
    return value is None or value in NEUTRAL.get(key, ())


def _trains_fix(stage: str) -> str:
    budget = "max_steps" if stage in FUSION_STAGES else "max_epochs"
    return f"add stages.{stage}.trainer.{budget}=N to train it"


def check_optim_overrides(config: Mapping[str, Any], targets: Sequence[OptimTarget]) -> None:
    """Refuse an ``optim`` key set on the command line that no stage which trains reads.

    ``config`` is the run config with every override applied. A top-level key is fine
    when one stage it reaches trains and reads it (it applies there); a stage's key needs
    that stage to train and read it. A value that asks for what happens anyway (an
    empty milestone list, no warm-up, ``null``) passes. A config that does not resolve,
    or in which nothing trains, is left to the checks that refuse it anyway.

    Raises:
        ConfigError: one line naming the override and key, why it has no effect and
            what to set instead.
    """
    targets = [t for t in targets if not _neutral(t.key, t.value)]
    if not targets:
        return
    try:
        run = RunConfig.from_dict(config)
        staged = run.schedule == "staged"
        stages = {s: RunConfig.from_dict(stage_config(config, s)) for s in STAGES} if staged else {}
    except ConfigError:
        return  # refused with its own message where the config is validated
    training = {s: c for s, c in stages.items() if not c.trainer.is_empty()}
    if staged and not training:
        return  # "every stage is empty: nothing to train"
    for target in targets:
        dotted = (
            f"optim.{target.key}"
            if target.stage is None
            else f"stages.{target.stage}.optim.{target.key}"
        )
        head = f"override {target.item!r}: {dotted} has no effect"
        if not staged:
            found = unread_reason(config, None, run, target.key)
            if target.stage is not None:
                why = "trains end to end from the top-level sections, not stages.*"
                fix = f"set optim.{target.key} instead"
                if found is not None:
                    why, fix = f"{why}, and {found.why}", found.fix
                raise ConfigError(f"{head}: schedule={run.schedule} {why}; {fix}")
            if found is not None:
                raise ConfigError(f"{head}: schedule={run.schedule} {found.why}; {found.fix}")
            continue
        if target.stage is not None:
            if target.stage not in training:
                raise ConfigError(
                    f"{head}: stages.{target.stage} does not train (its budget is 0); "
                    f"{_trains_fix(target.stage)}"
                )
            found = unread_reason(config, target.stage, training[target.stage], target.key)
            if found is not None:
                raise ConfigError(f"{head}: stages.{target.stage} {found.why}; {found.fix}")
            continue
        reached = [s for s in STAGES if s in training and s in target.reached]
        if not reached:
            continue  # the command sets the key of every stage that trains itself
        groups: dict[str, list[str]] = {}
        fixes: list[str] = []
        for name in reached:
            found = unread_reason(config, name, training[name], target.key)
            if found is None:
                break  # applies there
            groups.setdefault(found.why, []).append(f"stages.{name}")
            fixes.append(found.fix)
        else:
            why = "; ".join(
                f"{names[0] if len(names) == 1 else 'each of ' + ', '.join(names)} {w}"
                for w, names in groups.items()
            )
            raise ConfigError(f"{head}, as no stage that trains reads it: {why}; {fixes[0]}")
