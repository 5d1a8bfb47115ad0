"""Every ``moefusion train`` command written in the docs resolves to a valid run config.

The docs record the exact command next to each measured number; a config change that
breaks one of them (an override key renamed, a mapping where a value was) must fail here
rather than for the reader who copies it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from moefusion.config import load_run_config
from moefusion.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
#: Options of ``train`` that take a value and are not overrides.
VALUED = {"--config", "--out", "--resume", "--seed"}


def documented_train_commands() -> list[tuple[str, str]]:
    """(file, command) for every ``moefusion train`` in README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        # shell variables the docs define: C='moefusion train ...'
        variables = dict(re.findall(r"^(\w+)='(moefusion train[^']*)'", text, re.M))
        for line in text.splitlines():
            if re.match(r"^\w+='moefusion train", line):
                continue  # a definition; its uses ($C ...) are checked
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            for match in re.finditer(r"moefusion train\b[^`#\n]*", line):
                found.append((path.name, match.group(0).strip()))
    return found


def _config_and_overrides(command: str) -> tuple[str, list[str]]:
    tokens = shlex.split(command)[2:]
    config, overrides, i = "cpu", [], 0
    while i < len(tokens):
        token = tokens[i]
        if token in VALUED:
            if token == "--config":
                config = tokens[i + 1]
            i += 2
            continue
        if "=" in token and not token.startswith("-"):
            overrides.append(token)
        i += 1
    return config, overrides


def test_the_docs_have_train_commands() -> None:
    assert len(documented_train_commands()) >= 20


@pytest.mark.parametrize(("doc", "command"), documented_train_commands())
def test_documented_train_command_resolves(doc: str, command: str) -> None:
    config, overrides = _config_and_overrides(command)
    RunConfig.from_dict(load_run_config(config, overrides))
