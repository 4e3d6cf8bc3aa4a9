"""The fake Ollama as a separate process on 127.0.0.1, always stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class FakeProcess:
    """``python -m tests.fakes.ollama`` on a free port; a context manager that stops it."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.ollama", "--port", "0", *args],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake ollama did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, payload: object | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("/_fake/requests")
        return result

    def reset(self) -> None:
        self._call("/_fake/reset", {})

    def set_state(self, **update: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("/_fake/state", update)
        return result

    def connections(self) -> int:
        """TCP connections the fake has accepted so far."""
        state: dict[str, Any] = self._call("/_fake/state")
        return int(state["connections"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

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
    return FakeProcess(*args)
