"""Three fake Ollama machines behind a real olla: one dies under load, then comes back."""

from __future__ import annotations

import json
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

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHECK_INTERVAL = 1.0


def _endpoints_status(daemon: OllaDaemon) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{daemon.url}/internal/status/endpoints", timeout=5) as r:
        payload = json.loads(r.read())
    return {e["name"]: e for e in payload["endpoints"]}


def _wait_status(daemon: OllaDaemon, name: str, status: str, within: float) -> float:
    """Seconds until ``name`` shows ``status``; fails after ``within`` seconds."""
    start = time.monotonic()
    while True:
        if _endpoints_status(daemon)[name]["status"] == status:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(
                f"{name} not {status} after {within}s: {_endpoints_status(daemon)}"
            )
        time.sleep(0.02)


@pytest.fixture
def fleet() -> Iterator[list[FakeProcess]]:
    # the model is in memory everywhere: the balancer spreads the load over all three (a cold
    # model's first requests would all wait for one load on one machine)
    fakes = [
        start_fake("--models", MODEL, "--loaded", MODEL, "--name", name) for name in ("A", "B", "C")
    ]
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


class Load:
    """Non-streaming chat requests in a loop from a few threads, counting every outcome."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        body = {"model": MODEL, "messages": [], "stream": False}
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{self.url}/olla/ollama/api/chat", json=body)
                    good = response.status_code == 200 and response.json()["done"]
                    outcome = "" if good else f"{response.status_code} {response.text}"
                except Exception as e:  # any client-visible failure counts
                    outcome = repr(e)
                with self.lock:
                    if outcome:
                        self.errors.append(outcome)
                    else:
                        self.ok += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def _stream(url: str, results: list[tuple[str, str]]) -> None:
    """One streamed chat; records (endpoint, "ok" | error)."""
    endpoint = "?"
    try:
        with httpx.stream(
            "POST",
            f"{url}/olla/ollama/api/chat",
            json={"model": MODEL, "messages": []},
            headers={"X-Fake-Chunks": "30", "X-Fake-Delay-Ms": "50"},
            timeout=30,
        ) as response:
            endpoint = response.headers.get("x-olla-endpoint", "?")
            lines = [json.loads(line) for line in response.iter_lines() if line]
            results.append((endpoint, "ok" if lines[-1]["done"] else "truncated"))
    except Exception as e:
        results.append((endpoint, repr(e)))


def test_machine_dies_under_load_and_returns(tmp_path: Path, fleet: list[FakeProcess]) -> None:
    """If one of three machines dies while requests and 20 streams are running, then no
    request that had not started streaming fails, the machine shows offline right after the
    first failed request, and it is healthy within one check_interval of coming back."""
    endpoints = [
        ollama_endpoint(name, fake.url, check_interval="1s", check_timeout="500ms")
        for name, fake in zip(("A", "B", "C"), fleet, strict=True)
    ]
    with running_olla(tmp_path, endpoints) as daemon:
        for name in ("A", "B", "C"):
            _wait_status(daemon, name, "healthy", 5)
        streams: list[tuple[str, str]] = []
        stream_threads = [
            threading.Thread(target=_stream, args=(daemon.url, streams)) for _ in range(20)
        ]
        with Load(daemon.url) as load:
            for thread in stream_threads:
                thread.start()
            time.sleep(0.5)  # let load and streams get going on all three
            victim = fleet[1]
            port = victim.port
            victim.process.kill()
            victim.process.wait(5)
            _wait_status(daemon, "B", "offline", 2)
            served_before_restart = load.ok
            time.sleep(0.5)
            replacement = start_fake(
                "--models", MODEL, "--loaded", MODEL, "--name", "B", "--port", str(port)
            )
            fleet[1] = replacement
            recovered_in = _wait_status(daemon, "B", "healthy", CHECK_INTERVAL + 1.0)
            time.sleep(0.5)
        for thread in stream_threads:
            thread.join(30)
        assert load.errors == [], load.errors[:5]
        assert load.ok > served_before_restart > 0
        failed_streams = [(ep, outcome) for ep, outcome in streams if outcome != "ok"]
        assert len(streams) == 20
        # only streams that were already running on the dead machine may break
        assert all(ep == "B" for ep, _ in failed_streams), failed_streams
        assert recovered_in <= CHECK_INTERVAL + 1.0
        status = _endpoints_status(daemon)
        assert {status[n]["status"] for n in ("A", "B", "C")} == {"healthy"}
        # no counter leaks: nothing is in flight once the load stopped
        assert all(status[n]["active_connections"] == 0 for n in ("A", "B", "C")), status


def test_connections_are_reused(tmp_path: Path, fleet: list[FakeProcess]) -> None:
    """If 200 requests go to one backend one after another, then olla reuses a handful of
    pooled connections instead of opening one per request."""
    fake = fleet[0]
    with running_olla(tmp_path, [ollama_endpoint("A", fake.url)]) as daemon:
        with httpx.Client(timeout=10) as client:
            for _ in range(200):
                response = client.post(
                    f"{daemon.url}/olla/ollama/api/chat",
                    json={"model": MODEL, "messages": [], "stream": False},
                )
                assert response.status_code == 200
        # health probes also connect; 200 proxied requests must not mean 200 connections
        assert fake.connections() < 20, fake.connections()
