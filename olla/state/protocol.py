# -*- test-case-name: tests.test_state_client -*-
"""One connection to a Redis/Valkey server: commands pipelined in order, replies matched to
them first in first out, and (on a subscriber connection) published messages handed on.

It has no timers: the client (``olla.state.client``) watches the oldest command waiting here
(``oldest``) on its injected clock and fails them all (``fail_all``) when the server stopped
answering. Each command's time to its answer goes into ``trips`` once the connection serves
(the handshake's are not counted).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from olla.state.resp import Arg, Parser, ProtocolError, Reply, ReplyError, encode

#: round-trip latency buckets (seconds) for ``/internal/status`` and the benchmark note
LATENCY_BOUNDS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class RoundTrips:
    """What the commands cost: how many, how long until their answer, and how many failed."""

    commands: int = 0
    failed: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))

    def answered(self, seconds: float) -> None:
        self.commands += 1
        self.seconds += seconds
        self.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def quantile(self, fraction: float) -> float | None:
        """The upper bound of the bucket holding the ``fraction`` quantile (None: no data)."""
        answered = sum(self.buckets)
        if not answered:
            return None
        rank, seen = fraction * answered, 0
        for index, count in enumerate(self.buckets):
            seen += count
            if seen >= rank:
                return LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) else float("inf")
        return float("inf")

    def payload(self) -> dict[str, object]:
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "commands": self.commands,
            "failed": self.failed,
            "mean_ms": round(1000 * self.seconds / self.commands, 3) if self.commands else None,
            "total_ms": round(1000 * self.seconds, 3),
            "p50_ms_at_most": None if p50 is None else round(1000 * p50, 3),
            "p99_ms_at_most": None if p99 is None else round(1000 * p99, 3),
        }


#: ``(channel, data)`` of one published message
MessageHandler = Callable[[bytes, bytes], object]


class RedisConnection(Protocol):
    """Commands in, replies out, in order. ``on_message`` set: a subscriber connection."""

    def __init__(self, clock: IReactorTime, on_message: MessageHandler | None = None) -> None:
        self._clock = clock
        self._parser = Parser()
        #: each command waiting for its reply, and when it was sent
        self._waiting: deque[tuple[Deferred[Reply], float]] = deque()
        self._on_message = on_message
        #: the client's counters, once the handshake is over
        self.trips: RoundTrips | None = None
        #: the client's watchdog of this connection's oldest command, while one is armed
        self.watchdog: IDelayedCall | None = None
        self.connected_at: float | None = None
        #: fires when the connection is made, and when it is lost
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.gone = False

    def connectionMade(self) -> None:
        # small commands, one at a time: never held back for the previous one's ACK
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self.made.callback(None)

    def call(self, args: Sequence[Arg]) -> Deferred[Reply]:
        """Send one command; fires with its reply (an error reply fails it with
        ``ReplyError``), or fails with ``ConnectionLost`` if the connection ends first."""
        d: Deferred[Reply] = Deferred()
        if self.gone or self.transport is None:
            d.errback(ConnectionLost("the store connection is closed"))
            return d
        self._waiting.append((d, self._clock.seconds()))
        self.transport.write(encode(args))
        return d

    @property
    def pending(self) -> int:
        """Commands sent and not answered yet."""
        return len(self._waiting)

    def oldest(self) -> float | None:
        """When the oldest command still waiting was sent (None: none waits)."""
        return self._waiting[0][1] if self._waiting else None

    def fail_all(self, why: Exception) -> None:
        """Fail every command still waiting with ``why`` (the connection is then dropped)."""
        waiting, self._waiting = self._waiting, deque()
        for waiter, _ in waiting:
            if self.trips is not None:
                self.trips.failed += 1
            waiter.errback(Failure(why))

    def abort(self) -> None:
        """Drop the connection now (a server that stopped answering)."""
        if self.transport is not None and not self.gone:
            cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except (ProtocolError, ValueError):
            self.abort()
            return
        for reply in replies:
            if self._on_message is not None and _is_message(reply):
                assert isinstance(reply, list)
                channel, message = reply[1], reply[2]
                assert isinstance(channel, bytes) and isinstance(message, bytes)
                self._on_message(channel, message)
                continue
            if not self._waiting:  # a reply nobody asked for: the stream is out of step
                self.abort()
                return
            waiter, sent = self._waiting.popleft()
            if self.trips is not None:  # an error reply is an answer too
                self.trips.answered(self._clock.seconds() - sent)
            if isinstance(reply, ReplyError):
                waiter.errback(Failure(reply))
            else:
                waiter.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self.fail_all(ConnectionLost("the store connection was lost"))
        if not self.lost.called:
            self.lost.callback(None)


def _is_message(reply: Reply) -> bool:
    return isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"
