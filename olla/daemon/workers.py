# -*- test-case-name: tests.test_workers -*-
"""Every core, the worker's side: who this process is, and the listener it adopts.

``twistd olla --workers N`` runs N worker processes behind one listening socket that the
supervisor (``olla/supervisor.py``) binds and hands down as an inherited descriptor. Each worker
runs the whole app (its own pools, pollers, counters); ``WorkerIdentity`` is how the status
pages, and any metrics, say which one answered.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorFDSet,
    IReactorSocket,
    IReadDescriptor,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: the descriptor the supervisor puts the listening socket on in every worker
LISTEN_FD = 3


@dataclass(frozen=True)
class WorkerIdentity:
    """This process among the workers: ``id`` from 1 to ``count``; one process is 1 of 1."""

    id: int = 1
    count: int = 1

    @property
    def pid(self) -> int:
        """Read when asked: twistd forks a daemon after the app is built."""
        return os.getpid()

    def payload(self) -> dict[str, int]:
        """``worker: {id, count, pid}`` in ``/internal/status`` and ``/internal/process``."""
        return {"id": self.id, "count": self.count, "pid": self.pid}


def parse_worker_count(value: str, cpu_count: int | None = None) -> int:
    """``--workers``: a positive number, or ``auto`` for one per core.

    Raises:
        ValueError: anything else, with the reason.
    """
    if value.strip().lower() == "auto":
        return max(1, cpu_count if cpu_count is not None else (os.cpu_count() or 1))
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number or 'auto', not {value!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be at least 1, not {count}")
    return count


def parse_worker(value: str) -> tuple[int, int]:
    """The hidden ``--worker ID/COUNT`` the supervisor starts each worker with.

    Raises:
        ValueError: not two numbers with ``1 <= ID <= COUNT``.
    """
    worker_id, _, count = value.partition("/")
    try:
        parsed = int(worker_id), int(count)
    except ValueError:
        raise ValueError(f"--worker must be ID/COUNT, not {value!r}") from None
    if not 1 <= parsed[0] <= parsed[1]:
        raise ValueError(f"--worker must be ID/COUNT with 1 <= ID <= COUNT, not {value!r}")
    return parsed


@implementer(ILogObserver)
class WorkerTaggedObserver:
    """Adds ``worker: ID`` to every event a worker logs (a JSON key), so the interleaved lines
    of the workers sharing one log can be told apart; the shared event is not changed."""

    def __init__(self, observer: ILogObserver, worker_id: int) -> None:
        self._observer = observer
        self._worker_id = worker_id

    def __call__(self, event: LogEvent) -> None:
        self._observer({"worker": self._worker_id, **event})


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for a host with a colon, as the single-process listener decides."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def accept_one_at_a_time(port: Any) -> None:
    """Make ``port`` take one connection per wake-up, so the workers share a burst of them.

    Every worker is woken when connections arrive, and Twisted's TCP port accepts up to
    ``numberAccepts`` (100 at first, growing while it fills them) in one go: the first worker
    to run would take a whole burst (a load balancer's or wrk's connections, all opened at
    once) and leave the others idle for the life of those keep-alive connections. One at a
    time, each worker goes back to the poll after every accept and a busy one takes fewer.
    """
    if not hasattr(port, "numberAccepts"):  # not a Twisted TCP port: nothing to tune
        return
    read = port.doRead

    def doRead() -> object:
        port.numberAccepts = 1
        return read()

    port.doRead = doRead


class AdoptedPortService(Service):
    """Serves ``factory`` on a listening socket inherited from the supervisor.

    The worker never binds: every worker accepts from the one socket, so a worker that dies
    leaves the others (and the connections still in the backlog) to be served.
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        fd: int,
        family: socket.AddressFamily,
        factory: ServerFactory[Any],
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family
        self._factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.port = self._reactor.adoptStreamPort(self._fd, self._family, self._factory)
        accept_one_at_a_time(self.port)
        # adoptStreamPort works on a duplicate; the inherited descriptor is not needed again.
        os.close(self._fd)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


@implementer(IReadDescriptor)
class ParentWatch(Service):
    """A worker stops (and drains) when its supervisor is gone, even by SIGKILL: the supervisor
    holds the write end of the worker's standard input, so end-of-file there means it died."""

    _log = Logger()

    def __init__(self, reactor: IReactorFDSet, gone: Callable[[], object], fd: int = 0) -> None:
        self._reactor = reactor
        self._gone = gone
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "ParentWatch"

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self._fd, False)
        self._reactor.addReader(self)

    def stopService(self) -> None:
        super().stopService()
        self._reactor.removeReader(self)

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the supervisor never writes: only the end matters
            self._reactor.removeReader(self)
            self._parent_gone()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the pipe hang up (epoll reports it without a read)."""
        self._parent_gone()

    def _parent_gone(self) -> None:
        if not self.running:  # stopping already (the reactor drops every reader at shutdown)
            return
        self.running = False
        self._log.warn("the supervisor is gone: stopping this worker")
        self._gone()
