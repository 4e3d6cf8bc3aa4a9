# -*- test-case-name: tests.test_anthropic -*-
"""How an exchange speaks to the backend and answers the client: the seam for reshaping.

``Exchange`` routes, attempts and fails over; an ``IExchangeShape`` decides what each attempt
asks for (path, headers, body) and, when it wants to, what the client gets back. ``Verbatim``
forwards the client's request and relays the backend's answer untouched (every provider
route); the Anthropic translator is another shape. A shape sees the client's side of the
exchange only through ``Reply``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import Attribute, Interface, implementer

from olla.fleet.endpoints import Endpoint

if TYPE_CHECKING:
    from olla.proxy.forward import BodySink


class Reply(Protocol):
    """The client's side of one exchange, as a shape may use it."""

    @property
    def request(self) -> Request: ...

    @property
    def model(self) -> str: ...

    def olla_headers(self, endpoint: Endpoint) -> None:
        """Set the ``X-Olla-*`` headers every answer from a backend carries."""

    def answered(self, status: int) -> None:
        """Record the status the client was given (for the log line)."""

    def error(self, status: int, message: str, endpoint: Endpoint | None = None) -> None:
        """Answer the client with an error in the route's dialect."""


class IExchangeShape(Interface):
    """What one exchange asks each backend, and what it gives the client back."""

    mode = Attribute("``X-Olla-Mode`` on answers (bytes), or None.")

    def upstream_path(endpoint: Endpoint, target: bytes) -> bytes:
        """The path and query to ask ``endpoint`` for (``target``: the client's)."""

    def upstream_headers(
        endpoint: Endpoint, headers: list[tuple[bytes, list[bytes]]]
    ) -> list[tuple[bytes, list[bytes]]]:
        """The headers to send, from those olla would forward."""

    def upstream_body(endpoint: Endpoint, native_model: str | None) -> IBodyProducer | None:
        """The body to send, or None for the client's own (alias rewrite included)."""

    def response_sink(response: IResponse, endpoint: Endpoint, reply: Reply) -> BodySink | None:
        """Take over the answer: return where its body goes (status and headers are the
        shape's to set), or None to relay it to the client as it is."""

    def body_ended(reply: Reply) -> None:
        """The body given to ``response_sink``'s sink ended cleanly: finish the answer."""

    def body_broke(reply: Reply, reason: Failure) -> None:
        """The body given to the sink broke off: end the answer as well as can be."""

    def finished(status: int | None, complete: bool) -> None:
        """The exchange is over (called once): the client got ``status``; ``complete`` says
        whether its body ended cleanly."""


@implementer(IExchangeShape)
class Verbatim:
    """The client's request as it is; the backend's answer as it is."""

    mode: bytes | None = None

    def upstream_path(self, endpoint: Endpoint, target: bytes) -> bytes:
        return target

    def upstream_headers(
        self, endpoint: Endpoint, headers: list[tuple[bytes, list[bytes]]]
    ) -> list[tuple[bytes, list[bytes]]]:
        return headers

    def upstream_body(self, endpoint: Endpoint, native_model: str | None) -> IBodyProducer | None:
        return None

    def response_sink(self, response: IResponse, endpoint: Endpoint, reply: Reply) -> None:
        return None

    def body_ended(self, reply: Reply) -> None:
        raise AssertionError("Verbatim never takes a body over")

    def body_broke(self, reply: Reply, reason: Failure) -> None:
        raise AssertionError("Verbatim never takes a body over")

    def finished(self, status: int | None, complete: bool) -> None:
        pass


VERBATIM = Verbatim()
