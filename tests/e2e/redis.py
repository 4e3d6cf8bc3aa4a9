"""A real ``redis-server`` (Debian's package) for the shared-state tests: on a free loopback
port, no persistence, started and stopped by PID (also when a test fails), and killable and
restartable on the same port mid-test.

    with redis_server() as store:
        store.url              # redis://127.0.0.1:PORT/0
        store.kill()           # SIGKILL: the store is gone
        store.start()          # back, empty, on the same port

Tests that need one skip when ``redis-server`` is missing (``make test`` installs it:
``tests/e2e/install-redis.sh``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.e2e.daemon import free_port

SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    return shutil.which("redis-server") is not None


def require() -> None:
    """Skip the calling test without a ``redis-server`` (as ``install-redis.sh`` said why)."""
    if not available():
        pytest.skip("redis-server is not installed (make test installs it: install-redis.sh)")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class RedisServer:
    """One redis-server process; ``start`` again after ``kill`` or ``stop``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="olla-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizers: list[weakref.finalize] = []

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--daemonize", "no",
             "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._finalizers.append(weakref.finalize(self, _stop, self.process))
        deadline = time.monotonic() + timeout
        while self.command("PING") != "+PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self, *args: str) -> str | None:
        """One inline command's first reply line (None: no answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall((" ".join(args) + "\r\n").encode())
                return sock.recv(65536).decode(errors="replace").split("\r\n")[0]
        except OSError:
            return None

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed store is."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung store)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            _stop(self.process)
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started ``redis-server``, stopped (by PID) when the block ends, however it ends."""
    require()
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
