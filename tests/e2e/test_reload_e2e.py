"""Hot reload of a real ``twistd -n olla`` while it streams: edit the config, send SIGHUP.

Every process and thread started here is stopped in a ``finally`` (``with`` blocks), also when
an assertion fails; every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla, write_config
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHAT = "/olla/ollama/api/chat"
CHECK_INTERVAL = 1.0
#: beyond one check_interval: the probe itself (check_timeout 500ms at most), the first model
#: list of the new endpoint and our 20 ms polling
SLACK = 1.0
STREAMS = 20
#: each stream: 40 chunks 100 ms apart, so all 20 are open across the reload
STREAM_HEADERS = {"X-Fake-Chunks": "40", "X-Fake-Delay-Ms": "100"}
#: warm routing off: the model is in memory on A and B only, and C must get a share at once
EXTRA = {"proxy": {"warm_routing": {"enabled": False}}}


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for(what: str, check: Callable[[], bool], within: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not {what} after {within}s")
        time.sleep(0.02)
    return time.monotonic() - start


def _chats(fake: FakeProcess) -> int:
    return len(fake.requests("/api/chat"))


def _probes(fake: FakeProcess) -> int:
    return len(fake.requests("/"))


@dataclass
class Streams:
    """``count`` streamed chats opened at once, each read to its end in its own thread."""

    url: str
    count: int
    #: per stream: (endpoint that served it, outcome: "ok" or what went wrong)
    results: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _one(self) -> None:
        body = {"model": MODEL, "messages": [], "stream": True}
        endpoint, outcome = "?", "no answer"
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", self.url + CHAT, json=body, headers=STREAM_HEADERS) as r,
            ):
                endpoint = r.headers.get("x-olla-endpoint", "?")
                if r.status_code != 200:
                    outcome = f"HTTP {r.status_code}: {r.read()[:200]!r}"
                else:
                    lines = [json.loads(line) for line in r.iter_lines() if line]
                    outcome = "ok" if lines and lines[-1].get("done") else "truncated"
        except Exception as e:  # any client-visible failure is an outcome to report
            outcome = repr(e)
        with self.lock:
            self.results.append((endpoint, outcome))

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._one) for _ in range(self.count)]
        for thread in self.threads:
            thread.start()

    def open(self) -> int:
        return sum(thread.is_alive() for thread in self.threads)

    def join(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _status(daemon: OllaDaemon) -> dict[str, Any]:
    payload: dict[str, Any] = _get_json(f"{daemon.url}/internal/status")
    return payload


def _endpoint_names(daemon: OllaDaemon) -> list[str]:
    return sorted(e["name"] for e in _status(daemon)["endpoints"])


def test_reload_during_streams(tmp_path: Path) -> None:
    """If, during 20 streams, the config is edited to add C and remove B and olla gets
    SIGHUP, then every stream completes (those on B finish there), C takes requests within one
    check_interval, B gets no request or probe after the reload, and a broken config sent the
    same way changes nothing and is logged with its key path."""
    with ExitStack() as stack:
        a, b, c = (
            stack.enter_context(start_fake("--models", MODEL, "--name", name))
            for name in ("A", "B", "C")
        )
        first = [ollama_endpoint("A", a.url), ollama_endpoint("B", b.url)]
        daemon = stack.enter_context(running_olla(tmp_path, first, extra=EXTRA))
        assert _status(daemon)["config"]["generation"] == 1

        streams = Streams(daemon.url, STREAMS)
        stack.callback(streams.join)
        streams.start()
        _wait_for("streams open on A and B", lambda: _chats(a) + _chats(b) >= STREAMS, 10.0)
        assert _chats(b) > 0, "no stream went to B"

        second = [ollama_endpoint("A", a.url), ollama_endpoint("C", c.url)]
        write_config(tmp_path, second, port=daemon.port, extra=EXTRA)
        sighup = time.monotonic()
        daemon.process.send_signal(signal.SIGHUP)

        def c_serves() -> bool:
            body = {"model": MODEL, "messages": [], "stream": False}
            response = httpx.post(daemon.url + CHAT, json=body, timeout=10)
            assert response.status_code == 200, response.text
            return response.headers["x-olla-endpoint"] == "C"

        waited = _wait_for("C serving", c_serves, CHECK_INTERVAL + SLACK)
        to_serving = time.monotonic() - sighup
        daemon.wait_for_log("config reloaded (generation 2)", 5.0)
        assert streams.open() > 0, "the streams ended before the reload: nothing was tested"
        b_chats, b_probes = _chats(b), _probes(b)

        after_reload: list[str] = []  # who served each request sent after the reload applied
        with httpx.Client(timeout=10) as client:
            for _ in range(10):
                body = {"model": MODEL, "messages": [], "stream": False}
                response = client.post(daemon.url + CHAT, json=body)
                assert response.status_code == 200, response.text
                after_reload.append(response.headers["x-olla-endpoint"])
        assert "B" not in after_reload
        assert "C" in after_reload

        streams.join()
        assert len(streams.results) == STREAMS
        assert [r for r in streams.results if r[1] != "ok"] == []
        assert any(endpoint == "B" for endpoint, _ in streams.results)

        status = _status(daemon)
        assert status["config"]["generation"] == 2
        assert _endpoint_names(daemon) == ["A", "C"]
        assert status["system"]["active_connections"] == 0

        # the broken config: sent the same way, it changes nothing
        broken = [ollama_endpoint("A", a.url), ollama_endpoint("C", c.url, check_interval="soon")]
        write_config(tmp_path, broken, port=daemon.port, extra=EXTRA)
        daemon.process.send_signal(signal.SIGHUP)
        refused = daemon.wait_for_log("config reload refused", 5.0)
        assert "discovery.static.endpoints[1].check_interval" in refused
        status = _status(daemon)
        assert status["config"]["generation"] == 2
        assert _endpoint_names(daemon) == ["A", "C"]
        response = httpx.post(
            daemon.url + CHAT, json={"model": MODEL, "messages": [], "stream": False}, timeout=10
        )
        assert response.status_code == 200
        time.sleep(2 * CHECK_INTERVAL)  # two more check intervals: B would be probed by now
        assert (_chats(b), _probes(b)) == (b_chats, b_probes)
        assert daemon.process.poll() is None

    print(f"SIGHUP to C serving: {to_serving * 1000:.0f} ms (first C answer after {waited:.3f}s)")


def test_watch_config_reloads_on_edit(tmp_path: Path) -> None:
    """If olla runs with ``--watch-config`` and the file is edited (no signal), then the new
    endpoint is added on its own and ``/internal/status`` shows the next generation."""
    with ExitStack() as stack:
        a, c = (
            stack.enter_context(start_fake("--models", MODEL, "--name", name))
            for name in ("A", "C")
        )
        path = write_config(tmp_path, [ollama_endpoint("A", a.url)], extra=EXTRA)
        daemon = OllaDaemon(path, args=("--watch-config", "--watch-interval", "0.2"))
        stack.callback(daemon.stop)
        daemon.wait_ready()
        second = [ollama_endpoint("A", a.url), ollama_endpoint("C", c.url)]
        write_config(tmp_path, second, port=daemon.port, extra=EXTRA)
        daemon.wait_for_log("config reloaded (generation 2)", 10.0)
        _wait_for(
            "C healthy",
            lambda: (
                {e["name"]: e["status"] for e in _status(daemon)["endpoints"]}.get("C") == "healthy"
            ),
            CHECK_INTERVAL + SLACK,
        )
        assert _status(daemon)["config"]["generation"] == 2
        assert daemon.process.poll() is None
