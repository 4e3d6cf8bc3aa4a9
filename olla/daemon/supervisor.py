# -*- test-case-name: tests.test_workers -*-
"""Every core, the supervisor's side: ``twistd olla --workers N`` with N > 1.

The twistd process binds the listening socket itself and runs N workers (``twistd olla
--worker K/N``), each inheriting the socket on descriptor 3 and its standard output and error.
A worker that dies is started again (at once after a good run; after a growing pause when it
keeps dying young, so a crash loop does not spin). SIGHUP is passed on to every worker. On stop
(SIGTERM) every worker is told to drain (SIGTERM: its own ``server.shutdown_timeout`` drain) and
the supervisor waits for all of them, killing what is left after ``kill_after`` seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from olla import __version__
from olla.config import OllaConfig
from olla.daemon.logging import FileSink, HangupRelay, LogReopener, LogSink
from olla.daemon.workers import LISTEN_FD, address_family
from olla.util.services import Hooks
from olla.web.multiproc import ENV

SignalHandler = Callable[[int, FrameType | None], object]

#: ``exited(reason)``: how a spawned worker reports its end (``ProcessDone``/``ProcessTerminated``)
ExitCallback = Callable[[Failure], None]


class IWorkerSpawner(Interface):
    """Starts one worker process; the seam the supervisor is tested through."""

    def spawn(worker_id: int, exited: ExitCallback) -> IProcessTransport:
        """Start worker ``worker_id``; ``exited`` is called once when it has ended."""


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting a worker that died.

    A worker is started again at once after a death, unless it keeps dying young (within
    ``stable_after`` seconds of its start): the second young death in a row waits ``initial``,
    each further one twice as long, up to ``maximum``. A run of ``stable_after`` resets it.
    """

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 10.0

    def delay(self, young_deaths: int) -> float:
        if young_deaths <= 1:
            return 0.0
        return float(min(self.maximum, self.initial * 2 ** (young_deaths - 2)))


@dataclass
class _Slot:
    process: IProcessTransport | None = None
    pid: int | None = None  # kept: a transport forgets its pid once the process has ended
    started: float = 0.0
    young_deaths: int = 0
    restart: IDelayedCall | None = None


class Supervisor(Service):
    """Keeps ``count`` workers running; passes signals on; stops them all on stop."""

    _log = Logger()

    def __init__(
        self,
        count: int,
        spawner: IWorkerSpawner,
        clock: IReactorTime,
        *,
        kill_after: float,
        backoff: Backoff | None = None,
    ) -> None:
        """
        Args:
            count: how many workers to keep running.
            spawner: starts one worker.
            clock: restarts and the kill deadline are scheduled on it.
            kill_after: seconds from the stop signal until workers still running are killed.
            backoff: restart pacing.
        """
        self.count = count
        self._spawner = spawner
        self._clock = clock
        self._kill_after = kill_after
        self._backoff = backoff or Backoff()
        self._slots = {worker_id: _Slot() for worker_id in range(1, count + 1)}
        self._stopped: Deferred[None] | None = None
        self._kill: IDelayedCall | None = None
        #: told the pid of every worker that ended (its live metrics are dropped)
        self.on_ended: list[Callable[[int], object]] = []

    @property
    def pids(self) -> dict[int, int]:
        """The running workers' process ids, by worker id."""
        return {
            worker_id: slot.pid
            for worker_id, slot in self._slots.items()
            if slot.process is not None and slot.pid is not None
        }

    def startService(self) -> None:
        super().startService()
        for worker_id in self._slots:
            self._spawn(worker_id)

    def _spawn(self, worker_id: int) -> None:
        slot = self._slots[worker_id]
        slot.restart = None
        slot.started = self._clock.seconds()
        slot.process = self._spawner.spawn(worker_id, lambda reason: self._ended(worker_id, reason))
        slot.pid = slot.process.pid
        self._log.info(
            "worker {worker} of {count} started (pid {pid})",
            worker=worker_id,
            count=self.count,
            pid=slot.pid,
        )

    def _ended(self, worker_id: int, reason: Failure) -> None:
        slot = self._slots[worker_id]
        pid, slot.process, slot.pid = slot.pid, None, None
        how = _describe_exit(reason)
        if pid is not None:
            for told in self.on_ended:
                told(pid)
        if self._stopped is not None:
            self._log.info(
                "worker {worker} (pid {pid}) stopped: {how}", worker=worker_id, pid=pid, how=how
            )
            self._maybe_stopped()
            return
        young = self._clock.seconds() - slot.started < self._backoff.stable_after
        slot.young_deaths = slot.young_deaths + 1 if young else 0
        delay = self._backoff.delay(slot.young_deaths)
        self._log.warn(
            "worker {worker} (pid {pid}) died: {how}; starting it again in {delay:g}s",
            worker=worker_id,
            pid=pid,
            how=how,
            delay=delay,
        )
        slot.restart = self._clock.callLater(delay, self._spawn, worker_id)

    def signal_all(self, signal_name: str) -> None:
        """Send ``signal_name`` (``"HUP"``, ``"TERM"``, ``"KILL"``) to every running worker."""
        for worker_id, slot in self._slots.items():
            if slot.process is None:
                continue
            try:
                slot.process.signalProcess(signal_name)
            except (ProcessExitedAlready, OSError):
                # It ended; its exit is reported separately.
                self._log.debug(
                    "worker {worker} gone before SIG{sig}", worker=worker_id, sig=signal_name
                )

    def hangup(self) -> None:
        """SIGHUP reached the supervisor: every worker gets it (log reopen, reload)."""
        self._log.info("SIGHUP: passed on to {count} worker(s)", count=len(self.pids))
        self.signal_all("HUP")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._stopped is not None:
            return self._stopped
        self._stopped = Deferred()
        for slot in self._slots.values():
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        self.signal_all("TERM")
        self._kill = self._clock.callLater(self._kill_after, self._kill_rest)
        stopped = self._stopped
        self._maybe_stopped()
        return stopped

    def _kill_rest(self) -> None:
        self._kill = None
        left = sorted(self.pids.items())
        if left:
            self._log.warn(
                "workers {left} still running {after:g}s after SIGTERM: killing them",
                left=", ".join(f"{w} (pid {p})" for w, p in left),
                after=self._kill_after,
            )
            self.signal_all("KILL")

    def _maybe_stopped(self) -> None:
        if any(slot.process is not None for slot in self._slots.values()):
            return
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)


def _describe_exit(reason: Failure) -> str:
    code = getattr(reason.value, "exitCode", None)
    sig = getattr(reason.value, "signal", None)
    if sig is not None:
        return f"signal {sig}"
    return f"exit code {code}"


class _WorkerProtocol(ProcessProtocol):
    """Reports the end of one worker. Its standard input stays open: the pipe is how a worker
    notices that its supervisor is gone (``olla.daemon.workers.ParentWatch``)."""

    def __init__(self, exited: ExitCallback) -> None:
        self._exited = exited

    def processEnded(self, reason: Failure) -> None:
        self._exited(reason)


@implementer(IWorkerSpawner)
class ProcessSpawner:
    """Starts workers as real processes: ``argv_for(worker_id)``, with the listening socket on
    descriptor 3 and the supervisor's standard output and error as their own."""

    def __init__(
        self,
        reactor: IReactorProcess,
        argv_for: Callable[[int], Sequence[str]],
        listen_fd: Callable[[], int],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self._argv_for = argv_for
        self._listen_fd = listen_fd
        self._env = dict(os.environ if env is None else env)

    def spawn(self, worker_id: int, exited: ExitCallback) -> IProcessTransport:
        argv = list(self._argv_for(worker_id))
        return self._reactor.spawnProcess(
            _WorkerProtocol(exited),
            argv[0],
            argv,
            env=self._env,
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: self._listen_fd()},
        )


class ListeningSocket(Service):
    """The one listening socket every worker adopts; bound when the service starts (a port in
    use stops startup with the reason), closed in the supervisor when it stops (the workers
    hold their own copies)."""

    _log = Logger()

    def __init__(self, host: str, port: int, backlog: int = 1024) -> None:
        self._host = host
        self._port = port
        self._backlog = backlog
        self.socket: socket.socket | None = None

    def fileno(self) -> int:
        if self.socket is None:
            raise RuntimeError("the listening socket is not bound yet")
        return self.socket.fileno()

    def startService(self) -> None:
        sock = socket.socket(address_family(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def worker_argv(
    worker_id: int,
    count: int,
    *,
    twistd_flags: Sequence[str],
    olla_flags: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """The command line of worker ``worker_id``: the same twistd plugin, in the foreground,
    without a pid file, told which worker it is."""
    return [
        python,
        "-m",
        "olla",
        "worker",
        "--nodaemon",
        "--pidfile=",
        *twistd_flags,
        "olla",
        *olla_flags,
        "--worker",
        f"{worker_id}/{count}",
    ]


def worker_twistd_flags(twistd: Mapping[str, Any] | None, sink: LogSink) -> list[str]:
    """The twistd flags that make a worker log where the supervisor logs: standard output is
    inherited as it is; a file is opened by each worker in append mode (and reopened on the
    SIGHUP passed on); syslog and ``--logger`` are asked for again."""
    twistd = twistd or {}
    if twistd.get("logger"):
        return [f"--logger={twistd['logger']}"]
    if twistd.get("syslog"):
        return ["--syslog", f"--prefix={twistd.get('prefix') or 'twisted'}"]
    if isinstance(sink, FileSink):
        return [f"--logfile={sink.path}"]
    return []


_log = Logger()


class MetricsDirectory(Service):
    """Where the workers write their figures for one ``/internal/metrics`` of the whole daemon
    (``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multiprocess mode): the operator's
    directory when the variable is set (emptied of figures at start), else a fresh one, removed
    at stop. A worker that ends is marked dead in it: its live gauges stop counting, its
    counters stay in the totals."""

    def __init__(self, path: str | None = None) -> None:
        given = path or os.environ.get(ENV) or None
        self._owned = given is None
        self.path = given or tempfile.mkdtemp(prefix="olla-metrics-")

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.path, exist_ok=True)
        for stale in glob.glob(os.path.join(self.path, "*.db")):
            os.remove(stale)

    def worker_ended(self, pid: int) -> None:
        mark_process_dead(pid, self.path)

    def stopService(self) -> None:
        super().stopService()
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)


def per_worker_decisions(config: OllaConfig) -> list[str]:
    """What each worker decides alone when the workers share no store (``state.backend:
    memory``): said at startup, so nobody takes per-worker figures for the daemon's."""
    if config.state.shared:
        return []
    found = []
    if config.proxy.sticky_sessions.enabled:
        found.append("sticky sessions (each worker pins a conversation on its own)")
    if config.server.rate_limits.per_ip_requests_per_minute > 0:
        found.append("rate limits (each worker allows the whole limit)")
    found += [
        "in-flight counts and least-connections (each worker sees only its own requests)",
        "health probes and model discovery (each worker polls every endpoint)",
        "/internal/status and the dashboard (each answer is one worker's view)",
    ]
    return found


def supervise(
    config: OllaConfig,
    count: int,
    reactor: Any,
    log_sink: LogSink,
    twistd: Mapping[str, Any] | None = None,
    watch_config: float = 0.0,
) -> MultiService:
    """The supervisor's service tree: the listening socket (bound first), the SIGHUP relay and
    the supervisor (stopped first: it waits for the workers' drain). With ``watch_config`` each
    worker watches the config file itself, as a single process would."""
    tree = MultiService()
    listening = ListeningSocket(config.server.host, config.server.port)
    listening.setServiceParent(tree)
    twistd_flags = worker_twistd_flags(twistd, log_sink)
    olla_flags = ["--config", os.path.abspath(config.source)] if config.source else []
    if watch_config > 0:
        olla_flags += ["--watch-config", "--watch-interval", repr(watch_config)]
    metrics = MetricsDirectory()
    metrics.setServiceParent(tree)
    spawner = ProcessSpawner(
        reactor,
        lambda worker_id: worker_argv(
            worker_id, count, twistd_flags=twistd_flags, olla_flags=olla_flags
        ),
        listening.fileno,
        env={**os.environ, ENV: metrics.path},
    )
    # The workers drain for up to shutdown_timeout, then close their pools: a margin on top.
    supervisor = Supervisor(
        count, spawner, reactor, kill_after=config.server.shutdown_timeout + 5.0
    )
    supervisor.on_ended.append(metrics.worker_ended)
    reopener = LogReopener(log_sink)
    HangupRelay(reactor, [reopener.reopen, supervisor.hangup]).setServiceParent(tree)
    host, port = config.server.host, config.server.port

    def started() -> None:
        _log.info(
            "olla {version} supervising {count} workers on http://{host}:{port}",
            version=__version__,
            count=count,
            host=host,
            port=port,
        )
        alone = per_worker_decisions(config)
        if alone:
            _log.warn(
                "{count} workers without state.backend: redis: per worker: {alone}; set "
                "state.backend: redis (and state.url) to share them",
                count=count,
                alone="; ".join(alone),
            )

    Hooks(on_start=started).setServiceParent(tree)
    supervisor.setServiceParent(tree)
    return tree
