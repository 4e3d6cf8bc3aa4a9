# -*- test-case-name: tests.test_proxy -*-
"""The planning stage: every route's requests are planned here, the same way.

``Planner.plan`` runs, in order:

1. the client key's model list (``403`` for a model the key may not use);
2. readiness: while olla is starting, the request waits for the first probes and model lists
   instead of being routed on half the facts;
3. the sticky session (``olla.fleet.sticky``), looked up in its store;
4. ``Router.plan`` (``olla.proxy.routing``), and when the model is unknown and
   ``discovery_refresh_on_miss`` is on, one bounded refresh of every model list and a second
   ``Router.plan``.

Each route then gives every candidate its shape (``Plan``): the provider routes all
``Verbatim``, the Anthropic route passthrough or translation per host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from olla.config import OllaConfig
from olla.fleet.endpoints import Endpoint
from olla.fleet.models import RoutingDecision
from olla.fleet.sticky import Affinity, StickySessions
from olla.front.context import RequestContext
from olla.guard.clientauth import model_allowed
from olla.interfaces import IReconfigurable
from olla.proxy.routing import Rejection, RoutePlan, RouteQuery, Router
from olla.util.deadline import with_deadline

if TYPE_CHECKING:
    from olla.proxy.shape import IExchangeShape


# per-request values: not frozen (building a frozen dataclass costs twice as much), never
# changed once built


@dataclass(slots=True)
class PlanQuery:
    """What the planning stage needs to know about one request."""

    #: what routing needs (the planner adds the sticky pin and whether it refreshed)
    routing: RouteQuery
    #: the request's headers (the sticky session's key sources read them)
    header: Callable[[bytes], bytes | None] = lambda name: None
    #: the parsed body, asked for only by a ``prefix_hash`` session key
    document: Callable[[], object] = lambda: None

    @property
    def model(self) -> str | None:
        return self.routing.model


@dataclass(slots=True)
class Planned:
    """The planning stage's result: routing's plan, and the request's sticky session."""

    routed: RoutePlan
    affinity: Affinity | None = None
    #: the model the request names (None: it names none)
    model: str | None = None


@dataclass(slots=True)
class Candidate:
    """One host that can serve the request, and how the request is shaped for it."""

    endpoint: Endpoint
    shape: IExchangeShape


@dataclass(slots=True)
class Plan:
    """Every candidate that can serve one request, best first, each with its shape; or the
    answer olla gives itself (``rejection``)."""

    candidates: tuple[Candidate, ...] = ()
    decision: RoutingDecision | None = None
    rejection: Rejection | None = None
    #: per endpoint, the name it knows the requested model by (aliases only)
    rewrite: Mapping[Endpoint, str] = field(default_factory=dict)
    #: told that the request is over when no candidate was tried (a rejected plan)
    unserved: IExchangeShape | None = None
    #: for the dispatch stage: the model the request names (None: it takes no slot), and the
    #: endpoint its sticky session last went to
    model: str | None = None
    pinned: Endpoint | None = None

    @classmethod
    def of(
        cls, planned: Planned, candidates: tuple[Candidate, ...], unserved: IExchangeShape
    ) -> Plan:
        """The route's ``candidates`` for what the planning stage found (``planned``)."""
        routed, affinity = planned.routed, planned.affinity
        return cls(
            candidates,
            routed.decision,
            routed.rejection,
            routed.rewrite,
            unserved,
            planned.model,
            affinity.pinned if affinity is not None else None,
        )

    @classmethod
    def uniform(cls, planned: Planned, shape: IExchangeShape) -> Plan:
        """Every candidate routing found, with the same ``shape``."""
        return cls.of(
            planned, tuple([Candidate(ep, shape) for ep in planned.routed.candidates]), shape
        )


#: what a route makes of the planning stage's result: the candidates with their shapes, or
#: None when it answered the request itself (e.g. a token count no backend can make,
#: estimated locally)
Shaper = Callable[[Planned], "Plan | None"]


def startup_wait(config: OllaConfig) -> float:
    """How long a request that arrives while olla starts may wait for the first probes (each
    bounded by its ``check_timeout``, plus the quick re-checks of a refused one) and the first
    model lists (tags, loaded models and version, each bounded by the discovery timeout)."""
    probes = max((ep.check_timeout for ep in config.discovery.endpoints), default=0.0) + 0.5
    probes += config.discovery.health_check.initial_delay
    discovery = config.discovery.model_discovery
    return probes + (3 * discovery.timeout if discovery.enabled else 0.0)


@implementer(IReconfigurable)
@dataclass
class Planner:
    """Plans each request (see the module docstring for the steps)."""

    reconfigures = ("discovery.endpoints", "discovery.model_discovery.timeout")

    router: Router
    clock: IReactorTime
    #: how long a request that arrives during startup waits for the first probes and lists
    startup_wait: float
    #: re-run model discovery on every healthy endpoint (refresh-on-miss)
    refresh_models: Callable[[], Deferred[None]] | None = None
    sticky: StickySessions | None = None

    def reconfigure(self, config: OllaConfig) -> None:
        self.startup_wait = startup_wait(config)

    def plan(self, context: RequestContext, query: PlanQuery) -> Planned | Deferred[Planned]:
        """The plan for one request (a rejection is a plan too): at once when nothing had to
        be waited for or asked, else a Deferred of it."""
        key = context.key
        if key is not None and not model_allowed(key, query.model):
            message = f"this API key may not use model {query.model!r}"
            return Planned(RoutePlan(rejection=Rejection(403, message)), model=query.model)
        registry = self.router.registry
        sticky = self.sticky
        if sticky is None and registry.ready:
            return self._route(context, query, None)
        ready = succeed(None) if registry.ready else registry.when_ready(self.startup_wait)
        if sticky is None:
            return ready.addCallback(lambda _: self._route(context, query, None))
        return ready.addCallback(
            lambda _: sticky.for_request(
                query.model, query.header, context.client_ip, query.document
            )
        ).addCallback(lambda affinity: self._route(context, query, affinity))

    def _route(
        self,
        context: RequestContext,
        query: PlanQuery,
        affinity: Affinity | None,
        refreshed: bool = False,
        refresh_failed: bool = False,
    ) -> Planned | Deferred[Planned]:
        routing = query.routing
        pinned = affinity.pinned if affinity is not None else None
        if pinned is not None or refreshed or refresh_failed:
            routing = RouteQuery(
                routing.route, routing.path, routing.model, routing.needs,
                refreshed, refresh_failed, pinned,
            )  # fmt: skip
        routed = self.router.plan(routing)
        decision = routed.decision
        missed = routed.rejection is not None and decision is not None and decision.rejected
        if missed and not context.gone and self._may_refresh(refreshed, refresh_failed):
            return self._refresh_then_route(context, query, affinity)
        return Planned(routed, affinity, query.model)

    def _may_refresh(self, refreshed: bool, refresh_failed: bool) -> bool:
        strategy = self.router.strategy
        return (
            strategy.type == "discovery"
            and strategy.discovery_refresh_on_miss
            and self.refresh_models is not None
            and not (refreshed or refresh_failed)
        )

    def _refresh_then_route(
        self, context: RequestContext, query: PlanQuery, affinity: Affinity | None
    ) -> Deferred[Planned]:
        """Ask every healthy endpoint for its models again, then decide (bounded in time)."""
        assert self.refresh_models is not None
        refresh = with_deadline(
            self.refresh_models(), self.router.strategy.discovery_timeout, self.clock
        )
        return refresh.addCallbacks(
            lambda _: self._route(context, query, affinity, refreshed=True),
            lambda _: self._route(context, query, affinity, refresh_failed=True),
        )
