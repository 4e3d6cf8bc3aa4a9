"""Backend connections: keep-alive and the TLS handshake bound (``olla.daemon.connect``)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.daemon.connect import TunedEndpoint


class _Socket:
    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[(level, option)] = value


class _TCP:
    def __init__(self) -> None:
        self.keep_alive: int | None = None
        self.socket = _Socket()

    def setTcpKeepAlive(self, enabled: int) -> None:
        self.keep_alive = enabled

    def getHandle(self) -> _Socket:
        return self.socket


class _TLS:
    def __init__(self) -> None:
        self.transport = _TCP()
        self._handshakeDone = False
        self.disconnected = False
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Endpoint:
    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = Protocol()
        protocol.transport = self.transport
        return succeed(protocol)


class TunedEndpointTests(SynchronousTestCase):
    def test_keep_alive_on_plain_connections(self) -> None:
        """If proxy.connection_keep_alive is set, then a new backend connection sends
        keep-alive probes that often (Linux: idle time and interval)."""
        tcp = _TCP()
        endpoint = TunedEndpoint(
            _Endpoint(tcp), Clock(), keep_alive=30.0, tls=False, handshake_timeout=10.0
        )
        self.successResultOf(endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual(tcp.keep_alive, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(tcp.socket.options[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)], 30)

    def test_keep_alive_off(self) -> None:
        """If proxy.connection_keep_alive is 0, then keep-alive is turned off."""
        tcp = _TCP()
        endpoint = TunedEndpoint(
            _Endpoint(tcp), Clock(), keep_alive=0, tls=False, handshake_timeout=0
        )
        self.successResultOf(endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual((tcp.keep_alive, tcp.socket.options), (0, {}))

    def test_slow_tls_handshake_aborted(self) -> None:
        """If a TLS handshake has not finished within proxy.tls_handshake_timeout, then the
        connection is aborted (the request fails over like any failed connection)."""
        clock = Clock()
        tls = _TLS()
        endpoint = TunedEndpoint(
            _Endpoint(tls), clock, keep_alive=30.0, tls=True, handshake_timeout=10.0
        )
        self.successResultOf(endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual(tls.transport.keep_alive, 1)
        clock.advance(9.9)
        self.assertFalse(tls.aborted)
        clock.advance(0.1)
        self.assertTrue(tls.aborted)
        self.flushLoggedErrors()

    def test_finished_handshake_kept(self) -> None:
        """If the handshake finished in time, then the connection stays."""
        clock = Clock()
        tls = _TLS()
        endpoint = TunedEndpoint(
            _Endpoint(tls), clock, keep_alive=0, tls=True, handshake_timeout=10
        )
        self.successResultOf(endpoint.connect(None))  # type: ignore[arg-type]
        tls._handshakeDone = True
        clock.advance(10)
        self.assertFalse(tls.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])
