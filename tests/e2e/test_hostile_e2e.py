"""Hostile clients against a real ``twistd -n olla``, over raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake
from tests.proxyharness import parse_response

pytestmark = pytest.mark.e2e

DEADLINE = 2.0


@pytest.fixture
def fake() -> Iterator[FakeProcess]:
    with start_fake("--models", "llama3.2:latest", "--name", "A") as backend:
        yield backend


@pytest.fixture
def daemon(tmp_path: Path, fake: FakeProcess) -> Iterator[OllaDaemon]:
    # proxied requests go below /base (which the fake does not serve: its 404 still shows the
    # path it got); its health and model list are asked at its root
    endpoint = ollama_endpoint(
        "A",
        fake.url + "/base",
        preserve_path=True,
        health_check_url=fake.url + "/",
        model_url=fake.url + "/api/tags",
    )
    extra = {"server": {"read_header_timeout": f"{DEADLINE:g}s", "read_timeout": f"{DEADLINE:g}s"}}
    with running_olla(tmp_path, [endpoint], extra=extra) as running:
        yield running


def _raw(daemon: OllaDaemon, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def _status(daemon: OllaDaemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"{daemon.url}/internal/status/endpoints", timeout=5) as r:
        return {e["name"]: e for e in json.loads(r.read())["endpoints"]}


def _json_status(data: bytes) -> int:
    response = parse_response(data)
    assert response is not None, data[:200]
    assert response.header(b"content-type") == b"application/json; charset=utf-8", data[:300]
    json.loads(response.body)
    return response.status


def test_oversized_headers_get_431(daemon: OllaDaemon) -> None:
    """If a client sends a 2 MB header block, or one 20 KB header line, then it gets a JSON
    431 (not a reset or silence)."""
    head = b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\n"
    block = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(2048))
    assert _json_status(_raw(daemon, head + block + b"\r\n")) == 431
    line = b"X-Long: " + b"l" * 20_000 + b"\r\n"
    assert _json_status(_raw(daemon, head + line + b"\r\n")) == 431


def test_malformed_requests_get_json(daemon: OllaDaemon) -> None:
    """If a request has no Host (HTTP/1.1), a non-UTF-8 path, or asks for /olla itself, then
    the answer is JSON with a 4xx."""
    assert _json_status(_raw(daemon, b"GET /olla/ollama/api/tags HTTP/1.1\r\n\r\n")) == 400
    assert _json_status(_raw(daemon, b"GET /internal/%ff HTTP/1.1\r\nHost: h\r\n\r\n")) == 400
    for path in (b"/olla", b"/olla/"):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert _json_status(_raw(daemon, request)) == 404


def test_slowloris_is_cut_at_its_deadline(daemon: OllaDaemon) -> None:
    """If one client drips its headers and another its body a byte at a time, then each is
    closed at its deadline (408), while a third client is served meanwhile."""
    results: dict[str, tuple[float, bytes]] = {}

    def drip(name: str, start: bytes, drips: bytes) -> None:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.sendall(start)
            answer = b""
            for byte in drips:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                sock.settimeout(0.5)
                try:
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                if answer:
                    break
            results[name] = (time.monotonic() - began, answer)

    head = b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\nX-Slow: "
    body = b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: h\r\nContent-Length: 500\r\n\r\n"
    threads = [
        threading.Thread(target=drip, args=("headers", head[:5], head[5:] + b"x" * 40)),
        threading.Thread(target=drip, args=("body", body, b"{" + b" " * 100)),
    ]
    for thread in threads:
        thread.start()
    served = 0
    with httpx.Client(timeout=5) as client:
        while any(t.is_alive() for t in threads) and served < 200:
            assert client.get(f"{daemon.url}/internal/health").status_code == 200
            served += 1
            time.sleep(0.05)
    for thread in threads:
        thread.join(15)
    for name in ("headers", "body"):
        took, answer = results[name]
        assert _json_status(answer) == 408, name
        assert DEADLINE - 0.2 <= took <= DEADLINE + 1.5, (name, took)
    assert served > 5


def test_encoded_prefixes_and_dot_segments(daemon: OllaDaemon, fake: FakeProcess) -> None:
    """If ten requests use a percent-encoded prefix, then each is answered and no in-flight
    count is left; a dot-segment path that climbs out is refused before any backend, and one
    that stays inside reaches the backend below its base path."""
    fake.reset()
    with httpx.Client(timeout=5) as client:
        inside = client.get(f"{daemon.url}/olla/ollama/api/x/%2E%2E/version")
        assert "x-olla-endpoint" in inside.headers
        for _ in range(10):
            response = client.get(f"{daemon.url}/olla/%6fllama/api/ver%20sion")
            assert response.status_code in (200, 404), response.text  # the backend's answer
            assert "x-olla-endpoint" in response.headers
        assert _status(daemon)["A"]["active_connections"] == 0
        assert client.get(f"{daemon.url}/olla/ollama/api/version").status_code in (200, 404)
    escape = b"GET /olla/ollama/%2e%2e/%2e%2e/api/version HTTP/1.1\r\nHost: h\r\n"
    assert _json_status(_raw(daemon, escape + b"Connection: close\r\n\r\n")) == 400
    paths = [r["path"] for r in fake.requests() if "version" in r["path"]]
    assert paths and all(p.startswith("/base/") for p in paths), paths
    assert not any(".." in p or "%2e" in p.lower() for p in paths), paths
