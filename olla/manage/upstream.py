# -*- test-case-name: tests.test_manage -*-
"""Model-management calls to one Ollama, over the proxy's pooled ``Agent``.

- :meth:`Upstream.call`: a short call (copy, delete, a blob ``HEAD``): status and a bounded body;
- :meth:`Upstream.stream`: a pull, push or create, asked with ``stream: true`` whatever the
  client asked (olla must see the progress to tell a working host from a dead one); each
  NDJSON line goes to ``on_line`` as it arrives; an error status, a bad line, a cut stream or
  ``proxy.read_timeout`` of silence fails it with :class:`HostFailed`;
- :meth:`Upstream.upload`: a blob, ``HEAD`` first (an Ollama that has it is not sent it
  again), then streamed from the file twisted.web spooled the client's body into, each
  upload through its own :class:`FileCursor`, so several run at once and none holds the body.

Each call is retried once when it fails the way a stale pooled keep-alive connection does,
as the proxy's exchange does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from olla.fleet.endpoints import Endpoint
from olla.manage.progress import BadStream, Document, LineSplitter, parse_line
from olla.proxy.forward import IN_MEMORY_BODY, BytesProducer
from olla.util.bodies import BodyTooLarge, BoundedBody
from olla.util.deadline import with_deadline
from olla.util.failures import STALE_CONNECTION, describe

#: the most of a short answer (or an error answer) olla reads
REPLY_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


class HostFailed(Exception):
    """One host's part of a call failed; ``reason`` says why, ``status`` is its HTTP status
    when it answered with an error."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    @property
    def error(self) -> str:
        """What the answer says went wrong: Ollama's ``{"error": ...}``, else its text."""
        try:
            document = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            return str(document["error"])
        text = self.body.decode("utf-8", "replace").strip()[:200]
        return f"HTTP {self.status}" + (f": {text}" if text else "")


def failure_of(failure: Failure) -> tuple[str, int | None]:
    """A failed host call as (reason, status)."""
    if isinstance(failure.value, HostFailed):
        return failure.value.reason, failure.value.status
    if failure.check(CancelledError):
        return "cancelled: the client went away", None
    return describe(failure), None


class FileCursor:
    """A view of a shared file with its own position.

    Uploads to several endpoints read the one copy twisted.web spooled the body into, each at
    its own offset. All run on the reactor thread, so no other reader moves the file between
    a cursor's seek and its read. ``close`` leaves the file open for the others.
    """

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self._size = size
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        self._f.seek(self._position)
        left = self._size - self._position
        data = self._f.read(left if size < 0 else min(size, left))
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        pass


def blob_producer(content: IO[bytes], size: int, cooperator: Cooperator) -> IBodyProducer:
    """A fresh producer of a spooled request body, read from its start through its own
    cursor: from memory when small, else from the file 64 KiB at a time."""
    if size <= IN_MEMORY_BODY:
        content.seek(0)
        return BytesProducer(content.read(size))
    return FileBodyProducer(FileCursor(content, size), cooperator=cooperator, readSize=_READ_SIZE)


@implementer(IBodyProducer)
class _Touching:
    """A body producer that calls ``touch`` whenever it writes (an upload's progress)."""

    def __init__(self, producer: IBodyProducer, touch: Callable[[], None]) -> None:
        self._producer = producer
        self._touch = touch
        self.length = producer.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        d: Deferred[None] = self._producer.startProducing(self)
        return d

    def write(self, data: bytes) -> None:
        self._touch()
        self._consumer.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class _Watchdog:
    """Cancels a Deferred when nothing happened for ``seconds``; ``touch`` is something."""

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._call: IDelayedCall | None = None
        self._watched: Deferred[Any] | None = None
        self.expired = False

    def watch(self, d: Deferred[IResponse]) -> Deferred[IResponse]:
        self._watched = d
        self.touch()

        def settle(result: IResponse | Failure) -> IResponse | Failure:
            if self._call is not None and self._call.active():
                self._call.cancel()
            if self.expired and isinstance(result, Failure):
                return Failure(DeferredTimeout(f"no progress for {self._seconds:g}s"))
            return result

        return d.addBoth(settle)

    def touch(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self._seconds)
        elif not self.expired and self._watched is not None and not self._watched.called:
            self._call = self._clock.callLater(self._seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._watched is not None:
            self._watched.cancel()


class _ProgressReader(Protocol):
    """Reads an NDJSON progress body line by line, each to ``on_line``; ``done`` fires at its
    clean end and fails with ``HostFailed`` on a bad line, a cut stream or a silence."""

    transport: Any

    def __init__(
        self, on_line: Callable[[Document], None], clock: IReactorTime, idle_timeout: float
    ) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self._stop())
        self._on_line = on_line
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._splitter = LineSplitter()
        self._idle: IDelayedCall | None = None
        self._why: HostFailed | None = None
        self.lines = 0

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called or self._why is not None:
            return
        self._arm()
        try:
            for line in self._splitter.feed(data):
                self._line(line)
        except BadStream as e:
            self._give_up(HostFailed(f"sent {e}"))

    def _line(self, line: bytes) -> None:
        self.lines += 1
        self._on_line(parse_line(line))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self.done.called:
            return
        if self._why is not None:
            self.done.errback(self._why)
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            try:
                for line in self._splitter.rest():
                    self._line(line)
            except BadStream as e:
                self.done.errback(HostFailed(f"sent {e}"))
                return
            self.done.callback(None)
        else:
            self.done.errback(
                HostFailed(
                    f"its stream was cut after {self.lines} progress line(s) ({describe(reason)})"
                )
            )

    def _arm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._silent)

    def _silent(self) -> None:
        self._give_up(HostFailed(f"sent nothing for {self._idle_timeout:g}s"))

    def _give_up(self, why: HostFailed) -> None:
        self._why = why
        self._stop()

    def _stop(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.stopProducing()


@dataclass(eq=False)
class Upstream:
    """Management calls to one endpoint at a time."""

    agent: IAgent
    clock: IReactorTime
    cooperator: Cooperator
    _: KW_ONLY
    #: how long a short call may take to answer (``proxy.response_header_timeout``)
    answer_timeout: float
    #: the longest silence of a progress stream or an upload (``proxy.read_timeout``)
    idle_timeout: float

    async def _response(
        self,
        endpoint: Endpoint,
        method: bytes,
        path: bytes,
        headers: Headers,
        body: Callable[[], IBodyProducer | None],
        deadline: Callable[[Deferred[IResponse]], Deferred[IResponse]],
    ) -> IResponse:
        """The response to one request (with the endpoint's own headers and credentials),
        retried once on a stale pooled connection."""
        url = endpoint.upstream_url(path)
        headers = headers.copy()
        for name, value in endpoint.extra_headers:
            headers.setRawHeaders(name, [value])
        for attempt in (1, 2):
            try:
                return await deadline(self.agent.request(method, url, headers.copy(), body()))
            except STALE_CONNECTION:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _within(self, seconds: float) -> Callable[[Deferred[IResponse]], Deferred[IResponse]]:
        return lambda d: with_deadline(d, seconds, self.clock)

    async def _read(self, response: IResponse) -> Reply:
        reader = BoundedBody(REPLY_LIMIT, keep=True)
        response.deliverBody(reader)
        try:
            body = await with_deadline(reader.done, self.idle_timeout, self.clock)
        except BodyTooLarge:
            body = b""
        return Reply(response.code, body)

    async def call(
        self, endpoint: Endpoint, method: bytes, path: bytes, body: bytes | None, headers: Headers
    ) -> Reply:
        """A short call: its status and (up to 64 KiB of) its body."""

        def producer() -> IBodyProducer | None:
            return None if body is None else BytesProducer(body)

        response = await self._response(
            endpoint, method, path, headers, producer, self._within(self.answer_timeout)
        )
        if method == b"HEAD":
            return Reply(response.code, b"")
        return await self._read(response)

    async def stream(
        self,
        endpoint: Endpoint,
        path: bytes,
        body: bytes,
        headers: Headers,
        on_line: Callable[[Document], None],
    ) -> None:
        """A progress stream, each line to ``on_line``; ``HostFailed`` when it fails."""
        response = await self._response(
            endpoint,
            b"POST",
            path,
            headers,
            lambda: BytesProducer(body),
            self._within(self.idle_timeout),
        )
        if response.code != 200:
            reply = await self._read(response)
            raise HostFailed(reply.error, reply.status)
        reader = _ProgressReader(on_line, self.clock, self.idle_timeout)
        response.deliverBody(reader)
        await reader.done

    async def upload(
        self, endpoint: Endpoint, path: bytes, content: IO[bytes], size: int, headers: Headers
    ) -> Reply:
        """A blob to ``endpoint``: 200 when it had it already (``HEAD``), else the ``POST``'s
        answer. The upload may take as long as it keeps moving (``proxy.read_timeout`` of no
        progress fails it)."""
        head = await self.call(endpoint, b"HEAD", path, None, headers)
        if head.status == 200:
            return head
        watchdog = _Watchdog(self.clock, self.idle_timeout)

        def producer() -> IBodyProducer:
            return _Touching(blob_producer(content, size, self.cooperator), watchdog.touch)

        response = await self._response(endpoint, b"POST", path, headers, producer, watchdog.watch)
        return await self._read(response)
