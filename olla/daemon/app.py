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
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import StickySessions
from olla.guard.ratelimit import RateLimiter
from olla.guard.resource import GuardResource, Guards, limit_settings
from olla.interfaces import IHealthChecker
from olla.manage.manager import FleetManager
from olla.manage.resource import ManagementResource
from olla.profiles import ProfileRegistry
from olla.proxy.exchange import ProxyDeps
from olla.proxy.resource import ProxyResource
from olla.proxy.routing import ProviderRoute, Router
from olla.proxy.timeouts import TimeoutPolicy
from olla.telemetry.security import SecurityStats
from olla.telemetry.stats import Stats
from olla.util.access import AccessPolicy
from olla.web.dashboard import Dashboard
from olla.web.internal import InternalApp
from olla.web.metrics import Metrics, OllaCollector, metrics_registry
from olla.web.models import ModelsResource
from olla.web.site import OllaRoot, OllaSite, RootResource


@dataclass
class App:
    """Everything ``build_app`` made, for the caller to run (and the tests to look at)."""

    config: OllaConfig
    registry: EndpointRegistry
    catalogue: ModelCatalogue
    router: Router
    deps: ProxyDeps
    health: HealthService
    discovery: DiscoveryService
    translator_stats: TranslatorStats
    security: SecurityStats
    site: OllaSite
    internal: InternalApp
    limiter: RateLimiter
    guard: GuardResource
    #: what every request and probe left in the statistics (``/internal/metrics``)
    stats: Stats
    metrics: Metrics
    collector: OllaCollector
    #: the response and header-wait bounds every exchange reads (reconfigured by a reload)
    timeouts: TimeoutPolicy
    dashboard: Dashboard | None = None
    sticky: StickySessions | None = None
    #: which ``--workers`` process this is; metrics label their figures with it
    worker: WorkerIdentity = field(default_factory=WorkerIdentity)
    #: pull, create, copy, delete and push across the fleet (``model_management.enabled``)
    management: FleetManager | None = None

    @property
    def services(self) -> Sequence[IService]:
        """What must run for the endpoints' states and model lists to stay true."""
        return (self.health, self.discovery, self.limiter)


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


def startup_wait(config: OllaConfig) -> float:
    """How long a request that arrives while olla starts may wait for the first probes (each
    bounded by its ``check_timeout``, plus the quick re-checks of a refused one) and the first
    model lists (tags, loaded models and version, each bounded by the discovery timeout)."""
    probes = max((ep.check_timeout for ep in config.discovery.endpoints), default=0.0) + 0.5
    probes += config.discovery.health_check.initial_delay
    discovery = config.discovery.model_discovery
    return probes + (3 * discovery.timeout if discovery.enabled else 0.0)


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
) -> App:
    """olla for ``config``: registry, catalogue, pollers, router, routes and the HTTP site."""
    discovery_config = config.discovery.model_discovery
    registry = EndpointRegistry(
        endpoints_from_config(config.discovery.endpoints, profiles),
        clock,
        breakers=CircuitBreakers(clock, enabled=config.proxy.engine == "olla"),
        lists_models=discovery_config.enabled,
    )
    health = HealthService(registry, checker or HTTPHealthChecker(agent, clock, __version__), clock)
    health.initial_delay = config.discovery.health_check.initial_delay
    stats = Stats()
    health.on_probe.append(
        lambda endpoint, result: stats.probe_finished(
            endpoint.name, result.status.value, result.latency
        )
    )
    catalogue = ModelCatalogue(config.model_aliases)
    discovery = DiscoveryService(registry, catalogue, agent, clock, discovery_config, __version__)
    discovery.stale_threshold = config.model_registry.unification.stale_threshold
    discovery.set_intervals(
        cleanup=config.model_registry.unification.cleanup_interval,
        loaded=config.discovery.refresh_interval,
    )
    catalogue.unify = config.model_registry.enable_unifier

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
        sticky = StickySessions(config.proxy.sticky_sessions, clock)
        registry.add_listener(sticky.status_changed)
    deps = ProxyDeps(
        router=router,
        agent=agent,
        clock=clock,
        cooperator=cooperator,
        config=config.proxy,
        report_connection_failure=health.report_connection_failure,
        startup_wait=startup_wait(config),
        timeouts=timeouts,
        refresh_models=discovery.refresh_all,
        refresh_loaded=discovery.refresh_loaded,
        sticky=sticky,
        stats=stats,
    )
    proxies: dict[bytes, IResource] = {
        route.prefix.encode(): ProxyResource(route, deps) for route in provider_routes(profiles)
    }
    management = FleetManager.build(config, deps, discovery.rediscover, sticky)
    if management is not None:
        for route in provider_routes(profiles):
            if "ollama" in route.types:
                prefix = route.prefix.encode()
                proxies[prefix] = ManagementResource(proxies[prefix], management)
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
    )
    metrics = Metrics(metrics_registry(collector))
    internal = InternalApp(
        registry,
        clock=clock,
        config=config,
        active_connections=lambda: len(site.channels),
        catalogue=catalogue,
        translators=[translator_stats],
        security=security,
        sticky=sticky,
        failovers=deps.failovers,
        dashboard=dashboard,
        worker=worker,
        stats=stats,
        metrics=metrics,
        profiles=profiles,
    )
    limits = config.server.request_limits
    limiter = RateLimiter(limit_settings(config), clock)
    guard = GuardResource(
        RootResource(OllaRoot(proxies), internal.app.resource()),
        Guards.from_config(config, limiter, security),
    )
    site = OllaSite(
        guard,
        clock=clock,
        max_body_size=limits.max_body_size,
        max_header_size=limits.max_header_size,
        timeout=config.server.idle_timeout or config.server.read_timeout,
        header_timeout=config.server.read_header_timeout,
        body_timeout=config.server.read_timeout,
        rng=rng,
        security=security,
    )
    site.noisy = False
    return App(
        config=config,
        registry=registry,
        catalogue=catalogue,
        router=router,
        deps=deps,
        health=health,
        discovery=discovery,
        translator_stats=translator_stats,
        security=security,
        site=site,
        internal=internal,
        limiter=limiter,
        guard=guard,
        dashboard=dashboard,
        sticky=sticky,
        worker=worker or WorkerIdentity(),
        stats=stats,
        metrics=metrics,
        collector=collector,
        management=management,
        timeouts=timeouts,
    )
