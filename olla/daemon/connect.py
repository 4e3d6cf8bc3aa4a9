# -*- test-case-name: tests.test_connect -*-
"""Backend connections as the config asks for them: TCP keep-alive probes
(``proxy.connection_keep_alive``) and a bound on the TLS handshake of an ``https`` backend
(``proxy.tls_handshake_timeout``).

``TunedEndpoint`` wraps the client endpoint the agent connects with. Once a connection is
made it turns keep-alive on with the configured interval (a dead backend behind a silent
network is then noticed instead of waited on forever), and for TLS it aborts the connection
if the handshake has not finished in time: the request then fails like any connection that
could not be made, and goes to the next endpoint.
"""

from __future__ import annotations

import socket
from dataclasses import KW_ONLY, dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

#: Linux names for the keep-alive timings (absent elsewhere: only SO_KEEPALIVE is set there)
_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", None)
_KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)


def set_keep_alive(transport: Any, seconds: float) -> None:
    """Keep-alive probes on ``transport``'s socket every ``seconds`` (0: off)."""
    tcp = getattr(transport, "setTcpKeepAlive", None)
    if tcp is None:
        return
    tcp(1 if seconds > 0 else 0)
    handle = getattr(transport, "getHandle", lambda: None)()
    if seconds <= 0 or handle is None or not hasattr(handle, "setsockopt"):
        return
    interval = max(1, int(seconds))
    for option in (_KEEPIDLE, _KEEPINTVL):
        if option is not None:
            handle.setsockopt(socket.IPPROTO_TCP, option, interval)


@implementer(IStreamClientEndpoint)
@dataclass(frozen=True, eq=False)
class TunedEndpoint:
    """An endpoint whose connections get keep-alive and, with ``tls``, a handshake bound."""

    _log = Logger()

    inner: IStreamClientEndpoint
    clock: IReactorTime
    _: KW_ONLY
    #: seconds between keep-alive probes (0: none)
    keep_alive: float
    tls: bool
    #: seconds a TLS handshake may take (0: unbounded)
    handshake_timeout: float

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[IProtocol] = self.inner.connect(protocolFactory)
        return connecting.addCallback(self._connected)

    def _connected(self, protocol: IProtocol) -> IProtocol:
        transport: Any = getattr(protocol, "transport", None)
        if self.tls and transport is not None:
            # wrapClientTLS: the protocol's transport is the TLS layer, over the TCP one
            set_keep_alive(getattr(transport, "transport", None), self.keep_alive)
            if self.handshake_timeout > 0:
                self.clock.callLater(self.handshake_timeout, self._check_handshake, transport)
        else:
            set_keep_alive(transport, self.keep_alive)
        return protocol

    def _check_handshake(self, tls: Any) -> None:
        # TLSMemoryBIOProtocol marks a finished handshake in ``_handshakeDone`` (no public
        # signal reaches an HTTP client protocol, which is no IHandshakeListener)
        if getattr(tls, "_handshakeDone", True) or getattr(tls, "disconnected", False):
            return
        self._log.warn(
            "TLS handshake with a backend took longer than {seconds:g}s; connection aborted",
            seconds=self.handshake_timeout,
        )
        tls.abortConnection()
