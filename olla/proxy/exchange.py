# -*- test-case-name: tests.test_proxy -*-
"""One client request through the proxy: it walks the routing plan, attempt by attempt.

Routing (``olla.proxy.routing``) decides the candidates, best first; ``Exchange`` tries them in
that order. It moves to the next on a connection-class failure, or on a busy answer (429, 503...:
``proxy.retry.on_status``) that arrived before any byte was relayed, replaying the body exactly;
once a response is relayed, the request is committed. What each attempt asks for and what the
client gets back is its ``IExchangeShape``'s (``olla.proxy.shape``): ``Verbatim`` streams the
backend's answer untouched; the Anthropic translator reshapes both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import Request

from olla.config import ProxyConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry, Outcome
from olla.fleet.health import parse_retry_after
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import Affinity, StickySessions, parse_body
from olla.proxy.forward import BytesProducer, StreamBody, body_producer
from olla.proxy.headers import (
    SERVED_BY,
    VIA_VALUE,
    request_headers_for_upstream,
    response_headers_for_client,
)
from olla.proxy.inspect import rewrite_model
from olla.proxy.needs import body_needs
from olla.proxy.routing import ProviderRoute, RoutePlan, RouteQuery, Router
from olla.proxy.shape import VERBATIM, IExchangeShape
from olla.proxy.timeouts import (
    AttemptDeadline,
    LoadTimeout,
    ResponseTimeout,
    ResponseTimer,
    TimeoutPolicy,
)
from olla.proxy.tokens import TokenUsage, read_usage
from olla.telemetry.failovers import FailoverLog
from olla.telemetry.stats import RequestRecord, Stats
from olla.util.bodies import BoundedBody
from olla.util.deadline import with_deadline
from olla.util.errors import Dialect, write_error
from olla.util.failures import STALE_CONNECTION, TIMEOUTS, UNREACHABLE, describe

#: Failures that prove nothing reached a backend's application: safe to try another endpoint.
_CONNECTION_FAILURES = (*UNREACHABLE, *TIMEOUTS)


@dataclass
class ProxyDeps:
    """What every exchange needs; built once by ``olla.daemon.tap``."""

    router: Router
    agent: IAgent
    clock: IReactorTime
    cooperator: Cooperator
    config: ProxyConfig
    #: a request could not connect to this endpoint: out of rotation, re-probe now
    report_connection_failure: Callable[[Endpoint, str], None]
    #: how long a request that arrives during startup waits for the first probes and lists
    startup_wait: float
    #: the whole response's bound and each attempt's header wait (``olla.proxy.timeouts``)
    timeouts: TimeoutPolicy
    #: re-run model discovery on every healthy endpoint (routing's refresh-on-miss)
    refresh_models: Callable[[], Deferred[None]] | None = None
    #: ask Ollama endpoints what they have loaded right now (for a live ``/api/ps``)
    refresh_loaded: Callable[[Sequence[Endpoint]], Deferred[None]] | None = None
    #: the sticky sessions (``proxy.sticky_sessions.enabled``), else None
    sticky: StickySessions | None = None
    #: the recent failovers, for ``/internal/stats/failovers`` and the dashboard
    failovers: FailoverLog = field(default_factory=FailoverLog)
    #: fed once per finished request and once per attempt (``/internal/metrics``)
    stats: Stats | None = None

    @property
    def registry(self) -> EndpointRegistry:
        return self.router.registry

    @property
    def catalogue(self) -> ModelCatalogue:
        return self.router.catalogue


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


#: the most of a refused answer's body olla reads to keep its connection
_DRAIN_LIMIT = 64 * 1024
#: how long a backend that said "busy" without ``Retry-After`` goes after the others
BUSY_BACKOFF = 1.0
#: the content types of streamed answers (Ollama's NDJSON, SSE): their first byte is the TTFT
_STREAM_TYPES = (b"ndjson", b"event-stream")
#: a ``load_duration`` this long means the model was loaded for this request (a warm Ollama
#: reports a few to tens of milliseconds)
_LOAD_SEEN = 0.25


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
        *,
        allowed: frozenset[Endpoint] | None = None,
        shape: IExchangeShape = VERBATIM,
    ) -> None:
        self._deps = deps
        self._shape = shape
        self._route = route
        self._request = request
        self._target = target
        self._model = model
        self._dialect = dialect
        self._allowed = allowed
        self._started = getattr(request, "started", None) or deps.clock.seconds()
        self._body_size = request_size(request)
        self._plan = RoutePlan()
        self._candidates: list[Endpoint] = []
        self._attempts = 0
        self._attempt_budget = 1
        #: "name:cause" for each attempt that handed over to the next candidate
        self._failovers: list[str] = []
        self.small_body: bytes | None = None
        #: this request's sticky session (set by a caller that routes itself, else at routing)
        self.affinity: Affinity | None = None
        self._stale_retried: set[Endpoint] = set()
        self._client_gone = False
        self._pending: Deferred[IResponse] | None = None
        self._stream: StreamBody | None = None
        self._endpoint: Endpoint | None = None
        self._attempt_started = 0.0
        self._cold = False
        #: the current attempt's deadlines, and the whole response's timer
        self._deadline: AttemptDeadline | None = None
        self._response_timer = ResponseTimer(deps.clock, self._response_expired)
        #: set when the whole response's bound ran out (the attempt then ends on it)
        self._timed_out: ResponseTimeout | None = None
        self._shaped = False  # the shape took the current answer over
        self._shape_told = False
        self._status: int | None = None
        self._streamed = False  # the answer being relayed is a stream (NDJSON or SSE)
        self._usage: TokenUsage | None = None
        request.notifyFinish().addErrback(self._client_left)

    # ------------------------------------------------------------------ routing

    def start(self, plan: RoutePlan | None = None) -> None:
        """Route (or take the caller's ``plan``) and make the first attempt.

        While olla is starting, the request waits for the first probes and model lists
        instead of being routed on half the facts.
        """
        allows_model = getattr(self._request, "allows_model", None)  # the client's key
        if allows_model is not None and not allows_model(self._model):
            self._reject(403, f"this API key may not use model {self._model!r}")
            return
        if plan is not None:
            self._follow(plan)
            return
        registry = self._deps.registry
        if registry.ready:
            self._route_request()
        else:
            registry.when_ready(self._deps.startup_wait).addCallback(
                lambda _: self._route_request()
            )

    def _query(self, refreshed: bool, refresh_failed: bool) -> RouteQuery:
        path = self._target.split(b"?", 1)[0].decode("utf-8", "replace")
        needs = body_needs(self.small_body, path) if self._route.by_path else frozenset()
        return RouteQuery(
            route=self._route,
            path=path,
            model=self._model,
            needs=needs,
            allowed=self._allowed,
            refreshed=refreshed,
            refresh_failed=refresh_failed,
            pinned=self.affinity.pinned if self.affinity is not None else None,
        )

    def _route_request(self, refreshed: bool = False, refresh_failed: bool = False) -> None:
        if self._client_gone:
            return
        sticky = self._deps.sticky
        if sticky is not None and self.affinity is None:
            body = self.small_body
            self.affinity = sticky.for_request(self._request, self._model, lambda: parse_body(body))
        plan = self._deps.router.plan(self._query(refreshed, refresh_failed))
        if plan.rejection is not None and plan.decision is not None and plan.decision.rejected:
            if self._may_refresh(refreshed, refresh_failed):
                self._refresh_then_route()
                return
        self._follow(plan)

    def _follow(self, plan: RoutePlan) -> None:
        self._plan = plan
        decision = plan.decision
        if decision is not None:
            headers = self._request.responseHeaders
            headers.setRawHeaders(b"X-Olla-Routing-Strategy", [decision.strategy.encode()])
            headers.setRawHeaders(b"X-Olla-Routing-Decision", [decision.decision.encode()])
            headers.setRawHeaders(b"X-Olla-Routing-Reason", [decision.reason.encode()])
        rejection = plan.rejection
        if rejection is not None:
            if rejection.retry_after is not None:
                self._request.setHeader(b"Retry-After", b"%d" % rejection.retry_after)
            self._reject(rejection.status, rejection.message, code=rejection.code)
            return
        self._candidates = list(plan.candidates)
        retry = self._deps.config.retry
        if retry.enabled:
            self._attempt_budget = retry.max_attempts or len(self._candidates)
        self._attempt_next()

    def _may_refresh(self, refreshed: bool, refresh_failed: bool) -> bool:
        routing = self._deps.router.strategy
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
            self._deps.refresh_models(),
            self._deps.router.strategy.discovery_timeout,
            self._deps.clock,
        )
        refresh.addCallbacks(
            lambda _: self._route_request(refreshed=True),
            lambda _: self._route_request(refresh_failed=True),
        )

    # ------------------------------------------------------------------ the upstream request

    def _upstream_headers(self, endpoint: Endpoint) -> list[tuple[bytes, list[bytes]]]:
        request = self._request
        headers = request_headers_for_upstream(
            list(request.requestHeaders.getAllRawHeaders()),
            client_ip=_client_ip(request),
            peer_ip=_peer_ip(request),
            scheme=b"https" if request.isSecure() else b"http",
            host=request.getHeader(b"host"),
            model=self._model,
            extra=endpoint.extra_headers,
        )
        return self._shape.upstream_headers(endpoint, headers)

    def native_model(self, endpoint: Endpoint) -> str | None:
        """The name ``endpoint`` knows the requested model by, when an alias was asked for."""
        return self._plan.rewrite.get(endpoint)

    def _upstream_body(self, endpoint: Endpoint) -> IBodyProducer | None:
        """The client's body, replayable across attempts; an alias rewrites the model name."""
        native = self.native_model(endpoint)
        shaped = self._shape.upstream_body(endpoint, native)
        if shaped is not None:
            return shaped
        assert self._request.content is not None
        if native is not None and self.small_body is not None:
            # an alias: this endpoint knows the model under its own name
            return BytesProducer(rewrite_model(self.small_body, native))
        return body_producer(self._request.content, self._body_size, self._deps.cooperator)

    # ------------------------------------------------------------------ one attempt

    def _attempt_next(self) -> None:
        """Try the best candidate left (routing ordered them)."""
        endpoint = self._candidates.pop(0)
        self._attempts += 1
        self._attempt(endpoint)

    def _may_fail_over(self) -> bool:
        # a candidate a reload removed since the plan was made gets no new attempt
        self._candidates = [ep for ep in self._candidates if ep in self._deps.registry]
        return bool(self._candidates) and self._attempts < self._attempt_budget

    def _attempt(self, endpoint: Endpoint) -> None:
        deps = self._deps
        self._endpoint = endpoint
        model = self.native_model(endpoint) or self._model
        self._cold = model is not None and not deps.catalogue.warm(endpoint, model)
        if self._cold:
            assert model is not None
            deps.catalogue.mark_loading(endpoint, model, deps.clock.seconds())
        try:
            headers = self._upstream_headers(endpoint)
            producer = self._upstream_body(endpoint)
            url = endpoint.upstream_url(self._shape.upstream_path(endpoint, self._target))
            pending = deps.agent.request(
                self._request.method, url, Headers(dict(headers)), producer
            )
        except Exception:  # nothing was counted yet: a bug, or a target Agent refuses
            self._bug(Failure())
            return
        # counted only once the request is really on its way: one start, one end
        self._attempt_started = deps.clock.seconds()
        deps.registry.attempt_started(endpoint, self._attempt_started)
        deadline = self._deadline = self._attempt_deadline(endpoint, model)
        if deadline.remaining is None or deadline.header_wait < deadline.remaining:
            with_deadline(pending, deadline.header_wait, deps.clock)
        self._response_timer.arm(deadline)
        self._pending = pending
        pending.addCallbacks(
            self._got_response,
            self._attempt_failed,
            callbackArgs=(endpoint,),
            errbackArgs=(endpoint,),
        )
        pending.addErrback(self._bug)

    def _attempt_deadline(self, endpoint: Endpoint, model: str | None) -> AttemptDeadline:
        """This attempt's header wait (longer at a host that must load the model first) within
        what is left of the whole response's bound."""
        deps = self._deps
        load = 0.0
        if self._cold and model is not None:
            load = deps.catalogue.expected_load(endpoint, model, deps.router.warm.default_load_time)
        return deps.timeouts.attempt(
            endpoint.profile,
            started=self._started,
            now=deps.clock.seconds(),
            cold=self._cold,
            expected_load=load,
            body_size=self._body_size,
        )

    def _response_expired(self) -> None:
        """The whole response's bound ran out: before the first byte the attempt fails (and the
        client gets a 504), after it the stream is cut."""
        assert self._deadline is not None
        relayed = self._stream.relayed if self._stream is not None else 0
        self._timed_out = ResponseTimeout(self._deadline.bound, relayed)
        if self._pending is not None:
            self._pending.cancel()
        elif self._stream is not None:
            self._stream.abort(Failure(self._timed_out))

    def _attempt_ended(self, endpoint: Endpoint, outcome: Outcome, relayed: int = 0) -> None:
        """Every attempt ends here exactly once: counters and the circuit learn its fate."""
        self._deps.registry.attempt_ended(
            endpoint, outcome, started=self._attempt_started, relayed=relayed
        )
        if self._deps.stats is not None:
            self._deps.stats.attempt_finished(endpoint.name, outcome.value)
        if self._cold and outcome not in (Outcome.OK, Outcome.TIMED_OUT) and self._model:
            # (a load that outlived olla's wait goes on at the host: it stays "loading")
            name = self.native_model(endpoint) or self._model
            self._deps.catalogue.load_failed(endpoint, name)

    def _attempt_failed(self, failure: Failure, endpoint: Endpoint) -> None:
        self._pending = None
        if self._timed_out is not None and not self._client_gone:
            self._attempt_ended(endpoint, Outcome.TIMED_OUT)
            self._timeout_answer(endpoint, str(self._timed_out))
            return
        deadline = self._deadline
        if failure.check(*TIMEOUTS) and deadline is not None and deadline.loading:
            # still loading the model: not a transport failure, and no second host is sent
            # the request to load the same model again
            self._attempt_ended(endpoint, Outcome.TIMED_OUT)
            self._timeout_answer(endpoint, str(LoadTimeout(endpoint.name, self.model, deadline)))
            return
        if self._client_gone or failure.check(CancelledError):
            self._attempt_ended(endpoint, Outcome.CLIENT_GONE)
            return
        if failure.check(*STALE_CONNECTION) and endpoint not in self._stale_retried:
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
        self._note_failover(endpoint, cause, f"unreachable ({cause})")
        if self._deps.config.retry.on_connection_failure and self._may_fail_over():
            kind = "timeout" if failure.check(*TIMEOUTS) else "unreachable"
            self._fail_over(endpoint, kind, cause)
            return
        self._reject(
            502,
            f"proxy error: endpoint {endpoint.name} ({endpoint.display_url}) "
            f"is unreachable: {cause}",
        )

    def _timeout_answer(self, endpoint: Endpoint, cause: str) -> None:
        self._log.warn(
            "request {request_id} to {endpoint}: {cause}",
            request_id=request_id(self._request),
            endpoint=endpoint.name,
            cause=cause,
        )
        self._reject(504, f"olla: {cause}", code="timeout")

    # ------------------------------------------------------------------ relaying

    def _got_response(self, response: IResponse, endpoint: Endpoint) -> None:
        self._pending = None
        if self._client_gone:
            response.deliverBody(_Discard())
            self._attempt_ended(endpoint, Outcome.CLIENT_GONE)
            return
        if response.code in self._deps.config.retry.on_status and self._may_fail_over():
            self._refused(response, endpoint)
            return
        if self._model is not None and response.code < 400:
            # its first answer means the model is in memory there now
            self._deps.catalogue.mark_loaded(endpoint, self.native_model(endpoint) or self._model)
        self.relay_response(response, endpoint)

    def _refused(self, response: IResponse, endpoint: Endpoint) -> None:
        """A busy answer (429, 503...) before any byte was relayed: the next candidate gets the
        request, body replayed. The backend is up, so it stays healthy; it just goes after
        the others for a while (its ``Retry-After``, else a second)."""
        response.deliverBody(BoundedBody(_DRAIN_LIMIT, keep=False))
        self._attempt_ended(endpoint, Outcome.REFUSED)
        retry_after = response.headers.getRawHeaders(b"retry-after", [b""])[0]
        wait = parse_retry_after(retry_after, self._deps.clock.seconds()) if retry_after else 0.0
        self._deps.registry.backend_busy(endpoint, wait or BUSY_BACKOFF)
        self._note_failover(endpoint, str(response.code), f"answered {response.code}")
        self._fail_over(endpoint, f"status_{response.code}", str(response.code))

    def _note_failover(self, endpoint: Endpoint, cause: str, what: str) -> None:
        """Remember (for the request's log line) and log why ``endpoint`` handed over."""
        self._failovers.append(f"{endpoint.name}:{cause}")
        self._log.info(
            "request {request_id}: endpoint {endpoint} {what}; {left} candidate(s) left",
            request_id=request_id(self._request),
            endpoint=endpoint.name,
            what=what,
            cause=cause,
            left=len(self._candidates),
        )

    def _fail_over(self, endpoint: Endpoint, kind: str, cause: str) -> None:
        """``endpoint`` hands the request to the next candidate: counted by ``kind`` (a small
        fixed set: ``unreachable``, ``timeout``, ``status_<code>``) for the metrics, kept
        with its ``cause`` among the recent failovers, then the next attempt starts."""
        if self._deps.stats is not None:
            self._deps.stats.failed_over(endpoint.name, kind)
        self._deps.failovers.record(
            self._deps.clock.seconds(),
            request_id(self._request),
            self._model or "",
            endpoint.name,
            self._candidates[0].name,
            cause,
        )
        self._attempt_next()

    # ------------------------------------------------------------------ Reply (for shapes)

    @property
    def request(self) -> Request:
        return self._request

    @property
    def model(self) -> str:
        return self._model or ""

    def olla_headers(self, endpoint: Endpoint) -> None:
        """The ``X-Olla-*`` headers every answer from a backend carries."""
        headers = self._request.responseHeaders
        headers.setRawHeaders(b"X-Olla-Endpoint", [endpoint.name.encode()])
        headers.setRawHeaders(b"X-Olla-Backend-Type", [endpoint.type.encode()])
        if self._model:
            headers.setRawHeaders(b"X-Olla-Model", [self._model.lower().encode()])
        if self._shape.mode is not None:
            headers.setRawHeaders(b"X-Olla-Mode", [self._shape.mode])
        if self.affinity is not None:
            self.affinity.served(endpoint)
            for name, value in self.affinity.headers():
                headers.setRawHeaders(name, [value])
        to_headers = self._deps.clock.seconds() - self._started
        headers.setRawHeaders(b"X-Olla-Response-Time", [b"%dms" % round(to_headers * 1000)])

    def answered(self, status: int) -> None:
        self._status = status

    def error(self, status: int, message: str, endpoint: Endpoint | None = None) -> None:
        self._status = status
        if endpoint is not None:
            self.olla_headers(endpoint)
        write_error(self._request, status, message, dialect=self._dialect)

    # ------------------------------------------------------------------ relaying

    def relay_response(self, response: IResponse, endpoint: Endpoint) -> None:
        """Send the backend's status, headers and body to the client as they come (or hand
        them to the shape)."""
        deps = self._deps
        sink = self._shape.response_sink(response, endpoint, self)
        self._shaped = sink is not None
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        self._streamed = any(kind in content_type for kind in _STREAM_TYPES)
        if sink is None:
            sink = self._request
            self._relay_head(response, endpoint)
        self._stream = StreamBody(
            sink,
            deps.clock,
            deps.config.read_timeout,
            lambda reason: self._body_done(endpoint, reason),
            gather=deps.timeouts.gather(content_type),
        )
        response.deliverBody(self._stream)

    def _relay_head(self, response: IResponse, endpoint: Endpoint) -> None:
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
        self.olla_headers(endpoint)
        request.write(b"")  # status and headers go out now, before the first body byte

    def _end_body(self) -> None:
        """The backend's body ended cleanly and all of it was relayed."""
        if self._shaped:
            self._shape.body_ended(self)
        else:
            self._request.finish()

    def _end_broken_body(self, reason: Failure) -> None:
        """The backend's body broke off: never let a truncated body look complete, so the
        client sees its connection cut (a shape may end its own answer cleanly)."""
        if self._shaped:
            self._shape.body_broke(self, reason)
        else:
            _abort_client(self._request)

    def _body_done(self, endpoint: Endpoint, reason: Failure | None) -> None:
        stream = self._stream
        relayed = stream.relayed if stream is not None else 0
        if self._client_gone:
            outcome = Outcome.CLIENT_GONE
        elif reason is None:
            outcome = Outcome.OK
            if stream is not None:
                profile = endpoint.profile
                self._usage = read_usage(stream.tail, profile.metrics if profile else None)
                self._after_answer(endpoint)
            self._end_body()
        else:
            outcome = Outcome.TIMED_OUT if reason.check(ResponseTimeout) else Outcome.FAILED
            self._log.warn(
                "request {request_id}: stream from {endpoint} broke after {relayed} bytes: {cause}",
                request_id=request_id(self._request),
                endpoint=endpoint.name,
                relayed=relayed,
                cause=_describe(reason),
            )
            self._end_broken_body(reason)
        self._attempt_ended(endpoint, outcome, relayed)
        self._log_completion(endpoint, outcome, relayed)

    def _after_answer(self, endpoint: Endpoint) -> None:
        """A backend answered: learn the model's load time from its last chunk (on the paths
        its profile says run the model), and when it loaded a model, ask what it has in memory
        now (loading one may have evicted another, and routing must not send that one's
        requests there as if it were still warm)."""
        if self._model is None or endpoint.profile is None:
            return
        name = self.native_model(endpoint) or self._model
        loaded = self._cold
        path = self._shape.upstream_path(endpoint, self._target)
        if endpoint.profile.runs_model(path.decode("utf-8", "replace")):
            usage = self._usage
            seconds = (usage.load_seconds or 0.0) if usage is not None else 0.0
            if seconds >= _LOAD_SEEN:
                self._deps.catalogue.observe_load(name, seconds)
                loaded = True
        if loaded and self._deps.refresh_loaded is not None:
            self._deps.refresh_loaded([endpoint])

    # ------------------------------------------------------------------ endings

    def _client_left(self, failure: Failure) -> None:
        self._client_gone = True
        self._response_timer.stop()
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
        self._response_timer.stop()
        self._shape_finished(outcome is Outcome.OK)
        request = self._request
        affinity = self.affinity
        sticky = affinity.outcome if affinity is not None else None
        now = self._deps.clock.seconds()
        record = self._record(endpoint, outcome, relayed, now)
        if self._deps.stats is not None:
            self._deps.stats.request_finished(record, now)
        self._log.info(
            "{method} {path} -> {endpoint} model={model} status={status} "
            "{duration_ms}ms {bytes}B {outcome} attempts={attempts}{tokens}{tried} "
            "client={client_ip}",
            request_id=request_id(request),
            client_ip=_client_ip(request).decode(),
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            endpoint=endpoint.name if endpoint else "-",
            model=self._model or "-",
            status=self._status,
            duration_ms=round(record.duration * 1000),
            bytes=relayed,
            outcome=(outcome.value if outcome else "rejected"),
            attempts=self._attempts,
            failovers=self._failovers,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            tokens_per_second=record.tokens_per_second,
            ttft_ms=None if record.ttft is None else round(record.ttft * 1000),
            tokens=_tokens_text(record),
            tried=f" failed_over={','.join(self._failovers)}" if self._failovers else "",
            sticky_outcome=sticky.value if sticky is not None else None,
            sticky_key_source=affinity.key.source if affinity and affinity.key else None,
            backend_metrics=self._usage.figures if self._usage is not None else None,
            #: marks the one line per proxied request (``server.request_logging`` filters it)
            request_line=True,
        )

    def _record(
        self, endpoint: Endpoint | None, outcome: Outcome | None, relayed: int, now: float
    ) -> RequestRecord:
        """This request for the stats and the log line: its time to first token when it was
        a stream, and the tokens the backend reported in its last bytes."""
        ttft = None
        stream = self._stream
        first = stream.first_byte_at if stream is not None else None
        if self._streamed and first is not None:
            ttft = first - self._started
        usage = self._usage
        tps = None
        if usage is not None:
            # a stream generates from its first byte; a whole answer over the request's time
            since = first if ttft is not None and first is not None else self._started
            tps = usage.tokens_per_second(now - since)
        tried = endpoint if endpoint is not None and self._attempts else None
        if outcome is not None:
            ended = outcome.value
        else:  # every attempt failed, or none was made
            ended = "failed" if tried is not None else "rejected"
        return RequestRecord(
            endpoint=tried.name if tried is not None else None,
            # an alias counts under the name the endpoint knows the model by
            model=(self.native_model(tried) if tried is not None else None) or self._model,
            route=self._route.prefix,
            status=self._status,
            outcome=ended,
            attempts=self._attempts,
            bytes=relayed,
            duration=now - self._started,
            ttft=ttft,
            prompt_tokens=usage.prompt if usage is not None else None,
            completion_tokens=usage.completion if usage is not None else None,
            tokens_per_second=tps,
        )

    def _shape_finished(self, complete: bool) -> None:
        if not self._shape_told:
            self._shape_told = True
            self._shape.finished(self._status, complete)

    def _bug(self, failure: Failure) -> None:
        self._log.failure("proxy exchange crashed", failure=failure)
        self._response_timer.stop()
        self._status = 500
        self._shape_finished(False)
        if not self._client_gone and not self._request.finished:
            if self._request.startedWriting:
                _abort_client(self._request)
            else:
                write_error(self._request, 500, "internal proxy error", dialect=self._dialect)


def _tokens_text(record: RequestRecord) -> str:
    """`` tokens=12/345 ttft=80ms`` for the log line, when the backend said and it streamed."""
    text = ""
    if record.prompt_tokens is not None or record.completion_tokens is not None:
        prompt = "-" if record.prompt_tokens is None else record.prompt_tokens
        completion = "-" if record.completion_tokens is None else record.completion_tokens
        text = f" tokens={prompt}/{completion}"
    if record.ttft is not None:
        text += f" ttft={round(record.ttft * 1000)}ms"
    return text


def _abort_client(request: Request) -> None:
    transport: Any = request.channel.transport if request.channel is not None else None
    if transport is not None:
        transport.abortConnection()


def _client_ip(request: Request) -> bytes:
    resolved = getattr(request, "client_ip", None)  # OllaRequest: through trusted proxies
    if isinstance(resolved, str) and resolved:
        return resolved.encode()
    return _peer_ip(request)


def _peer_ip(request: Request) -> bytes:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return host.encode() if isinstance(host, str) else b"unknown"


def request_id(request: Request) -> str:
    rid = getattr(request, "request_id", None)
    return rid if isinstance(rid, str) else "-"


def _describe(failure: Failure) -> str:
    return describe(failure, timed_out="timed out waiting for response headers")
