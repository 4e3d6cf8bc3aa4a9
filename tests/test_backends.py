"""How olla connects to backends (``olla.daemon.backends``): one endpoint per origin, and a
refused connection to an IP literal fails at once (no attempt delay to wait out)."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from olla.daemon.backends import HOSTNAME_ATTEMPT_DELAY, BackendEndpoints, backend_agent
from olla.daemon.connect import TunedEndpoint


class EndpointTests(SynchronousTestCase):
    def test_ip_literals_connect_directly(self) -> None:
        """If a backend's host is an IPv4 or IPv6 literal, then its endpoint is a plain TCP
        one (nothing to resolve); a host name gets a HostnameEndpoint with a short stagger."""
        endpoints = BackendEndpoints(MemoryReactorClock(), 5.0)
        self.assertIsInstance(
            endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:11434/api/chat")),
            TCP4ClientEndpoint,
        )
        self.assertIsInstance(
            endpoints.endpointForURI(URI.fromBytes(b"http://[::1]:11434/api/chat")),
            TCP6ClientEndpoint,
        )
        named = endpoints.endpointForURI(URI.fromBytes(b"http://gpu-box:11434/api/chat"))
        self.assertIsInstance(named, HostnameEndpoint)
        self.assertEqual(named._attemptDelay, HOSTNAME_ATTEMPT_DELAY)
        self.assertLessEqual(HOSTNAME_ATTEMPT_DELAY, 0.05)

    def test_one_endpoint_per_origin(self) -> None:
        """If two requests go to one origin, then they share one endpoint; another port or
        scheme is another origin."""
        endpoints = BackendEndpoints(MemoryReactorClock(), 5.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.2:1/a"))
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.2:1/b?x")), first)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"http://10.0.0.2:2/a")), first)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"https://10.0.0.2:1/a")), first)

    def test_refused_fails_at_once(self) -> None:
        """If the backend at an IP literal refuses the connection, then the attempt fails the
        moment the refusal arrives: no time has to pass (no attempt delay to wait out)."""
        reactor = MemoryReactorClock()
        endpoint = BackendEndpoints(reactor, 5.0).endpointForURI(
            URI.fromBytes(b"http://127.0.0.1:9/api/chat")
        )
        connecting = endpoint.connect(Factory.forProtocol(Protocol))
        host, port, factory, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9, 5.0))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(connecting, ConnectionRefusedError)
        self.assertEqual(reactor.seconds(), 0.0)

    def test_pool_sized_for_a_proxy(self) -> None:
        """If the backend agent is built, then its pool keeps many idle connections per
        backend (Twisted's default of 2 would reopen one for nearly every request)."""
        _, pool = backend_agent(MemoryReactorClock(), None)
        self.assertEqual(pool.maxPersistentPerHost, 256)
        self.assertTrue(pool.persistent)
        self.assertFalse(pool._factory.noisy)

    def test_connections_tuned_as_configured(self) -> None:
        """If proxy.connection_keep_alive is set, then every backend's endpoint is a
        TunedEndpoint over the plain one (keep-alive probes; over https a handshake bound);
        with neither keep-alive nor a handshake bound to apply, the plain endpoint is used."""
        reactor = MemoryReactorClock()
        tuned = BackendEndpoints(reactor, 5.0, keep_alive=30.0, tls_handshake_timeout=10.0)
        endpoint = tuned.endpointForURI(URI.fromBytes(b"http://127.0.0.1:11434/api/chat"))
        self.assertIsInstance(endpoint, TunedEndpoint)
        self.assertIsInstance(endpoint.inner, TCP4ClientEndpoint)
        self.assertEqual((endpoint.keep_alive, endpoint.tls), (30.0, False))
        secure = tuned.endpointForURI(URI.fromBytes(b"https://gpu-box:443/v1/models"))
        self.assertIsInstance(secure, TunedEndpoint)
        self.assertEqual((secure.tls, secure.handshake_timeout), (True, 10.0))
        plain = BackendEndpoints(reactor, 5.0, tls_handshake_timeout=10.0)
        self.assertIsInstance(
            plain.endpointForURI(URI.fromBytes(b"http://127.0.0.1:1/")), TCP4ClientEndpoint
        )
        self.assertIsInstance(
            plain.endpointForURI(URI.fromBytes(b"https://127.0.0.1:1/")), TunedEndpoint
        )
