"""The command line starts without importing torch; the lazy data namespace is complete."""

from __future__ import annotations

import subprocess
import sys

import moefusion.data


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from moefusion.cli import build_parser\n"
        "build_parser()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_every_public_data_name_resolves() -> None:
    assert set(moefusion.data.__all__) == set(moefusion.data._SOURCES)
    for name, source in moefusion.data._SOURCES.items():
        value = getattr(moefusion.data, name)
        if callable(value):  # classes and functions say where they are defined
            assert value.__module__ == f"moefusion.data.{source}", name
    assert "load_pair" in dir(moefusion.data)
    try:
        moefusion.data.no_such_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("unknown names must raise AttributeError")
