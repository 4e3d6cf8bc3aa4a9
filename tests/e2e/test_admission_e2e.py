"""The admission queue end to end: a real ``twistd -n olla`` in front of fake Ollama processes
(their cost model counts what runs at once: ``peak_running``), real HTTP clients on threads.

Each fake has no cap of its own here, so what it runs at once is exactly what olla sent it;
olla's ``max_concurrency`` is the cap under test. Per-request service time is the fake's
``X-Fake-Ttft-Ms`` knob. Every process is stopped by its ``with`` block, also when a test
fails.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHAT = "/olla/ollama/api/chat"
#: the path the fakes see
UPSTREAM = "/api/chat"


@contextmanager
def fleet(
    directory: Path,
    names: tuple[str, ...],
    *,
    cap: int = 2,
    queue: dict[str, Any] | None = None,
    loaded: tuple[str, ...] | None = None,
    load_ms: int = 0,
) -> Iterator[tuple[OllaDaemon, dict[str, FakeProcess]]]:
    """Fakes ``names`` (``MODEL`` in memory on ``loaded``, default all) behind olla with
    ``max_concurrency: cap`` each."""
    with ExitStack() as stack:
        fakes = {}
        for name in names:
            args = ["--models", MODEL, "--name", name, "--load-ms", str(load_ms)]
            if name in (names if loaded is None else loaded):
                args += ["--loaded", MODEL]
            fakes[name] = stack.enter_context(start_fake(*args))
        endpoints = [
            ollama_endpoint(name, fake.url, max_concurrency=cap) for name, fake in fakes.items()
        ]
        extra = {
            "proxy": {
                "load_balancer": "least-connections",
                "response_header_timeout": "30s",
                "queue": queue or {},
            }
        }
        daemon = stack.enter_context(running_olla(directory, endpoints, extra=extra))
        yield daemon, fakes


def chat(
    daemon: OllaDaemon,
    ttft_ms: int,
    text: str = "hi",
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": False}
    sent = {"X-Fake-Ttft-Ms": str(ttft_ms), **(headers or {})}
    with httpx.Client(timeout=timeout) as client:
        return client.post(daemon.url + CHAT, json=body, headers=sent)


def at_once(daemon: OllaDaemon, count: int, ttft_ms: int, text: str = "r") -> list[httpx.Response]:
    """``count`` chats sent together, each from its own client."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(chat, daemon, ttft_ms, f"{text}{i}") for i in range(count)]
        return [f.result() for f in futures]


def peaks(fakes: dict[str, FakeProcess]) -> dict[str, int]:
    return {name: int(fake.state()["peak_running"]) for name, fake in fakes.items()}


def texts(fake: FakeProcess) -> list[str]:
    """The user text of every chat the fake received, in order."""
    return [json.loads(r["body"])["messages"][0]["content"] for r in fake.requests(UPSTREAM)]


def status(daemon: OllaDaemon) -> dict[str, Any]:
    with httpx.Client(timeout=5) as client:
        payload: dict[str, Any] = client.get(daemon.url + "/internal/status").json()
        return payload


def wait_for(what: str, check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {within}s")
        time.sleep(0.02)


def start(daemon: OllaDaemon, ttft_ms: int, text: str, **headers: str) -> threading.Thread:
    """A chat on a thread of its own (its answer is not looked at)."""
    thread = threading.Thread(target=chat, args=(daemon, ttft_ms, text, headers), daemon=True)
    thread.start()
    return thread


def test_caps_hold(tmp_path: Path) -> None:
    """If 12 one-second requests arrive at once for 2 hosts capped at 2, then neither host
    ever runs more than 2, and all 12 are answered 200."""
    with fleet(tmp_path, ("A", "B")) as (daemon, fakes):
        responses = at_once(daemon, 12, 1000)
        assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses]
        assert peaks(fakes) == {"A": 2, "B": 2}
        served = sorted(r.headers["x-olla-endpoint"] for r in responses)
        assert served == ["A"] * 6 + ["B"] * 6
        assert status(daemon)["queue"]["totals"]["after_wait"] == 8


def test_late_binding(tmp_path: Path) -> None:
    """If host A runs a 6 s request, then 4 short requests that arrive meanwhile all go to B,
    each as B frees (none waits behind the long one in A's own queue)."""
    with fleet(tmp_path, ("A", "B"), cap=1) as (daemon, fakes):
        long = start(daemon, 6000, "long")
        wait_for("the long request on a host", lambda: sum(peaks(fakes).values()) == 1)
        long_on = next(name for name, peak in peaks(fakes).items() if peak == 1)
        other = "B" if long_on == "A" else "A"
        began = time.monotonic()
        responses = at_once(daemon, 4, 300, "short")
        took = time.monotonic() - began
        assert [r.status_code for r in responses] == [200] * 4
        assert [r.headers["x-olla-endpoint"] for r in responses] == [other] * 4
        assert took < 5.0, took  # one after the other on the free host, not behind the 6 s
        assert texts(fakes[long_on]) == ["long"]
        long.join(10)


def test_client_that_leaves_while_held_never_reaches_a_backend(tmp_path: Path) -> None:
    """If a request is held (both hosts full) and its client leaves, then no backend ever
    receives it; olla logs it as 499 after its wait."""
    with fleet(tmp_path, ("A", "B"), cap=1) as (daemon, fakes):
        busy = [start(daemon, 2000, f"busy{i}") for i in range(2)]
        wait_for("both hosts full", lambda: sum(peaks(fakes).values()) == 2)
        with pytest.raises(httpx.ReadTimeout):
            chat(daemon, 100, "leaver", timeout=0.5)  # the client gives up after 0.5 s
        wait_for("the leaver logged", lambda: any(_gone(e) for e in daemon.events))
        for thread in busy:
            thread.join(10)
        after = chat(daemon, 100, "after")
        assert after.status_code == 200
        received = texts(fakes["A"]) + texts(fakes["B"])
        assert "leaver" not in received, received
        gone = next(e for e in daemon.events if _gone(e))
        assert gone["status"] == 499 and gone["queued_ms"] >= 400, gone
        assert status(daemon)["queue"]["totals"]["cancelled"] == 1


def _gone(event: dict[str, Any]) -> bool:
    return bool(event.get("request_line")) and event.get("outcome") == "client_gone"


def test_bounds(tmp_path: Path) -> None:
    """If both hosts are full and max_size is 2, then of 5 more requests 2 are held and then
    answered 200, and 3 are refused at once with 503, Retry-After and a JSON error."""
    with fleet(tmp_path, ("A", "B"), cap=1, queue={"max_size": 2}) as (daemon, fakes):
        busy = [start(daemon, 2000, f"busy{i}") for i in range(2)]
        wait_for("both hosts full", lambda: sum(peaks(fakes).values()) == 2)
        began = time.monotonic()
        results: dict[int, tuple[httpx.Response, float]] = {}

        def one(i: int) -> None:
            response = chat(daemon, 200, f"more{i}")
            results[i] = (response, time.monotonic() - began)

        threads = []
        for i in range(5):  # in order, so the first two are the ones held
            threads.append(threading.Thread(target=one, args=(i,)))
            threads[-1].start()
            wait_for("it is held or refused", lambda i=i: _settled(daemon, i, results))
        for thread in threads + busy:
            thread.join(15)
        codes = [results[i][0].status_code for i in range(5)]
        assert codes == [200, 200, 503, 503, 503], codes
        for i in (2, 3, 4):
            refused, after = results[i]
            assert after < 1.0, after  # at once, not after a wait
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["content-type"].startswith("application/json")
            assert "waiting already" in refused.json()["error"]


def _settled(daemon: OllaDaemon, i: int, results: dict[int, Any]) -> bool:
    """Request ``i`` was held (the queue shows it) or answered."""
    return i in results or status(daemon)["queue"]["held"] >= min(i + 1, 2)


def test_priority(tmp_path: Path) -> None:
    """If two low requests wait for a full host and a high one arrives after them, then the
    high one is served first."""
    with fleet(tmp_path, ("A",), cap=1) as (daemon, fakes):
        busy = start(daemon, 1500, "busy")
        wait_for("the host full", lambda: peaks(fakes)["A"] == 1)
        held = []
        for name, priority in (("low0", "low"), ("low1", "low"), ("high", "high")):
            held.append(start(daemon, 100, name, **{"X-Olla-Priority": priority}))
            count = len(held)
            wait_for(f"{name} held", lambda count=count: status(daemon)["queue"]["held"] == count)
        for thread in [busy, *held]:
            thread.join(15)
        assert texts(fakes["A"]) == ["busy", "high", "low0", "low1"]


def test_burst_before_any_service_time(tmp_path: Path) -> None:
    """If 24 one-second requests arrive together before any request of the model has
    finished (its service time is only a prior), with the model in memory on one host of
    three, then no host runs more than its cap and all 24 are answered 200."""
    with fleet(tmp_path, ("A", "B", "C"), loaded=("A",), load_ms=500) as (daemon, fakes):
        responses = at_once(daemon, 24, 1000)
        assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses]
        assert all(peak <= 2 for peak in peaks(fakes).values()), peaks(fakes)
        served = {r.headers["x-olla-endpoint"] for r in responses}
        assert served == {"A", "B", "C"}, served  # the others became second homes
        assert sum(int(f.state()["loads"]) for f in fakes.values()) <= 2  # at most one each
