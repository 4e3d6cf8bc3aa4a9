# -*- test-case-name: tests.test_state_client -*-
"""One connection to a Redis/Valkey server: commands pipelined in order, replies matched to
them first in first out, and (on a subscriber connection) published messages handed on.

It has no timers: the client (``olla.state.client``) bounds each command on its injected
clock and aborts a connection whose server stopped answering, which fails every command still
waiting on it here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from olla.state.resp import Arg, Parser, ProtocolError, Reply, ReplyError, encode

#: ``(channel, data)`` of one published message
MessageHandler = Callable[[bytes, bytes], object]


class RedisConnection(Protocol):
    """Commands in, replies out, in order. ``on_message`` set: a subscriber connection."""

    def __init__(self, on_message: MessageHandler | None = None) -> None:
        self._parser = Parser()
        self._waiting: deque[Deferred[Reply]] = deque()
        self._on_message = on_message
        self.connected_at: float | None = None
        #: fires when the connection is made, and when it is lost
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.gone = False

    def connectionMade(self) -> None:
        self.made.callback(None)

    def call(self, args: Sequence[Arg]) -> Deferred[Reply]:
        """Send one command; fires with its reply (an error reply fails it with
        ``ReplyError``), or fails with ``ConnectionLost`` if the connection ends first."""
        d: Deferred[Reply] = Deferred()
        if self.gone or self.transport is None:
            d.errback(ConnectionLost("the store connection is closed"))
            return d
        self._waiting.append(d)
        self.transport.write(encode(args))
        return d

    @property
    def pending(self) -> int:
        """Commands sent and not answered yet."""
        return len(self._waiting)

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
            waiter = self._waiting.popleft()
            if isinstance(reply, ReplyError):
                waiter.errback(Failure(reply))
            else:
                waiter.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(Failure(ConnectionLost("the store connection was lost")))
        if not self.lost.called:
            self.lost.callback(None)


def _is_message(reply: Reply) -> bool:
    return isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"
