# -*- test-case-name: tests.test_metrics -*-
"""``/internal/metrics``: Prometheus exposition with prometheus_client.

Each app has its own ``CollectorRegistry`` (never the global one: the tests and hot reload
build several apps in one process). ``OllaCollector`` reads the live state at scrape time:
the request stats (``olla.telemetry.stats``), the endpoint registry (health, in flight,
circuits, model lists), the translators and the security counters, so a request costs olla
a few dict updates in ``Stats`` and no metric objects at all. Its label sets are bounded the
same way ``Stats`` bounds them. The process figures come from prometheus_client's own collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from olla import __version__
from olla.anthropic.stats import Fallback, TranslatorStats
from olla.config import OllaConfig
from olla.daemon.workers import WorkerIdentity
from olla.fleet.endpoints import EndpointRegistry, EndpointStatus
from olla.fleet.sticky import StickySessions
from olla.interfaces import IReconfigurable
from olla.telemetry.security import SecurityStats
from olla.telemetry.stats import Histogram, Stats

_BREAKER_STATES = ("closed", "open", "half_open")


def _histograms(
    name: str, documentation: str, table: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["endpoint"])
    for endpoint, histogram in sorted(table.items()):
        family.add_metric([endpoint], histogram.cumulative(), histogram.sum)
    return family


#: a labelled family's samples: ``(label values, value)`` rows
Rows = Iterable[tuple[tuple[str, ...], float]]
_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _filled(family: _Family, table: Rows) -> _Family:
    for key, value in sorted(table):
        family.add_metric(list(key), value)
    return family


def counter_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    table: Rows,
) -> CounterMetricFamily:
    """A counter family with one sample per ``(label values, count)`` row, sorted."""
    return _filled(CounterMetricFamily(name, documentation, labels=list(labels)), table)


def gauge_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    table: Rows,
) -> GaugeMetricFamily:
    """A gauge family with one sample per ``(label values, value)`` row, sorted."""
    return _filled(GaugeMetricFamily(name, documentation, labels=list(labels)), table)


@implementer(IReconfigurable)
class OllaCollector(Collector):
    """Everything olla knows, as Prometheus metric families, read when scraped."""

    #: it applies no setting: ``olla_info`` shows the running config
    reconfigures: tuple[str, ...] = ()

    def reconfigure(self, config: OllaConfig) -> None:
        self.config = config

    def __init__(
        self,
        stats: Stats,
        registry: EndpointRegistry,
        *,
        clock: IReactorTime,
        config: OllaConfig,
        security: SecurityStats,
        translators: Sequence[TranslatorStats] = (),
        active_connections: Callable[[], int] = lambda: 0,
        worker: WorkerIdentity | None = None,
        sticky: StickySessions | None = None,
        state: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self._stats = stats
        self._registry = registry
        self._clock = clock
        #: the running config, for ``olla_info``; a reload puts the new one here
        self.config = config
        self._worker = worker or WorkerIdentity()
        self._sticky = sticky
        self._security = security
        self._translators = list(translators)
        self._active_connections = active_connections
        self._started = clock.seconds()
        self._state = state

    def collect(self) -> Iterable[Metric]:
        yield from self._process()
        yield from self._requests()
        yield from self._endpoints()
        yield from self._translator_metrics()
        yield from self._security_metrics()
        yield from self._sticky_metrics()
        yield from self._state_metrics()

    def _process(self) -> Iterator[Metric]:
        proxy = self.config.proxy
        info = InfoMetricFamily("olla", "olla's version and proxy setup")
        info.add_metric(
            [],
            {
                "version": __version__,
                "engine": proxy.engine,
                "profile": proxy.profile,
                "balancer": proxy.load_balancer,
                # each --workers process has its own figures: say whose these are
                "worker": str(self._worker.id),
                "workers": str(self._worker.count),
            },
        )
        yield info
        yield GaugeMetricFamily(
            "olla_uptime_seconds",
            "Seconds since olla started",
            value=self._clock.seconds() - self._started,
        )
        yield GaugeMetricFamily(
            "olla_active_connections",
            "Open client connections",
            value=self._active_connections(),
        )

    def _requests(self) -> Iterator[Metric]:
        stats = self._stats
        yield counter_family(
            "olla_requests_total",
            "Finished proxied requests by endpoint, model, route and status "
            "(endpoint none: rejected before any attempt)",
            ("endpoint", "model", "route", "status"),
            stats.requests.items(),
        )
        yield _histograms(
            "olla_request_duration_seconds",
            "Proxied requests, start to last byte",
            stats.durations,
        )
        yield _histograms(
            "olla_time_to_first_token_seconds",
            "Streamed answers: request start to the first body byte",
            stats.ttft,
        )
        yield _histograms(
            "olla_generation_tokens_per_second",
            "Completion tokens per second of generation, as the backend reported them",
            stats.tokens_per_second,
        )
        yield counter_family(
            "olla_tokens_total",
            "Tokens the backends reported, by direction (prompt, completion)",
            ("endpoint", "model", "direction"),
            stats.tokens.items(),
        )
        yield counter_family(
            "olla_response_bytes_total",
            "Body bytes relayed to clients",
            ("endpoint",),
            (((endpoint,), count) for endpoint, count in stats.response_bytes.items()),
        )
        yield counter_family(
            "olla_upstream_attempts_total",
            "Upstream attempts by how they ended (ok, failed, refused, client_gone)",
            ("endpoint", "outcome"),
            stats.attempts.items(),
        )
        yield counter_family(
            "olla_failovers_total",
            "Attempts that handed the request to the next endpoint, by cause",
            ("endpoint", "cause"),
            stats.failovers.items(),
        )
        yield GaugeMetricFamily(
            "olla_models_tracked",
            f"Models with their own labels (past {stats.max_models} they count as other)",
            value=len(stats.models),
        )

    def _endpoints(self) -> Iterator[Metric]:
        registry = self._registry
        up = GaugeMetricFamily(
            "olla_endpoint_up",
            "1 for the endpoint's current health status, 0 for the others",
            labels=["endpoint", "status"],
        )
        in_flight = GaugeMetricFamily(
            "olla_endpoint_in_flight_requests",
            "Upstream attempts in flight",
            labels=["endpoint"],
        )
        breaker = GaugeMetricFamily(
            "olla_circuit_breaker_state",
            "1 for the endpoint's current circuit state, 0 for the others",
            labels=["endpoint", "state"],
        )
        models = GaugeMetricFamily(
            "olla_endpoint_models", "Models the endpoint listed last", labels=["endpoint"]
        )
        discovery = CounterMetricFamily(
            "olla_discovery_total",
            "Model-list requests by result (ok, failed)",
            labels=["endpoint", "result"],
        )
        for endpoint in registry:
            name = endpoint.name
            state = registry.state(endpoint)
            for status in EndpointStatus:
                up.add_metric([name, status.value], 1 if state.status is status else 0)
            in_flight.add_metric([name], registry.load.in_flight(endpoint))
            circuit = registry.breakers.state(endpoint)
            for kind in _BREAKER_STATES:
                breaker.add_metric([name, kind], 1 if circuit == kind else 0)
            models.add_metric([name], state.model_count)
            discovery.add_metric([name, "ok"], state.discoveries_ok)
            discovery.add_metric([name, "failed"], state.discoveries_failed)
        yield from (up, in_flight, breaker, models, discovery)
        stats = self._stats
        yield counter_family(
            "olla_health_checks_total",
            "Health probes by the status they found",
            ("endpoint", "status"),
            stats.probes.items(),
        )
        yield _histograms(
            "olla_health_check_duration_seconds", "Health probe latency", stats.probe_latency
        )

    def _translator_metrics(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "olla_translator_requests_total",
            "Translator requests by mode (passthrough, translation)",
            labels=["translator", "mode"],
        )
        fallbacks = CounterMetricFamily(
            "olla_translator_fallbacks_total",
            "Translated instead of passed through, by reason",
            labels=["translator", "reason"],
        )
        outcomes = CounterMetricFamily(
            "olla_translator_results_total",
            "Finished translator requests by result (success, failure)",
            labels=["translator", "result"],
        )
        for stats in self._translators:
            requests.add_metric([stats.name, "passthrough"], stats.passthrough)
            requests.add_metric([stats.name, "translation"], stats.translation)
            for reason in Fallback:
                fallbacks.add_metric([stats.name, reason.value], stats.fallbacks[reason])
            outcomes.add_metric([stats.name, "success"], stats.succeeded)
            outcomes.add_metric([stats.name, "failure"], stats.failed)
        yield from (requests, fallbacks, outcomes)

    def _security_metrics(self) -> Iterator[Metric]:
        snapshot = self._security.snapshot()
        violations = CounterMetricFamily(
            "olla_security_violations_total",
            "Requests refused to protect olla, by kind",
            labels=["kind"],
        )
        violations.add_metric(["size_limit"], snapshot.size_limits)
        violations.add_metric(["header_limit"], snapshot.header_limits)
        violations.add_metric(["rate_limit"], snapshot.rate_limits)
        violations.add_metric(["auth_failure"], snapshot.auth_failures)
        yield violations
        yield GaugeMetricFamily(
            "olla_security_blocked_ips",
            "Distinct rate-limited client addresses in the tracking window",
            value=snapshot.blocked_ips,
        )

    def _sticky_metrics(self) -> Iterator[Metric]:
        if self._sticky is None:  # proxy.sticky_sessions.enabled: false
            return
        figures = self._sticky.stats()
        yield GaugeMetricFamily(
            "olla_sticky_sessions_active",
            "Conversations pinned to an endpoint now",
            value=figures["active_sessions"],
        )
        outcomes = CounterMetricFamily(
            "olla_sticky_session_requests_total",
            "Requests with a session key, by outcome: hit (served where pinned), miss (a new "
            "session or a pin that moved)",
            labels=["outcome"],
        )
        outcomes.add_metric(["hit"], figures["hits"])
        outcomes.add_metric(["miss"], figures["misses"])
        yield outcomes
        yield CounterMetricFamily(
            "olla_sticky_session_evictions_total",
            "Sessions dropped by the LRU (max_sessions) or the idle TTL",
            value=figures["evictions"],
        )

    def _state_metrics(self) -> Iterator[Metric]:
        if self._state is None:
            return
        state = self._state()
        backend = str(state["backend"])
        up = GaugeMetricFamily(
            "olla_state_store_up",
            "1 while the state store answers (always 1 with backend memory)",
            labels=["backend"],
        )
        up.add_metric([backend], 1 if state["ok"] else 0)
        yield up
        fallbacks = state["fallbacks"]
        yield CounterMetricFamily(
            "olla_state_store_fallbacks",
            "Answers taken from this process's memory because the state store did not answer",
            value=fallbacks if isinstance(fallbacks, int) else 0,
        )


class Collectors(Collector):
    """Several collectors read as one (what a worker writes into its multiprocess files)."""

    def __init__(self, *parts: Collector) -> None:
        self._parts = parts

    def collect(self) -> Iterable[Metric]:
        for part in self._parts:
            yield from part.collect()


def metrics_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of olla's own: its collectors and the process, platform and GC figures."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(namespace="olla", registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """The ``/internal/metrics`` page over one registry (``before``: called first, to bring
    this process's figures up to date where they are read from elsewhere)."""

    def __init__(
        self, registry: CollectorRegistry, before: Callable[[], object] = lambda: None
    ) -> None:
        self.registry = registry
        self._before = before

    def render(self, request: IRequest) -> bytes:
        """The text format (or OpenMetrics, when the scraper asks for it in ``Accept``)."""
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        request.setHeader(b"Cache-Control", b"no-cache")
        self._before()
        body: bytes = encoder(self.registry)
        return body
