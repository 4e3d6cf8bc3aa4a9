"""Hostile input over real sockets: a few hundred generated requests against ``twistd -n olla``.

The daemon must answer each in JSON (or close), never in HTML, log no traceback, and end with
every in-flight counter at zero and its open descriptors back where they started.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.e2e.daemon import ollama_endpoint, running_olla
from tests.fakes.process import start_fake
from tests.proxyharness import parse_response
from tests.test_fuzz import requests

pytestmark = pytest.mark.e2e


def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, read until olla closes or goes quiet for a moment."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)  # one request per connection, as a fuzzer would
        data = b""
        sock.settimeout(3)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/internal/status/endpoints", timeout=5) as r:
        return {e["name"]: e for e in json.loads(r.read())["endpoints"]}


def test_raw_socket_fuzz(tmp_path: Path) -> None:
    """If a few hundred generated requests arrive over real sockets, then every answer olla
    makes is JSON, none is a 5xx of its own, no traceback is logged, and counters and file
    descriptors come back to their baseline."""
    with (
        start_fake("--models", "llama3.2:latest,qwen:7b", "--name", "A") as a,
        start_fake("--models", "llama3.2:latest", "--name", "B") as b,
    ):
        endpoints = [ollama_endpoint("A", a.url), ollama_endpoint("B", b.url)]
        with running_olla(tmp_path, endpoints) as daemon:
            pid = daemon.process.pid
            baseline = _fds(pid)
            bad: list[str] = []

            @settings(
                max_examples=300,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(raw=requests())
            def send(raw: bytes) -> None:
                data = _exchange(daemon.port, raw)
                if not data:
                    return
                response = parse_response(data)
                if response is None:
                    bad.append(f"unparsable answer {data[:120]!r} to {raw[:120]!r}")
                    return
                ctype = (response.header(b"content-type") or b"").lower()
                if b"html" in ctype:
                    bad.append(f"HTML answer to {raw[:120]!r}")
                if response.header(b"x-olla-endpoint") is not None:
                    return  # the backend's own answer
                if response.status >= 500 and response.status != 501:
                    bad.append(f"{response.status} to {raw[:120]!r}")
                if response.body and response.status != 304 and b"json" not in ctype:
                    bad.append(f"{response.status} {ctype!r} body to {raw[:120]!r}")

            send()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = _status(daemon.url)
                if all(e["active_connections"] == 0 for e in status.values()) and (
                    _fds(pid) <= baseline + 4
                ):
                    break
                time.sleep(0.1)
            status = _status(daemon.url)
            final_fds = _fds(pid)
            crashes = [
                e.get("msg")
                for e in daemon.events
                if e.get("traceback") or e.get("level") in ("error", "critical")
            ]
        assert bad == [], bad[:10]
        assert crashes == [], crashes[:5]
        assert {n: e["active_connections"] for n, e in status.items()} == {"A": 0, "B": 0}
        # a few pooled keep-alive connections to the backends may stay open
        assert final_fds <= baseline + 4, (final_fds, baseline)
