# -*- test-case-name: tests.test_hostile_http -*-
"""The resource tree and the HTTP site: every request enters here.

``OllaRequest`` enforces the body size limit while the body arrives (twisted.web otherwise
buffers the whole body before any resource runs) and gives every request its id.
``OllaChannel`` refuses what is malformed, too big or too slow before any resource runs. Every
answer olla makes itself is JSON in the caller's dialect: twisted.web's HTML pages (error
pages, "Huh?", "Processing Failed") never go out.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.error import UnsupportedMethod
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from olla.config import OllaConfig
from olla.front.context import (
    ContextRequest,
    LocalAnswer,
    RequestContext,
    context_of,
    peer_host,
)
from olla.guard.stage import Guard
from olla.interfaces import IReconfigurable
from olla.proxy.headers import canonical_name, valid_request_id
from olla.telemetry.outcomes import Outcomes
from olla.telemetry.records import RequestRecord
from olla.telemetry.security import SecurityStats
from olla.util.errors import Dialect, error_body

#: sixteen of each: ``new_request_id`` picks a word with four random bits
_ADJECTIVES = (
    "amber", "brisk", "calm", "dapper", "eager", "fuzzy", "gentle", "hasty",
    "idle", "jolly", "keen", "lucid", "mellow", "nimble", "plucky", "quiet",
)  # fmt: skip
_VERBS = (
    "asks", "builds", "counts", "dances", "echoes", "finds", "greets", "hums",
    "jumps", "knits", "leaps", "mends", "nods", "opens", "paints", "roams",
)  # fmt: skip


_REQUEST_ID_HEADER = canonical_name(b"X-Olla-Request-ID")


def new_request_id(rng: random.Random) -> str:
    """A short, readable, probably-unique id: ``<adjective>-<verb>-<4 hex>``, from one draw of
    24 random bits (four for each word of the sixteen, sixteen for the hex)."""
    bits = rng.getrandbits(24)
    return f"{_ADJECTIVES[bits >> 20]}-{_VERBS[(bits >> 16) & 15]}-{bits & 0xFFFF:04x}"


class _Discard:
    """Where the rest of an oversized body goes."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


class OllaRequest(ContextRequest):
    """A request that refuses big bodies while they arrive, and runs the front of the request
    path once its body is in: its ``RequestContext``, the guard, then the resource tree.

    The size check runs when the length is declared and again for every chunk of a chunked
    body, so a 413 goes out before the body is read past the limit.
    """

    defaultContentType = None  # a backend's answer keeps its own Content-Type, or none
    _log = Logger()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_size = 0
        self.rejected = False
        self._served_by: OllaSite | None = None  # set once processing starts

    @property
    def olla_site(self) -> OllaSite:
        site = self.channel.site if isinstance(self.channel, OllaChannel) else None
        assert isinstance(site, OllaSite)
        return site

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        limit = self.olla_site.max_body_size
        if limit > 0 and length is not None and length > limit:
            self._reject_body(limit)

    def handleContentChunk(self, data: bytes) -> None:
        if self.rejected:
            return
        self.body_size += len(data)
        limit = self.olla_site.max_body_size
        if limit > 0 and self.body_size > limit:
            self._reject_body(limit)
            return
        super().handleContentChunk(data)

    def _reject_body(self, limit: int) -> None:
        """Answer 413 at once and stop reading this connection (no resource has run yet)."""
        self.rejected = True
        if self.content is not None:
            self.content.close()
        self.content = _Discard()
        channel = self.channel
        assert isinstance(channel, OllaChannel)
        channel.refuse(
            413, "Request Entity Too Large", f"request body too large (limit {limit} bytes)"
        )

    def processingFailed(self, reason: Failure) -> None:
        """A bug while rendering: its traceback is logged once, the client gets a JSON 500
        with the request id (never Twisted's HTML page)."""
        request_id = self.context.request_id
        self._log.failure(
            "request {request_id} ({method} {uri}) failed",
            failure=reason,
            request_id=request_id,
            method=self.method,
            uri=self.uri,
        )
        if self.finished or self.channel is None:
            return
        if self.startedWriting:
            transport: Any = self.channel.transport
            transport.abortConnection()  # a half-sent answer must not look complete
            return
        self.context.error = "internal error"
        body = error_body(
            self.context.dialect,
            500,
            f"internal error (request id {request_id})",
            request_id=request_id,
        )
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        origin = _origin_form(path)
        # absolute-form (RFC 9112 §3.2.2): route on its path; the channel made its authority
        # the Host
        super().requestReceived(command, path if origin is None else origin, version)

    def render(self, resrc: IResource) -> None:
        """Render through ``JSONGuard``: what twisted.web would answer itself is HTML."""
        super().render(JSONGuard(resrc))

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            owned = self.context.owned_headers
            if owned:
                self.context.owned_headers = []
                for prefix, headers in owned:
                    set_owned_headers(self, prefix, headers)
        super().write(data)

    def process(self) -> None:
        """The front: the request's context, then the guard, then the resource tree."""
        if self.rejected:
            return
        site = self._served_by = self.olla_site  # the channel is gone once it ends
        given = self.getHeader(b"x-request-id")
        if valid_request_id(given):
            assert given is not None
            request_id = given.decode("ascii")
        else:
            request_id = new_request_id(site.rng)
        self.context = RequestContext(
            request_id=request_id,
            started=site.clock.seconds(),
            peer=peer_host(self),
            path=self.path,
            body_size=self.body_size,
        )
        # printable ASCII (``valid_request_id`` or ours): stored as setRawHeaders would
        self.responseHeaders._rawHeaders[_REQUEST_ID_HEADER] = [request_id.encode("ascii")]
        if site.guard is None:
            super().process()
            return
        try:
            checked = site.guard.check(self)
        except Exception:
            self.processingFailed(Failure())
            return
        if checked is None or isinstance(checked, LocalAnswer):
            self._guarded(checked)
        else:  # a store was asked
            checked.addCallback(self._guarded).addErrback(self.processingFailed)

    def _guarded(self, answer: LocalAnswer | None) -> None:
        self.context.answer = answer
        super().process()  # the tree (OllaSite.getResourceFor answers a refusal itself)

    def finish(self) -> None:
        super().finish()
        self._over(gone=False)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._over(gone=True)

    def _over(self, gone: bool) -> None:
        """The request ended (answered, or the client left first): its record, unless the
        stage that owns it publishes one itself."""
        site = self._served_by
        if site is None:
            return  # it never got past the channel's checks (they answered it themselves)
        context = self.context
        context.gone = context.gone or gone
        if not context.owned and not context.reported:
            site.report(self)


def set_owned_headers(request: Request, prefix: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Set ``headers`` over any whose name starts with ``prefix``."""
    out = request.responseHeaders
    for name, _ in list(out.getAllRawHeaders()):
        if name.lower().startswith(prefix):
            out.removeHeader(name)
    for name, value in headers:
        if name == b"Vary":
            out.addRawHeader(name, value)
        else:
            out.setRawHeaders(name, [value])


def error_body_for(uri: bytes, status: int, message: str, request_id: str | None = None) -> bytes:
    """An error body in the dialect of the URI's path (``Dialect.for_path``)."""
    return error_body(Dialect.for_path(uri), status, message, request_id=request_id)


#: a Host header olla can route on: a name, IPv4 or bracketed IPv6, and an optional port
_HOST = re.compile(rb"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]{0,5})?\Z")
#: an absolute-form request target: ``http(s)://authority`` and what follows it
_ABSOLUTE = re.compile(rb"\A[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(.*)\Z", re.DOTALL)


@lru_cache(maxsize=256)
def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a Host olla accepts: the characters above, and a name that can be
    IDNA-encoded (no empty label, none over 63 characters), as werkzeug needs it.

    Every request asks, nearly always about the same few names, and the IDNA codec is slow:
    the verdicts of the last 256 are kept."""
    if not _HOST.match(value):
        return False
    if value.startswith(b"["):
        return True
    try:
        value.partition(b":")[0].decode("ascii").encode("idna")
    except UnicodeError:
        return False
    return True


def _origin_form(target: bytes) -> bytes | None:
    """The path and query of an absolute-form target, or None for any other form."""
    absolute = _ABSOLUTE.match(target)
    if absolute is None:
        return None
    rest = absolute.group(2)
    return rest if rest.startswith(b"/") else b"/" + rest


def target_problem(method: bytes, target: bytes) -> str | None:
    """Why a request target is not one olla serves (RFC 9112 §3.2), or None when it is.

    Origin-form (``/path?query``) and absolute-form (``http://host/path``) are served; the
    asterisk only with ``OPTIONS`` (twisted.web answers that one itself).
    """
    if target.startswith(b"/"):
        return None
    if target == b"*":
        return None if method == b"OPTIONS" else "the * target is only for OPTIONS"
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        return None if valid_host(absolute.group(1)) else "invalid host in the request target"
    return "invalid request target"


#: characters a Content-Type may not carry: Python's header parser splits lines at them
_LINE_BREAKS = re.compile(rb"[\x0b\x0c\x1c\x1d\x1e\x85]")
#: the longest request line or single header line olla reads (Twisted's own limit; longer
#: ones are answered 414 or 431 now instead of a silent close)
LINE_LIMIT = 16 * 1024


_CONNECTION_DONE = Failure(ConnectionDone())


class OllaChannel(HTTPChannel):
    """An HTTP connection the site can count, and close politely when olla stops.

    It answers malformed requests in JSON (Twisted sends a bare 400 or just closes): ``414``
    for a request line over ``LINE_LIMIT``, ``431`` for a header line over it or a header
    block over ``max_header_size``, ``400`` for a bad or (HTTP/1.1) missing ``Host`` or a
    request target that is neither a path nor an ``http(s)`` URL (``*`` only for OPTIONS),
    ``413`` (for ``OllaRequest``) for a body over ``max_body_size``. And it
    holds slow clients to deadlines rather than idle timers: the whole header block within
    the site's ``header_timeout``, the whole body within its ``body_timeout``.
    """

    site: OllaSite
    MAX_LENGTH = LINE_LIMIT

    def __init__(self) -> None:
        super().__init__()
        self._refused = False
        self._deadline: IDelayedCall | None = None
        self._closer: IDelayedCall | None = None
        self._secure: bool | None = None
        #: a deadline asked for while a chunk is parsed, armed once it is (see ``_arm``)
        self._wanted: tuple[float, str] | None = None
        self._parsing = False

    def isSecure(self) -> bool:
        """Whether the connection is TLS, asked of its transport once (an interface adaptation
        each time otherwise, for every proxied request's ``X-Forwarded-Proto``): a
        connection's transport is set when it is made and never changes."""
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(super().isSecure())
        return secure

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._cancel_deadline()
        if self._closer is not None and self._closer.active():
            self._closer.cancel()
        self.site.channels.discard(self)
        super().connectionLost(reason)
        self.site.check_drained()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        """The status line and headers as one write: Twisted's hands the transport four pieces
        per header (some sixty per answer). The values are already sanitised by ``Headers``."""
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self.writeSequence(head)

    def writeSequence(self, iovec: list[bytes]) -> None:
        """One write of the joined pieces (a head, a body chunk's framing and data): the
        transport would check, count and buffer each piece of the list on its own."""
        transport = self.transport
        assert transport is not None  # a channel writes only while connected
        transport.write(b"".join(iovec))

    def requestDone(self, request: http.Request) -> None:
        if self.site.draining:
            self.persistent = False  # answer, then close: olla is stopping
        super().requestDone(request)
        self.site.check_drained()

    # ------------------------------------------------------------------ parsing guards

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest is not read
        self._parsing = True  # first: a request that arrives whole makes no timer (``_arm``)
        if (
            self.line_mode
            and self._deadline is None
            and self._wanted is None
            and data.strip(b"\r\n")
        ):
            self._arm(self.site.header_timeout, "request headers")
        try:
            super().dataReceived(data)
        finally:
            self._parsing = False
        wanted, self._wanted = self._wanted, None
        if wanted is not None:
            self._start_timer(*wanted)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431, "Request Header Fields Too Large", "request headers too large")
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:  # a refusal mid-buffer: the rest of that buffer is dropped too
            super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(431, "Request Header Fields Too Large", "too many request header fields")
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:  # nothing of this request yet: its request line
            self.refuse(414, "URI Too Long", "request line too long")
        else:
            self.refuse(431, "Request Header Fields Too Large", "request header line too long")

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        hosts = request.requestHeaders.getRawHeaders(b"host")
        if hosts is None and self._version == b"HTTP/1.1":
            self.refuse(400, "Bad Request", "HTTP/1.1 request without a Host header")
            return
        if hosts is not None and (len(hosts) > 1 or not valid_host(hosts[0])):
            self.refuse(400, "Bad Request", "invalid Host header")
            return
        target = self._path_so_far()
        problem = target_problem(self._method_so_far(), target)
        if problem is not None:
            self.refuse(400, "Bad Request", problem)
            return
        absolute = _ABSOLUTE.match(target)
        if absolute is not None:  # RFC 9112 §3.2.2: the target's authority, not Host, counts
            request.requestHeaders.setRawHeaders(b"host", [absolute.group(1)])
        types = request.requestHeaders.getRawHeaders(b"content-type") or []
        if any(_LINE_BREAKS.search(value) for value in types):
            self.refuse(400, "Bad Request", "invalid Content-Type header")
            return
        self._cancel_deadline()
        super().allHeadersReceived()
        if self.length != 0 and not self._refused:
            self._arm(self.site.body_timeout, "request body")

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "Bad Request", "malformed request")

    def refuse(self, status: int, phrase: str, message: str) -> None:
        """Answer ``status`` in JSON and close, reading nothing more from this client.

        The write side closes first so the client can read the answer while it is still
        sending (closing at once would reset the connection and lose it).
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self.persistent = False
        if status == 413:
            self.site.security.size_limit()
        elif status in (414, 431):
            self.site.security.header_limit()
        target = self._path_so_far()
        body = error_body_for(_origin_form(target) or target, status, message)
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, phrase.encode(), len(body), body)
        )
        self._log.info(
            "refused {method} {target} with {status}: {why}",
            method=self._method_so_far().decode("latin-1") or "-",  # "-": not parsed yet
            target=target[:200].decode("latin-1") or "-",  # a bounded, printable start
            status=status,
            why=message,
        )
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._closer = self.site.clock.callLater(_LINGER, transport.abortConnection)
        else:
            transport.loseConnection()

    # HTTPChannel keeps the request line's parts in private attributes until the body is in
    def _path_so_far(self) -> bytes:
        path = getattr(self, "_path", b"")
        return path if isinstance(path, bytes) else b""

    def _method_so_far(self) -> bytes:
        method = getattr(self, "_command", b"")
        return method if isinstance(method, bytes) else b""

    # ------------------------------------------------------------------ deadlines

    def _arm(self, seconds: float, what: str) -> None:
        """Give the current stage (headers, body) ``seconds`` from now. Asked while a chunk
        is parsed, the timer starts once the chunk is (the same instant): a small request
        whose headers and body came in one chunk then never makes a timer at all, instead of
        making and cancelling two."""
        self._cancel_deadline()
        if seconds <= 0:
            return
        if self._parsing:
            self._wanted = (seconds, what)
        else:
            self._start_timer(seconds, what)

    def _start_timer(self, seconds: float, what: str) -> None:
        self._deadline = self.site.clock.callLater(seconds, self._too_slow, seconds, what)

    def _cancel_deadline(self) -> None:
        self._wanted = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, seconds: float, what: str) -> None:
        self._deadline = None
        self.refuse(408, "Request Timeout", f"{what} not received within {seconds:g}s")


#: how long a refused client may keep reading its answer before the connection is cut
_LINGER = 5.0


@implementer(IReconfigurable)
class OllaSite(Site):
    """The one HTTP site: request limits, timeouts, draining on shutdown, and a quiet access
    log (the proxy logs each request itself, with more to say)."""

    requestFactory = OllaRequest
    # Plain HTTP/1.1 channels (no h2 negotiation wrapper: olla does not terminate TLS).
    # Twisted types this attribute as its wrapper's factory, narrower than what it accepts.
    protocol = cast(Any, OllaChannel)
    _log = Logger()
    reconfigures = (
        "server.read_timeout",
        "server.read_header_timeout",
        "server.idle_timeout",
        "server.request_limits.",
    )

    def __init__(
        self,
        root: IResource,
        *,
        clock: IReactorTime,
        max_body_size: int,
        max_header_size: int,
        timeout: float,
        header_timeout: float = 10.0,
        body_timeout: float = 0.0,
        rng: random.Random | None = None,
        security: SecurityStats | None = None,
        guard: Guard | None = None,
        outcomes: Outcomes | None = None,
    ) -> None:
        # a POST body is never parsed into request.args: a form-encoded upload (curl's
        # --data-binary default) would otherwise be read whole into memory
        super().__init__(
            root, timeout=timeout or None, reactor=clock, parsePOSTFormSubmission=False
        )
        #: the protections every request passes before the tree (None: none, in tests)
        self.guard = guard
        #: where each request's record goes
        self.outcomes = outcomes or Outcomes()
        #: what this site refused to protect itself (413, 414, 431, and the guards' refusals)
        self.security = security or SecurityStats()
        self.clock = clock
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        #: the whole header block of a request must arrive within this (0: no deadline)
        self.header_timeout = header_timeout
        #: the whole body of a request must arrive within this (0: no deadline)
        self.body_timeout = body_timeout
        self.rng = rng or random.Random(os.urandom(8))
        self.displayTracebacks = False
        self.channels: set[OllaChannel] = set()
        self.draining = False
        self._drained: Deferred[None] | None = None
        self._drain_deadline: IDelayedCall | None = None

    @property
    def busy_channels(self) -> list[OllaChannel]:
        return [channel for channel in self.channels if channel.requests]

    def drain(self, timeout: float) -> Deferred[None]:
        """Let in-flight requests finish for up to ``timeout`` seconds, then cut the rest.

        Call after the listener stopped accepting. Idle keep-alive connections close at once;
        busy ones close after their current response.
        """
        self.draining = True
        self._drained = Deferred()
        for channel in list(self.channels):
            if not channel.requests:
                channel.loseConnection()
        busy = len(self.busy_channels)
        if self.channels:
            self._log.info(
                "waiting up to {timeout:g}s for {busy} request(s) in flight",
                timeout=timeout,
                busy=busy,
            )
            self._drain_deadline = self.clock.callLater(timeout, self._cut_remaining)
        drained = self._drained
        self.check_drained()
        return drained

    def check_drained(self) -> None:
        # Done when every connection has *closed*: a finished response may still sit in a
        # transport's buffer, and the reactor drops unsent bytes when it shuts down.
        if self._drained is None or self.channels:
            return
        if self._drain_deadline is not None and self._drain_deadline.active():
            self._drain_deadline.cancel()
        drained, self._drained = self._drained, None
        drained.callback(None)

    def _cut_remaining(self) -> None:
        self._drain_deadline = None
        remaining = list(self.channels)
        self._log.warn(
            "shutdown timeout: closing {count} connection(s) still open", count=len(remaining)
        )
        for channel in remaining:
            transport: Any = channel.transport
            transport.abortConnection()
        if self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def reconfigure(self, config: OllaConfig) -> None:
        server = config.server
        self.max_body_size = server.request_limits.max_body_size
        self.max_header_size = server.request_limits.max_header_size
        self.header_timeout = server.read_header_timeout
        self.body_timeout = server.read_timeout
        self.timeOut = server.idle_timeout or server.read_timeout or None

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = self.max_header_size
        channel.MAX_LENGTH = min(LINE_LIMIT, self.max_header_size)
        return channel

    def getResourceFor(self, request: Request) -> IResource:
        """The tree's resource for ``request``, or the answer the guard gave instead."""
        answer = request.context.answer if isinstance(request, ContextRequest) else None
        if answer is None:
            found: IResource = super().getResourceFor(request)
            return found
        request.site = self
        return AnswerResource(answer)

    def report(self, request: OllaRequest) -> None:
        """The record of a request no stage reported itself: an answer olla made (a listing,
        a refusal, an unknown route, a model-management call across the fleet), or one the
        client left. Requests outside ``/olla/`` (the internal API, ``/version``) leave none
        unless the guard refused them."""
        context = request.context
        if context.route is None and context.answer is None:
            return
        context.reported = True
        now = self.clock.seconds()
        status = CLIENT_CLOSED if context.gone else request.code
        asked = context.endpoints
        if context.gone:
            outcome = "client_gone"
        elif status < 400:
            outcome = "ok"
        else:  # refused before any endpoint was asked, or answered with the endpoints' error
            outcome = "error" if asked else "rejected"
        key = context.key
        self.outcomes.request_finished(
            RequestRecord(
                endpoint=None,
                model=context.model,
                route=context.route or "none",
                status=status,
                outcome=outcome,
                attempts=len(asked),
                bytes=request.sentLength,
                duration=now - context.started,
                request_id=context.request_id,
                method=request.method.decode("ascii", "replace"),
                path=request.path[:_LOGGED_PATH].decode("utf-8", "replace"),
                client_ip=context.client_ip,
                ended=now,
                error=context.error,
                client_key=key.name if key is not None else None,
                operation=context.operation,
                endpoints=asked,
            )
        )

    def log(self, request: http.Request) -> None:
        """Proxied requests are logged by the proxy itself, with more to say."""


#: the status a request's record shows when its client left first (as nginx logs it)
CLIENT_CLOSED = 499
#: how much of a path a record keeps
_LOGGED_PATH = 200


class AnswerResource(Resource):
    """Renders a ``LocalAnswer``: a JSON error in the request's dialect, or an empty 204."""

    isLeaf = True

    def __init__(self, answer: LocalAnswer) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: Request) -> bytes:
        answer = self._answer
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name, value)
        if answer.status == http.NO_CONTENT:
            return b""
        context = context_of(request)
        context.error = answer.message
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return error_body(
            context.dialect, answer.status, answer.message, request_id=context.request_id
        )


class NotFound(Resource):
    """``404 page not found`` as JSON, for any path olla does not serve."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(http.NOT_FOUND)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return error_body_for(request.uri, 404, "404 page not found")


class OllaRoot(Resource):
    """``/olla/<prefix>/...``: one child per provider prefix."""

    def __init__(self, children: Mapping[bytes, IResource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        # a request under /olla/ leaves a record; the route that takes it names itself
        context_of(request).route = "none"
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        """``/olla`` and ``/olla/`` themselves: nothing to serve there."""
        context_of(request).route = "none"
        return NotFound().render(request)


class JSONGuard(Resource):
    """A resource as ``OllaRequest`` renders it, with what twisted.web would answer with an
    HTML page answered in JSON.

    A method the resource has no ``render_*`` for is a 405 with ``Allow`` (or a 501 when it
    allows none); a Twisted error page (``NoResource`` and its kin, from a ``getChild`` that
    fell back to the default) keeps its status; a render that returns neither bytes nor
    ``NOT_DONE_YET`` is a bug, so it raises and becomes the logged JSON 500.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: Request) -> bytes | int:
        try:
            body: object = self._inner.render(request)
        except UnsupportedMethod as e:
            allowed: list[bytes] = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise  # twisted.web answers HEAD by rendering GET (through this guard again)
            method = request.method.decode("latin-1")
            if not allowed:
                return _json_error(request, 501, f"method {method} not implemented")
            request.setHeader(b"Allow", b", ".join(allowed))
            return _json_error(request, 405, f"method {method} not allowed")
        if body is NOT_DONE_YET:
            return NOT_DONE_YET
        if not isinstance(body, bytes):
            raise TypeError(f"{self._inner!r} rendered {type(body).__name__}, not bytes")
        types = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
        if types[-1].startswith(b"text/html"):  # olla writes no HTML: a Twisted error page
            code = request.code
            return _json_error(request, code, http.RESPONSES.get(code, b"error").decode())
        return body


class KleinGuard(Resource):
    """The Klein app, with what Klein and werkzeug would answer in plain text or HTML (a path
    that is not UTF-8, a Host that cannot be IDNA-encoded) answered in JSON instead."""

    isLeaf = True

    def __init__(self, app: IResource) -> None:
        super().__init__()
        self._app = app

    def render(self, request: Request) -> bytes | int:
        if request.method not in _HTTP_METHODS:
            # any standard method is answered, as the Go original does (§1.1); others are not
            request.setHeader(b"Allow", b"GET, HEAD")
            method = request.method.decode("latin-1")
            return _json_error(request, 405, f"method {method} not allowed")
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return _json_error(request, 400, "request path is not valid UTF-8")
        try:
            rendered: bytes | int = self._app.render(request)
        except HTTPException as e:
            return _json_error(request, e.code or 400, e.description or e.name)
        return rendered


_HTTP_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"}
)


def _json_error(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return error_body_for(request.uri, status, message)


class RootResource(Resource):
    """``/olla/...`` goes to the proxy tree; everything else to the Klein app."""

    def __init__(self, olla: IResource, app: IResource) -> None:
        super().__init__()
        self._olla = olla
        self._app = KleinGuard(app)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"olla":
            return self._olla
        # hand Klein the whole path: it routes on prepath/postpath
        assert request.prepath is not None and request.postpath is not None
        request.postpath.insert(0, request.prepath.pop())
        return self._app

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)
