"""Headless Chromium (Debian's ``chromium``) for the dashboard's end-to-end test and screenshot.

Each run gets its own throw-away profile directory and is killed if it outlives its timeout.
Flags keep it on the box: no sync, no component updates, no background networking.
"""

from __future__ import annotations

import shutil
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


def _run(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="olla-chromium-")
    try:
        return subprocess.run(
            [
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
            ],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str, *, virtual_time_ms: int) -> str:
    """The page's DOM as HTML once ``virtual_time_ms`` of (virtual) time has passed: timers
    run, and the budget waits for the page's fetches to answer."""
    return _run(url, f"--virtual-time-budget={virtual_time_ms}", "--dump-dom").stdout


def screenshot(url: str, path: Path, *, virtual_time_ms: int, size: str = "1280,900") -> None:
    """A PNG of the page at ``size`` after ``virtual_time_ms`` of virtual time."""
    _run(
        url,
        f"--virtual-time-budget={virtual_time_ms}",
        f"--window-size={size}",
        "--hide-scrollbars",
        f"--screenshot={path}",
    )
