"""Headless Chromium (Debian's ``chromium``) for the dashboard's end-to-end test and screenshot.

Each run gets its own throw-away profile directory and is killed if it outlives its timeout.
Flags keep it on the box: no sync, no component updates, no background networking.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
#: how long one headless run may take (its start on a loaded 2-core machine included)
RUN_TIMEOUT = 120.0


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is not installed: the dashboard's browser test needs Debian's "
            "`chromium` (make test installs it with apt-get when run as root; "
            "see tests/e2e/install-chromium.sh)"
        )
    return None


def _run(url: str, *extra: str) -> str:
    """Run chromium on ``url`` in its own process group; its stdout. The whole group (zygote,
    renderers, GPU process) is killed afterwards, so nothing outlives the run, also on a
    timeout or a failure."""
    profile = tempfile.mkdtemp(prefix="olla-chromium-")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited {process.returncode}: {err[-2000:]}")
    return out


def dump_dom(url: str, *, virtual_time_ms: int) -> str:
    """The page's DOM as HTML once ``virtual_time_ms`` of (virtual) time has passed: timers
    run, and the budget waits for the page's fetches to answer."""
    return _run(url, f"--virtual-time-budget={virtual_time_ms}", "--dump-dom")


def screenshot(url: str, path: Path, *, virtual_time_ms: int, size: str = "1280,900") -> None:
    """A PNG of the page at ``size`` after ``virtual_time_ms`` of virtual time."""
    _run(
        url,
        f"--virtual-time-budget={virtual_time_ms}",
        f"--window-size={size}",
        "--hide-scrollbars",
        f"--screenshot={path}",
    )
