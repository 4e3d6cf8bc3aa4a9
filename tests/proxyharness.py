"""An in-memory olla for wire-level tests: raw client bytes in, raw response bytes out.

The client side is a ``StringTransport`` on a real ``OllaSite`` channel (so body limits, request
ids and disconnects behave as on a socket); each backend is a twisted.web Resource reached
through treq's ``RequestTraversalAgent``. Everything runs on one ``Clock``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from olla.config import (
    AnthropicTranslatorConfig,
    DashboardConfig,
    EndpointConfig,
    OllaConfig,
    ProxyConfig,
    RoutingStrategyConfig,
)
from olla.daemon.app import build_app
from olla.fleet.balancer import RoundRobinBalancer
from olla.fleet.endpoints import Endpoint, EndpointStatus
from olla.fleet.models import ModelInfo
from olla.interfaces import IBalancer, IOutcomeListener
from olla.profiles import builtin_profiles
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import AttemptRecord, AttemptStart, RequestRecord

REFUSE = "refuse"
DEFAULT_MODELS = ("llama3.2:latest", "qwen:7b", "m")
HANG = "hang"


@implementer(IAgent)
class HostAgent:
    """Routes each request by ``host:port`` to an in-memory backend, or refuses/hangs."""

    def __init__(self, backends: Mapping[bytes, Resource | str]) -> None:
        self.agents: dict[bytes, RequestTraversalAgent] = {}
        self.behaviour: dict[bytes, str] = {}
        for netloc, backend in backends.items():
            if isinstance(backend, str):
                self.behaviour[netloc] = backend
            else:
                self.agents[netloc] = RequestTraversalAgent(backend)
        self.sent: list[tuple[bytes, bytes, Headers]] = []
        self.hanging: list[Deferred[IResponse]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        netloc = uri.split(b"/")[2]
        self.sent.append((method, uri, headers or Headers()))
        behaviour = self.behaviour.get(netloc)
        if behaviour == REFUSE:
            return fail(ConnectionRefusedError("Connection refused"))
        if behaviour == HANG:
            d: Deferred[IResponse] = Deferred()
            self.hanging.append(d)
            return d
        d = self.agents[netloc].request(method, uri, headers, bodyProducer)
        return d

    def flush(self) -> None:
        for agent in self.agents.values():
            agent.flush()


@dataclass
class Response:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes
    complete: bool
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def parse_response(raw: bytes) -> Response | None:
    """Parse one HTTP/1.1 response (chunked or Content-Length) from raw bytes."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        chunks: list[bytes] = []
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return Response(status, headers, b"".join(chunks), False, chunks)
            size = int(size_line, 16)
            if size == 0:
                return Response(status, headers, b"".join(chunks), True, chunks)
            if len(rest) < size + 2:
                return Response(status, headers, b"".join(chunks), False, chunks)
            chunks.append(rest[:size])
            rest = rest[size + 2 :]
    length = headers.get(b"content-length")
    if length is not None:
        n = int(length[0])
        return Response(status, headers, rest[:n], len(rest) >= n, [rest[:n]])
    return Response(status, headers, rest, False, [rest])


class ClientConnection:
    """One client socket to olla, as raw bytes."""

    def __init__(self, site: Site, raw: bytes, peer: str = "127.0.0.1") -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40114),
            peerAddress=IPv4Address("TCP", peer, 50000),
        )
        self.channel: Any = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(raw)

    def response(self) -> Response | None:
        return parse_response(self.transport.value())

    def disconnect(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone("client went away")))
        # as a closed TCP connection does: it lets go of its producer (the channel)
        self.transport.producer = None


def http_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: olla.test:40114"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@implementer(IOutcomeListener)
class RecordedOutcomes(OutcomeListener):
    """Every outcome record the request path published, and the connection failures among
    them (the health service, not running here, only takes such an endpoint out of rotation)."""

    def __init__(self, on_connection_failure: Callable[[Endpoint, str], None] | None) -> None:
        self.started: list[AttemptStart] = []
        self.attempts: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []
        self.failures: list[tuple[str, str]] = []
        self._on_connection_failure = on_connection_failure

    def attempt_started(self, start: AttemptStart) -> None:
        self.started.append(start)

    def attempt_finished(self, record: AttemptRecord) -> None:
        self.attempts.append(record)
        if record.unreachable:
            cause = record.cause or "unreachable"
            self.failures.append((record.start.endpoint.name, cause))
            if self._on_connection_failure is not None:
                self._on_connection_failure(record.start.endpoint, cause)

    def request_finished(self, record: RequestRecord) -> None:
        self.requests.append(record)


class Harness:
    """An olla site in memory over some backends, on one Clock."""

    def __init__(
        self,
        backends: Mapping[str, Resource | str],
        *,
        proxy: ProxyConfig | None = None,
        max_body_size: int = 10 * 1024 * 1024,
        types: Mapping[str, str] | None = None,
        healthy: bool = True,
        on_connection_failure: Callable[[Endpoint, str], None] | None = None,
        clock: Clock | None = None,
        models: Mapping[str, Sequence[str]] | None = None,
        routing: RoutingStrategyConfig | None = None,
        aliases: Mapping[str, Sequence[str]] | None = None,
        anthropic: AnthropicTranslatorConfig | None = None,
        balancer: IBalancer | None = None,
        dashboard: DashboardConfig | None = None,
        adjust: Callable[[OllaConfig], OllaConfig] | None = None,
    ) -> None:
        self.clock = clock or Clock()
        configs = tuple(
            EndpointConfig(
                url=f"http://{netloc}",
                name=netloc.split(":")[0],
                type=(types or {}).get(netloc, "ollama"),
            )
            for netloc in backends
        )
        defaults = OllaConfig()
        config = replace(
            defaults,
            # no idle timer and no body deadline unless a test sets one on the site
            server=replace(
                defaults.server,
                read_timeout=0.0,
                request_limits=replace(
                    defaults.server.request_limits,
                    max_body_size=max_body_size,
                    max_header_size=65536,
                ),
            ),
            proxy=proxy or replace(ProxyConfig(), read_timeout=30.0),
            discovery=replace(defaults.discovery, endpoints=configs),
            model_registry=replace(
                defaults.model_registry, routing_strategy=routing or RoutingStrategyConfig()
            ),
            model_aliases={k: tuple(v) for k, v in (aliases or {}).items()},
            translators=replace(
                defaults.translators, anthropic=anthropic or AnthropicTranslatorConfig()
            ),
            dashboard=dashboard or defaults.dashboard,
        )
        if adjust is not None:  # a test's own settings (rate limits, keys, CORS...)
            config = adjust(config)
        self.agent = HostAgent({k.encode(): v for k, v in backends.items()})
        self.cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        #: every outcome record, in order (an extra listener, as build_app allows)
        self.outcomes = RecordedOutcomes(on_connection_failure)
        self.failures = self.outcomes.failures
        # the daemon's own graph (olla.daemon.app), over in-memory backends on the Clock
        self.app = build_app(
            config,
            builtin_profiles(),
            clock=self.clock,
            agent=self.agent,
            cooperator=self.cooperator,
            rng=random.Random(1),
            listeners=[self.outcomes],
        )
        self.registry = self.app.registry
        self.catalogue = self.app.catalogue
        self.router = self.app.router
        self.deps = self.app.deps
        self.site = self.app.site
        self.translator_stats = self.app.translator_stats
        self.endpoints = list(self.registry)
        self.router.balancer = balancer or RoundRobinBalancer()
        self.app.planner.startup_wait = 2.0
        if healthy:
            for endpoint in self.endpoints:
                self.registry.set_status(endpoint, EndpointStatus.HEALTHY)
        for endpoint, netloc in zip(self.endpoints, backends, strict=True):
            names = (models or {}).get(netloc, DEFAULT_MODELS)
            self.catalogue.set_models(endpoint, [ModelInfo(n) for n in names], 0.0)
            self.registry.models_listed(endpoint, len(names))

    def send(self, raw: bytes, peer: str = "127.0.0.1") -> ClientConnection:
        client = ClientConnection(self.site, raw, peer)
        self.pump()
        return client

    def pump(self, steps: int = 3) -> None:
        for _ in range(steps):
            self.clock.advance(0)
            self.agent.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()
