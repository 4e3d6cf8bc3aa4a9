"""A real ``twistd -n olla`` process on 127.0.0.1, for end-to-end tests.

The daemon runs from the working tree (``PYTHONPATH`` = repo root, as ``make run`` does), logs
JSON lines to stdout, and is always stopped: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def twistd() -> str:
    return str(Path(sys.executable).with_name("twistd"))


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


class OutputLines:
    """A process's standard output, read line by line on a thread: the lines so far, and a way
    to wait for one (without polling)."""

    def __init__(self, process: subprocess.Popen[str], name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Block until a line containing ``needle`` appears (or the process exits)."""
        for line in self.lines:
            if needle in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if got is None:
                raise RuntimeError(f"{self.name} exited ({self.process.poll()}):\n" + self.output())
            if needle in got:
                return got
        raise TimeoutError(f"no line with {needle!r} after {timeout}s:\n" + self.output())

    def output(self, last: int = 200) -> str:
        return "\n".join(self.lines[-last:])

    def join(self, timeout: float) -> None:
        self._reader.join(timeout)


class OllaDaemon:
    """A running olla; ``url`` is its base, ``logs`` the JSON events it printed so far."""

    def __init__(
        self, config_path: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        self.config_path = config_path
        config = yaml.safe_load(config_path.read_text())
        self.port = int(config["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [twistd(), "--nodaemon", "--pidfile=", "olla", "--config", str(config_path), *args],
            cwd=str(config_path.parent),
            env=daemon_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._output = OutputLines(self.process, "olla")

    @property
    def lines(self) -> list[str]:
        return self._output.lines

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def wait_for_log(self, needle: str, timeout: float = 20.0) -> str:
        """Block until a log line containing ``needle`` appears (or the process exits)."""
        return self._output.wait_for(needle, timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.wait_for_log("listening on", timeout)
        deadline = time.monotonic() + timeout
        while True:  # the port is bound right after the startup line; confirm over HTTP
            try:
                with urllib.request.urlopen(self.url + "/internal/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def output(self) -> str:
        return self._output.output()

    def stop(self, grace: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._output.join(5)
        return self.process.returncode


def write_config(
    directory: Path,
    endpoints: list[dict[str, Any]],
    *,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port or free_port(),
            "shutdown_timeout": "5s",
            # these daemons take many requests from one address; the Go defaults (100/min per
            # IP) would refuse them. test_protection_e2e sets its own limits.
            "rate_limits": {"per_ip_requests_per_minute": 0},
        },
        "proxy": {"load_balancer": "round-robin", "response_header_timeout": "10s"},
        "discovery": {"static": {"endpoints": endpoints}},
        "logging": {"level": "info", "format": "json"},
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    path = directory / "olla.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_olla(
    directory: Path,
    endpoints: list[dict[str, Any]],
    *,
    extra: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    wait_models: bool = True,
) -> Iterator[OllaDaemon]:
    daemon = OllaDaemon(write_config(directory, endpoints, extra=extra), env)
    try:
        daemon.wait_ready()
        for endpoint in endpoints if wait_models else ():
            daemon.wait_for_log(f"endpoint {endpoint['name']} serves")  # first model lists
        yield daemon
    finally:
        daemon.stop()


def ollama_endpoint(name: str, url: str, **extra: Any) -> dict[str, Any]:
    endpoint = {
        "name": name,
        "url": url,
        "type": "ollama",
        "priority": 100,
        "check_interval": "1s",
        "check_timeout": "500ms",
    }
    endpoint.update(extra)
    return endpoint
