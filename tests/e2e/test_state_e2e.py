"""Shared state end to end: a real ``redis-server`` behind ``twistd olla --workers 2`` and behind
two olla instances, every request on a fresh connection (as SDK pools and load balancers spread
them): conversations stay on one endpoint, a per-IP limit holds across all processes, the store
killed mid-run costs no request, and sharing resumes when it is back."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, write_config
from tests.e2e.redis import RedisServer, redis_server
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
NAMES = ("A", "B", "C")
CONVERSATIONS = 12
TURNS = 6


@pytest.fixture(scope="module")
def fakes() -> Iterator[list[FakeProcess]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(start_fake("--models", MODEL, "--loaded", MODEL, "--name", n))
            for n in NAMES
        ]


@pytest.fixture
def store() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def state(url: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "redis", "url": url, "command_timeout": "200ms", **extra}


def endpoints(fakes: list[FakeProcess]) -> list[dict[str, Any]]:
    # room for every conversation at once: a pinned host counted full would move its
    # conversation on purpose (routing's rule), which is not what these tests look at
    return [ollama_endpoint(f"fake-{f.args[-1].lower()}", f.url, max_concurrency=16) for f in fakes]


@contextmanager
def olla(
    directory: Path, fakes: list[FakeProcess], extra: dict[str, Any], workers: int = 1
) -> Iterator[OllaDaemon]:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, endpoints(fakes), extra=extra)
    daemon = OllaDaemon(config, args=["--workers", str(workers)] if workers > 1 else [])
    try:
        daemon.wait_ready()
        want = len(fakes) * workers
        deadline = time.monotonic() + 30
        while sum(" serves " in line for line in daemon.lines) < want:  # first model lists
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.stop()
        _kill_workers(daemon)


def _kill_workers(daemon: OllaDaemon) -> None:
    """Never leave a worker behind, whatever failed."""
    for event in daemon.events:
        pid = event.get("pid")
        if "started (pid" in str(event.get("text", event.get("msg", ""))) and pid:
            try:
                if b"--worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def chat(port: int, conversation: int, turn: int) -> tuple[int, str, dict[str, str]]:
    """One turn of ``conversation`` on a fresh connection: status, endpoint, headers."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"You are assistant number {conversation}."},
        {"role": "user", "content": f"Conversation {conversation} starts here."},
    ]
    for earlier in range(1, turn):
        messages += [
            {"role": "assistant", "content": f"answer {earlier}"},
            {"role": "user", "content": f"question {earlier + 1}"},
        ]
    body = json.dumps({"model": MODEL, "messages": messages, "stream": False})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/olla/ollama/api/chat", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers.get("x-olla-endpoint", ""), headers
    finally:
        conn.close()


def status(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/internal/status")
        payload: dict[str, Any] = json.loads(conn.getresponse().read())
        return payload
    finally:
        conn.close()


def conversations(ports: list[int]) -> dict[int, list[tuple[int, str]]]:
    """12 conversations x 6 turns: each turn of all 12 at once (so every worker accepts some),
    each on a fresh connection to the next of ``ports``; the next turn once all answered."""
    seen: dict[int, list[tuple[int, str]]] = {c: [] for c in range(CONVERSATIONS)}
    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        for turn in range(1, TURNS + 1):
            answers = pool.map(
                lambda c, t=turn: chat(ports[(c + t) % len(ports)], c, t), range(CONVERSATIONS)
            )
            for conversation, (code, endpoint, _) in enumerate(answers):
                seen[conversation].append((code, endpoint))
    return seen


def served_by_worker(daemon: OllaDaemon) -> dict[int, int]:
    """Requests each worker logged (its request lines carry its ``worker`` id)."""
    counts: dict[int, int] = {}
    for event in daemon.events:
        if event.get("request_line") and "worker" in event:
            counts[int(event["worker"])] = counts.get(int(event["worker"]), 0) + 1
    return counts


def assert_sticky(seen: dict[int, list[tuple[int, str]]]) -> None:
    for conversation, turns in seen.items():
        assert [code for code, _ in turns] == [200] * TURNS, (conversation, turns)
        assert len({endpoint for _, endpoint in turns}) == 1, (conversation, turns)


def limited(ports: list[int], count: int = 36) -> list[int]:
    """``count`` requests from one address across ``ports`` in turn: their statuses."""
    return [chat(ports[i % len(ports)], 1000 + i, 1)[0] for i in range(count)]


STICKY = {"proxy": {"load_balancer": "round-robin", "sticky_sessions": {"enabled": True}}}
LIMIT = {"rate_limits": {"per_ip_requests_per_minute": 12, "burst_size": 12}}


def test_workers_share_pins_and_limits(
    fakes: list[FakeProcess], store: RedisServer, tmp_path: Path
) -> None:
    """If two workers share the store, then 12 six-turn conversations on fresh connections each
    stay on one endpoint, and a 12/min per-IP limit serves exactly 12 of 36."""
    extra = {**STICKY, "state": state(store.url)}
    with olla(tmp_path / "sticky", fakes, extra, workers=2) as daemon:
        assert_sticky(conversations([daemon.port]))
        served = served_by_worker(daemon)
        assert len(served) == 2 and sum(served.values()) == CONVERSATIONS * TURNS, served
        payload = status(daemon.port)
        assert payload["state"]["backend"] == "redis" and payload["state"]["ok"], payload["state"]
    extra = {"server": LIMIT, "state": state(store.url, key_prefix="limits:")}
    with olla(tmp_path / "limits", fakes, extra, workers=2) as daemon:
        codes = limited([daemon.port])
        assert codes.count(200) == 12 and codes.count(429) == 24, codes


def test_two_instances_share_pins_and_limits(
    fakes: list[FakeProcess], store: RedisServer, tmp_path: Path
) -> None:
    """If two olla instances share the store, then conversations taking turns between them stay
    on one endpoint, and the per-IP limit holds across both: 12 of 36."""
    extra = {**STICKY, "server": LIMIT, "state": state(store.url)}
    with olla(tmp_path / "one", fakes, extra) as one, olla(tmp_path / "two", fakes, extra) as two:
        codes = limited([one.port, two.port])
        assert codes.count(200) == 12 and codes.count(429) == 24, codes
    extra = {**STICKY, "state": state(store.url, key_prefix="pins:")}
    with (
        olla(tmp_path / "three", fakes, extra) as one,
        olla(tmp_path / "four", fakes, extra) as two,
    ):
        assert_sticky(conversations([one.port, two.port]))


def test_store_killed_and_back(
    fakes: list[FakeProcess], store: RedisServer, tmp_path: Path
) -> None:
    """If the store is killed mid-run, then no request fails (each process decides alone), the
    fallback is logged once and counted; once it is back, sharing resumes: a conversation
    taking turns between two instances stays on one endpoint again."""
    extra = {**STICKY, "state": state(store.url)}
    with olla(tmp_path / "a", fakes, extra) as one, olla(tmp_path / "b", fakes, extra) as two:
        ports = [one.port, two.port]
        codes = [chat(ports[i % 2], i, 1)[0] for i in range(10)]
        store.kill()
        codes += [chat(ports[i % 2], 100 + i, (i % 3) + 1)[0] for i in range(30)]
        assert all(code < 500 for code in codes), codes
        for daemon in (one, two):
            daemon.wait_for_log("not answering", timeout=10)
            figures = status(daemon.port)["state"]
            assert figures["ok"] is False and figures["fallbacks"] > 0, figures
        warned = [line for line in one.lines if "not answering" in line]
        assert len(warned) == 1, "\n".join(one.lines[-60:])  # said once, not per request

        store.start()
        deadline = time.monotonic() + 15
        while not all(status(d.port)["state"]["ok"] for d in (one, two)):
            assert time.monotonic() < deadline, (status(one.port)["state"], one.output())
            chat(one.port, 999, 1)  # a command that finds the store answering again
            chat(two.port, 999, 1)
            time.sleep(0.2)
        one.wait_for_log("answers again", timeout=10)
        seen: dict[int, list[tuple[int, str]]] = {c: [] for c in range(4)}
        sent = 0
        for turn in range(1, TURNS + 1):
            for conversation in seen:
                seen[conversation].append(chat(ports[sent % 2], 500 + conversation, turn)[:2])
                sent += 1
        for conversation, turns in seen.items():
            assert len({endpoint for _, endpoint in turns}) == 1, (conversation, turns)


def test_one_probe_per_endpoint_per_interval(
    fakes: list[FakeProcess], store: RedisServer, tmp_path: Path
) -> None:
    """If two workers share the store, then each endpoint is probed about once per interval,
    not once per worker (check_interval 1s: at most 7 probes in 6 s, where two workers
    probing alone make about 12)."""
    extra = {"state": state(store.url)}
    with olla(tmp_path / "probes", fakes, extra, workers=2):
        time.sleep(2)  # the startup probes (each worker makes its own) are over
        before = {f.args[-1]: len(f.requests("/")) for f in fakes}
        time.sleep(6)
        after = {f.args[-1]: len(f.requests("/")) for f in fakes}
    probes = {name: after[name] - before[name] for name in before}
    assert all(4 <= count <= 7 for count in probes.values()), probes
