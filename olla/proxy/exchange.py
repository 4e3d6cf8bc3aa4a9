# -*- test-case-name: tests.test_proxy -*-
"""One client request through the proxy: routing, attempts, failover and relaying the answer.

``Exchange`` streams the backend's answer to the client untouched; subclasses reshape it (the
Anthropic translator) through a few hooks: ``narrow``, ``upstream_body``, ``upstream_headers``,
``relay_response`` and ``reject``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import Request

from olla.breaker import CircuitBreakers
from olla.config import ProxyConfig, RoutingStrategyConfig
from olla.deadline import with_deadline
from olla.endpoints import Endpoint, EndpointRegistry, Outcome
from olla.interfaces import IBalancer
from olla.models import ModelCatalogue, RoutingDecision
from olla.profiles import ProfileRegistry
from olla.proxy.forward import BytesProducer, StreamBody, body_producer
from olla.proxy.headers import (
    SERVED_BY,
    VIA_VALUE,
    request_headers_for_upstream,
    response_headers_for_client,
)
from olla.proxy.inspect import rewrite_model
from olla.proxy.needs import body_needs, narrow_by_needs
from olla.web.errors import Dialect, write_error

#: Failures that prove nothing reached a backend's application: safe to try another endpoint.
_CONNECTION_FAILURES = (
    net_error.ConnectError,  # refused, no route, DNS, connect timeout, ...
    net_error.TimeoutError,
    DeferredTimeout,  # response_header_timeout
    _newclient.RequestNotSent,
    _newclient.RequestTransmissionFailed,
    _newclient.ResponseNeverReceived,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
)

#: Failures a stale pooled keep-alive connection causes; retried once on the same endpoint.
_STALE_CONNECTION = (
    _newclient.RequestNotSent,
    _newclient.RequestTransmissionFailed,
    _newclient.ResponseNeverReceived,
)


@dataclass(frozen=True)
class ProviderRoute:
    """``/olla/<prefix>/...`` served by endpoints of ``types``.

    With ``by_path`` (the ``/olla/proxy/`` route), candidates narrow further to the types
    whose profile serves the requested path, when any does.
    """

    prefix: str
    types: frozenset[str]
    label: str  # for messages: "ollama"
    by_path: ProfileRegistry | None = None


@dataclass
class ProxyDeps:
    """What every exchange needs; built once by ``olla.tap``."""

    registry: EndpointRegistry
    balancer: IBalancer
    agent: IAgent
    clock: IReactorTime
    cooperator: Cooperator
    config: ProxyConfig
    report_connection_failure: Callable[[Endpoint, str], None]
    startup_wait: float
    breakers: CircuitBreakers
    catalogue: ModelCatalogue = field(default_factory=ModelCatalogue)
    routing: RoutingStrategyConfig = field(default_factory=RoutingStrategyConfig)
    #: re-run model discovery on every healthy endpoint (routing's refresh-on-miss)
    refresh_models: Callable[[], Deferred[None]] | None = None
    #: ask Ollama endpoints what they have loaded right now (for a live ``/api/ps``)
    refresh_loaded: Callable[[Sequence[Endpoint]], Deferred[None]] | None = None


def request_size(request: Request) -> int:
    size = getattr(request, "body_size", None)
    if isinstance(size, int):
        return size
    content = request.content
    if content is None:
        return 0
    content.seek(0, 2)
    end: int = content.tell()
    content.seek(0)
    return end


class _Discard(Protocol):
    """Takes a response nobody will read and closes its connection."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()


class Exchange:
    """One client request through the proxy, from routing to the last byte."""

    _log = Logger()

    def __init__(
        self,
        deps: ProxyDeps,
        route: ProviderRoute,
        request: Request,
        target: bytes,
        model: str | None,
        dialect: Dialect,
    ) -> None:
        self._deps = deps
        self._route = route
        self._request = request
        self._target = target
        self._model = model
        self._dialect = dialect
        self._started = getattr(request, "started", None) or deps.clock.seconds()
        self._body_size = request_size(request)
        self._candidates: list[Endpoint] = []
        self._attempts = 0
        self._attempt_budget = 1
        self._decision: RoutingDecision | None = None
        self.small_body: bytes | None = None
        self._stale_retried: set[Endpoint] = set()
        self._client_gone = False
        self._pending: Deferred[IResponse] | None = None
        self._stream: StreamBody | None = None
        self._endpoint: Endpoint | None = None
        self._attempt_started = 0.0
        self._status: int | None = None
        request.notifyFinish().addErrback(self._client_left)

    # ------------------------------------------------------------------ routing

    def start(self) -> None:
        registry = self._deps.registry
        if registry.all_probed:
            self._route_request()
        else:  # olla is starting: wait for the first health results instead of failing
            registry.when_probed(self._deps.startup_wait).addCallback(
                lambda _: self._route_request()
            )

    def _route_request(self, refreshed: bool = False, refresh_failed: bool = False) -> None:
        if self._client_gone:
            return
        deps = self._deps
        healthy = deps.registry.routable(self._route.types)
        if self._route.by_path is not None:
            path = self._target.split(b"?", 1)[0].decode("utf-8", "replace")
            serving = self._route.by_path.types_for_path(path)
            narrowed = [ep for ep in healthy if serving and ep.type in serving]
            healthy = narrowed or healthy
            needs = body_needs(self.small_body, path)  # tools, images, embeddings (§4.2)
            healthy = narrow_by_needs(healthy, needs, deps.catalogue, self._model)
        healthy = self.narrow(healthy)
        if self._model is not None:
            decision = deps.catalogue.route(
                self._model,
                healthy,
                deps.routing,
                refreshed=refreshed,
                refresh_failed=refresh_failed,
            )
            if decision.rejected and self._may_refresh(refreshed, refresh_failed):
                self._refresh_then_route()
                return
            self._decision = decision = deps.catalogue.prefer_loaded(self._model, decision)
            headers = self._request.responseHeaders
            headers.setRawHeaders(b"X-Olla-Routing-Strategy", [decision.strategy.encode()])
            headers.setRawHeaders(b"X-Olla-Routing-Decision", [decision.decision.encode()])
            headers.setRawHeaders(b"X-Olla-Routing-Reason", [decision.reason.encode()])
            if decision.rejected:
                self._reject(
                    decision.status,
                    _rejection_message(self._model, decision),
                    code=decision.reason,
                )
                return
            healthy = list(decision.endpoints)
        if not healthy:
            self._reject(503, f"no healthy {self._route.label} endpoints available")
            return
        self._candidates = [ep for ep in healthy if deps.breakers.allows(ep)]
        if not self._candidates:
            names = ", ".join(ep.name for ep in healthy)
            self._reject(502, f"proxy error: circuit breaker open for endpoint(s) {names}")
            return
        retry = deps.config.retry
        if retry.enabled and retry.on_connection_failure:
            self._attempt_budget = retry.max_attempts or len(self._candidates)
        self._attempt()

    def _may_refresh(self, refreshed: bool, refresh_failed: bool) -> bool:
        routing = self._deps.routing
        return (
            routing.type == "discovery"
            and routing.discovery_refresh_on_miss
            and self._deps.refresh_models is not None
            and not (refreshed or refresh_failed)
        )

    def _refresh_then_route(self) -> None:
        """Ask every healthy endpoint for its models again, then decide (bounded in time)."""
        assert self._deps.refresh_models is not None
        refresh = with_deadline(
            self._deps.refresh_models(), self._deps.routing.discovery_timeout, self._deps.clock
        )
        refresh.addCallbacks(
            lambda _: self._route_request(refreshed=True),
            lambda _: self._route_request(refresh_failed=True),
        )

    # ------------------------------------------------------------------ one attempt

    # ------------------------------------------------------------------ hooks

    def narrow(self, healthy: list[Endpoint]) -> list[Endpoint]:
        """The endpoints this request may use, before model routing (all, by default)."""
        return healthy

    def upstream_path(self, endpoint: Endpoint) -> bytes:
        """The path and query to ask ``endpoint`` for."""
        return self._target

    def upstream_headers(self, endpoint: Endpoint) -> list[tuple[bytes, list[bytes]]]:
        request = self._request
        return request_headers_for_upstream(
            list(request.requestHeaders.getAllRawHeaders()),
            client_ip=_client_ip(request),
            scheme=b"https" if request.isSecure() else b"http",
            host=request.getHeader(b"host"),
            model=self._model,
            extra=endpoint.extra_headers,
        )

    def upstream_body(self, endpoint: Endpoint) -> IBodyProducer | None:
        """The client's body, replayable across attempts; an alias rewrites the model name."""
        assert self._request.content is not None
        native = self._decision.rewrite.get(endpoint) if self._decision else None
        if native is not None and self.small_body is not None:
            # an alias: this endpoint knows the model under its own name
            return BytesProducer(rewrite_model(self.small_body, native))
        return body_producer(self._request.content, self._body_size, self._deps.cooperator)

    def _attempt(self, endpoint: Endpoint | None = None) -> None:
        deps = self._deps
        if endpoint is None:
            endpoint = deps.balancer.choose(self._candidates, deps.registry)
            self._attempts += 1
        self._endpoint = endpoint
        headers = self.upstream_headers(endpoint)
        producer = self.upstream_body(endpoint)
        url = endpoint.upstream_url(self.upstream_path(endpoint))
        self._attempt_started = deps.clock.seconds()
        deps.registry.request_started(endpoint)
        deps.breakers.attempt_started(endpoint)
        method = self._request.method
        pending = deps.agent.request(method, url, Headers(dict(headers)), producer)
        if deps.config.response_header_timeout > 0:
            with_deadline(pending, deps.config.response_header_timeout, deps.clock)
        self._pending = pending
        pending.addCallbacks(
            self._got_response,
            self._attempt_failed,
            callbackArgs=(endpoint,),
            errbackArgs=(endpoint,),
        )
        pending.addErrback(self._bug)

    def _attempt_ended(
        self, endpoint: Endpoint, outcome: Outcome, latency: float = 0.0, relayed: int = 0
    ) -> None:
        """Every attempt ends here exactly once: counters and the circuit learn its fate."""
        self._deps.registry.request_finished(endpoint, outcome, latency=latency, relayed=relayed)
        breakers = self._deps.breakers
        if outcome is Outcome.OK:
            breakers.succeeded(endpoint)
        elif outcome is Outcome.FAILED:
            breakers.failed(endpoint)
        else:
            breakers.released(endpoint)

    def _attempt_failed(self, failure: Failure, endpoint: Endpoint) -> None:
        self._pending = None
        if self._client_gone or failure.check(CancelledError):
            self._attempt_ended(endpoint, Outcome.CLIENT_GONE)
            return
        if failure.check(*_STALE_CONNECTION) and endpoint not in self._stale_retried:
            # A pooled keep-alive connection the backend had just closed: not the backend's
            # fault, and nothing reached it. One more try on a fresh connection decides.
            self._stale_retried.add(endpoint)
            self._attempt_ended(endpoint, Outcome.CLIENT_GONE)
            self._attempt(endpoint)
            return
        self._attempt_ended(endpoint, Outcome.FAILED)
        cause = _describe(failure)
        if not failure.check(*_CONNECTION_FAILURES):
            self._log.warn(
                "request {request_id} to {endpoint} failed: {cause}",
                request_id=request_id(self._request),
                endpoint=endpoint.name,
                cause=cause,
            )
            self._reject(502, f"proxy error: endpoint {endpoint.name}: {cause}")
            return
        self._deps.report_connection_failure(endpoint, cause)
        self._candidates = [ep for ep in self._candidates if ep is not endpoint]
        self._log.info(
            "request {request_id}: endpoint {endpoint} unreachable ({cause}); "
            "{left} candidate(s) left",
            request_id=request_id(self._request),
            endpoint=endpoint.name,
            cause=cause,
            left=len(self._candidates),
        )
        if self._candidates and self._attempts < self._attempt_budget:
            self._attempt()
            return
        self._reject(
            502,
            f"proxy error: endpoint {endpoint.name} ({endpoint.display_url}) "
            f"is unreachable: {cause}",
        )

    # ------------------------------------------------------------------ relaying

    def _got_response(self, response: IResponse, endpoint: Endpoint) -> None:
        self._pending = None
        if self._client_gone:
            response.deliverBody(_Discard())
            self._attempt_ended(endpoint, Outcome.CLIENT_GONE)
            return
        self.relay_response(response, endpoint)

    def set_olla_headers(self, endpoint: Endpoint) -> None:
        """The ``X-Olla-*`` headers every answer from a backend carries."""
        headers = self._request.responseHeaders
        headers.setRawHeaders(b"X-Olla-Endpoint", [endpoint.name.encode()])
        headers.setRawHeaders(b"X-Olla-Backend-Type", [endpoint.type.encode()])
        if self._model:
            headers.setRawHeaders(b"X-Olla-Model", [self._model.lower().encode()])
        to_headers = self._deps.clock.seconds() - self._started
        headers.setRawHeaders(b"X-Olla-Response-Time", [b"%dms" % round(to_headers * 1000)])

    def relay_response(self, response: IResponse, endpoint: Endpoint) -> None:
        """Send the backend's status, headers and body to the client as they come."""
        deps = self._deps
        request = self._request
        self._status = response.code
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        for name, values in response_headers_for_client(
            list(response.headers.getAllRawHeaders()),
            keep_length=False,
            hidden=endpoint.credential_headers,
        ):
            headers.setRawHeaders(name, values)
        # _newclient keeps framing headers out of response.headers: the length is its own field
        if response.length is not UNKNOWN_LENGTH:
            headers.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        via = headers.getRawHeaders(b"via")
        headers.setRawHeaders(
            b"Via", [*via[:-1], via[-1] + b", " + VIA_VALUE] if via else [VIA_VALUE]
        )
        headers.setRawHeaders(b"X-Served-By", [SERVED_BY])
        self.set_olla_headers(endpoint)
        request.write(b"")  # status and headers go out now, before the first body byte
        self._stream = StreamBody(
            request,
            deps.clock,
            deps.config.read_timeout,
            lambda reason: self._body_done(endpoint, reason),
        )
        response.deliverBody(self._stream)

    def end_body(self) -> None:
        """The backend's body ended cleanly and all of it was relayed."""
        self._request.finish()

    def end_broken_body(self, reason: Failure) -> None:
        """The backend's body broke off: never let a truncated body look complete, so the
        client sees its connection cut."""
        _abort_client(self._request)

    def _body_done(self, endpoint: Endpoint, reason: Failure | None) -> None:
        stream = self._stream
        relayed = stream.relayed if stream is not None else 0
        latency = self._deps.clock.seconds() - self._attempt_started
        if self._client_gone:
            outcome = Outcome.CLIENT_GONE
        elif reason is None:
            outcome = Outcome.OK
            self.end_body()
            if self._model is not None and self._status is not None and self._status < 400:
                native = self._decision.rewrite.get(endpoint) if self._decision else None
                self._deps.catalogue.mark_loaded(endpoint, native or self._model)
        else:
            outcome = Outcome.FAILED
            self._log.warn(
                "request {request_id}: stream from {endpoint} broke after {relayed} bytes: {cause}",
                request_id=request_id(self._request),
                endpoint=endpoint.name,
                relayed=relayed,
                cause=_describe(reason),
            )
            self.end_broken_body(reason)
        self._attempt_ended(endpoint, outcome, latency, relayed)
        self._log_completion(endpoint, outcome, relayed)

    # ------------------------------------------------------------------ endings

    def _client_left(self, failure: Failure) -> None:
        self._client_gone = True
        if self._pending is not None:
            self._pending.cancel()
        if self._stream is not None:
            self._stream.abort(failure)

    def _reject(self, status: int, message: str, code: str | None = None) -> None:
        self._status = status
        if not self._client_gone:
            write_error(self._request, status, message, dialect=self._dialect, code=code)
        self._log_completion(self._endpoint, None, 0)

    def _log_completion(
        self, endpoint: Endpoint | None, outcome: Outcome | None, relayed: int
    ) -> None:
        request = self._request
        self._log.info(
            "{method} {path} -> {endpoint} model={model} status={status} "
            "{duration_ms}ms {bytes}B {outcome}",
            request_id=request_id(request),
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            endpoint=endpoint.name if endpoint else "-",
            model=self._model or "-",
            status=self._status,
            duration_ms=round((self._deps.clock.seconds() - self._started) * 1000),
            bytes=relayed,
            outcome=(outcome.value if outcome else "rejected"),
            attempts=self._attempts,
        )

    def _bug(self, failure: Failure) -> None:
        self._log.failure("proxy exchange crashed", failure=failure)
        if not self._client_gone and not self._request.finished:
            if self._request.startedWriting:
                _abort_client(self._request)
            else:
                write_error(self._request, 500, "internal proxy error", dialect=self._dialect)


def _rejection_message(model: str, decision: RoutingDecision) -> str:
    if decision.reason == "model_not_found":
        return f"model '{model}' not found on any endpoint (model_not_found)"
    return f"model '{model}' is not available on a healthy endpoint ({decision.reason})"


def _abort_client(request: Request) -> None:
    transport: Any = request.channel.transport if request.channel is not None else None
    if transport is not None:
        transport.abortConnection()


def _client_ip(request: Request) -> bytes:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return host.encode() if isinstance(host, str) else b"unknown"


def request_id(request: Request) -> str:
    rid = getattr(request, "request_id", None)
    return rid if isinstance(rid, str) else "-"


def _describe(failure: Failure) -> str:
    """A short human cause, unwrapping _newclient's wrapper exceptions."""
    value = failure.value
    reasons: Sequence[Failure] = getattr(value, "reasons", ()) or ()
    if reasons:
        inner = reasons[0]
        if not inner.check(CancelledError):
            return _describe(inner)
    if isinstance(value, DeferredTimeout):
        return "timed out waiting for response headers"
    if isinstance(value, net_error.ConnectionRefusedError):
        return "connection refused"
    text = str(value).strip() or type(value).__name__
    return text
