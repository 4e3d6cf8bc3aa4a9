"""``--workers N``: the supervisor (restarts, backoff, drain, kill, SIGHUP) on a Clock with a fake
process spawner, and the worker's side (identity, the adopted socket, the parent watch)."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionDone,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from olla.config import OllaConfig
from olla.daemon import tap
from olla.daemon.logging import FileSink, HangupRelay, StreamSink, json_record
from olla.daemon.supervisor import (
    Backoff,
    IWorkerSpawner,
    ListeningSocket,
    ProcessSpawner,
    Supervisor,
    worker_argv,
    worker_twistd_flags,
)
from olla.daemon.workers import (
    LISTEN_FD,
    AdoptedPortService,
    ParentWatch,
    WorkerIdentity,
    WorkerTaggedObserver,
    accept_one_at_a_time,
    parse_worker,
    parse_worker_count,
)
from olla.fleet.endpoints import EndpointRegistry
from olla.web.internal import InternalApp

# --------------------------------------------------------------------------- fakes


class FakeProcess:
    """A worker process the test ends by hand; it records the signals it was sent."""

    def __init__(self, worker_id: int, pid: int, exited: Callable[[Failure], None]) -> None:
        self.worker_id = worker_id
        self.pid: int | None = pid
        self.signals: list[str] = []
        self._exited = exited

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def end(self, reason: BaseException | None = None) -> None:
        """The process ends (killed by signal 9 unless told otherwise)."""
        self.pid = None  # as Twisted's transport does
        self._exited(Failure(reason or ProcessTerminated(signal=9)))


@implementer(IWorkerSpawner)
class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[FakeProcess] = []

    def spawn(self, worker_id: int, exited: Callable[[Failure], None]) -> Any:
        process = FakeProcess(worker_id, 1000 + len(self.spawned), exited)
        self.spawned.append(process)
        return process

    def running(self) -> dict[int, FakeProcess]:
        return {p.worker_id: p for p in self.spawned if p.alive}


def _supervisor(count: int = 2, kill_after: float = 15.0) -> tuple[Supervisor, FakeSpawner, Clock]:
    clock = Clock()
    spawner = FakeSpawner()
    supervisor = Supervisor(count, spawner, clock, kill_after=kill_after)
    return supervisor, spawner, clock


# --------------------------------------------------------------------------- supervisor


def test_fake_spawner_is_a_spawner() -> None:
    """If the fake stands in for the process spawner, then it provides the same interface."""
    assert verifyObject(IWorkerSpawner, FakeSpawner())
    assert verifyObject(IWorkerSpawner, ProcessSpawner(_SpawnReactor(), lambda k: ["x"], lambda: 3))


def test_starts_every_worker() -> None:
    """If the supervisor starts, then it starts workers 1..N and knows their pids."""
    supervisor, spawner, clock = _supervisor(3)
    supervisor.startService()
    assert [p.worker_id for p in spawner.spawned] == [1, 2, 3]
    assert supervisor.pids == {1: 1000, 2: 1001, 3: 1002}
    assert clock.getDelayedCalls() == []


def test_worker_that_ran_a_while_is_restarted_at_once() -> None:
    """If a worker that ran longer than ``stable_after`` dies, then the same worker id is
    started again with no pause, and the others are left alone."""
    supervisor, spawner, clock = _supervisor(2)
    supervisor.startService()
    clock.advance(60)
    first, second = spawner.spawned
    first.end()
    assert supervisor.pids == {2: 1001}
    clock.advance(0)
    assert [p.worker_id for p in spawner.spawned] == [1, 2, 1]
    assert supervisor.pids == {1: 1002, 2: 1001}
    assert second.signals == []


def test_crash_loop_backs_off_and_recovers() -> None:
    """If a worker keeps dying young, then the first restart is at once and each further one
    waits twice as long (0.5, 1, 2 s ...) up to the maximum; once it has run long enough, the
    next death restarts it at once again."""
    clock = Clock()
    spawner = FakeSpawner()
    supervisor = Supervisor(
        1, spawner, clock, kill_after=5, backoff=Backoff(initial=0.5, maximum=2, stable_after=10)
    )
    supervisor.startService()
    waits = []
    for _ in range(5):
        spawner.running()[1].end()
        (call,) = clock.getDelayedCalls()
        waits.append(call.getTime() - clock.seconds())
        clock.advance(waits[-1])
        assert 1 in spawner.running()
    assert waits == [0.0, 0.5, 1.0, 2.0, 2.0]
    clock.advance(30)  # a good run
    spawner.running()[1].end()
    clock.advance(0)
    assert 1 in spawner.running() and clock.getDelayedCalls() == []


def test_stop_drains_every_worker() -> None:
    """If the supervisor stops (SIGTERM), then every worker gets SIGTERM, the stop waits until
    the last has exited, and nothing is killed or left scheduled."""
    supervisor, spawner, clock = _supervisor(2, kill_after=15)
    supervisor.startService()
    stopped = supervisor.stopService()
    assert [p.signals for p in spawner.spawned] == [["TERM"], ["TERM"]]
    assert not stopped.called
    clock.advance(3)
    spawner.spawned[0].end(ProcessDone(0))
    assert not stopped.called
    spawner.spawned[1].end(ProcessTerminated(signal=15))
    assert stopped.called
    assert all("KILL" not in p.signals for p in spawner.spawned)
    assert len(spawner.spawned) == 2  # nobody restarted during the stop
    assert clock.getDelayedCalls() == []


def test_stop_kills_what_is_left_after_the_timeout() -> None:
    """If a worker is still running ``kill_after`` seconds after SIGTERM, then it gets SIGKILL,
    and the stop completes when it has ended."""
    supervisor, spawner, clock = _supervisor(2, kill_after=15)
    supervisor.startService()
    stopped = supervisor.stopService()
    spawner.spawned[0].end(ProcessDone(0))
    clock.advance(14.9)
    assert spawner.spawned[1].signals == ["TERM"]
    clock.advance(0.1)
    assert spawner.spawned[1].signals == ["TERM", "KILL"]
    assert not stopped.called
    spawner.spawned[1].end()
    assert stopped.called
    assert clock.getDelayedCalls() == []


def test_stop_cancels_a_pending_restart() -> None:
    """If the supervisor stops while a dead worker waits out its backoff, then that worker is
    not started again, and the stop does not wait for it."""
    supervisor, spawner, clock = _supervisor(2)
    supervisor.startService()
    spawner.spawned[0].end()  # young: restarted at once
    clock.advance(0)
    spawner.spawned[2].end()  # young again: a restart is scheduled
    assert len(clock.getDelayedCalls()) == 1 and clock.getDelayedCalls()[0].getTime() == 0.5
    stopped = supervisor.stopService()
    spawner.spawned[1].end(ProcessDone(0))
    assert stopped.called
    clock.advance(60)
    assert len(spawner.spawned) == 3
    assert clock.getDelayedCalls() == []


def test_stop_with_no_worker_running_is_immediate() -> None:
    """If every worker is already gone when the stop comes, then the stop completes at once."""
    supervisor, spawner, clock = _supervisor(1)
    supervisor.startService()
    spawner.spawned[0].end()
    stopped = supervisor.stopService()
    assert stopped.called
    assert clock.getDelayedCalls() == []


def test_hangup_reaches_every_running_worker() -> None:
    """If SIGHUP reaches the supervisor, then every running worker gets SIGHUP; one that has
    just exited is skipped without an error."""
    supervisor, spawner, clock = _supervisor(3)
    supervisor.startService()
    spawner.spawned[1].pid = None  # exited, its end not reported yet
    supervisor.hangup()
    assert [p.signals for p in spawner.spawned] == [["HUP"], [], ["HUP"]]


def test_hangup_relay_runs_on_the_reactor_thread() -> None:
    """If SIGHUP arrives, then the relay does nothing inside the signal handler, and then runs
    its actions in order (reopen the log, then pass it on)."""
    installed: dict[int, Callable[..., object]] = {}
    queued: list[Callable[[], object]] = []
    done: list[str] = []

    class Reactor:
        def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
            queued.append(lambda: f(*args, **kw))

    relay = HangupRelay(
        Reactor(),  # type: ignore[arg-type]
        [lambda: done.append("reopen"), lambda: done.append("forward")],
        lambda s, h: installed.update({s: h}),
    )
    relay.startService()
    installed[signal.SIGHUP](signal.SIGHUP, None)
    assert done == [] and len(queued) == 1
    queued.pop()()
    assert done == ["reopen", "forward"]


# --------------------------------------------------------------------------- process spawning


class _SpawnReactor:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        self.calls.append({"protocol": protocol, "executable": executable, "args": args, **kw})
        return FakeProcess(0, 4242, lambda reason: None)


def test_process_spawner_hands_down_the_socket_and_output() -> None:
    """If a worker is spawned, then the listening socket is its descriptor 3, it shares the
    supervisor's standard output and error, its stdin is a pipe from the supervisor, it gets
    the supervisor's environment, and its end is reported."""
    reactor = _SpawnReactor()
    ended: list[Failure] = []
    spawner = ProcessSpawner(
        reactor, lambda k: ["/py", "-m", "olla", f"w{k}"], lambda: 17, env={"A": "1"}
    )
    spawner.spawn(2, ended.append)
    (call,) = reactor.calls
    assert call["executable"] == "/py" and call["args"] == ["/py", "-m", "olla", "w2"]
    assert call["childFDs"] == {0: "w", 1: 1, 2: 2, LISTEN_FD: 17}
    assert call["env"] == {"A": "1"}
    call["protocol"].processEnded(Failure(ProcessDone(0)))
    assert len(ended) == 1


def test_worker_argv_runs_the_same_plugin_as_a_worker() -> None:
    """If worker 2 of 3 is started, then it runs ``twistd -n olla`` from the same Python with
    the log flags and config it is given, and ``--worker 2/3``."""
    argv = worker_argv(
        2, 3, twistd_flags=["--logfile=/var/log/olla.log"], olla_flags=["--config", "/e/o.yaml"],
        python="/venv/bin/python",
    )  # fmt: skip
    assert argv == [
        "/venv/bin/python", "-m", "olla", "worker", "--nodaemon", "--pidfile=",
        "--logfile=/var/log/olla.log", "olla", "--config", "/e/o.yaml", "--worker", "2/3",
    ]  # fmt: skip


def test_workers_log_where_the_supervisor_logs(tmp_path: Path) -> None:
    """If the supervisor logs to standard output, then workers inherit it (no flag); to a file,
    then each worker appends to the same file; to syslog or a --logger, then they ask again."""
    assert worker_twistd_flags({"nodaemon": True}, StreamSink(open(os.devnull, "w"))) == []
    sink = FileSink(str(tmp_path / "olla.log"))
    assert worker_twistd_flags({}, sink) == [f"--logfile={tmp_path / 'olla.log'}"]
    assert worker_twistd_flags({"syslog": True, "prefix": "olla"}, sink) == [
        "--syslog",
        "--prefix=olla",
    ]
    assert worker_twistd_flags({"logger": "x.y"}, sink) == ["--logger=x.y"]


def test_listening_socket_binds_and_closes() -> None:
    """If the supervisor's socket starts, then it listens (connections queue without anyone
    accepting yet); a port in use fails startup with the OS error; on stop it is closed."""
    listening = ListeningSocket("127.0.0.1", 0)
    listening.startService()
    assert listening.socket is not None
    port = listening.socket.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(OSError):
        ListeningSocket("127.0.0.1", port).startService()
    listening.stopService()
    assert listening.socket is None
    with pytest.raises(RuntimeError):
        listening.fileno()


# --------------------------------------------------------------------------- the worker's side


def test_worker_count() -> None:
    """If ``--workers`` is a number, then that many; ``auto``, one per core; zero, a negative
    number or a word, a ValueError saying so."""
    assert parse_worker_count("1") == 1
    assert parse_worker_count("4") == 4
    assert parse_worker_count("auto", cpu_count=8) == 8
    assert parse_worker_count("AUTO") >= 1
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(ValueError, match="--workers"):
            parse_worker_count(bad)


def test_worker_option() -> None:
    """If ``--worker`` is ID/COUNT with 1 <= ID <= COUNT, then it is parsed; else a ValueError."""
    assert parse_worker("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(ValueError, match="--worker"):
            parse_worker(bad)


def test_options_read_workers(tmp_path: Path) -> None:
    """If twistd is given ``--workers``, then Options holds the count (1 by default), a worker
    its identity, and a bad value is a usage error."""
    config = tmp_path / "olla.yaml"
    config.write_text("server: {host: 127.0.0.1, port: 40999}\n")
    options = tap.Options()
    options.parseOptions(["--config", str(config)])
    assert options.worker_count == 1 and options.worker is None
    options = tap.Options()
    options.parseOptions(["--config", str(config), "--workers", "3", "--worker", "2/3"])
    assert options.worker_count == 3 and options.worker == WorkerIdentity(2, 3)
    with pytest.raises(usage.UsageError, match="--workers"):
        tap.Options().parseOptions(["--config", str(config), "--workers", "0"])


def test_identity_payload() -> None:
    """If a worker reports itself, then it gives its id, the count and its own pid."""
    assert WorkerIdentity(2, 4).payload() == {"id": 2, "count": 4, "pid": os.getpid()}
    assert WorkerIdentity().payload()["count"] == 1


def test_adopted_port_serves_the_inherited_socket() -> None:
    """If a worker starts, then it adopts the inherited descriptor (and closes its own copy of
    it); on stop it stops listening."""
    reactor = MemoryReactor()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    fd = os.dup(sock.fileno())
    sock.close()
    factory: Any = object()
    service = AdoptedPortService(reactor, fd, socket.AF_INET, factory)  # type: ignore[arg-type]
    service.startService()
    ((adopted_fd, family, adopted_factory),) = reactor.adoptedPorts
    assert (adopted_fd, family, adopted_factory) == (fd, socket.AF_INET, factory)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert service.port is not None
    stopped: list[bool] = []
    service.port.stopListening = lambda: stopped.append(True)  # type: ignore[method-assign]
    service.stopService()
    assert stopped == [True] and service.port is None


def test_workers_take_one_connection_per_wake_up() -> None:
    """If a worker's port is woken, then it accepts at most one connection before going back
    to the poll, however many Twisted's adaptive count (which grows on a burst) would take;
    something that is not a Twisted TCP port is left alone."""

    class Port:
        numberAccepts = 100
        seen: list[int] = []

        def doRead(self) -> None:
            self.seen.append(self.numberAccepts)
            self.numberAccepts += 20  # what tcp.Port does after filling its count

    port = Port()
    accept_one_at_a_time(port)
    port.doRead()
    port.doRead()
    assert port.seen == [1, 1]
    other = object()
    accept_one_at_a_time(other)


def test_worker_log_events_say_which_worker() -> None:
    """If a worker logs, then each event reaches the log with ``worker: ID`` (a key of the JSON
    line), and the event other observers see is left as it was."""
    seen: list[dict[str, Any]] = []
    tagged = WorkerTaggedObserver(seen.append, 2)
    event = {"log_format": "hello {name}", "name": "x", "log_level": LogLevel.info}
    tagged(event)
    assert seen[0]["worker"] == 2 and seen[0]["name"] == "x"
    assert "worker" not in event
    assert json.loads(json_record(seen[0]))["worker"] == 2


def test_parent_watch_stops_the_worker_when_the_pipe_closes() -> None:
    """If the supervisor's end of the worker's stdin closes (it died), then the worker is told
    to stop; bytes on the pipe do not stop it."""
    read_fd, write_fd = os.pipe()
    reactor = MemoryReactor()
    gone: list[bool] = []
    watch = ParentWatch(reactor, lambda: gone.append(True), fd=read_fd)
    watch.startService()
    try:
        assert watch in reactor.readers
        watch.doRead()  # nothing there yet: not an end
        os.write(write_fd, b"x")
        watch.doRead()
        assert gone == []
        os.close(write_fd)
        watch.doRead()
        assert gone == [True] and watch not in reactor.readers
        watch.stopService()
    finally:
        os.close(read_fd)


def test_parent_watch_hangup_without_read() -> None:
    """If the reactor reports the pipe's hang-up as a lost connection (epoll does, without a
    read), then the worker is told to stop, once; after a normal stop, a lost connection (the
    reactor dropping its readers at shutdown) is not a reason to stop again."""
    gone: list[bool] = []
    watch = ParentWatch(MemoryReactor(), lambda: gone.append(True), fd=0)
    watch.running = True
    watch.connectionLost(Failure(ConnectionDone()))
    watch.connectionLost(Failure(ConnectionDone()))
    assert gone == [True]
    stopped = ParentWatch(MemoryReactor(), lambda: gone.append(False), fd=0)
    stopped.connectionLost(Failure(ConnectionDone()))
    assert gone == [True]


def test_status_and_process_say_which_worker_answered() -> None:
    """If worker 2 of 3 answers /internal/status and /internal/process, then both carry
    ``worker: {id, count, pid}``, and its status ETag differs from another worker's."""
    clock = Clock()
    registry = EndpointRegistry([], clock)
    answers = {}
    for worker in (WorkerIdentity(2, 3), WorkerIdentity(3, 3)):
        internal = InternalApp(
            registry, clock=clock, config=OllaConfig(), proc_self=None, worker=worker
        )
        treq = StubTreq(internal.app.resource())
        for path in ("/internal/status", "/internal/process"):
            d: Deferred[Any] = treq.get("http://olla.test" + path)
            responses: list[Any] = []
            d.addCallback(responses.append)
            (response,) = responses
            bodies: list[bytes] = []
            response.content().addCallback(bodies.append)
            answers[(worker.id, path)] = (response.headers.getRawHeaders("etag"), bodies[0])
    for path in ("/internal/status", "/internal/process"):
        payload = json.loads(answers[(2, path)][1])
        assert payload["worker"] == {"id": 2, "count": 3, "pid": os.getpid()}
    assert answers[(2, "/internal/status")][0] != answers[(3, "/internal/status")][0]


def test_app_knows_its_worker() -> None:
    """If the app is built for worker 2 of 3, then ``app.worker`` says so (metrics read it);
    built without one, it is worker 1 of 1."""
    from twisted.internet.task import Cooperator
    from twisted.internet.testing import MemoryReactorClock

    from olla.daemon.app import build_app
    from olla.profiles import builtin_profiles

    reactor = MemoryReactorClock()
    cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
    app = build_app(
        OllaConfig(), builtin_profiles(), clock=reactor, agent=None, cooperator=cooperator,  # type: ignore[arg-type]
        worker=WorkerIdentity(2, 3),
    )  # fmt: skip
    assert app.worker == WorkerIdentity(2, 3)
    alone = build_app(
        OllaConfig(), builtin_profiles(), clock=reactor, agent=None, cooperator=cooperator
    )  # type: ignore[arg-type]
    assert alone.worker == WorkerIdentity(1, 1)


def test_per_worker_decisions_said_without_a_store() -> None:
    """If several workers share no store, then startup names what each decides alone (sticky
    sessions and rate limits when on); with state.backend: redis, nothing."""
    from olla.config import parse_config
    from olla.daemon.supervisor import per_worker_decisions

    alone = per_worker_decisions(
        parse_config(
            {
                "proxy": {"sticky_sessions": {"enabled": True}},
                "server": {"rate_limits": {"per_ip_requests_per_minute": 10}},
            }
        )
    )
    assert any("sticky sessions" in item for item in alone)
    assert any("rate limits" in item for item in alone)
    assert any("health probes" in item for item in alone)
    shared = parse_config({"state": {"backend": "redis", "url": "redis://h"}})
    assert per_worker_decisions(shared) == []
