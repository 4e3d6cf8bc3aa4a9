# -*- test-case-name: tests.test_forward -*-
"""Moving bytes: request bodies up to a backend, response bodies down to the client.

Nothing here holds a whole body. Small request bodies are already in memory (twisted.web read
them); large ones are streamed from twisted.web's temporary file, and can be replayed for
failover. Response bodies are relayed chunk by chunk with the backend connection registered as
the client's producer, so a slow client pauses the backend instead of filling olla's memory.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer

from olla.util.bodies import BytesProducer as BytesProducer  # where the exchange finds it
from olla.util.deadline import IdleBound

#: Bodies up to this size are sent from memory in one write; larger ones stream from disk.
IN_MEMORY_BODY = 256 * 1024
_READ_SIZE = 64 * 1024


class _KeepOpen:
    """A file view whose ``close`` is a no-op: FileBodyProducer closes its file at EOF, and a
    request body must survive one attempt to be replayed to the next endpoint."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        pass


def body_producer(content: IO[bytes], size: int, cooperator: Cooperator) -> IBodyProducer | None:
    """A fresh producer for the client's request body, from its start.

    Args:
        content: twisted.web's buffer of the request body (BytesIO or a temporary file).
        size: its length in bytes.
        cooperator: drives large bodies; injected so tests can run it on a Clock.
    """
    content.seek(0)
    if size == 0:
        return None
    if size <= IN_MEMORY_BODY:
        return BytesProducer(content.read())
    return FileBodyProducer(_KeepOpen(content), cooperator=cooperator, readSize=_READ_SIZE)


class BodySink(typing.Protocol):
    """Where a relayed body goes: the client's request, or a translator in front of it."""

    @property
    def channel(self) -> object | None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def write(self, data: bytes) -> None: ...


#: how much of a body's end ``StreamBody.tail`` keeps
TAIL_SIZE = 2048
#: ``proxy.stream_buffer_size`` when unset, by ``proxy.engine`` (the Go original's defaults)
DEFAULT_BUFFER = {"olla": 64 * 1024, "sherpa": 8 * 1024}
#: content types whose bytes are tokens a client waits for (Ollama's NDJSON, SSE)
STREAM_TYPES = (b"ndjson", b"event-stream")


def gather_size(profile: str, engine: str, buffer_size: int | None, content_type: bytes) -> int:
    """How many bytes of an answer are gathered before they are written to the client
    (0: each chunk as it arrives).

    ``proxy.profile``: ``streaming`` never gathers, ``standard`` always does (up to
    ``proxy.stream_buffer_size``: fewer, larger writes), and ``auto`` gathers every answer
    but a stream.
    """
    if profile == "streaming":
        return 0
    if profile == "auto" and any(kind in content_type for kind in STREAM_TYPES):
        return 0
    return buffer_size or DEFAULT_BUFFER.get(engine, DEFAULT_BUFFER["olla"])


class StreamBody(Protocol):
    """Relays one upstream response body to the client as it arrives.

    ``done(reason)`` is called exactly once: with None when the body ended cleanly, else with
    the failure (backend died, idle timeout, or :meth:`abort`). Writing stops the moment the
    client is gone; the caller decides what to do with the client connection.
    """

    transport: Any  # twisted.web._newclient.TransportProxyProducer

    # one per answer being relayed (a thousand slow streams: a thousand); with Protocol's two
    # attributes slotted too, no instance dict is made at all
    __slots__ = (
        "_abort_reason", "_clock", "_done", "_gather", "_gathered", "_gathered_size",
        "_idle", "_idle_timeout", "_producing", "_request", "connected", "first_byte_at",
        "relayed", "_tail", "transport",
    )  # fmt: skip

    def __init__(
        self,
        request: BodySink,
        clock: IReactorTime,
        idle_timeout: float,
        done: Callable[[Failure | None], None],
        gather: int = 0,
    ) -> None:
        self._request = request
        #: write to the client once this many bytes are in (0: at once); see ``gather_size``
        self._gather = gather
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._done: Callable[[Failure | None], None] | None = done
        #: the idle bound, marked active at every chunk (None: unbounded)
        self._idle = IdleBound(clock, self._idle_expired) if idle_timeout > 0 else None
        self._abort_reason: Failure | None = None
        self._producing = False
        self.relayed = 0
        #: the body's last bytes and then some (see ``tail``)
        self._tail = bytearray()
        #: when the first body byte arrived (a stream's time to first token)
        self.first_byte_at: float | None = None

    @property
    def tail(self) -> bytes:
        """The body's last ``TAIL_SIZE`` bytes (an Ollama stream's final chunk carries its
        figures)."""
        return bytes(self._tail[-TAIL_SIZE:])

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)
        self._producing = True
        if self._idle is not None:
            self._idle.start(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._abort_reason is not None:
            return  # bytes _newclient had buffered before our stopProducing took effect
        now = self._clock.seconds()
        idle = self._idle
        if idle is not None:
            idle.active_at = now
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.relayed += len(data)
        tail = self._tail
        if len(data) >= TAIL_SIZE:  # a big chunk: its own end is the tail
            tail[:] = memoryview(data)[-TAIL_SIZE:]
        else:  # in place; cut back to TAIL_SIZE only once it is twice that
            tail += data
            if len(tail) > 2 * TAIL_SIZE:
                del tail[:-TAIL_SIZE]
        if self._gather <= 0:
            self._request.write(data)
            return
        self._gathered.append(data)
        self._gathered_size += len(data)
        if self._gathered_size >= self._gather:
            self._flush()

    def _flush(self) -> None:
        if self._gathered:
            data = b"".join(self._gathered)
            self._gathered, self._gathered_size = [], 0
            self._request.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ConnectionAborted())
        if self._idle is not None:
            self._idle.close()  # it calls back into this: a cycle otherwise
        if self._producing:
            self._producing = False
            if self._request.channel is not None:  # a departed client has no channel
                self._request.unregisterProducer()
        if self._abort_reason is not None:
            reason = self._abort_reason
        elif reason.check(ResponseDone, PotentialDataLoss):
            if self._request.channel is not None:
                self._flush()
            self._finish(None)
            return
        self._finish(reason)

    def abort(self, why: Failure) -> None:
        """Stop reading the upstream body (client gone, timeout); closes that connection."""
        if self._abort_reason is None and self._done is not None:
            self._abort_reason = why
            self.transport.stopProducing()

    # ------------------------------------------------------------------ internals

    def _finish(self, reason: Failure | None) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(reason)

    def _idle_expired(self) -> None:
        self.abort(Failure(ReadTimeout(self._idle_timeout)))


class ReadTimeout(Exception):
    """The backend sent nothing for ``proxy.read_timeout`` while streaming a body."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data from the backend for {seconds:g}s")
