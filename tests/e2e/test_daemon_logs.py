"""Daemon hygiene against real ``twistd`` processes: SIGHUP keeps olla serving and reopens its
log file (logrotate), and a daemonised ``twistd --logfile`` gets olla's log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.daemon import (
    OllaDaemon,
    daemon_env,
    ollama_endpoint,
    running_olla,
    twistd,
    write_config,
)
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake("--models", "llama3.2:latest", "--name", "A") as process:
        yield process


def _get(url: str, request_id: str | None = None) -> int:
    headers = {"X-Request-ID": request_id} if request_id else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        status: int = response.status
        return status


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _serving(url: str) -> bool:
    try:
        return _get(url + "/internal/health") == 200
    except OSError:
        return False


def test_sighup_keeps_serving(tmp_path: Path, fake: FakeProcess) -> None:
    """If olla (logging to stdout) gets SIGHUP, then it logs that there is nothing to reopen,
    keeps running and still proxies requests."""
    with running_olla(tmp_path, [ollama_endpoint("fake-a", fake.url)]) as daemon:
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("SIGHUP: nothing to reopen")
        assert daemon.process.poll() is None
        assert _get(f"{daemon.url}/olla/ollama/api/version", "hup-1") == 200
        assert "hup-1" in daemon.wait_for_log('"request_line": true')


def test_sighup_reopens_the_log_file(tmp_path: Path, fake: FakeProcess) -> None:
    """If olla logs to logging.file and the file is renamed then SIGHUP sent (logrotate), then
    the next request line lands in a new file at the configured path, with its request id in
    the text line, and the renamed file keeps the earlier lines."""
    log = tmp_path / "olla.log"
    rotated = tmp_path / "olla.log.1"
    config = write_config(
        tmp_path,
        [ollama_endpoint("fake-a", fake.url)],
        extra={"logging": {"format": "text", "output": "file", "file": "olla.log"}},
    )
    daemon = OllaDaemon(config)
    try:
        _until(lambda: "listening on" in _text(log), "no startup line in the log file")
        _until(lambda: _serving(daemon.url), "olla is not serving")
        assert _get(f"{daemon.url}/olla/ollama/api/version", "before-hup") == 200
        _until(lambda: "request_id=before-hup" in _text(log), "no request line before HUP")
        log.rename(rotated)
        daemon.process.send_signal(signal.SIGHUP)
        _until(lambda: "SIGHUP: log reopened" in _text(log), "no new log file after SIGHUP")
        assert _get(f"{daemon.url}/olla/ollama/api/version", "after-hup") == 200
        _until(lambda: "request_id=after-hup" in _text(log), "no request line after HUP")
        line = next(x for x in _text(log).splitlines() if "request_id=after-hup" in x)
        assert "GET /olla/ollama/api/version -> fake-a" in line
        assert "before-hup" in rotated.read_text() and "after-hup" not in rotated.read_text()
        assert daemon.process.poll() is None
        assert daemon.lines == []  # nothing went to stdout
    finally:
        daemon.stop()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaps yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _stop_daemon(pidfile: Path, grace: float = 15.0) -> None:
    """SIGTERM the pid in ``pidfile`` and wait for it to go; SIGKILL after ``grace``."""
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not _alive(pid), f"daemon {pid} survived SIGKILL", 5.0)


def test_daemonised_logfile(tmp_path: Path, fake: FakeProcess) -> None:
    """If olla runs daemonised (``twistd --pidfile=P --logfile=F olla``, no -n), then its JSON
    request lines, with the request id, go to F; SIGTERM through the pidfile stops it."""
    config = write_config(tmp_path, [ollama_endpoint("fake-a", fake.url)])
    url = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['server']['port']}"
    pidfile, logfile = tmp_path / "olla.pid", tmp_path / "olla.log"
    command = [twistd(), f"--pidfile={pidfile}", "--logfile=olla.log", "olla", "-c", "olla.yaml"]
    try:
        started = subprocess.run(
            command,
            cwd=str(tmp_path),
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stdout + started.stderr + _text(logfile)
        _until(lambda: _serving(url), "daemonised olla is not serving:\n" + _text(logfile))
        assert _get(f"{url}/olla/ollama/api/version", "daemon-1") == 200
        _until(lambda: "daemon-1" in _text(logfile), "no request line in --logfile")
        events = [json.loads(line) for line in _text(logfile).splitlines()]
        (line,) = [e for e in events if e.get("request_id") == "daemon-1"]
        assert line["request_line"] is True and line["endpoint"] == "fake-a"
        assert any("listening on" in e["msg"] for e in events)
        pid = int(pidfile.read_text())
    finally:
        _stop_daemon(pidfile)
    assert not _alive(pid)
    assert "Server Shut Down." in _text(logfile)
