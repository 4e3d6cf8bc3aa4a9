"""Client SDK releases in venvs of their own, cached under ``.cache/clients/`` (e.g. a 0.x
release of the Anthropic SDK beside the 2.x line in the project's venv), and the driver that
runs one of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.daemon import REPO

CACHE = REPO / ".cache" / "clients"


class ClientUnavailable(Exception):
    """The release could not be installed (no package registry here)."""


def client_python(requirement: str) -> Path:
    """The interpreter of a venv holding ``requirement`` (made on first use, then reused)."""
    home = CACHE / requirement.replace("==", "-").replace("/", "_")
    python = home / "bin" / "python"
    marker = home / ".installed"
    if marker.exists():
        return python
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(home)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ClientUnavailable(f"{' '.join(step)}: {result.stderr.strip()[-2000:]}")
    marker.touch()
    return python


ANTHROPIC_DRIVER = Path(__file__).with_name("anthropic_calls.py")


def drive_anthropic(
    python: str, base_url: str, model: str, *flags: str, timeout: float = 300
) -> dict[str, Any]:
    """Run ``anthropic_calls.py`` with ``python`` (whichever SDK release its venv holds) and
    return what the SDK saw."""
    result = subprocess.run(
        [python, str(ANTHROPIC_DRIVER), base_url, model, *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
