"""Slow model loads and the response bound, as the Ollama page's "Slow First Request" and
"Configure Appropriate Timeouts" have it: a real ``twistd -n olla`` over fake Ollamas that
take ``--load-ms`` to load a model."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

BIG = "big:70b"


@pytest.fixture
def started() -> Iterator[list[FakeProcess]]:
    fakes: list[FakeProcess] = []
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


def _chat(url: str, model: str, results: list[httpx.Response], timeout: float = 120) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    results.append(httpx.post(f"{url}/olla/ollama/api/chat", json=body, timeout=timeout))


#: the page's "Configure Appropriate Timeouts", with the Go original's other defaults
PAGE_PROXY = {
    "response_timeout": "600s",
    "response_header_timeout": "30s",
    "load_balancer": "least-connections",
}


def test_slow_first_request_loads_once(tmp_path: Path, started: list[FakeProcess]) -> None:
    """If two Ollamas list big:70b, neither has it in memory and a load takes 35 s (longer
    than the 30 s header timeout), then four concurrent first requests all get 200, one load
    happens across the fleet, no endpoint is unhealthy at any moment and nothing fails over."""
    for name in ("A", "B"):
        fake = start_fake("--models", BIG, "--name", name, "--load-ms", "35000", "--capacity", "4")
        fake.set_state(models=[{"name": BIG, "parameter_size": "70.6B"}])
        started.append(fake)
    endpoints = [ollama_endpoint(n, f.url) for n, f in zip("AB", started, strict=True)]
    with running_olla(tmp_path, endpoints, extra={"proxy": PAGE_PROXY}) as daemon:
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=_chat, args=(daemon.url, BIG, results)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        unhealthy: list[Any] = []
        while any(t.is_alive() for t in threads):
            status = httpx.get(f"{daemon.url}/internal/status/endpoints", timeout=5).json()
            unhealthy += [e for e in status["endpoints"] if e["status"] != "healthy"]
            time.sleep(0.5)
        for thread in threads:
            thread.join()
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
        assert unhealthy == []
        assert sum(f.state()["loads"] for f in started) == 1
        assert len({r.headers["x-olla-endpoint"] for r in results}) == 1
        failovers = httpx.get(f"{daemon.url}/internal/stats/failovers", timeout=5).json()
        assert failovers["failovers"] == [], failovers
        assert not [line for line in daemon.lines if "candidate(s) left" in line]


def test_reset_mid_load_fails_over(tmp_path: Path, started: list[FakeProcess]) -> None:
    """If the host loading the model dies mid-load, then the request still fails over to the
    other host at once (a connection-class failure), and gets its answer there."""
    for name in ("A", "B"):
        started.append(start_fake("--models", BIG, "--name", name, "--load-ms", "3000"))
    endpoints = [ollama_endpoint(n, f.url) for n, f in zip("AB", started, strict=True)]
    with running_olla(tmp_path, endpoints, extra={"proxy": PAGE_PROXY}) as daemon:
        results: list[httpx.Response] = []
        thread = threading.Thread(target=_chat, args=(daemon.url, BIG, results))
        thread.start()
        deadline = time.monotonic() + 10
        loading = None
        while loading is None and time.monotonic() < deadline:
            loading = next((f for f in started if f.requests("/api/chat")), None)
            time.sleep(0.05)
        assert loading is not None
        loading.process.send_signal(signal.SIGKILL)  # reset mid-load
        thread.join(60)
        (response,) = results
        assert response.status_code == 200
        survivor = "B" if loading is started[0] else "A"
        assert response.headers["x-olla-endpoint"] == survivor
        failovers = httpx.get(f"{daemon.url}/internal/stats/failovers", timeout=5).json()
        assert [f["to"] for f in failovers["failovers"]] == [survivor]


def test_response_timeout(tmp_path: Path, started: list[FakeProcess]) -> None:
    """If proxy.response_timeout is 3s and answers take 8 s, then a whole answer ends at the
    bound with a 504 in the client's dialect, a stream is cut there, and the log says why."""
    fake = start_fake("--models", "llama3.2:latest", "--name", "A")
    started.append(fake)
    with running_olla(
        tmp_path, [ollama_endpoint("A", fake.url)], extra={"proxy": {"response_timeout": "3s"}}
    ) as daemon:
        body = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}
        began = time.monotonic()
        response = httpx.post(
            f"{daemon.url}/olla/ollama/api/chat",
            json={**body, "stream": False},
            headers={"X-Fake-Ttft-Ms": "8000"},
            timeout=30,
        )
        assert time.monotonic() - began < 7.5  # ended by the bound, not by the 8 s answer
        assert response.status_code == 504
        assert "proxy.response_timeout (3s)" in response.json()["error"]
        daemon.wait_for_log("took longer than proxy.response_timeout (3s): cut before the first")
        began = time.monotonic()
        with pytest.raises(httpx.TransportError):  # the stream is cut, not ended
            with httpx.stream(
                "POST",
                f"{daemon.url}/olla/ollama/api/chat",
                json={**body, "stream": True},
                headers={"X-Fake-Chunks": "8", "X-Fake-Delay-Ms": "1000"},
                timeout=30,
            ) as stream:
                assert stream.status_code == 200
                for _ in stream.iter_lines():
                    pass
        assert time.monotonic() - began < 7.5
        daemon.wait_for_log("took longer than proxy.response_timeout (3s): cut after")
        assert (
            httpx.get(f"{daemon.url}/internal/status/endpoints", timeout=5).json()["endpoints"][0][
                "status"
            ]
            == "healthy"
        )
