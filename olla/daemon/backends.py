# -*- test-case-name: tests.test_backends -*-
"""How olla connects to its backends: one pooled ``Agent``, and one client endpoint per
backend origin, built once.

An origin whose host is an IP literal gets a plain TCP endpoint: no resolution, and a refused
connection fails at once, so the request fails over to the next candidate in a millisecond.
(Twisted's ``HostnameEndpoint``, which ``Agent`` uses by default, spaces its attempts
``attemptDelay`` apart, 0.3 s, and reports a refusal only at the next step: every failover
from a dead host cost 300 ms.) A host name is resolved again for each new connection (a
restarted container may come back on another address) and its addresses are tried
``HOSTNAME_ATTEMPT_DELAY`` apart, a short happy-eyeballs stagger. Each connection gets TCP
keep-alive probes (``proxy.connection_keep_alive``) and, over TLS, a bound on its handshake
(``proxy.tls_handshake_timeout``): ``olla.daemon.connect.TunedEndpoint``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from olla.daemon.connect import TunedEndpoint

#: seconds between the connection attempts to a host name's addresses (and so the longest a
#: refused connection to a host name takes to fail over)
HOSTNAME_ATTEMPT_DELAY = 0.02
#: idle keep-alive connections kept per backend (Twisted keeps 2: far too few for a proxy)
POOLED_PER_BACKEND = 256
#: seconds an idle pooled connection is kept (below common backend keep-alive timeouts)
POOLED_FOR = 60


# One private Twisted name, on purpose, and only here: Agent offers no public way to build a
# connection factory that does not log "Starting factory" per backend connection.
class _QuietClientFactory(_HTTP11ClientFactory):
    """No "Starting factory" log line for every new backend connection."""

    noisy = False


@implementer(IAgentEndpointFactory)
class BackendEndpoints:
    """One client endpoint per backend origin (scheme, host, port), built once: Agent would
    otherwise build one per request, IDNA-encoding the host each time. With ``keep_alive``
    (seconds, 0: off) or, for ``https``, a ``tls_handshake_timeout`` its connections are
    tuned (``TunedEndpoint``)."""

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float | None,
        tls: IPolicyForHTTPS | None = None,
        *,
        keep_alive: float = 0.0,
        tls_handshake_timeout: float = 0.0,
    ) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = tls or BrowserLikePolicyForHTTPS()
        self._keep_alive = keep_alive
        self._handshake_timeout = tls_handshake_timeout
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._cache[key] = self._tuned(self._build(uri), uri)
        return endpoint

    def _tuned(self, endpoint: IStreamClientEndpoint, uri: URI) -> IStreamClientEndpoint:
        tls = uri.scheme == b"https"
        if self._keep_alive <= 0 and not (tls and self._handshake_timeout > 0):
            return endpoint  # nothing to tune: a new socket has no keep-alive probes anyway
        return TunedEndpoint(
            endpoint,
            self._reactor,
            keep_alive=self._keep_alive,
            tls=tls,
            handshake_timeout=self._handshake_timeout,
        )

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        timeout = self._timeout or 30
        host = uri.host.decode("ascii")
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        endpoint: IStreamClientEndpoint
        if isinstance(literal, ipaddress.IPv4Address):
            endpoint = TCP4ClientEndpoint(self._reactor, str(literal), uri.port, timeout=timeout)
        elif isinstance(literal, ipaddress.IPv6Address):
            endpoint = TCP6ClientEndpoint(self._reactor, str(literal), uri.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(
                self._reactor,
                uri.host,
                uri.port,
                timeout=timeout,
                attemptDelay=HOSTNAME_ATTEMPT_DELAY,
            )
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def backend_agent(
    reactor: Any,
    connect_timeout: float | None,
    *,
    keep_alive: float = 0.0,
    tls_handshake_timeout: float = 0.0,
) -> tuple[IAgent, HTTPConnectionPool]:
    """The agent every proxied request and probe goes through, and its connection pool (the
    caller closes it on shutdown)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = POOLED_PER_BACKEND
    pool.cachedConnectionTimeout = POOLED_FOR
    endpoints = BackendEndpoints(
        reactor,
        connect_timeout,
        keep_alive=keep_alive,
        tls_handshake_timeout=tls_handshake_timeout,
    )
    return Agent.usingEndpointFactory(reactor, endpoints, pool=pool), pool
