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


def _crashes(daemon: OllaDaemon) -> list[object]:
    """What the daemon logged as an error or with a traceback."""
    return [
        e.get("msg")
        for e in daemon.events
        if e.get("traceback") or e.get("level") in ("error", "critical")
    ]


def test_oversized_headers_get_431(daemon: OllaDaemon) -> None:
    """If a client sends a 2 MB header block (8 KB lines, max_header_size 1 MB), or one 20 KB
    header line, then it gets a JSON 431 (not a reset or silence), and nothing is logged as
    an error."""
    head = b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\n"
    block = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 8000) for i in range(256))
    answer = _raw(daemon, head + block + b"\r\n")
    assert _json_status(answer) == 431
    assert b"request headers too large" in answer
    line = b"X-Long: " + b"l" * 20_000 + b"\r\n"
    answer = _raw(daemon, head + line + b"\r\n")
    assert _json_status(answer) == 431
    assert b"header line too long" in answer
    assert _crashes(daemon) == []


def test_malformed_requests_get_json(daemon: OllaDaemon, fake: FakeProcess) -> None:
    """If a request has no Host (HTTP/1.1), a bad Host, a non-UTF-8 path, a target that is no
    path, a method HTTP does not define, or asks for /olla itself, then the answer is JSON
    with a 4xx, no backend is asked, and nothing is logged as an error."""
    fake.reset()

    def ask(line: bytes, host: bytes | None = b"h") -> int:
        head = line + b"\r\n" + (b"Host: " + host + b"\r\n" if host is not None else b"")
        return _json_status(_raw(daemon, head + b"Connection: close\r\n\r\n"))

    assert ask(b"GET /olla/ollama/api/tags HTTP/1.1", host=None) == 400
    for host in (b"a..b", b"a" * 64, b"a b", b"h:1:2"):
        assert ask(b"GET /internal/health HTTP/1.1", host) == 400, host
        assert ask(b"GET /olla/ollama/api/version HTTP/1.1", host) == 400, host
    assert ask(b"GET /internal/%ff HTTP/1.1") == 400
    assert ask(b"GET /version%c3%28 HTTP/1.1") == 400
    assert ask(b"GET internal/health HTTP/1.1") == 400
    assert ask(b"GET * HTTP/1.1") == 400
    assert ask(b"BREW /internal/status HTTP/1.1") == 405
    for line in (b"GET /olla HTTP/1.1", b"GET /olla/ HTTP/1.1", b"BREW /olla HTTP/1.1"):
        assert ask(line) == 404, line
    assert not [r for r in fake.requests() if "x-forwarded-for" in r["headers"]]  # proxied
    # an absolute URL as the target is served as its path
    assert ask(b"GET http://olla.test/internal/health HTTP/1.1", host=b"other") == 200
    assert _crashes(daemon) == []


def test_slowloris_is_cut_at_its_deadline(daemon: OllaDaemon) -> None:
    """If one client drips its headers and another its body at a byte a second, then each is
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
                sock.settimeout(1.0)  # one byte a second
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
    assert _crashes(daemon) == []


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
