# -*- test-case-name: tests.test_proxy -*-
"""One client request through the proxy: planned, then walked attempt by attempt.

The planning stage (``olla.proxy.plan``) decides the candidates, best first, and the route
gives each its shape; the dispatch stage (``olla.proxy.dispatch``) hands the exchange the
candidate of each attempt. The exchange moves on on a connection-class failure, or on a busy
answer (429, 503...: ``proxy.retry.on_status``) that arrived before any byte was relayed,
replaying the body exactly; once a response is relayed, the request is committed. What each
attempt asks for and what the client gets back is its candidate's ``IExchangeShape``
(``olla.proxy.shape``): ``Verbatim`` streams the backend's answer untouched; the Anthropic
shapes pass it through or translate it.

The exchange writes into nothing but the client's answer: it publishes one record per attempt
and one for the request to ``Outcomes``, and the listeners ``build_app`` registered (the
registry, statistics, the failover log, sticky pins, load learning, the log line) do the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from olla.config import OllaConfig, ProxyConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry, Outcome
from olla.fleet.health import parse_retry_after
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import Affinity
from olla.front.context import RequestContext
from olla.interfaces import IReconfigurable
from olla.proxy.dispatch import IDispatch, IWalk, Refused
from olla.proxy.forward import BytesProducer, StreamBody, body_producer
from olla.proxy.headers import (
    SERVED_BY,
    VIA_VALUE,
    canonical_name,
    headers_of,
    relay_response_headers,
    request_headers_for_upstream,
    sanitised,
)
from olla.proxy.inspect import rewrite_model
from olla.proxy.plan import Candidate, Plan, Planned, Planner, PlanQuery, Shaper
from olla.proxy.routing import Router
from olla.proxy.shape import IExchangeShape
from olla.proxy.timeouts import (
    AttemptDeadline,
    LoadTimeout,
    ResponseTimeout,
    ResponseTimer,
    TimeoutPolicy,
)
from olla.proxy.tokens import TokenUsage, read_usage
from olla.telemetry.outcomes import Outcomes
from olla.telemetry.records import AttemptRecord, AttemptStart, RequestRecord
from olla.util.bodies import BoundedBody
from olla.util.errors import write_error
from olla.util.failures import CUT, STALE_CONNECTION, TIMEOUTS, UNREACHABLE, describe

#: Failures that prove nothing reached a backend's application: safe to try another endpoint.
_CONNECTION_FAILURES = (*UNREACHABLE, *TIMEOUTS)

#: the status a request's record shows when its client left first (as nginx logs it)
CLIENT_CLOSED = 499
#: how many times a request is planned again because its candidates all left rotation while
#: it was held (each time it keeps its place in the queue)
MAX_REPLANS = 3


@implementer(IReconfigurable)
@dataclass
class ProxyDeps:
    """What every exchange needs; built once by ``build_app``. Owns the proxy's live
    settings of reads and retries (``proxy.read_timeout``, ``proxy.retry.*``; the response's
    bounds are ``timeouts``')."""

    reconfigures = ("proxy.read_timeout", "proxy.retry.")

    router: Router
    registry: EndpointRegistry
    catalogue: ModelCatalogue
    planner: Planner
    dispatch: IDispatch
    agent: IAgent
    clock: IReactorTime
    cooperator: Cooperator
    config: ProxyConfig
    #: where every attempt's and request's record goes
    outcomes: Outcomes
    #: the whole response's bound and each attempt's header wait (``olla.proxy.timeouts``)
    timeouts: TimeoutPolicy
    #: ask Ollama endpoints what they have loaded right now (for a live ``/api/ps``)
    refresh_loaded: Callable[[Sequence[Endpoint]], Deferred[None]] | None = None

    def reconfigure(self, config: OllaConfig) -> None:
        self.config = config.proxy


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


#: the names the relay sets straight into the client's headers, as ``Headers`` keys them
_CONTENT_LENGTH = canonical_name(b"content-length")
_VIA = canonical_name(b"via")
_SERVED_BY = canonical_name(b"x-served-by")
_ENDPOINT = canonical_name(b"x-olla-endpoint")
_BACKEND_TYPE = canonical_name(b"x-olla-backend-type")
_RESPONSE_TIME = canonical_name(b"x-olla-response-time")
_ROUTING_STRATEGY = canonical_name(b"x-olla-routing-strategy")
_ROUTING_DECISION = canonical_name(b"x-olla-routing-decision")
_ROUTING_REASON = canonical_name(b"x-olla-routing-reason")

#: what an exchange walks until its plan is made
_NO_PLAN = Plan()


class Exchange:
    """One client request through the proxy, from its plan to the last byte."""

    # one lives per request in flight (a thousand slow streams: a thousand of them)
    __slots__ = (
        "_attempts", "_candidate", "_context", "_deadline", "_deps", "_ended", "_error",
        "_failovers", "_header_late", "_last", "_model", "_pending", "_plan", "_query",
        "_replans", "_request", "_response_timer", "_shape", "_shaped", "_shaper",
        "_stale_retried", "_start", "_status", "_stream", "_streamed", "_target", "_timed_out",
        "_usage", "_waiting", "_walk", "affinity", "small_body",
    )  # fmt: skip

    _log = Logger()

    def __init__(
        self,
        deps: ProxyDeps,
        context: RequestContext,
        request: Request,
        query: PlanQuery,
        target: bytes,
        *,
        small_body: bytes | None = None,
    ) -> None:
        self._deps = deps
        self._context = context
        context.owned = True  # this exchange publishes the request's record
        context.route = query.routing.route.prefix
        self._request = request
        self._query = query
        self._target = target
        self._model = query.model
        #: the body, when small enough to inspect (alias rewrites, the sticky prefix)
        self.small_body = small_body
        self._plan = _NO_PLAN
        self._shaper: Shaper | None = None
        self._replans = 0
        self._walk: IWalk | None = None
        self._attempts = 0
        #: "name:cause" for each attempt that handed over to the next candidate
        self._failovers: list[str] = []
        self.affinity: Affinity | None = None
        self._stale_retried: set[Endpoint] = set()
        self._waiting: Deferred[Any] | None = None  # a stage the request waits on
        self._pending: Deferred[IResponse] | None = None
        self._stream: StreamBody | None = None
        self._candidate: Candidate | None = None
        self._start: AttemptStart | None = None
        self._last: AttemptRecord | None = None  # the attempt the next one takes over from
        #: the current attempt's deadlines, and the whole response's timer
        self._deadline: AttemptDeadline | None = None
        self._response_timer = ResponseTimer(deps.clock, self._response_expired, self._headers_late)
        self._header_late = False
        #: set when the whole response's bound ran out (the attempt then ends on it)
        self._timed_out: ResponseTimeout | None = None
        self._shape: IExchangeShape | None = None
        self._shaped = False  # the shape took the current answer over
        self._status: int | None = None
        self._error: str | None = None
        self._streamed = False  # the answer being relayed is a stream (NDJSON or SSE)
        self._usage: TokenUsage | None = None
        self._ended = False
        request.notifyFinish().addErrback(self._client_left)

    # ------------------------------------------------------------------ the stages

    def start(self, shaper: Shaper) -> None:
        """Plan the request (the planning stage), let the route shape the candidates, then
        walk them."""
        self._shaper = shaper
        try:
            planning = self._deps.planner.plan(self._context, self._query)
            if isinstance(planning, Planned):
                self._planned(planning, shaper)
                return
        except Exception:
            self._bug(Failure())
            return
        # not cancelled when the client leaves: a refresh-on-miss it waits on is shared
        planning.addCallback(self._planned, shaper).addErrback(self._bug)

    def _planned(self, planned: Planned, shaper: Shaper) -> None:
        if self._context.gone:
            self._finish(None)
            return
        self.affinity = planned.affinity
        plan = shaper(planned)
        if plan is None:  # the route answered itself
            self._status = self._request.code
            self._finish(Outcome.OK)
            return
        self._follow(plan)

    def _follow(self, plan: Plan) -> None:
        self._plan = plan
        decision = plan.decision
        if decision is not None:
            raw = self._request.responseHeaders._rawHeaders  # as setRawHeaders would store
            raw[_ROUTING_STRATEGY] = [sanitised(decision.strategy)]
            raw[_ROUTING_DECISION] = [sanitised(decision.decision)]
            raw[_ROUTING_REASON] = [sanitised(decision.reason)]
        rejection = plan.rejection
        if rejection is not None:
            if rejection.retry_after is not None:
                self._request.setHeader(b"Retry-After", b"%d" % rejection.retry_after)
            self._reject(rejection.status, rejection.message, code=rejection.code)
            return
        retry = self._deps.config.retry
        budget = (retry.max_attempts or len(plan.candidates)) if retry.enabled else 1
        self._walk = self._deps.dispatch.walk(plan, self._context, budget)
        self._next_attempt()

    def _next_attempt(self) -> None:
        """Ask the dispatch stage for the next candidate, then try it."""
        assert self._walk is not None
        chosen = self._walk.next()
        if isinstance(chosen, Candidate):
            self._dispatched(chosen)
            return
        if not chosen.called:
            self._waiting = chosen  # held by the dispatch stage: given up if the client leaves
        chosen.addCallbacks(self._dispatched, self._not_dispatched).addErrback(self._bug)

    def _dispatched(self, candidate: Candidate) -> None:
        self._waiting = None
        if self._context.gone:
            self._finish(None)
            return
        self._attempts += 1
        self._attempt(candidate)

    def _not_dispatched(self, failure: Failure) -> None:
        self._waiting = None
        refused = failure.value
        if isinstance(refused, Refused) and not self._context.gone:
            self._dispatch_refused(refused)
            return
        if not failure.check(CancelledError, Refused):
            failure.raiseException()
        if self._timed_out is not None and not self._context.gone:
            self._reject(504, f"olla: {self._timed_out}", code="timeout")
            return
        self._finish(None)  # the client left while the request was held

    def _may_plan_again(self) -> bool:
        """Every candidate of a plan made before the admission queue held the request has
        failed to connect: plan it again (a host that was out of rotation then may be back,
        and the ones that just failed are out of it now) rather than fail it while a healthy
        host can serve it. True when it did."""
        held = self._context.queued is not None and self._context.queued > 0
        retry = self._deps.config.retry.on_connection_failure
        if not (held and retry) or self._replans >= MAX_REPLANS or self._shaper is None:
            return False
        self._replans += 1
        if self._walk is not None:
            self._walk.close()
        self.start(self._shaper)
        return True

    def _dispatch_refused(self, refused: Refused) -> None:
        """The dispatch stage sends the request nowhere: plan it again (its candidates left
        rotation while it was held), or answer as it says (503 with ``Retry-After``)."""
        if refused.replan and self._replans < MAX_REPLANS and self._shaper is not None:
            self._replans += 1
            if self._walk is not None:
                self._walk.close()
            self.start(self._shaper)
            return
        if refused.retry_after is not None:
            self._request.setHeader(b"Retry-After", b"%d" % refused.retry_after)
        self._log.info(
            "request {request_id} refused by the admission queue: {message}",
            request_id=self._context.request_id,
            message=refused.message,
            reason=refused.code,
        )
        self._reject(refused.status, refused.message, code=refused.code)

    # ------------------------------------------------------------------ the upstream request

    def native_model(self, endpoint: Endpoint) -> str | None:
        """The name ``endpoint`` knows the requested model by, when an alias was asked for."""
        return self._plan.rewrite.get(endpoint)

    def _upstream_headers(
        self, endpoint: Endpoint, shape: IExchangeShape
    ) -> list[tuple[bytes, list[bytes]]]:
        request = self._request
        headers = request_headers_for_upstream(
            list(request.requestHeaders.getAllRawHeaders()),
            client_ip=self._context.client_ip.encode(),
            peer_ip=self._context.peer.encode(),
            scheme=b"https" if request.isSecure() else b"http",
            host=request.getHeader(b"host"),
            model=self._model,
            extra=endpoint.extra_headers,
        )
        headers = shape.upstream_headers(endpoint, headers)
        host = endpoint.host_header
        if host is not None:
            headers.append(host)
        return headers

    def _upstream_body(self, endpoint: Endpoint, shape: IExchangeShape) -> IBodyProducer | None:
        """The client's body, replayable across attempts; an alias rewrites the model name."""
        native = self.native_model(endpoint)
        shaped = shape.upstream_body(endpoint, native)
        if shaped is not None:
            return shaped
        assert self._request.content is not None
        if native is not None and self.small_body is not None:
            # an alias: this endpoint knows the model under its own name
            return BytesProducer(rewrite_model(self.small_body, native))
        return body_producer(self._request.content, self._context.body_size, self._deps.cooperator)

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, candidate: Candidate) -> None:
        """Start one attempt at ``candidate`` with its deadline, and announce it."""
        deps = self._deps
        endpoint, shape = candidate.endpoint, candidate.shape
        self._candidate, self._shape = candidate, shape
        model = self.native_model(endpoint) or self._model
        try:
            headers = self._upstream_headers(endpoint, shape)
            producer = self._upstream_body(endpoint, shape)
            path = shape.upstream_path(endpoint, self._target)
            url = endpoint.upstream_url(path)
            pending = deps.agent.request(self._request.method, url, headers_of(headers), producer)
        except Exception:  # nothing was announced yet: a bug, or a target Agent refuses
            self._bug(Failure())
            return
        # announced only once the request is really on its way: one start, one end
        start = self._start = AttemptStart(
            request_id=self._context.request_id,
            number=self._attempts,
            endpoint=endpoint,
            model=model,
            at=deps.clock.seconds(),
            cold=model is not None and not deps.catalogue.warm(endpoint, model),
            after=self._last,
            path=path,
        )
        deps.outcomes.attempt_started(start)
        self._header_late = False
        deadline = self._deadline = self._attempt_deadline(start)
        self._response_timer.arm(deadline)
        self._pending = pending
        pending.addCallbacks(
            self._got_response,
            self._attempt_failed,
            callbackArgs=(endpoint,),
            errbackArgs=(endpoint,),
        )
        pending.addErrback(self._bug)

    def _attempt_deadline(self, start: AttemptStart) -> AttemptDeadline:
        """This attempt's header wait (longer at a host that must load the model first) within
        what is left of the whole response's bound."""
        deps = self._deps
        endpoint, model = start.endpoint, start.model
        load = 0.0
        if start.cold and model is not None:
            load = deps.catalogue.expected_load(endpoint, model, deps.router.warm.default_load_time)
        return deps.timeouts.attempt(
            endpoint.profile,
            started=self._context.started,
            now=start.at,
            cold=start.cold,
            expected_load=load,
            body_size=self._context.body_size,
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
        elif self._waiting is not None:
            self._waiting.cancel()  # held by the dispatch stage past the bound

    def _headers_late(self) -> None:
        """The attempt's header wait ran out: it fails as a timeout (a host still loading the
        model answers 504 and keeps it; otherwise it is a failover)."""
        self._header_late = True
        if self._pending is not None:
            self._pending.cancel()

    def _attempt_ended(
        self,
        outcome: Outcome,
        *,
        relayed: int = 0,
        status: int | None = None,
        cause: str | None = None,
        failover: str | None = None,
        unreachable: bool = False,
        busy_for: float | None = None,
        load_seconds: float | None = None,
        keep_slot: bool = False,
    ) -> AttemptRecord:
        """Every attempt ends here exactly once: its record goes to the listeners, then what
        the dispatch stage gave it (its slot) goes back, unless ``keep_slot`` (the same
        candidate is tried again at once)."""
        start = self._start
        assert start is not None
        record = AttemptRecord(
            start=start,
            ended=self._deps.clock.seconds(),
            outcome=outcome,
            status=status,
            relayed=relayed,
            cause=cause,
            failover=failover,
            unreachable=unreachable,
            busy_for=busy_for,
            load_seconds=load_seconds,
        )
        self._last = record
        self._deps.outcomes.attempt_finished(record)
        if not keep_slot and self._walk is not None:
            served = outcome is Outcome.OK and (status or 0) < 400
            self._walk.ended(served, load_seconds)
        return record

    def _attempt_failed(self, failure: Failure, endpoint: Endpoint) -> None:
        """No answer came back: classify the failure, then retry, fail over or give up."""
        self._pending = None
        if self._header_late:  # cancelled by the header wait: whatever the Agent made of it
            assert self._deadline is not None
            failure = Failure(DeferredTimeout(f"no answer within {self._deadline.header_wait:g}s"))
        if self._timed_out is not None and not self._context.gone:
            cause = str(self._timed_out)
            self._attempt_ended(Outcome.TIMED_OUT, cause=cause)
            self._timeout_answer(endpoint, cause)
            return
        deadline = self._deadline
        if failure.check(*TIMEOUTS) and deadline is not None and deadline.loading:
            # still loading the model: not a transport failure, and no second host is sent
            # the request to load the same model again
            cause = str(LoadTimeout(endpoint.name, self.model, deadline))
            self._attempt_ended(Outcome.TIMED_OUT, cause=cause)
            self._timeout_answer(endpoint, cause)
            return
        if self._context.gone or failure.check(CancelledError):
            self._attempt_ended(Outcome.CLIENT_GONE)
            self._finish(None)
            return
        if failure.check(*STALE_CONNECTION) and endpoint not in self._stale_retried:
            # A pooled keep-alive connection the backend had just closed: not the backend's
            # fault, and nothing reached it. One more try on a fresh connection decides.
            self._stale_retried.add(endpoint)
            self._attempt_ended(Outcome.CLIENT_GONE, keep_slot=True)
            assert self._candidate is not None
            self._attempt(self._candidate)
            return
        cause = _describe(failure)
        if not failure.check(*_CONNECTION_FAILURES):
            self._attempt_ended(Outcome.FAILED, cause=cause)
            self._log.warn(
                "request {request_id} to {endpoint} failed: {cause}",
                request_id=self._context.request_id,
                endpoint=endpoint.name,
                cause=cause,
            )
            self._reject(502, f"proxy error: endpoint {endpoint.name}: {cause}")
            return
        if self._deps.config.retry.on_connection_failure and self._may_fail_over():
            kind = "timeout" if failure.check(*TIMEOUTS) else "unreachable"
            handed = self._attempt_ended(
                Outcome.FAILED, cause=cause, failover=kind, unreachable=True
            )
            self._fail_over(handed, f"unreachable ({cause})")
            return
        self._attempt_ended(Outcome.FAILED, cause=cause, unreachable=True)
        self._note_failover(endpoint, cause, f"unreachable ({cause})")
        if self._may_plan_again():
            return
        self._reject(
            502,
            f"proxy error: endpoint {endpoint.name} ({endpoint.display_url}) "
            f"is unreachable: {cause}",
        )

    def _timeout_answer(self, endpoint: Endpoint, cause: str) -> None:
        """One of olla's own bounds ran out: a 504 in the client's dialect, no failover."""
        self._log.warn(
            "request {request_id} to {endpoint}: {cause}",
            request_id=self._context.request_id,
            endpoint=endpoint.name,
            cause=cause,
        )
        self._reject(504, f"olla: {cause}", code="timeout")

    def _may_fail_over(self) -> bool:
        return self._walk is not None and self._walk.more()

    def _refused(self, response: IResponse, endpoint: Endpoint) -> None:
        """A busy answer (429, 503...) before any byte was relayed: the next candidate gets the
        request, body replayed. The backend is up, so it stays healthy; it just goes after
        the others for a while (its ``Retry-After``, else a second)."""
        response.deliverBody(BoundedBody(_DRAIN_LIMIT, keep=False))
        retry_after = response.headers.getRawHeaders(b"retry-after", [b""])[0]
        wait = parse_retry_after(retry_after, self._deps.clock.seconds()) if retry_after else 0.0
        code = response.code
        handed = self._attempt_ended(
            Outcome.REFUSED,
            status=code,
            cause=str(code),
            failover=f"status_{code}",
            busy_for=wait or BUSY_BACKOFF,
        )
        self._fail_over(handed, f"answered {code}")

    def _fail_over(self, handed: AttemptRecord, what: str) -> None:
        """The attempt ``handed`` gives the request to the next candidate (its record says
        why: ``failover``, a small fixed set for the metrics, ``unreachable``, ``timeout``,
        ``status_<code>``; ``cause`` for people); the next attempt starts."""
        self._note_failover(handed.start.endpoint, handed.cause or "", what)
        self._next_attempt()

    def _note_failover(self, endpoint: Endpoint, cause: str, what: str) -> None:
        """Remember (for the request's record) and log why ``endpoint`` handed over."""
        self._failovers.append(f"{endpoint.name}:{cause}")
        start = self._start
        elapsed = self._deps.clock.seconds() - start.at if start is not None else 0.0
        self._log.info(
            "request {request_id}: endpoint {endpoint} {what} after {elapsed_ms}ms; "
            "{left} candidate(s) left",
            request_id=self._context.request_id,
            endpoint=endpoint.name,
            what=what,
            cause=cause,
            #: how long the attempt took to fail (a refused connection: about nothing)
            elapsed_ms=round(elapsed * 1000, 1),
            left=self._walk.left() if self._walk is not None else 0,
        )

    # ------------------------------------------------------------------ relaying

    def _got_response(self, response: IResponse, endpoint: Endpoint) -> None:
        self._pending = None
        self._response_timer.answered()
        if self._context.gone:
            response.deliverBody(_Discard())
            self._attempt_ended(Outcome.CLIENT_GONE, status=response.code)
            self._finish(None)
            return
        if response.code in self._deps.config.retry.on_status and self._may_fail_over():
            self._refused(response, endpoint)
            return
        assert self._start is not None
        self._deps.outcomes.attempt_answered(self._start, response.code)
        self.relay_response(response, endpoint)

    def relay_response(self, response: IResponse, endpoint: Endpoint) -> None:
        """Send the backend's status, headers and body to the client as they come (or hand
        them to the shape)."""
        deps = self._deps
        shape = self._shape
        assert shape is not None
        sink = shape.response_sink(response, endpoint, self)
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
            lambda reason: self._body_done(endpoint, response.code, reason),
            gather=deps.timeouts.gather(content_type),
        )
        response.deliverBody(self._stream)

    def _relay_head(self, response: IResponse, endpoint: Endpoint) -> None:
        request = self._request
        self._status = response.code
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        relay_response_headers(response.headers, headers, endpoint.credential_headers)
        # olla's own values below are plain ASCII: set as setRawHeaders would store them
        raw = headers._rawHeaders
        # _newclient keeps framing headers out of response.headers: the length is its own field
        if response.length is not UNKNOWN_LENGTH:
            raw[_CONTENT_LENGTH] = [b"%d" % response.length]
        via = raw.get(_VIA)
        raw[_VIA] = [*via[:-1], via[-1] + b", " + VIA_VALUE] if via else [VIA_VALUE]
        raw[_SERVED_BY] = [SERVED_BY]
        self.olla_headers(endpoint)
        request.write(b"")  # status and headers go out now, before the first body byte

    def _body_done(self, endpoint: Endpoint, code: int, reason: Failure | None) -> None:
        stream = self._stream
        relayed = stream.relayed if stream is not None else 0
        load_seconds = None
        cause = None
        if self._context.gone:
            outcome = Outcome.CLIENT_GONE
        elif reason is None:
            outcome = Outcome.OK
            if stream is not None:
                profile = endpoint.profile
                usage = self._usage = read_usage(stream.tail, profile.metrics if profile else None)
                load_seconds = usage.load_seconds if usage is not None else None
            self._end_body()
        else:
            outcome = Outcome.TIMED_OUT if reason.check(ResponseTimeout) else Outcome.FAILED
            cause = describe(reason, cut=CUT)
            self._log.warn(
                "request {request_id}: stream from {endpoint} broke after {relayed} bytes: {cause}",
                request_id=self._context.request_id,
                endpoint=endpoint.name,
                relayed=relayed,
                cause=cause,
            )
            self._end_broken_body(reason)
        self._attempt_ended(
            outcome, relayed=relayed, status=code, cause=cause, load_seconds=load_seconds
        )
        self._finish(outcome, relayed)

    def _end_body(self) -> None:
        """The backend's body ended cleanly and all of it was relayed."""
        if self._shaped:
            assert self._shape is not None
            self._shape.body_ended(self)
        else:
            self._request.finish()

    def _end_broken_body(self, reason: Failure) -> None:
        """The backend's body broke off: never let a truncated body look complete, so the
        client sees its connection cut (a shape may end its own answer cleanly)."""
        if self._shaped:
            assert self._shape is not None
            self._shape.body_broke(self, reason)
        else:
            _abort_client(self._request)

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
        raw = headers._rawHeaders  # canonical names, values as setRawHeaders stores them
        raw[_ENDPOINT] = [sanitised(endpoint.name)]
        raw[_BACKEND_TYPE] = [sanitised(endpoint.type)]
        if self._model:
            headers.setRawHeaders(b"X-Olla-Model", [self._model.lower().encode()])
        shape = self._shape
        if shape is not None and shape.mode is not None:
            headers.setRawHeaders(b"X-Olla-Mode", [shape.mode])
        if self.affinity is not None:
            self.affinity.served(endpoint)
            for name, value in self.affinity.headers():
                headers.setRawHeaders(name, [value])
        to_headers = self._deps.clock.seconds() - self._context.started
        raw[_RESPONSE_TIME] = [b"%dms" % round(to_headers * 1000)]

    def answered(self, status: int) -> None:
        self._status = status

    def error(self, status: int, message: str, endpoint: Endpoint | None = None) -> None:
        self._status = status
        self._error = message
        if endpoint is not None:
            self.olla_headers(endpoint)
        write_error(
            self._request,
            status,
            message,
            dialect=self._context.dialect,
            request_id=self._context.request_id,
        )

    # ------------------------------------------------------------------ endings

    def _client_left(self, failure: Failure) -> None:
        self._context.gone = True
        self._response_timer.stop()
        if self._waiting is not None:
            self._waiting.cancel()  # a stage the request waits on gives its place up
        if self._pending is not None:
            self._pending.cancel()
        if self._stream is not None:
            self._stream.abort(failure)

    def _reject(self, status: int, message: str, code: str | None = None) -> None:
        self._status = status
        self._error = message
        if not self._context.gone:
            write_error(
                self._request,
                status,
                message,
                dialect=self._context.dialect,
                code=code,
                request_id=self._context.request_id,
            )
        self._finish(None)

    def _finish(self, outcome: Outcome | None, relayed: int = 0) -> None:
        """The request is over: the shape hears it, and its record goes to the listeners
        (exactly once)."""
        if self._ended:
            return
        self._ended = True
        self._response_timer.close()
        if self._walk is not None:
            self._walk.close()  # whatever it still holds goes back
        status = self._status
        shape = self._shape or self._plan.unserved
        if shape is not None:
            shape.finished(status, outcome is Outcome.OK)
        context = self._context
        context.reported = True
        now = self._deps.clock.seconds()
        self._deps.outcomes.request_finished(self._record(outcome, relayed, now))

    def _record(self, outcome: Outcome | None, relayed: int, now: float) -> RequestRecord:
        """This request for the listeners: its time to first token when it was a stream,
        and the tokens the backend reported in its last bytes."""
        context = self._context
        ttft = None
        stream = self._stream
        first = stream.first_byte_at if stream is not None else None
        if self._streamed and first is not None:
            ttft = first - context.started
        usage = self._usage
        tps = None
        if usage is not None:
            # a stream generates from its first byte; a whole answer over the request's time
            since = first if ttft is not None and first is not None else context.started
            tps = usage.tokens_per_second(now - since)
        endpoint = self._start.endpoint if self._start is not None else None
        status = self._status
        if context.gone or outcome is Outcome.CLIENT_GONE:
            ended, status = "client_gone", CLIENT_CLOSED
        elif outcome is Outcome.OK:
            ended = "ok" if (status or 0) < 400 else "error"
        elif endpoint is None:
            ended = "rejected"  # refused before any attempt
        else:
            ended = "failed"  # every attempt failed, or the answer broke off
        affinity = self.affinity
        key = affinity.key if affinity is not None else None
        shape = self._shape
        mode = shape.mode if shape is not None else None
        return RequestRecord(
            endpoint=endpoint.name if endpoint is not None else None,
            # an alias counts under the name the endpoint knows the model by
            model=(self.native_model(endpoint) if endpoint is not None else None) or self._model,
            route=self._query.routing.route.prefix,
            status=status,
            outcome=ended,
            attempts=self._attempts,
            bytes=relayed,
            duration=now - context.started,
            ttft=ttft,
            prompt_tokens=usage.prompt if usage is not None else None,
            completion_tokens=usage.completion if usage is not None else None,
            tokens_per_second=tps,
            backend_metrics=usage.figures if usage is not None and usage.figures else None,
            request_id=context.request_id,
            method=self._request.method.decode("ascii", "replace"),
            path=self._request.path[:200].decode("utf-8", "replace"),
            client_ip=context.client_ip,
            client_key=context.key.name if context.key is not None else None,
            ended=now,
            failovers=tuple(self._failovers),
            error=self._error,
            mode=mode.decode() if mode is not None else None,
            session=key.key if key is not None else None,
            session_source=key.source if key is not None else None,
            session_model=key.model if key is not None else None,
            sticky=affinity.outcome.value
            if affinity is not None and affinity.outcome is not None
            else None,
            queued=context.queued,
            priority=context.priority.label if context.queued is not None else None,
        )

    def _bug(self, failure: Failure) -> None:
        self._log.failure("proxy exchange crashed", failure=failure)
        self._status = 500
        self._error = "internal proxy error"
        request = self._request
        if not self._context.gone and not request.finished:
            if request.startedWriting:
                _abort_client(request)
            else:
                write_error(
                    request,
                    500,
                    "internal proxy error",
                    dialect=self._context.dialect,
                    request_id=self._context.request_id,
                )
        self._finish(None)


def _abort_client(request: Request) -> None:
    transport: Any = request.channel.transport if request.channel is not None else None
    if transport is not None:
        transport.abortConnection()


def _describe(failure: Failure) -> str:
    return describe(failure, timed_out="timed out waiting for response headers")
