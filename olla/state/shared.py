# -*- test-case-name: tests.test_state_shared -*-
"""``SharedState``: this process's way to the shared store, failing open.

Every store (sessions, rate buckets, load, slots, poll leases) asks through ``ask`` or
``send``: a command the store answers is used; one it cannot (no connection, no answer within
the command timeout, an error) is answered by the caller's fallback from this process's own
memory at once, and counted. The first such failure is logged once ("each process decides from
its own memory"); the first answer after it is logged once ("sharing resumes"). While no
connection is ready nothing waits: the fallback answers in the same call.

It also holds this process's lease (``<prefix>proc:<id>``, renewed every ``HEARTBEAT``
seconds, gone ``PROCESS_LEASE`` seconds after a process dies), so what a dead process held in
the store stops counting, and the one events channel (``<prefix>events``) the stores publish
on: a freed slot, a probe's result, an endpoint's models.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from olla.state.client import Script, StoreTimeout, StoreUnavailable
from olla.state.protocol import RoundTrips
from olla.state.resp import Arg, Reply, ReplyError

T = TypeVar("T")

#: seconds a dead process's counts and slots keep counting, at most
PROCESS_LEASE = 5.0
#: seconds between renewals of this process's lease
HEARTBEAT = 1.0

#: ``handler(message)`` for one kind of event (a JSON object with ``kind`` and ``process``)
EventHandler = Callable[[dict[str, Any]], object]


class Commands(Protocol):
    """What the stores send commands through (``RedisClient``, or a test's fake)."""

    trips: RoundTrips

    @property
    def ready(self) -> bool: ...

    def execute(self, *args: Arg) -> Deferred[Reply]: ...

    def evalsha(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Deferred[Reply]: ...


def process_id() -> str:
    """This process among every olla using the store: host, pid and a random part (a pid is
    reused; a restarted process must not inherit its predecessor's slots)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SharedState(MultiService):
    """The store as this process sees it: commands that fail open, its lease, the events."""

    _log = Logger()

    def __init__(
        self,
        commands: Commands,
        clock: IReactorTime,
        *,
        prefix: str,
        where: str,
        process: str | None = None,
        grace: float = 0.0,
    ) -> None:
        super().__init__()
        self.process = process or process_id()
        self.commands = commands
        self._clock = clock
        self.prefix = prefix
        self.where = where
        self.channel = prefix + "events"
        #: whether the last command was answered (False from start until the first answer)
        self.ok = False
        #: seconds from start in which a store not answering yet is still connecting
        self._grace = grace
        self._started_at = clock.seconds()
        self._warned = False
        self._answered_once = False
        #: answers this process took from its own memory because the store could not answer
        self.fallbacks = 0
        self._handlers: dict[str, list[EventHandler]] = {}
        #: called when the events subscription is (re)established: mirrors catch up
        self.on_resync: list[Callable[[], object]] = []
        #: called at once when the store is found down (fallbacks begin)
        self.on_down: list[Callable[[], object]] = []
        self._heartbeat = LoopingCall(self._renew)
        self._heartbeat.clock = clock

    # ------------------------------------------------------------------ keys

    def key(self, *parts: str) -> str:
        """``<prefix><part>:<part>...``"""
        return self.prefix + ":".join(parts)

    @property
    def procs(self) -> str:
        """The prefix of the process leases (``+ id``)."""
        return self.prefix + "proc:"

    # ------------------------------------------------------------------ commands

    def ask(
        self,
        call: Callable[[Commands], Deferred[Reply]],
        read: Callable[[Reply], T],
        fallback: Callable[[], Deferred[T]],
    ) -> Deferred[T]:
        """``read(reply)`` of ``call``, or ``fallback()`` when the store cannot answer (the
        reply cannot be read: a bug, logged, and the fallback answers too)."""
        if not self.commands.ready:
            self.fell_back(StoreUnavailable("no connection to the state store"))
            return fallback()

        def answered(reply: Reply) -> T | Deferred[T]:
            self.answered()
            try:
                return read(reply)
            except Exception:
                self._log.failure("state store: an answer olla cannot read: {reply!r}", reply=reply)
                self.fallbacks += 1
                return fallback()

        def failed(failure: Failure) -> Deferred[T]:
            self.fell_back(_why(failure))
            return fallback()

        result: Deferred[T] = call(self.commands).addCallbacks(answered, failed)
        return result

    def send(
        self, call: Callable[[Commands], Deferred[Reply]], on_failure: Callable[[], object]
    ) -> None:
        """A write whose answer nobody waits for; ``on_failure`` when it did not reach the
        store (the writer keeps it locally, or owes it)."""
        if not self.commands.ready:
            self.fell_back(StoreUnavailable("no connection to the state store"))
            on_failure()
            return

        def failed(failure: Failure) -> None:
            self.fell_back(_why(failure))
            on_failure()

        call(self.commands).addCallbacks(lambda _: self.answered(), failed)

    def answered(self) -> None:
        """The store answered: shared decisions again, said once."""
        if self.ok:
            return
        self.ok = True
        if self._warned:
            self._log.info(
                "state store {where} answers again: shared state resumes "
                "({fallbacks} answers were taken from this process's memory so far)",
                where=self.where,
                fallbacks=self.fallbacks,
            )
            self._warned = False
        elif not self._answered_once:
            self._log.info("state store {where} connected: state is shared", where=self.where)
            self._renew()  # this process's lease, at once
        self._answered_once = True

    def fell_back(self, why: BaseException) -> None:
        """The store could not answer: counted, and said once until it answers again."""
        self.fallbacks += 1
        if isinstance(why, ReplyError) and why.kind not in ("LOADING", "BUSY", "READONLY"):
            self._log.error(
                "state store {where} refused a command: {why}", where=self.where, why=str(why)
            )
        was_ok, self.ok = self.ok, False
        if self._warned:
            return
        connecting = self._clock.seconds() - self._started_at < self._grace
        if not self._answered_once and connecting:
            return  # still connecting at startup: counted, not said
        self._warned = True
        reason = (
            "no answer in time" if isinstance(why, StoreTimeout) else str(why) or type(why).__name__
        )
        self._log.warn(
            "state store {where} not answering ({why}): each process decides from its own "
            "memory until it answers again (sticky pins, rate limits, load and slots are per "
            "process meanwhile); no request fails because of it",
            where=self.where,
            why=reason,
        )
        if was_ok:
            for told in self.on_down:
                told()

    # ------------------------------------------------------------------ events

    def subscribe(self, kind: str, handler: EventHandler) -> None:
        """Call ``handler(message)`` for every ``kind`` event another process publishes."""
        self._handlers.setdefault(kind, []).append(handler)

    def publish(self, kind: str, **fields: Any) -> None:
        """Tell every other process (fire and forget; lost while the store is away)."""
        message = json.dumps({"kind": kind, "process": self.process, **fields})
        self.send(lambda c: c.execute("PUBLISH", self.channel, message), lambda: None)

    def message_start(self, kind: str, *values: str) -> str:
        """The start of a JSON array event a script completes (``SLOT_RELEASE``)."""
        return json.dumps([kind, self.process, *values])[:-1] + ","

    def deliver(self, channel: bytes, data: bytes) -> None:
        """One message from the subscription: to the handlers of its kind, never our own."""
        try:
            decoded = json.loads(data)
        except ValueError:
            self._log.warn("state store: an event olla cannot read on {channel}", channel=channel)
            return
        if isinstance(decoded, list):  # a script's compact form: [kind, process, ...values]
            if len(decoded) < 2:
                return
            decoded = {"kind": decoded[0], "process": decoded[1], "values": decoded[2:]}
        if not isinstance(decoded, dict) or decoded.get("process") == self.process:
            return
        for handler in self._handlers.get(str(decoded.get("kind")), ()):
            try:
                handler(decoded)
            except Exception:
                self._log.failure("state store: a {kind} event failed", kind=decoded.get("kind"))

    def resynced(self) -> None:
        """The subscription is (re)established: what was missed meanwhile is read again."""
        for told in self.on_resync:
            told()

    # ------------------------------------------------------------------ this process's lease

    def _renew(self) -> None:
        ttl = int(PROCESS_LEASE * 1000)
        self.send(
            lambda c: c.execute("SET", self.procs + self.process, "1", "PX", ttl), lambda: None
        )

    def startService(self) -> None:
        super().startService()
        self._started_at = self._clock.seconds()
        self._heartbeat.start(HEARTBEAT, now=False).addErrback(
            lambda f: self._log.failure("state store lease renewal stopped", failure=f)
        )

    def stopService(self) -> Deferred[None]:
        if self._heartbeat.running:
            self._heartbeat.stop()
        # give the lease back at once: this process's counts and slots stop counting now
        if self.commands.ready:
            self.commands.execute("DEL", self.procs + self.process).addErrback(lambda _: None)
        stopped: Deferred[None] = super().stopService()
        return stopped

    def status(self) -> dict[str, object]:
        """``/internal/status`` ``state``."""
        return {
            "backend": "redis",
            "ok": self.ok,
            "fallbacks": self.fallbacks,
            "where": self.where,
            "process": self.process,
            "round_trips": self.commands.trips.payload(),
        }


def _why(failure: Failure) -> BaseException:
    return failure.value if failure.value is not None else Exception("unknown failure")


class LocalState(Service):
    """``state.backend: memory``: nothing shared, nothing to fall back from."""

    ok = True
    fallbacks = 0

    def status(self) -> dict[str, object]:
        return {"backend": "memory", "ok": True, "fallbacks": 0}
