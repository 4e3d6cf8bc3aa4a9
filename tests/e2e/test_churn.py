"""Routing while the fleet churns: real ``twistd -n olla`` in front of fake Ollama processes that
die, come back, fill up, refuse with 503 or 429, or never answer at all.

Every test bounds its waits with a deadline, and every process, thread and socket it starts is
stopped in a ``finally`` (fixtures or ``with`` blocks), also when an assertion fails.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla, write_config
from tests.e2e.redis import redis_server
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHECK_INTERVAL = 1.0
#: how late "healthy" may show after a restart, beyond one check_interval: the probe itself
#: (check_timeout 500ms at most), the fake's own start and our 20 ms polling
HEALTHY_SLACK = 1.0
CHAT = "/olla/ollama/api/chat"


# ---------------------------------------------------------------------------------- helpers


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _endpoints_status(daemon: OllaDaemon) -> dict[str, dict[str, Any]]:
    payload = _get_json(f"{daemon.url}/internal/status/endpoints")
    return {e["name"]: e for e in payload["endpoints"]}


def _wait_for(what: str, check: Callable[[], bool], within: float, every: float = 0.02) -> float:
    """Seconds until ``check()`` holds; an AssertionError naming ``what`` after ``within``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not {what} after {within}s")
        time.sleep(every)
    return time.monotonic() - start


def _wait_healthy(daemon: OllaDaemon, names: list[str], within: float) -> float:
    def healthy() -> bool:
        status = _endpoints_status(daemon)
        return all(status[n]["status"] == "healthy" for n in names)

    try:
        return _wait_for(f"{names} healthy", healthy, within)
    except AssertionError as e:
        raise AssertionError(f"{e}: {_endpoints_status(daemon)}") from None


def _wait_loaded(daemon: OllaDaemon, names: list[str], within: float = 5.0) -> None:
    """Until olla's catalogue (``/olla/models``) shows ``MODEL`` loaded on each of ``names``:
    warm routing can only prefer a host it knows is warm."""

    def loaded() -> bool:
        for model in _get_json(f"{daemon.url}/olla/models")["data"]:
            if model["id"] == MODEL:
                warm = {
                    a["endpoint"] for a in model["olla"]["availability"] if a["state"] == "loaded"
                }
                return set(names) <= warm
        return False

    _wait_for(f"{MODEL} known loaded on {names}", loaded, within)


def _chat(
    client: httpx.Client, daemon: OllaDaemon, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A non-streamed chat for ``MODEL``."""
    body = {"model": MODEL, "messages": [], "stream": False}
    return client.post(f"{daemon.url}{CHAT}", json=body, headers=headers or {})


def _complete(response: httpx.Response) -> bool:
    """A 200 whose body is a whole, finished Ollama chat answer."""
    if response.status_code != 200:
        return False
    try:
        return bool(response.json()["done"])
    except (ValueError, KeyError, TypeError):
        return False


def _served_by(response: httpx.Response) -> str:
    return response.headers.get("x-olla-endpoint", "?")


def _completion_event(daemon: OllaDaemon, response: httpx.Response) -> dict[str, Any]:
    """olla's one log line for the request that got ``response`` (it carries ``attempts``)."""
    rid = response.headers["x-olla-request-id"]
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [e for e in daemon.events if e.get("request_id") == rid and "attempts" in e]
        return bool(found)

    _wait_for(f"logged request {rid}", logged, 5.0)
    return found[-1]


def _tally(errors: list[str], top: int = 6) -> list[tuple[str, int]]:
    """The most common errors, with ports and ids blurred so that alike ones count together."""
    blurred = (re.sub(r"\d+", "N", error)[:160] for error in errors)
    return Counter(blurred).most_common(top)


def _chats(fake: FakeProcess) -> int:
    """Chat requests the fake received."""
    return len(fake.requests("/api/chat"))


def _start(name: str, *extra: str) -> FakeProcess:
    return start_fake("--models", MODEL, "--name", name, *extra)


@contextmanager
def _fakes(*specs: tuple[str, ...]) -> Iterator[list[FakeProcess]]:
    """Fake Ollama processes, one per ``(name, *args)``; all stopped on the way out."""
    fakes: list[FakeProcess] = []
    try:
        for name, *extra in specs:
            fakes.append(_start(name, *extra))
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


# ---------------------------------------------------------------------------------- chaos


@dataclass
class Traffic:
    """Steady non-streamed chats plus always-open streamed chats, every outcome recorded.

    An *error* is any request that had not started streaming and did not end well: an exception
    before the status line, a non-200, or a 200 whose body is not a complete answer. A stream
    that got its 200 and headers and then broke is recorded in ``broken`` with the endpoint
    that served it and the span it was open, to be matched against the kills.
    """

    url: str
    load_threads: int = 4
    streams: int = 20
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    streams_ok: int = 0
    errors: list[str] = field(default_factory=list)
    broken: list[tuple[str, float, float, str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)
        time.sleep(0.02)  # an instant error must not turn the loop into a busy spin

    def _load(self) -> None:
        body = {"model": MODEL, "messages": [], "stream": False}
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(self.url + CHAT, json=body)
                except Exception as e:  # any client-visible failure counts
                    self._error(f"load: {e!r}")
                    continue
                if _complete(response):
                    with self.lock:
                        self.ok += 1
                else:
                    self._error(f"load: {response.status_code} {response.text[:200]}")

    def _stream(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                # 1-2 s each, staggered so that they do not all end at once
                headers = {"X-Fake-Chunks": str(rng.randint(17, 34)), "X-Fake-Delay-Ms": "60"}
                body = {"model": MODEL, "messages": [], "stream": True}
                opened = time.monotonic()
                try:
                    with client.stream("POST", self.url + CHAT, json=body, headers=headers) as r:
                        if r.status_code != 200:
                            r.read()
                            self._error(f"stream: {r.status_code} {r.text[:200]}")
                            continue
                        endpoint = _served_by(r)
                        try:
                            lines = [json.loads(line) for line in r.iter_lines() if line]
                            outcome = "ok" if lines and lines[-1].get("done") else "truncated"
                        except Exception as e:  # broke after the headers
                            outcome = repr(e)
                except Exception as e:  # before the status line: an error
                    self._error(f"stream: {e!r}")
                    continue
                with self.lock:
                    if outcome == "ok":
                        self.streams_ok += 1
                    else:
                        self.broken.append((endpoint, opened, time.monotonic(), outcome))

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._load) for _ in range(self.load_threads)]
        self.threads += [
            threading.Thread(target=self._stream, args=(i,)) for i in range(self.streams)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


@dataclass(frozen=True)
class FdCensus:
    """The daemon's open file descriptors, with its idle pooled backend connections apart."""

    total: int
    pooled: int  # ESTABLISHED TCP sockets to a backend port: keep-alive connections
    close_wait: int  # sockets whose peer closed and olla never did: leaks
    #: (local port, remote port) of each CLOSE_WAIT socket, to tell which side it was
    close_wait_ports: tuple[tuple[int, int], ...] = ()

    @property
    def own(self) -> int:
        return self.total - self.pooled


_TCP_ESTABLISHED = "01"
_TCP_CLOSE_WAIT = "08"


def _fd_census(pid: int, backend_ports: set[int]) -> FdCensus:
    fds = Path(f"/proc/{pid}/fd")
    inodes = set()
    total = 0
    for fd in fds.iterdir():
        try:
            target = fd.readlink()
        except OSError:  # closed while we looked
            continue
        total += 1
        text = str(target)
        if text.startswith("socket:["):
            inodes.add(text[len("socket:[") : -1])
    pooled = 0
    waiting: list[tuple[int, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            if inode not in inodes:
                continue
            remote_port = int(remote.rsplit(":", 1)[1], 16)
            if state == _TCP_CLOSE_WAIT:
                waiting.append((int(local.rsplit(":", 1)[1], 16), remote_port))
            elif state == _TCP_ESTABLISHED and remote_port in backend_ports:
                pooled += 1
    return FdCensus(total, pooled, len(waiting), tuple(waiting))


def _steady_census(pid: int, backend_ports: set[int]) -> FdCensus:
    """A census whose CLOSE_WAIT sockets were there 0.2 s before too: the connection of a
    status request we just made can sit in CLOSE_WAIT for a moment (urllib closes as soon as
    it has the body, olla on its next reactor turn); a leak stays."""
    before = set(_fd_census(pid, backend_ports).close_wait_ports)
    time.sleep(0.2)
    now = _fd_census(pid, backend_ports)
    stuck = tuple(sorted(before & set(now.close_wait_ports)))
    return FdCensus(now.total, now.pooled, len(stuck), stuck)


@pytest.fixture
def trio() -> Iterator[list[FakeProcess]]:
    """Fakes A, B and C; the test may replace an entry (a restart): all are stopped."""
    fakes: list[FakeProcess] = []
    try:
        for name in ("A", "B", "C"):
            fakes.append(_start(name))
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


def _churn(
    daemon: OllaDaemon, trio: list[FakeProcess], names: list[str]
) -> tuple[Traffic, list[str]]:
    """Kill -9 and restart one of ``trio`` on its port every 2 s, in turn (A B C A B C A, ~14 s)
    under steady requests and streams; the traffic, and every problem seen: errors, streams
    broken with no kill of their backend while they were open, all healthy only later than one
    check_interval after the last restart. Every property is checked and all violations are
    reported together: one chaos run is the evidence for all of them."""
    kills: list[tuple[str, float]] = []
    last_restart = 0.0
    with Traffic(daemon.url) as traffic:
        time.sleep(0.5)
        begun = time.monotonic()
        for turn in range(7):
            index = turn % 3
            victim = trio[index]
            kills.append((names[index], time.monotonic()))  # before: a break may race it
            victim.process.kill()
            victim.process.wait(5)
            victim.stop()
            time.sleep(0.2)  # down long enough for requests to hit the closed port
            trio[index] = _start(names[index], "--port", str(victim.port))
            last_restart = time.monotonic()
            if turn < 6:
                time.sleep(max(0.0, begun + 2.0 * (turn + 1) - time.monotonic()))
        try:  # measured, not asserted here: past the limit it is one of the problems
            _wait_healthy(daemon, names, CHECK_INTERVAL + HEALTHY_SLACK + 2.0)
        except AssertionError:
            pass
        recovered_in = time.monotonic() - last_restart
        served_during_chaos = traffic.ok

    problems: list[str] = []
    if traffic.errors:
        problems.append(f"{len(traffic.errors)} errors: {_tally(traffic.errors)}")
    if served_during_chaos == 0 or traffic.streams_ok == 0:
        problems.append(f"no traffic served: {served_during_chaos}, {traffic.streams_ok}")
    # a stream may break only if the backend serving it was killed while it was open
    unexplained = [
        f"{endpoint} open {opened - begun:+.2f}s..{ended - begun:+.2f}s: {outcome}"
        for endpoint, opened, ended, outcome in traffic.broken
        if not any(name == endpoint and opened <= at <= ended for name, at in kills)
    ]
    if unexplained:
        at = [f"{name}@{t - begun:+.2f}s" for name, t in kills]
        problems.append(f"{len(unexplained)} streams broke unexplained: {unexplained[:6]}")
        problems.append(f"kills: {at}")
    if recovered_in > CHECK_INTERVAL + HEALTHY_SLACK:
        problems.append(
            f"all healthy only {recovered_in:.2f}s after the last restart: "
            f"{ {n: e['status'] for n, e in _endpoints_status(daemon).items()} }"
        )
    return traffic, problems


@pytest.mark.parametrize("cap", [None, 3], ids=["default-slots", "capped-at-3"])
def test_chaos_kill_and_restart_every_two_seconds(
    tmp_path: Path, trio: list[FakeProcess], cap: int | None
) -> None:
    """If one of three backends is killed -9 and restarted on its port every 2 s, in turn,
    while steady requests and 20 streams run, then no request that had not started streaming
    fails, only streams served by the backend killed meanwhile break, no in-flight counter,
    admission slot or file descriptor leaks, and all three are healthy within one
    check_interval of the last restart. With the admission queue's caps at their default (4
    slots an Ollama) and at 3 (9 slots for 24 clients: requests are held all along)."""
    names = ["A", "B", "C"]
    ports = {fake.port for fake in trio}
    slots = {} if cap is None else {"max_concurrency": cap}
    endpoints = [
        ollama_endpoint(name, fake.url, check_interval="1s", check_timeout="500ms", **slots)
        for name, fake in zip(names, trio, strict=True)
    ]
    with running_olla(tmp_path, endpoints) as daemon:
        pid = daemon.process.pid
        _wait_healthy(daemon, names, 5)

        # Warm-up at the same concurrency as the chaos, so the backend pool already holds what
        # steady traffic needs; then the baseline, once the client connections have closed.
        with Traffic(daemon.url) as warmup:
            time.sleep(1.5)
        assert warmup.errors == [] and warmup.broken == [], (warmup.errors, warmup.broken)
        time.sleep(0.5)
        baseline = _steady_census(pid, ports)
        assert baseline.close_wait == 0, baseline

        traffic, problems = _churn(daemon, trio, names)

        def settled() -> bool:
            status = _endpoints_status(daemon)
            census = _steady_census(pid, ports)
            queue = _get_json(f"{daemon.url}/internal/status")["queue"]
            return (
                all(status[n]["active_connections"] == 0 for n in names)
                and census.close_wait == 0
                and census.own <= baseline.own + 2
                and queue["held"] == 0
                and all(slots["in_use"] == 0 for slots in queue["slots"].values())
            )

        try:
            _wait_for("settled", settled, 3.0, every=0.1)
        except AssertionError:
            pass  # the checks below say what did not settle
        status = _endpoints_status(daemon)
        active = {n: status[n]["active_connections"] for n in names}
        if any(active.values()):
            problems.append(f"in-flight counters leaked: {active}")
        queue = _get_json(f"{daemon.url}/internal/status")["queue"]
        in_use = {name: slots["in_use"] for name, slots in queue["slots"].items()}
        if queue["held"] or any(in_use.values()):
            problems.append(f"admission slots leaked: held {queue['held']}, in use {in_use}")
        if cap is not None and not queue["totals"]["after_wait"]:
            problems.append(f"the queue never held a request at cap {cap}: {queue['totals']}")
        census = _steady_census(pid, ports)
        # Idle keep-alive connections to the backends (``pooled``) legitimately differ from the
        # baseline: the pool keeps up to 256 per host for 60 s, and while one host was down the
        # other two carried its share. Everything else (listener, logs, client sockets, body
        # temp files) must be back to the baseline; +2 leaves room for a health probe or model
        # discovery connection that happens to be open at the moment of the census. A
        # connection olla forgot to close after its backend died shows up as CLOSE_WAIT.
        if census.close_wait or census.own > baseline.own + 2:
            problems.append(
                f"file descriptors leaked: {census} (baseline {baseline}; olla listens on "
                f"{daemon.port}, the backends on {sorted(ports)})"
            )
        # pooled connections are bounded by the concurrency, not by the number of requests
        if census.pooled > 3 * (traffic.load_threads + traffic.streams + 2):
            problems.append(f"too many pooled connections: {census}")
        assert problems == [], "\n".join(problems)


def test_chaos_with_two_workers_and_the_store(tmp_path: Path, trio: list[FakeProcess]) -> None:
    """If the same churn runs behind ``--workers 2`` sharing a real redis-server (one prober per
    endpoint per interval, shared in-flight counts, pins and limits), then again no request
    that had not started streaming fails, only streams of a killed backend break, all three
    are healthy within one check_interval of the last restart, and the shared in-flight
    counts settle to 0."""
    names = ["A", "B", "C"]
    endpoints = [
        ollama_endpoint(name, fake.url, check_interval="1s", check_timeout="500ms")
        for name, fake in zip(names, trio, strict=True)
    ]
    with redis_server() as store:
        extra = {"state": {"backend": "redis", "url": store.url}}
        daemon = OllaDaemon(write_config(tmp_path, endpoints, extra=extra), args=["--workers", "2"])
        try:
            daemon.wait_ready()
            _wait_for(
                "both workers' model lists",
                lambda: sum(" serves " in line for line in daemon.lines) >= 6,
                30,
            )
            _wait_healthy(daemon, names, 5)
            with Traffic(daemon.url) as warmup:
                time.sleep(1.5)
            assert warmup.errors == [] and warmup.broken == [], (warmup.errors, warmup.broken)
            traffic, problems = _churn(daemon, trio, names)
            try:
                _wait_for(
                    "in-flight settled",
                    lambda: all(
                        e["active_connections"] == 0 for e in _endpoints_status(daemon).values()
                    ),
                    3.0,
                    every=0.1,
                )
            except AssertionError:
                active = {n: e["active_connections"] for n, e in _endpoints_status(daemon).items()}
                problems.append(f"in-flight counters leaked: {active}")
            try:  # the admission slots are the store's: either worker reads the fleet's
                _wait_for("slots settled", lambda: not _slots_busy(daemon), 3.0, every=0.1)
            except AssertionError:
                problems.append(f"admission slots leaked: {_slots_in_use(daemon)}")
            assert problems == [], "\n".join(problems)
        finally:
            daemon.stop()


def _slots_in_use(daemon: OllaDaemon) -> dict[str, int]:
    queue = _get_json(f"{daemon.url}/internal/status")["queue"]
    return {name: slots["in_use"] for name, slots in queue["slots"].items()}


def _slots_busy(daemon: OllaDaemon) -> bool:
    return any(_slots_in_use(daemon).values())


# ---------------------------------------------------------------------------------- warm host


def test_warm_host_dies_next_request_served_by_other(tmp_path: Path) -> None:
    """If the host where the model is loaded dies (kill -9), then the very next request for
    that model is answered 200 by the other host that has it."""
    with _fakes(("A", "--loaded", MODEL), ("B",)) as (a, b):
        endpoints = [ollama_endpoint("A", a.url), ollama_endpoint("B", b.url)]
        with running_olla(tmp_path, endpoints) as daemon, httpx.Client(timeout=10) as client:
            _wait_loaded(daemon, ["A"])
            warm = _chat(client, daemon)
            assert _complete(warm) and _served_by(warm) == "A", (warm, warm.headers)
            a.process.kill()
            a.process.wait(5)
            after = _chat(client, daemon)
            assert after.status_code == 200, after.text
            assert _complete(after) and _served_by(after) == "B", after.headers


# ---------------------------------------------------------------------------------- spill


def _spill_config(directory: Path) -> dict[str, Any]:
    """Warm routing where a load is cheap: 200 ms, both as the flat default and as the Ollama
    profile's prior for every model (a profile laid over the built-in; its size classes would
    say 15 s for a 3B model)."""
    (directory / "profiles").mkdir(exist_ok=True)
    (directory / "profiles" / "cheap-loads.yaml").write_text(
        "name: ollama\nresources: {model_sizes: [], defaults: {estimated_load_time_ms: 200}}\n"
    )
    return {
        "proxy": {
            "load_balancer": "least-connections",
            "warm_routing": {"enabled": True, "default_load_time": "200ms"},
        }
    }


def test_hot_model_spills_to_cold_host_only_when_full(tmp_path: Path) -> None:
    """If the host with the model loaded has a free slot, then every request goes there (no
    spill); if it is full (max_concurrency in flight), then further requests go to the host
    that has the model but must load it."""
    slow = {"X-Fake-Chunks": "20", "X-Fake-Delay-Ms": "200"}  # ~4 s each
    with _fakes(("A", "--loaded", MODEL), ("B",)) as (a, b):
        endpoints = [
            ollama_endpoint("A", a.url, max_concurrency=2),
            ollama_endpoint("B", b.url, max_concurrency=2),
        ]
        with (
            running_olla(tmp_path, endpoints, extra=_spill_config(tmp_path)) as daemon,
            httpx.Client(timeout=10) as client,
        ):
            _wait_loaded(daemon, ["A"])
            # A free: warm preference holds, nothing spills
            free = [_served_by(r) for r in (_chat(client, daemon) for _ in range(10))]
            assert free == ["A"] * 10, free

            # fill A: max_concurrency (2) slow streams, each confirmed on A by its headers
            with ExitStack() as stack:  # closing a stream is its client going away
                fillers = []
                for _ in range(2):
                    stream = stack.enter_context(
                        httpx.stream(
                            "POST",
                            f"{daemon.url}{CHAT}",
                            json={"model": MODEL, "messages": []},
                            headers=slow,
                            timeout=10,
                        )
                    )
                    fillers.append(_served_by(stream))
                assert fillers == ["A", "A"], fillers
                _wait_for(
                    "A at 2 connections",
                    lambda: _endpoints_status(daemon)["A"]["active_connections"] == 2,
                    2.0,
                )
                # Olla predicts A's queue from what it has seen: the guard's requests took
                # milliseconds, so right after filling it expects a slot to free at once. Once
                # the fillers have run a second, A's expected wait (their age shared over its
                # 2 slots) is past B's 200 ms load: A is full in olla's eyes too.
                time.sleep(1.0)
                full = [_served_by(r) for r in (_chat(client, daemon) for _ in range(4))]
                served = _chats(b)
            assert "B" in full, full
            assert served >= 1, f"B received {served} chats while A was full: {full}"


# ---------------------------------------------------------------------------------- cold start


@contextmanager
def _black_hole() -> Iterator[str]:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


def test_cold_start_with_a_black_hole_endpoint(tmp_path: Path) -> None:
    """If olla starts with one working backend and one that accepts connections but never
    answers, then a chat sent as soon as /internal/health answers is served 200 (not 404
    model_not_found, not 503)."""
    with _black_hole() as hole, _fakes(("A",)) as (a,):
        endpoints = [
            ollama_endpoint("A", a.url),
            ollama_endpoint("hole", hole, check_interval="2s", check_timeout="1s"),
        ]
        # running_olla returns as soon as GET /internal/health answers (polled every 20 ms)
        with (
            running_olla(tmp_path, endpoints, wait_models=False) as daemon,
            httpx.Client(timeout=10) as client,
        ):
            sent = time.monotonic()
            response = _chat(client, daemon)
            took = time.monotonic() - sent
            assert response.status_code == 200, (response.status_code, response.text, took)
            assert _complete(response) and _served_by(response) == "A", response.headers


# ---------------------------------------------------------------------------------- busy


def _priority_pair(a: FakeProcess, b: FakeProcess, **extra: Any) -> list[dict[str, Any]]:
    """A first (priority 200), B second (100): the order olla tries them when both are warm."""
    return [
        ollama_endpoint("A", a.url, priority=200, **extra),
        ollama_endpoint("B", b.url, priority=100, **extra),
    ]


def _priority(extra_proxy: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"proxy": {"load_balancer": "priority", **(extra_proxy or {})}}


def test_busy_backend_fails_over(tmp_path: Path) -> None:
    """If the preferred backend answers 503, then the request is retried on the next candidate
    before any byte reaches the client: 200 from B, and olla logs 2 attempts."""
    with _fakes(("A", "--loaded", MODEL), ("B", "--loaded", MODEL)) as (a, b):
        with (
            running_olla(tmp_path, _priority_pair(a, b), extra=_priority()) as daemon,
            httpx.Client(timeout=10) as client,
        ):
            _wait_loaded(daemon, ["A", "B"])
            a.set_state(status=503)
            a.reset()
            responses = [_chat(client, daemon) for _ in range(5)]
            for response in responses:
                assert response.status_code == 200, response.text
                assert _complete(response) and _served_by(response) == "B", response.headers
            events = [_completion_event(daemon, r) for r in responses]
            attempts = [e["attempts"] for e in events]
            # A is the first choice, so the first request surely met its 503. Olla may then
            # hold A back for a while, but every request that did reach A took 2 attempts.
            assert attempts[0] == 2, events[0]
            assert attempts.count(2) == _chats(a), (attempts, _chats(a))
            assert set(attempts) <= {1, 2}, attempts


def test_all_backends_busy_passes_the_503_through(tmp_path: Path) -> None:
    """If every candidate answers 503, then each is tried once and the client gets the
    backend's 503."""
    with _fakes(("A", "--loaded", MODEL), ("B", "--loaded", MODEL)) as (a, b):
        with (
            running_olla(tmp_path, _priority_pair(a, b), extra=_priority()) as daemon,
            httpx.Client(timeout=10) as client,
        ):
            _wait_loaded(daemon, ["A", "B"])
            for fake in (a, b):
                fake.set_state(status=503)
                fake.reset()
            response = _chat(client, daemon)
            assert response.status_code == 503, response.text
            assert "fake error 503" in response.text, response.text  # the backend's own body
            assert (_chats(a), _chats(b)) == (1, 1)
            assert _completion_event(daemon, response)["attempts"] == 2


def test_retry_on_status_empty_passes_503_straight_through(tmp_path: Path) -> None:
    """If ``proxy.retry.on_status`` is empty, then the chosen backend's 503 goes straight to
    the client and no other candidate is tried."""
    extra = _priority({"retry": {"on_status": []}})
    with _fakes(("A", "--loaded", MODEL), ("B", "--loaded", MODEL)) as (a, b):
        with (
            running_olla(tmp_path, _priority_pair(a, b), extra=extra) as daemon,
            httpx.Client(timeout=10) as client,
        ):
            _wait_loaded(daemon, ["A", "B"])
            a.set_state(status=503)
            a.reset()
            b.reset()
            response = _chat(client, daemon)
            assert response.status_code == 503, response.text
            assert _served_by(response) == "A", response.headers
            assert (_chats(a), _chats(b)) == (1, 0)
            assert _completion_event(daemon, response)["attempts"] == 1


# ---------------------------------------------------------------------------------- 429


class _TooManyFront(ThreadingHTTPServer):
    """In front of a fake: every ``POST /api/chat`` is answered 429 with ``Retry-After: 2``;
    everything else (health, tags, ps, version) is relayed to the fake. The fake itself cannot
    send a Retry-After header."""

    daemon_threads = True

    def __init__(self, backend: str, retry_after: int) -> None:
        super().__init__(("127.0.0.1", 0), _TooManyHandler)
        self.backend = backend
        self.retry_after = retry_after
        self.chats: list[float] = []  # when each refused chat arrived
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _TooManyHandler(BaseHTTPRequestHandler):
    server: _TooManyFront

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "POST" and self.path.split("?")[0] == "/api/chat":
            with self.server.lock:
                self.server.chats.append(time.monotonic())
            payload = b'{"error":"too many requests"}'
            self.send_response(429)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Retry-After", str(self.server.retry_after))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        request = urllib.request.Request(
            self.server.backend + self.path, data=body, method=self.command
        )
        if body is not None:
            request.add_header("Content-Type", self.headers.get("content-type", ""))
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, data = e.code, e.headers, e.read()
        self.send_response(status)
        self.send_header("Content-Type", headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = _relay


@contextmanager
def _too_many_front(backend: str, retry_after: int) -> Iterator[_TooManyFront]:
    server = _TooManyFront(backend, retry_after)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_429_honours_retry_after(tmp_path: Path) -> None:
    """If a backend answers 429 with Retry-After: 2, then the request is served by the other
    one, the refusing backend stays healthy, gets no request until the 2 s have passed, and is
    tried again after."""
    with _fakes(("A", "--loaded", MODEL), ("B", "--loaded", MODEL)) as (a, b):
        with _too_many_front(a.url, retry_after=2) as front:
            # equal priority, round-robin: "busy" reorders within a priority tier, not across
            endpoints = [ollama_endpoint("A", front.url), ollama_endpoint("B", b.url)]
            with (
                running_olla(tmp_path, endpoints) as daemon,
                httpx.Client(timeout=10) as client,
            ):
                _wait_loaded(daemon, ["A", "B"])
                for _ in range(4):  # until round-robin has offered one to A
                    response = _chat(client, daemon)
                    assert response.status_code == 200, (response.status_code, response.text)
                    assert _complete(response) and _served_by(response) == "B", response.headers
                    if front.chats:
                        break
                assert len(front.chats) == 1, front.chats
                refused_at = front.chats[0]
                assert _completion_event(daemon, response)["attempts"] == 2

                # within Retry-After: straight to B, A is left alone and stays healthy
                while time.monotonic() < refused_at + 1.5:
                    response = _chat(client, daemon)
                    assert _complete(response) and _served_by(response) == "B", response.text
                    time.sleep(0.1)
                assert len(front.chats) == 1, [t - refused_at for t in front.chats]
                assert _endpoints_status(daemon)["A"]["status"] == "healthy"

                # after Retry-After: A takes its turn again (and refuses again)
                time.sleep(max(0.0, refused_at + 2.3 - time.monotonic()))
                for _ in range(4):
                    response = _chat(client, daemon)
                    assert _complete(response) and _served_by(response) == "B", response.text
                    if len(front.chats) > 1:
                        break
                assert len(front.chats) == 2, [t - refused_at for t in front.chats]
                assert _endpoints_status(daemon)["A"]["status"] == "healthy"
