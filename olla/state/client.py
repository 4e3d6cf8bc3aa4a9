# -*- test-case-name: tests.test_state_client -*-
"""A Twisted-native Redis/Valkey client: pooled, with connect and command timeouts on the
injected clock, Lua scripts by their SHA1, and one subscriber connection.

Each pooled connection is kept up by a ``ClientService`` (reconnecting with a short capped
backoff); a connection is used only once its handshake (``AUTH``, ``SELECT``, ``PING``)
answered within the command timeout. A command goes to the next ready connection; with none
ready it fails at once with ``StoreUnavailable`` (never queued while the store is away), and
one without an answer within the command timeout fails with ``StoreTimeout`` and aborts its
connection (a stopped server answers nothing, and the replies still owed would arrive out of
step). The stores above fall back to their own memory on either.

Why not txredisapi (the Twisted client on PyPI, 1.6.0): it works on Python 3.11 and Twisted
26, but it schedules on the global reactor (no ``Clock`` in the unit tests), queues commands
while disconnected until a connection returns (one waiter per request for the length of an
outage; olla must fall back within one command timeout), sends every non-blocking command
down the pool's first connection, and measured 190 us of CPU per ``EVALSHA`` round trip where
this one takes about a fifth of that. RESP2 is small (``olla.state.resp``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from olla.config import RedisAddress
from olla.state.protocol import MessageHandler, RedisConnection, RoundTrips
from olla.state.resp import Arg, Reply, ReplyError

#: reconnect quickly: the stores fall back meanwhile, and sharing resumes on the first answer
RETRY = backoffPolicy(initialDelay=0.05, maxDelay=1.0, factor=2.0)
#: commands waiting on a connection before the next goes to another of the pool
PIPELINE = 64


class StoreUnavailable(Exception):
    """No connection to the store is ready."""


class StoreTimeout(Exception):
    """The store did not answer within the command timeout."""


@dataclass(frozen=True)
class Script:
    """A Lua script, sent by its SHA1 (``EVALSHA``) and loaded on the first ``NOSCRIPT``."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def store_endpoint(reactor: object, address: RedisAddress, timeout: float) -> IStreamClientEndpoint:
    """TCP to ``address`` (TLS for ``rediss://``, the host name verified), giving up on a
    connection attempt after ``timeout`` seconds."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=timeout
    )
    if address.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


def handshake(address: RedisAddress) -> list[list[Arg]]:
    """The commands that make a new connection usable (the last, ``PING``, proves the server
    answers: a stopped server accepts connections it never serves)."""
    commands: list[list[Arg]] = []
    if address.password is not None:
        if address.username:
            commands.append(["AUTH", address.username, address.password])
        else:
            commands.append(["AUTH", address.password])
    if address.db:
        commands.append(["SELECT", address.db])
    commands.append(["PING"])
    return commands


class _Slot:
    """One pooled connection and its ``ClientService``."""

    def __init__(self, client: RedisClient, index: int) -> None:
        self.client = client
        self.index = index
        self.ready: RedisConnection | None = None

    def build(self) -> RedisConnection:
        client = self.client
        connection = RedisConnection(
            client._clock, client.on_message if client.subscriber else None
        )
        # the handshake runs once connected, not in ClientService's prepareConnection: a
        # connection that fails there is left open by ClientService, and its later loss
        # finds no transition in its state machine (Twisted 26.10)
        connection.made.addCallback(lambda _: self.client._prepare(self, connection))
        return connection


@implementer(ILogObserver)
class _Discard:
    def __call__(self, event: LogEvent) -> None:
        pass


class _QuietClientService(ClientService):
    """A ``ClientService`` that does not log each reconnection attempt: while the store is
    away ``SharedState`` says so once, instead of a line per connection per retry."""

    _log = Logger(observer=_Discard())


class RedisClient(MultiService):
    """``pool_size`` connections to one server (or one subscriber connection, when
    ``on_message`` is given: ``commands`` are then its subscriptions)."""

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        *,
        command_timeout: float,
        pool_size: int = 1,
        setup: Sequence[Sequence[Arg]] = (("PING",),),
        on_message: MessageHandler | None = None,
        retry: Callable[[int], float] = RETRY,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.command_timeout = command_timeout
        self._setup = [list(command) for command in setup]
        self.on_message: MessageHandler = on_message or (lambda channel, data: None)
        self.subscriber = on_message is not None
        self.trips = RoundTrips()
        self._slots = [_Slot(self, index) for index in range(pool_size)]
        #: told when a connection becomes ready, and when one is lost
        self.on_ready: list[Callable[[], object]] = []
        self.on_lost: list[Callable[[], object]] = []
        for slot in self._slots:
            factory = Factory.forProtocol(slot.build)
            factory.noisy = False
            service = _QuietClientService(endpoint, factory, retryPolicy=retry, clock=clock)
            service.setServiceParent(self)

    @property
    def ready(self) -> bool:
        """Whether a command would be sent now."""
        return any(slot.ready is not None for slot in self._slots)

    # ------------------------------------------------------------------ connections

    def _prepare(self, slot: _Slot, connection: RedisConnection) -> None:
        """Run the handshake on a new connection; it serves commands once that answered
        (a failed handshake drops it, and its ``ClientService`` connects again)."""

        def ready(_: object) -> None:
            if connection.gone:
                return
            connection.trips = self.trips  # counted from here on (not the handshake)
            slot.ready = connection
            connection.lost.addCallback(lambda _: self._lost(slot, connection))
            for told in self.on_ready:
                told()

        def refused(failure: Failure) -> None:
            self._log.debug(
                "state store connection refused in its handshake: {why}",
                why=failure.getErrorMessage(),
            )
            connection.abort()

        done: Deferred[object] = Deferred()
        remaining = list(self._setup)

        def step(_: object) -> None:
            if not remaining:
                done.callback(None)
                return
            self._timed(connection, remaining.pop(0)).addCallbacks(step, done.errback)

        step(None)
        done.addCallbacks(ready, refused)

    def _lost(self, slot: _Slot, connection: RedisConnection) -> None:
        if slot.ready is connection:
            slot.ready = None
            for told in self.on_lost:
                told()

    def _pick(self) -> RedisConnection | None:
        """The first ready connection with fewer than ``PIPELINE`` commands waiting, else the
        ready one with the fewest. Commands sent in one turn of the reactor then share one
        connection: one write and one read for them all (spread over the pool, each
        connection costs a system call of its own); the others take over when it is deep
        in replies to wait for, or gone."""
        best: RedisConnection | None = None
        for slot in self._slots:
            connection = slot.ready
            if connection is None or connection.gone:
                continue
            if connection.pending < PIPELINE:
                return connection
            if best is None or connection.pending < best.pending:
                best = connection
        return best

    # ------------------------------------------------------------------ commands

    def _timed(self, connection: RedisConnection, args: Sequence[Arg]) -> Deferred[Reply]:
        """``args`` on ``connection``; the connection's watchdog fails it (and every command
        still waiting) with ``StoreTimeout`` once the oldest has waited the command timeout."""
        sent = connection.call(args)
        if connection.watchdog is None and not connection.gone:
            connection.watchdog = self._clock.callLater(
                self.command_timeout, self._watch, connection
            )
        return sent

    def _watch(self, connection: RedisConnection) -> None:
        """One timer per connection, not one per command: re-armed for the oldest command
        still waiting, or fired when it has waited the whole command timeout."""
        connection.watchdog = None
        oldest = connection.oldest()
        if oldest is None or connection.gone:
            return
        waited = self._clock.seconds() - oldest
        if waited < self.command_timeout:
            connection.watchdog = self._clock.callLater(
                self.command_timeout - waited, self._watch, connection
            )
            return
        connection.fail_all(StoreTimeout(f"no answer within {self.command_timeout:g}s"))
        # a server that does not answer one connection answers none: every connection goes,
        # and each is used again only once its handshake answers
        connection.abort()
        self.drop_all()

    def execute(self, *args: Arg) -> Deferred[Reply]:
        """Send one command; fires with its reply, or fails (``StoreUnavailable``,
        ``StoreTimeout``, ``ReplyError``, ``ConnectionLost``)."""
        connection = self._pick()
        if connection is None:
            self.trips.failed += 1
            return fail(StoreUnavailable("no connection to the state store"))
        return self._timed(connection, args)

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred[Reply]:
        """Run ``script`` (by its SHA1; its source once if the server does not know it)."""
        sent = self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        sent.addErrback(self._unknown_script, script, keys, args)
        return sent

    def _unknown_script(
        self, failure: Failure, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Deferred[Reply] | Failure:
        error = failure.value
        if isinstance(error, ReplyError) and error.kind == "NOSCRIPT":
            return self.execute("EVAL", script.source, len(keys), *keys, *args)
        return failure

    def drop_all(self) -> None:
        """Drop every ready connection now (each connects again)."""
        dropped = False
        for slot in self._slots:
            connection, slot.ready = slot.ready, None
            if connection is not None:
                connection.abort()
                dropped = True
        if dropped:
            for told in self.on_lost:
                told()

    def stopService(self) -> Deferred[None]:
        # each ClientService closes its connection once what was written is sent (a
        # process's last words: its lease given back)
        stopped: Deferred[None] = super().stopService()
        return stopped
