# -*- test-case-name: tests.test_app -*-
"""The composition root: one function builds olla's whole object graph for a config.

``build_app`` takes the reactor-facing parts (clock, agent, cooperator) as arguments, so the
same graph runs under ``twistd`` (``olla.daemon.tap`` gives it the reactor, a pooled ``Agent`` and a
listener) and in the tests (a ``Clock`` and in-memory backends); ``olla.daemon.reload`` reconciles
the running graph with an edited config instead of building another. It starts nothing: the
caller parents ``app.services`` and serves ``app.site``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from olla import __version__
from olla.anthropic.resource import AnthropicResource
from olla.anthropic.stats import TranslatorStats
from olla.config import OllaConfig
from olla.daemon.workers import WorkerIdentity
from olla.fleet.balancer import balancer_for
from olla.fleet.breaker import CircuitBreakers
from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import EndpointRegistry, endpoints_from_config
from olla.fleet.health import HealthService, HTTPHealthChecker
from olla.fleet.listeners import ConnectionFailures, LoadLearning, RegistryTraffic
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import StickySessions
from olla.guard.ratelimit import LimitSettings, MemoryRateStore, RateLimiter
from olla.guard.stage import Guard
from olla.interfaces import IHealthChecker, IOutcomeListener, IReconfigurable
from olla.manage.manager import FleetManager
from olla.manage.resource import ManagementResource
from olla.profiles import ProfileRegistry
from olla.proxy.exchange import ProxyDeps
from olla.proxy.fleetview import RouterView
from olla.proxy.gate import AdmissionGate
from olla.proxy.gatedispatch import GateDispatch
from olla.proxy.movecost import PromptRates
from olla.proxy.plan import Planner, startup_wait
from olla.proxy.resource import ProxyResource
from olla.proxy.routing import ProviderRoute, Router
from olla.proxy.timeouts import TimeoutPolicy
from olla.state.shared import SharedState
from olla.state.stores import Stores, stores_for
from olla.telemetry.failovers import FailoverLog
from olla.telemetry.outcomes import Outcomes
from olla.telemetry.requestlog import RequestLog
from olla.telemetry.security import SecurityStats
from olla.telemetry.stats import Stats, StatsListener
from olla.util.access import AccessPolicy
from olla.web.dashboard import Dashboard
from olla.web.internal import InternalApp
from olla.web.metrics import Collectors, Metrics, OllaCollector, metrics_registry
from olla.web.models import ModelsResource
from olla.web.multiproc import WorkerFigures, merged_registry, multiprocess_dir
from olla.web.queue import QueueCollector, queue_status
from olla.web.site import OllaRoot, OllaSite, RootResource


@dataclass
class App:
    """Everything ``build_app`` made, for the caller to run (and the tests to look at)."""

    config: OllaConfig
    registry: EndpointRegistry
    catalogue: ModelCatalogue
    router: Router
    planner: Planner
    deps: ProxyDeps
    health: HealthService
    discovery: DiscoveryService
    translator_stats: TranslatorStats
    security: SecurityStats
    site: OllaSite
    internal: InternalApp
    limiter: RateLimiter
    rate_store: MemoryRateStore
    guard: Guard
    #: where the request path publishes its records, with the listeners below subscribed
    outcomes: Outcomes
    #: what every request and probe left in the statistics (``/internal/metrics``)
    stats: Stats
    failovers: FailoverLog
    metrics: Metrics
    collector: OllaCollector
    #: the response and header-wait bounds every exchange reads (reconfigured by a reload)
    timeouts: TimeoutPolicy
    #: the dispatch stage: the admission gate (``proxy.queue``) every attempt passes
    dispatch: GateDispatch
    #: every component that applies a reloaded config to itself
    reconfigurables: tuple[IReconfigurable, ...]
    dashboard: Dashboard | None = None
    sticky: StickySessions | None = None
    #: which ``--workers`` process this is; metrics label their figures with it
    worker: WorkerIdentity = field(default_factory=WorkerIdentity)
    #: pull, create, copy, delete and push across the fleet (``model_management.enabled``)
    management: FleetManager | None = None
    #: sessions, rate buckets, load, slots and poll leases: in memory, or shared
    stores: Stores | None = None
    #: --workers: this worker's figures written for the merged ``/internal/metrics``
    figures: WorkerFigures | None = None

    @property
    def services(self) -> Sequence[IService]:
        """What must run for the endpoints' states and model lists to stay true (the shared
        store's connections first)."""
        shared = self.stores.services if self.stores is not None else ()
        figures = (self.figures,) if self.figures is not None else ()
        return (*shared, self.health, self.discovery, self.rate_store, *figures)


def provider_routes(profiles: ProfileRegistry) -> list[ProviderRoute]:
    """``/olla/<prefix>/`` for every profile prefix, and ``/olla/proxy/`` across all types."""
    routes = []
    for prefix, profile in profiles.prefixes.items():
        types = profiles.types_for_prefix(prefix)
        fields = [f for p in profiles if p.name in types for f in p.request.model_field_paths]
        routes.append(
            ProviderRoute(prefix, types, profile.name, model_fields=_fields([*fields, "model"]))
        )
    everything = frozenset(p.name for p in profiles) | {"auto"}
    routes.append(
        ProviderRoute(
            "proxy", everything, "", by_path=profiles, model_fields=profiles.model_fields()
        )
    )
    return routes


def _fields(fields: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(fields))


def build_app(
    config: OllaConfig,
    profiles: ProfileRegistry,
    *,
    clock: IReactorTime,
    agent: IAgent,
    cooperator: Cooperator,
    checker: IHealthChecker | None = None,
    rng: random.Random | None = None,
    worker: WorkerIdentity | None = None,
    listeners: Sequence[IOutcomeListener] = (),
    shared: SharedState | None = None,
) -> App:
    """olla for ``config``: registry, catalogue, pollers, the request path's stages, routes
    and the HTTP site. ``listeners`` hear every outcome record after olla's own. With
    ``shared`` (``state.backend: redis``) its state stores are shared through that store."""
    stores = stores_for(shared, clock)
    discovery_config = config.discovery.model_discovery
    registry = EndpointRegistry(
        endpoints_from_config(config.discovery.endpoints, profiles),
        clock,
        breakers=CircuitBreakers(clock, enabled=config.proxy.engine == "olla"),
        load=stores.load,
        lists_models=discovery_config.enabled,
    )
    health = HealthService(registry, checker or HTTPHealthChecker(agent, clock, __version__), clock)
    health.initial_delay = config.discovery.health_check.initial_delay
    if stores.polls is not None:
        health.share_with(stores.polls)
    stats = Stats()
    health.on_probe.append(
        lambda endpoint, result: stats.probe_finished(
            endpoint.name, result.status.value, result.latency
        )
    )
    catalogue = ModelCatalogue(config.model_aliases)
    discovery = DiscoveryService(
        registry, catalogue, agent, clock, discovery_config, __version__, share=stores.polls
    )
    discovery.reconfigure(config)
    catalogue.reconfigure(config)

    timeouts = TimeoutPolicy(config)
    router = Router(
        registry,
        catalogue,
        balancer_for(config.proxy.load_balancer),
        clock,
        strategy=config.model_registry.routing_strategy,
        warm=config.proxy.warm_routing,
    )
    sticky: StickySessions | None = None
    if config.proxy.sticky_sessions.enabled:
        sessions = config.proxy.sticky_sessions
        sticky = StickySessions(sessions, stores.sessions(sessions), registry.by_name)
        registry.add_listener(sticky.status_changed)

    # The request path publishes; these hear it, in this order: the registry first (routing
    # sees an attempt's end before anyone acts on it), the log line last.
    failovers = FailoverLog()
    outcomes = Outcomes()
    outcomes.subscribe(RegistryTraffic(registry))
    outcomes.subscribe(ConnectionFailures(health))
    outcomes.subscribe(LoadLearning(catalogue, discovery, stores.polls, registry.by_id))
    outcomes.subscribe(StatsListener(stats))
    outcomes.subscribe(failovers)
    if sticky is not None:
        outcomes.subscribe(sticky)
    rates = PromptRates()
    outcomes.subscribe(rates)
    request_log = RequestLog(config)
    outcomes.subscribe(request_log)
    for listener in listeners:
        outcomes.subscribe(listener)

    # The admission gate: its slots in a store (shared by the workers when one is configured),
    # the fleet as routing sees it, each model's cap from its profile.
    gate = AdmissionGate(
        stores.slots, RouterView(router), clock, config.proxy, cap_for=catalogue.cap_for
    )
    dispatch = GateDispatch(gate, registry, rates, clock)
    # what a held request may go to changes with health, what is loaded, and reloads
    registry.add_listener(lambda endpoint, old, new: gate.poke())
    discovery.on_loaded.append(lambda endpoint: gate.poke())

    planner = Planner(
        router,
        clock,
        startup_wait=startup_wait(config),
        refresh_models=discovery.refresh_all,
        sticky=sticky,
    )
    deps = ProxyDeps(
        router=router,
        registry=registry,
        catalogue=catalogue,
        planner=planner,
        dispatch=dispatch,
        agent=agent,
        clock=clock,
        cooperator=cooperator,
        config=config.proxy,
        outcomes=outcomes,
        timeouts=timeouts,
        refresh_loaded=discovery.refresh_loaded,
    )
    proxies: dict[bytes, IResource] = {
        route.prefix.encode(): ProxyResource(route, deps) for route in provider_routes(profiles)
    }
    management = FleetManager.build(config, deps, discovery.rediscover, sticky)
    if management is not None:
        for route in provider_routes(profiles):
            if "ollama" in route.types:
                prefix = route.prefix.encode()
                proxies[prefix] = ManagementResource(proxies[prefix], management, route.prefix)
    translator_stats = TranslatorStats("anthropic")
    if config.translators.anthropic.enabled:
        proxies[b"anthropic"] = AnthropicResource(
            deps, profiles, config.translators.anthropic, translator_stats
        )
    proxies[b"models"] = ModelsResource(registry, catalogue, clock)
    security = SecurityStats()
    dashboard = (
        Dashboard(AccessPolicy.from_config(config.dashboard.access_policy))
        if config.dashboard.enabled
        else None
    )
    collector = OllaCollector(
        stats,
        registry,
        clock=clock,
        config=config,
        security=security,
        translators=[translator_stats],
        active_connections=lambda: len(site.channels),
        worker=worker,
        sticky=sticky,
        state=stores.status,
    )
    queue = QueueCollector(gate)
    # --workers: every worker's figures, merged at each scrape (prometheus_client's
    # multiprocess mode); one process: this one's, read live
    figures: WorkerFigures | None = None
    merged = multiprocess_dir() if worker is not None and worker.count > 1 else None
    if merged is not None:
        figures = WorkerFigures(Collectors(collector, queue), clock, shared=shared is not None)
        outcomes.subscribe(figures)
        health.on_probe.append(lambda endpoint, result: figures.changed())
        metrics = Metrics(merged_registry(merged), before=figures.flush)
    else:
        metrics = Metrics(metrics_registry(collector, queue))
    internal = InternalApp(
        registry,
        clock=clock,
        config=config,
        active_connections=lambda: len(site.channels),
        catalogue=catalogue,
        translators=[translator_stats],
        security=security,
        sticky=sticky,
        failovers=failovers,
        dashboard=dashboard,
        worker=worker,
        stats=stats,
        metrics=metrics,
        profiles=profiles,
        queue=lambda: queue_status(gate, rates, registry),
        state=stores.status,
    )
    limits = config.server.request_limits
    rate_store = MemoryRateStore(clock, config.server.rate_limits.cleanup_interval)
    limiter = RateLimiter(LimitSettings.from_config(config), stores.rates(rate_store), clock)
    guard = Guard(config, limiter, security)
    site = OllaSite(
        RootResource(OllaRoot(proxies), internal.app.resource()),
        clock=clock,
        max_body_size=limits.max_body_size,
        max_header_size=limits.max_header_size,
        timeout=config.server.idle_timeout or config.server.read_timeout,
        header_timeout=config.server.read_header_timeout,
        body_timeout=config.server.read_timeout,
        rng=rng,
        security=security,
        guard=guard,
        outcomes=outcomes,
    )
    site.noisy = False
    reconfigurables: list[IReconfigurable] = [
        router,
        catalogue,
        planner,
        deps,
        timeouts,
        discovery,
        site,
        limiter,
        guard,
        collector,
        request_log,
        dispatch,
    ]
    if dashboard is not None:
        reconfigurables.append(dashboard)
    if management is not None:
        reconfigurables.append(management)
    return App(
        config=config,
        registry=registry,
        catalogue=catalogue,
        router=router,
        planner=planner,
        deps=deps,
        health=health,
        discovery=discovery,
        translator_stats=translator_stats,
        security=security,
        site=site,
        internal=internal,
        limiter=limiter,
        rate_store=rate_store,
        guard=guard,
        outcomes=outcomes,
        dashboard=dashboard,
        sticky=sticky,
        worker=worker or WorkerIdentity(),
        stats=stats,
        failovers=failovers,
        metrics=metrics,
        collector=collector,
        management=management,
        timeouts=timeouts,
        dispatch=dispatch,
        stores=stores,
        figures=figures,
        reconfigurables=tuple(reconfigurables),
    )
