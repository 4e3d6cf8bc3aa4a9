# -*- test-case-name: tests.test_failures -*-
"""Reading a backend's body with a bound: collected (a model list), or drained and dropped
(a probe's or a refused answer's body, so its connection can be reused); and a small body
sent from memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


class BodyTooLarge(ValueError):
    """The body went past the reader's limit (the connection was closed there)."""


class BoundedBody(Protocol):
    """``response.deliverBody(BoundedBody(limit))``; ``done`` fires with the body (``b""``
    when not kept). Past ``limit`` it stops reading: ``done`` fails with ``BodyTooLarge`` if
    the body was being kept, and fires empty if it was only being drained."""

    def __init__(self, limit: int, *, keep: bool) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._limit = limit
        self._keep = keep
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            transport: Any = self.transport
            transport.stopProducing()
            return
        if self._keep:
            self._chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if self._size > self._limit:
            if self._keep:
                self.done.errback(BodyTooLarge(f"larger than {self._limit} bytes"))
            else:
                self.done.callback(b"")
        elif not self._keep:
            self.done.callback(b"")
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


@implementer(IBodyProducer)
class BytesProducer:
    """An in-memory request body, written in one go (no cooperator round trip)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
