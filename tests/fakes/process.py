"""The fake Ollama as a separate process on 127.0.0.1, always stopped.

with start_fake("--models", "llama3.2:latest", "--name", "A") as fake:
    httpx.get(f"{fake.url}/api/tags")
    fake.set_state(health="fail")
    fake.requests()

``start_fake("--version", "0.14.0")`` is an Ollama that also serves the Anthropic Messages API
(``POST /v1/messages``); ``fake.set_state(version=...)`` switches it at run time.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)
    if process.stdout is not None:
        process.stdout.close()


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent for ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            piece = os.read(fd, 4096)
            if not piece:
                break
            data += piece
    return data.decode(errors="replace").partition("\n")[0]


class FakeProcess:
    """``python -m tests.fakes.ollama --port 0 *args``; a context manager that stops it."""

    def __init__(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.args = args
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.ollama", "--port", "0", *args],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        # stopped even if the caller forgets (or dies before __exit__)
        self._finalizer = weakref.finalize(self, _stop, self.process)
        line = _read_line(self.process, timeout)
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake ollama {args} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def _call(self, path: str, payload: object | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """What the fake received (``path``: only requests to it)."""
        query = "" if path is None else "?" + urllib.parse.urlencode({"path": path})
        result: list[dict[str, Any]] = self._call("/_fake/requests" + query)
        return result

    def reset(self) -> None:
        self._call("/_fake/reset", {})

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("/_fake/state")
        return result

    def set_state(self, **update: Any) -> dict[str, Any]:
        """``health``, ``models``, ``loaded``, ``default_chunks``, ``default_delay_ms``,
        ``default_ttft_ms``, ``status``, ``version`` (from "0.14.0" on, /v1/messages is served);
        answers the whole new state."""
        result: dict[str, Any] = self._call("/_fake/state", update)
        return result

    def connections(self) -> int:
        """TCP connections the fake has accepted so far."""
        return int(self.state()["connections"])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_fake(*args: str) -> FakeProcess:
    """Start a fake Ollama process (see ``python -m tests.fakes.ollama --help`` for ``args``)."""
    return FakeProcess(*args)
