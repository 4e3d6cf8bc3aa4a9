# -*- test-case-name: tests.test_routing -*-
"""Routing: every endpoint that may serve one request, best first, and why.

``Router.plan`` is one pure step over a snapshot of the fleet (the registry's states and
circuits, the catalogue, the balancer, the clock): no I/O. It keeps every usable candidate,
so failover always has somewhere to go while a healthy machine can serve the request. The
rules, in the order they apply:

1. the route's types (``/olla/<prefix>/`` fails closed) and health;
2. ``/olla/proxy/`` only: the types that serve the path, then what the body needs;
3. the model: its hosts and aliases, by the configured strategy (``models.route``); a model
   nobody lists while some endpoint's list is still unknown goes to those endpoints;
4. the order: machines that just said they are full (429/503 with their ``Retry-After``) last,
   then the balancer's tiers, then the expected wait (a warm host with a free slot waits
   nothing; a full one waits its queue; a cold one also waits the model's load: what is left
   of it where a load is under way, its profile's prior or the learnt time elsewhere), then a
   host already loading the model before one that would start a second load, then the
   balancer's order among equals;
5. circuits: an endpoint whose circuit is open leaves the list while others remain; when all
   are open the request is refused with ``Retry-After``;
6. stickiness (``olla.fleet.sticky``): the endpoint the request's session is pinned to goes first
   while it is still a candidate (healthy, hosting the model, circuit closed), has a free slot
   (fewer requests in flight than its slots: configured ``max_concurrency``, else what the
   backend reports, else the profile's default) and has not just said it is full; else the
   order stands. It only reorders: a pin never removes a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from olla.config import OllaConfig, RoutingStrategyConfig, WarmRoutingConfig
from olla.fleet.balancer import balancer_for
from olla.fleet.endpoints import Endpoint, EndpointRegistry
from olla.fleet.models import ModelCatalogue, RoutingDecision
from olla.interfaces import IBalancer, IReconfigurable
from olla.profiles import ProfileRegistry
from olla.proxy.needs import narrow_by_needs

#: the decision reason when every warm host was full and a cold one went first
SPILLED = "loaded_hosts_full"
#: the decision reason when a warm host went first ahead of cold ones
WARM_FIRST = "model_loaded"
#: the decision reason when nobody lists the model yet but some lists are still unknown
LISTS_PENDING = "model_list_pending"


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
    #: where a body names its model (the route's profiles' ``request.model_field_paths``)
    model_fields: tuple[str, ...] = ("model",)


@dataclass(frozen=True)
class RouteQuery:
    """What routing needs to know about one request."""

    route: ProviderRoute
    path: str  # below the route prefix, without the query
    model: str | None
    #: what the body needs (tools, vision, embeddings); ``/olla/proxy/`` narrows on it
    needs: frozenset[str] = frozenset()
    #: discovery was asked again for this request (``discovery_refresh_on_miss``)
    refreshed: bool = False
    refresh_failed: bool = False
    #: where the request's sticky session was last served (None: no session, or no pin)
    pinned: Endpoint | None = None


@dataclass(frozen=True)
class Rejection:
    """No candidate: the answer olla gives itself."""

    status: int
    message: str
    code: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class RoutePlan:
    """The candidates, best first, or a rejection; ``decision`` when a model was named."""

    candidates: tuple[Endpoint, ...] = ()
    decision: RoutingDecision | None = None
    rejection: Rejection | None = None

    @property
    def rewrite(self) -> Mapping[Endpoint, str]:
        """Per endpoint, the name it knows the model by (aliases only)."""
        return self.decision.rewrite if self.decision is not None else {}


@implementer(IReconfigurable)
@dataclass(eq=False)
class Router:
    """Plans each request over the live fleet (see the module docstring for the rules)."""

    reconfigures = (
        "proxy.load_balancer",
        "proxy.warm_routing.",
        "model_registry.routing_strategy.",
    )

    registry: EndpointRegistry
    catalogue: ModelCatalogue
    balancer: IBalancer
    clock: IReactorTime
    strategy: RoutingStrategyConfig = field(default_factory=RoutingStrategyConfig, kw_only=True)
    warm: WarmRoutingConfig = field(default_factory=WarmRoutingConfig, kw_only=True)
    #: the ``proxy.load_balancer`` setting ``balancer`` was made for
    _balancer_setting: str = field(init=False)

    def __post_init__(self) -> None:
        self._balancer_setting = self.balancer.name

    def reconfigure(self, config: OllaConfig) -> None:
        setting = config.proxy.load_balancer
        if setting != self._balancer_setting:
            self.balancer = balancer_for(setting)
            self._balancer_setting = setting
        self.strategy = config.model_registry.routing_strategy
        self.warm = config.proxy.warm_routing

    def plan(self, query: RouteQuery) -> RoutePlan:
        healthy = self.registry.routable(query.route.types)
        healthy = self._by_path(healthy, query)
        decision: RoutingDecision | None = None
        if query.model is not None:
            decision = self._by_model(query, healthy)
            if decision.rejected:
                message = rejection_message(query.model, decision)
                return RoutePlan(
                    decision=decision,
                    rejection=Rejection(decision.status, message, decision.reason),
                )
            healthy = list(decision.endpoints)
        if not healthy:
            label = f"{query.route.label} " if query.route.label else ""
            return RoutePlan(
                decision=decision,
                rejection=Rejection(503, f"no healthy {label}endpoints available"),
            )
        ordered = self._order(healthy, query.model, decision)
        usable = tuple(ep for ep in ordered if self.registry.breakers.allows(ep))
        if not usable:
            wait = min(self.registry.breakers.retry_after(ep) for ep in ordered)
            names = ", ".join(ep.name for ep in ordered)
            return RoutePlan(
                decision=decision,
                rejection=Rejection(
                    503,
                    f"circuit breaker open for endpoint(s) {names}",
                    "circuit_open",
                    retry_after=max(1.0, math.ceil(wait)),
                ),
            )
        usable = self._prefer_pinned(usable, query.pinned)
        if decision is not None and query.model is not None:
            decision = self._explain(decision, usable, query.model)
        return RoutePlan(usable, decision)

    # ------------------------------------------------------------------ narrowing rules

    def _by_path(self, healthy: list[Endpoint], query: RouteQuery) -> list[Endpoint]:
        """``/olla/proxy/``: the types serving the path (if any does), then the body's needs."""
        profiles = query.route.by_path
        if profiles is None:
            return healthy
        serving = profiles.types_for_path(query.path)
        narrowed = [ep for ep in healthy if serving and ep.type in serving]
        return narrow_by_needs(narrowed or healthy, query.needs, self.catalogue, query.model)

    def _by_model(self, query: RouteQuery, healthy: list[Endpoint]) -> RoutingDecision:
        assert query.model is not None
        decision = self.catalogue.route(
            query.model,
            healthy,
            self.strategy,
            refreshed=query.refreshed,
            refresh_failed=query.refresh_failed,
        )
        if not decision.rejected:
            return decision
        # Olla is still learning (or could not read) some lists: those endpoints may have it.
        unlisted = tuple(ep for ep in healthy if not self.catalogue.listed(ep))
        if unlisted:
            return RoutingDecision(decision.strategy, "fallback", LISTS_PENDING, unlisted)
        return decision

    # ------------------------------------------------------------------ ordering rules

    def _order(
        self, candidates: Sequence[Endpoint], model: str | None, decision: RoutingDecision | None
    ) -> list[Endpoint]:
        """Best first by (busy, tier, expected wait); the balancer orders the best group.

        A machine that said it is full goes after every other, whatever its priority: its
        ``Retry-After`` is honoured while anyone else can serve.

        Only the best group goes through the balancer, so round-robin rotates over exactly the
        endpoints that are equally good (two warm hosts share a hot model evenly) and advances
        once per request.
        """
        now = self.clock.seconds()
        rewrite = decision.rewrite if decision is not None else {}
        warm = model is not None and self.warm.enabled
        keys: dict[Endpoint, tuple[float, ...]] = {}
        for ep in candidates:
            name = rewrite.get(ep) or model
            wait = self.expected_wait(ep, name) if name and warm else 0.0
            fresh = self._starts_load(ep, name) if name and warm else 0
            keys[ep] = (self._busy(ep, now), self.balancer.tier(ep), wait, fresh)
        ranked = sorted(candidates, key=keys.__getitem__)  # stable: config order among equals
        best = keys[ranked[0]]
        head = [ep for ep in ranked if keys[ep] == best]
        return [*self.balancer.order(head, self.registry.load), *ranked[len(head) :]]

    def _prefer_pinned(
        self, usable: tuple[Endpoint, ...], pinned: Endpoint | None
    ) -> tuple[Endpoint, ...]:
        """The session's endpoint first while it can take the request now; the rest as
        ordered (a full or refusing one keeps its place: the usual order serves, and the pin
        moves to wherever that is)."""
        if pinned is None or pinned not in usable or usable[0] is pinned:
            return usable
        load = self.registry.load
        if load.in_flight(pinned) >= load.slots(pinned) or self._busy(pinned, self.clock.seconds()):
            return usable
        return (pinned, *(ep for ep in usable if ep is not pinned))

    def _starts_load(self, endpoint: Endpoint, model: str) -> int:
        """1 when sending ``model`` to ``endpoint`` would start a load no request started yet
        (a second copy of it in the fleet's memory), else 0."""
        if self.catalogue.warm(endpoint, model):
            return 0
        return 0 if self.catalogue.loading_since(endpoint, model) is not None else 1

    def _busy(self, endpoint: Endpoint, now: float) -> int:
        return 1 if self.registry.load.busy_until(endpoint) > now else 0

    def expected_wait(self, endpoint: Endpoint, model: str) -> float:
        """Seconds before ``endpoint`` would start answering a request for ``model``.

        Its queue (requests beyond its slots: configured ``max_concurrency``, else what the
        backend reports) times its service time shared over its slots, plus the model's load
        time if it is not in memory there (what is left of it, if olla already sent it there).
        """
        now = self.clock.seconds()
        view = self.registry.load
        slots = view.slots(endpoint)
        ahead = view.in_flight(endpoint) - slots + 1
        wait = 0.0
        if ahead > 0:
            wait = ahead * view.expected_service_time(endpoint, now) / slots
        return wait + self.load_wait(endpoint, model)

    def load_wait(self, endpoint: Endpoint, model: str) -> float:
        """Seconds ``endpoint`` needs before it can run ``model`` in a free slot: none where it
        is in memory, what is left of a load olla already started there, else a whole load
        (learnt, else the profile's size class, else ``default_load_time``)."""
        if self.catalogue.warm(endpoint, model):
            return 0.0
        load = self.catalogue.expected_load(endpoint, model, self.warm.default_load_time)
        since = self.catalogue.loading_since(endpoint, model)
        # a load already under way there costs only what is left of it
        return load if since is None else max(0.0, load - (self.clock.seconds() - since))

    def _explain(
        self, decision: RoutingDecision, usable: Sequence[Endpoint], model: str
    ) -> RoutingDecision:
        """Say so in the decision's reason when warmth decided the first candidate."""
        if not self.warm.enabled or len(usable) < 2 or decision.reason == LISTS_PENDING:
            return decision
        warm = [self.catalogue.warm(ep, decision.rewrite.get(ep) or model) for ep in usable]
        if all(warm) or not any(warm):
            return decision
        reason = WARM_FIRST if warm[0] else SPILLED
        return RoutingDecision(
            decision.strategy,
            decision.decision,
            reason,
            decision.endpoints,
            decision.status,
            decision.rewrite,
        )


def rejection_message(model: str, decision: RoutingDecision) -> str:
    if decision.reason == "model_not_found":
        return f"model '{model}' not found on any endpoint (model_not_found)"
    return f"model '{model}' is not available on a healthy endpoint ({decision.reason})"
