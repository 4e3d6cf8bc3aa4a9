"""``twistd -n olla --workers 2`` for real: both workers answer, a worker killed under steady load
comes back without failing the clients of the other, and SIGTERM (or the supervisor's death)
leaves no process behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, write_config
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
).encode()
#: generous: the restart is measured and printed, never asserted tightly
BACK_WITHIN = 10.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake("--models", MODEL, "--name", "A") as process:
        yield process


@pytest.fixture
def olla(fake: FakeProcess, tmp_path: Path) -> Iterator[OllaDaemon]:
    config = write_config(tmp_path, [ollama_endpoint("fake-a", fake.url)])
    daemon = OllaDaemon(config, args=["--workers", "2"])
    try:
        daemon.wait_ready()
        _wait_for_workers(daemon, 2)
        yield daemon
    finally:
        daemon.stop()
        for pid in _started_workers(daemon):  # never leave a worker behind, whatever failed
            if _alive(pid) and b"--worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def _started_workers(daemon: OllaDaemon) -> list[int]:
    """Every worker pid the supervisor logged starting."""
    return [
        int(e["pid"])
        for e in daemon.events
        if str(e.get("msg", "")).startswith("worker ")
        and "started" in str(e.get("msg"))
        and e.get("pid")
    ]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_workers(daemon: OllaDaemon, count: int, timeout: float = 30.0) -> None:
    """Until every worker has logged its first model list (each runs its own pollers)."""
    deadline = time.monotonic() + timeout
    while sum("endpoint fake-a serves" in line for line in daemon.lines) < count:
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)


def _whoami(conn: http.client.HTTPConnection) -> dict[str, int]:
    conn.request("GET", "/internal/process")
    response = conn.getresponse()
    worker: dict[str, int] = json.loads(response.read())["worker"]
    return worker


def _fresh_whoami(daemon: OllaDaemon) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    try:
        return _whoami(conn)
    finally:
        conn.close()


def test_both_workers_answer(olla: OllaDaemon) -> None:
    """If olla runs with --workers 2, then new connections are answered by both workers, each
    saying who it is (id, count, pid) in /internal/status, /internal/process and its log
    lines, and proxied requests work through either."""
    seen: dict[int, int] = {}
    for _ in range(200):
        worker = _fresh_whoami(olla)
        assert worker["count"] == 2
        seen[worker["id"]] = worker["pid"]
        if len(seen) == 2:
            break
    assert set(seen) == {1, 2}
    assert set(seen.values()) == set(_children(olla.process.pid))
    conn = http.client.HTTPConnection("127.0.0.1", olla.port, timeout=5)
    conn.request("GET", "/internal/status")
    status = json.loads(conn.getresponse().read())
    assert status["worker"]["count"] == 2 and status["worker"]["id"] in seen
    conn.request("POST", "/olla/ollama/api/chat", CHAT, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert json.loads(response.read())["message"]["role"] == "assistant"
    conn.close()
    listening = [e for e in olla.events if "listening on" in str(e.get("msg"))]
    assert sorted(e.get("worker") for e in listening) == [1, 2]  # whose line is whose


@dataclass
class _Load:
    """Clients on keep-alive connections, each knowing which worker its connection is on."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    #: errors by the pid of the worker the connection was on (0: not known yet)
    errors: dict[int, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, pids: list[int]) -> None:
        conn: http.client.HTTPConnection | None = None
        pid = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    pid = 0
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    pid = _whoami(conn)["pid"]
                    with self.lock:
                        pids.append(pid)
                conn.request(
                    "POST", "/olla/ollama/api/chat", CHAT, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}: {body[:200]!r}")
                with self.lock:
                    self.ok += 1
            except Exception as e:  # every failure is recorded against its worker
                with self.lock:
                    self.errors.setdefault(pid, []).append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def test_killed_worker_comes_back_without_failing_the_other(olla: OllaDaemon) -> None:
    """If one worker is killed (SIGKILL) under steady load, then the supervisor starts it again
    (measured; well within 10 s), the clients on the other worker see no error at all, and the
    clients that were on the killed one reconnect and go on."""
    load = _Load(olla.port)
    pids: list[int] = []
    threads = [threading.Thread(target=load.client, args=(pids,), daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(set(pids)) < 2 or load.ok < 50:
            assert time.monotonic() < deadline, f"load did not reach both workers: {pids}"
            time.sleep(0.02)
        victim = _fresh_whoami(olla)
        survivor = next(p for p in _children(olla.process.pid) if p != victim["pid"])
        ok_before = load.ok
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        back_after = None
        while time.monotonic() - killed_at < BACK_WITHIN:
            try:
                worker = _fresh_whoami(olla)
            except OSError:
                worker = {}
            if worker.get("id") == victim["id"] and worker.get("pid") != victim["pid"]:
                back_after = time.monotonic() - killed_at
                break
            time.sleep(0.01)
        time.sleep(1.0)  # steady load on the restarted pair
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(15)
    print(
        f"\nworker {victim['id']} (pid {victim['pid']}) back after "
        f"{back_after if back_after is None else round(back_after, 3)} s; requests ok "
        f"{load.ok} ({ok_before} before the kill); errors by worker pid "
        f"{ {pid: len(errs) for pid, errs in load.errors.items()} }"
    )
    assert back_after is not None, olla.output()
    assert load.errors.get(survivor, []) == []
    # A new connection the dead worker had accepted but not answered has no worker yet: that
    # can only be the killed one (the other never fails), so it is counted with it.
    assert set(load.errors) <= {victim["pid"], 0}
    assert load.ok > ok_before
    assert any("died: signal 9" in str(e.get("msg")) for e in olla.events), olla.output()


def test_sigterm_drains_and_stops_every_process(olla: OllaDaemon) -> None:
    """If the supervisor gets SIGTERM while a stream runs on a worker, then the stream still
    completes (the worker drains), every worker exits, and then the supervisor: no process is
    left behind (checked by pid)."""
    workers = _children(olla.process.pid)
    assert len(workers) == 2
    conn = http.client.HTTPConnection("127.0.0.1", olla.port, timeout=30)
    body = json.dumps({"model": MODEL, "messages": []}).encode()
    conn.request(
        "POST",
        "/olla/ollama/api/chat",
        body,
        {"Content-Type": "application/json", "X-Fake-Chunks": "20", "X-Fake-Delay-Ms": "50"},
    )
    response = conn.getresponse()
    assert response.status == 200
    lines = [response.readline()]
    olla.process.send_signal(signal.SIGTERM)
    lines += [line for line in response.read().splitlines() if line.strip()]
    conn.close()
    assert len(lines) == 21 and json.loads(lines[-1])["done"]
    olla.process.wait(30)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if _alive(pid)] == []
    stopped = [e for e in olla.events if "stopped:" in str(e.get("msg"))]
    assert len(stopped) == 2, olla.output()
    assert not any("killing them" in str(e.get("msg")) for e in olla.events)


def test_workers_stop_when_the_supervisor_dies(olla: OllaDaemon) -> None:
    """If the supervisor itself is killed (SIGKILL, no chance to stop anyone), then each worker
    notices its stdin pipe close and stops: no orphan keeps serving the port."""
    workers = _children(olla.process.pid)
    assert len(workers) == 2
    olla.process.kill()
    olla.process.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if _alive(pid)] == [], olla.output()
