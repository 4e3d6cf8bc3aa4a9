# -*- test-case-name: tests.test_outcomes -*-
"""``RequestContext``: what olla knows about one client request, in one typed place.

The front (``olla.web.site.OllaRequest``) makes it once, as the request starts being
processed: its id, when it started, the TCP peer, the dialect its errors are written in, the
body's size. The guard adds who is asking (the client address through trusted proxies, the
client key); the route that takes the request names itself. Every later stage reads it from
``context_of(request)`` instead of attributes bolted onto the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.server import Request

from olla.config import ClientKey
from olla.util.errors import Dialect, write_error
from olla.util.priority import Priority

#: headers a stage owns, set over whatever else the answer carries as its head goes out:
#: (the prefix of the names it replaces, the headers)
OwnedHeaders = tuple[bytes, list[tuple[bytes, bytes]]]


@dataclass(slots=True, eq=False)
class RequestContext:
    """One request's facts, filled once by the stage that learns each."""

    request_id: str
    #: when the request started being processed (the site's clock)
    started: float
    #: the TCP peer's address ("unknown" when it has none)
    peer: str
    #: the request's path (as received)
    path: bytes
    body_size: int = 0
    #: who is asking: the peer, or the client a trusted proxy names (the guard decides)
    client_ip: str = ""
    #: the client key the request presented (the guard matched it), when keys are on
    key: ClientKey | None = None
    #: its place in the admission queue: ``X-Olla-Priority``, within its key's ceiling (the
    #: guard decides)
    priority: Priority = Priority.NORMAL
    #: seconds the admission queue held it, summed over its attempts (the dispatch stage
    #: adds them); None: it never passed the queue
    queued: float | None = None
    #: the provider route that took the request (its prefix), for its record
    route: str | None = None
    #: a stage publishes this request's record itself (the exchange); else the front does
    owned: bool = False
    #: the record was published (exactly once per request)
    reported: bool = False
    #: why olla refused the request itself, for its record and log line
    error: str | None = None
    #: what olla did with the request itself instead of proxying it (a model-management
    #: call: ``pull``, ``copy``...), and what that was about: the model, the endpoints asked
    #: (one upstream call each). The front's record of the request carries them.
    operation: str | None = None
    model: str | None = None
    endpoints: tuple[str, ...] = ()
    #: the client left before its answer was complete
    gone: bool = False
    #: headers stages own, set over everything else as the answer's head goes out
    owned_headers: list[OwnedHeaders] = field(default_factory=list)
    #: the answer the guard gave instead of passing the request on
    answer: LocalAnswer | None = None

    _dialect: Dialect | None = None

    def __post_init__(self) -> None:
        if not self.client_ip:
            self.client_ip = self.peer

    @property
    def dialect(self) -> Dialect:
        """The error dialect of the request's path (``Dialect.for_path``), worked out the first
        time an error needs it."""
        if self._dialect is None:
            self._dialect = Dialect.for_path(self.path)
        return self._dialect

    def own_headers(self, prefix: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Set ``headers`` on the answer as its head goes out, replacing any whose name
        starts with ``prefix`` (a backend's own ``Access-Control-*``, ``X-RateLimit-*``)."""
        self.owned_headers.append((prefix, headers))


class ContextRequest(Request):
    """A ``twisted.web`` request that carries its ``RequestContext`` (set by the front)."""

    context: RequestContext


def context_of(request: object) -> RequestContext:
    """The context the front made for ``request``.

    Raises:
        TypeError: ``request`` did not come through olla's front (a bug).
    """
    if isinstance(request, ContextRequest):
        return request.context
    raise TypeError(f"{request!r} did not come through olla's front")


def peer_host(request: Request) -> str:
    """The TCP peer's address, or "unknown" (a UNIX socket, a test transport without one)."""
    address = request.getClientAddress()
    return address.host if isinstance(address, IPv4Address | IPv6Address) else "unknown"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """An answer a stage makes itself instead of passing the request on: ``status`` with a
    JSON error carrying ``message`` in the request's dialect (``204``: no body), plus
    ``headers`` of its own (``WWW-Authenticate``...)."""

    status: int
    message: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()


def answer_error(request: Request, status: int, message: str, code: str | None = None) -> None:
    """Answer ``request`` with a JSON error in its dialect, naming its request id, and finish
    it; its record says why."""
    context = context_of(request)
    context.error = message
    write_error(
        request,
        status,
        message,
        dialect=context.dialect,
        code=code,
        request_id=context.request_id,
    )
