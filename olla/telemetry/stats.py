# -*- test-case-name: tests.test_stats -*-
"""Request and probe statistics in fixed memory.

``StatsListener`` feeds ``Stats`` from the request path's outcome records: once per finished
request (``request_finished``) and once per upstream attempt (``attempt_finished``,
``failed_over``); the health service once per probe.
Everything here is a counter, a fixed-bucket histogram or a fixed-size window of recent
latencies, keyed by labels whose number is bounded: endpoints come from the config, routes
from the profiles, statuses are HTTP codes, and models past ``max_models`` fold into
``other``. A month of traffic costs the same memory as a minute.

``/internal/stats/models`` and the Prometheus exposition (``olla.web.metrics``) read it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from zope.interface import implementer

from olla.interfaces import IOutcomeListener
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import AttemptRecord, RequestRecord

#: the label of models past the cap, and of requests no endpoint answered
OTHER = "other"
NONE = "none"
#: the Go original tracks 50 models
MAX_MODELS = 50
#: recent successful latencies kept per model for p95/p99 (the Go original keeps 100)
LATENCY_WINDOW = 100
#: request-counter label sets past this many fold their model into ``other`` as well
MAX_REQUEST_SERIES = 5000

#: seconds; from a fast non-streamed answer to a long generation
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class Histogram:
    """Fixed buckets: counts per upper bound, their sum and count; never grows."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs in Prometheus' cumulative form, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class Traffic:
    """Requests counted for one model, or for one model on one endpoint."""

    requests: int = 0
    successes: int = 0
    latency_total: float = 0.0
    #: when the last request came
    last: float = 0.0

    def count(self, now: float, ok: bool, duration: float) -> None:
        self.requests += 1
        self.last = now
        if ok:
            self.successes += 1
            self.latency_total += duration


@dataclass(slots=True)
class ModelOnEndpoint(Traffic):
    """One model's traffic on one endpoint (the stats page's ``endpoint_breakdown``)."""

    consecutive_errors: int = 0


@dataclass(slots=True)
class ModelStats(Traffic):
    """One model's traffic (``/internal/stats/models``)."""

    failures: int = 0
    bytes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    #: endpoints that served it: at most the configured endpoints
    endpoints: dict[str, ModelOnEndpoint] = field(default_factory=dict)

    @property
    def avg_latency(self) -> float:
        return self.latency_total / self.successes if self.successes else 0.0

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` quantile of the recent successful latencies (nearest rank)."""
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1
        return ordered[rank]


class Stats:
    """Counters and bounded histograms over every finished request, attempt and probe."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self.max_models = max_models
        #: (endpoint, model, route, status) -> finished requests
        self.requests: dict[tuple[str, str, str, str], int] = {}
        #: endpoint -> request durations / time to first token (streams only)
        self.durations: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        self.tokens_per_second: dict[str, Histogram] = {}
        #: (endpoint, model, "prompt" | "completion") -> tokens
        self.tokens: dict[tuple[str, str, str], int] = {}
        #: endpoint -> bytes relayed to clients
        self.response_bytes: dict[str, int] = {}
        #: (endpoint, outcome) -> upstream attempts
        self.attempts: dict[tuple[str, str], int] = {}
        #: (endpoint, cause) -> attempts that handed the request to another endpoint
        self.failovers: dict[tuple[str, str], int] = {}
        #: (endpoint, status) -> health probes; endpoint -> probe latency
        self.probes: dict[tuple[str, str], int] = {}
        self.probe_latency: dict[str, Histogram] = {}
        self.models: dict[str, ModelStats] = {}

    # ------------------------------------------------------------------ writers

    def model_label(self, model: str | None) -> str:
        """``model``, or ``other`` once ``max_models`` others are tracked."""
        if not model:
            return NONE
        if model in self.models or len(self.models) < self.max_models:
            return model
        return OTHER

    def request_finished(self, record: RequestRecord, now: float) -> None:
        endpoint = record.endpoint or NONE
        if record.endpoint is None and record.model and record.model not in self.models:
            model = OTHER  # a name no endpoint served (a typo, a scan) takes no label of its own
        else:
            model = self.model_label(record.model)
        key = (endpoint, model, record.route, str(record.status or 0))
        requests = self.requests
        if key not in requests and len(requests) >= MAX_REQUEST_SERIES:
            key = (endpoint, OTHER, record.route, key[3])
        requests[key] = requests.get(key, 0) + 1
        if record.endpoint is None:
            return  # rejected before any attempt: not in the latency or model figures
        _histogram(self.durations, endpoint, DURATION_BUCKETS).observe(record.duration)
        if record.ttft is not None:
            _histogram(self.ttft, endpoint, TTFT_BUCKETS).observe(record.ttft)
        if record.tokens_per_second is not None:
            tps = _histogram(self.tokens_per_second, endpoint, TOKENS_PER_SECOND_BUCKETS)
            tps.observe(record.tokens_per_second)
        self.response_bytes[endpoint] = self.response_bytes.get(endpoint, 0) + record.bytes
        if record.model is None:
            return
        stats = self.models.get(model)
        if stats is None:
            stats = self.models[model] = ModelStats()
        stats.bytes += record.bytes
        there = stats.endpoints.get(endpoint)
        if there is None:
            there = stats.endpoints[endpoint] = ModelOnEndpoint()
        ok = record.outcome == "ok"
        stats.count(now, ok, record.duration)
        there.count(now, ok, record.duration)
        if ok:
            stats.recent.append(record.duration)
            there.consecutive_errors = 0
        elif record.outcome != "client_gone":
            stats.failures += 1
            there.consecutive_errors += 1
        if record.prompt_tokens is not None:
            stats.prompt_tokens += record.prompt_tokens
            self._add_tokens(endpoint, model, "prompt", record.prompt_tokens)
        if record.completion_tokens is not None:
            stats.completion_tokens += record.completion_tokens
            self._add_tokens(endpoint, model, "completion", record.completion_tokens)

    def _add_tokens(self, endpoint: str, model: str, direction: str, count: int) -> None:
        key = (endpoint, model, direction)
        self.tokens[key] = self.tokens.get(key, 0) + count

    def attempt_finished(self, endpoint: str, outcome: str) -> None:
        key = (endpoint, outcome)
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def failed_over(self, endpoint: str, cause: str) -> None:
        """``endpoint`` handed a request to the next candidate because of ``cause`` (a small
        fixed set: ``unreachable``, ``timeout``, ``status_<code>``)."""
        key = (endpoint, cause)
        self.failovers[key] = self.failovers.get(key, 0) + 1

    def probe_finished(self, endpoint: str, status: str, latency: float) -> None:
        key = (endpoint, status)
        self.probes[key] = self.probes.get(key, 0) + 1
        _histogram(self.probe_latency, endpoint, PROBE_BUCKETS).observe(latency)

    # ------------------------------------------------------------------ readers

    def label_sets(self) -> int:
        """How many labelled series the counters hold (bounded whatever the traffic)."""
        return (
            len(self.requests)
            + len(self.tokens)
            + len(self.attempts)
            + len(self.failovers)
            + len(self.probes)
            + len(self.durations)
            + len(self.ttft)
            + len(self.tokens_per_second)
            + len(self.models)
        )

    def by_popularity(self) -> Iterator[tuple[str, ModelStats]]:
        """Models, most requested first (ties by name)."""
        return iter(sorted(self.models.items(), key=lambda item: (-item[1].requests, item[0])))


def _histogram(table: dict[str, Histogram], key: str, bounds: Sequence[float]) -> Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram(bounds)
    return histogram


@implementer(IOutcomeListener)
class StatsListener(OutcomeListener):
    """Counts every outcome record into ``stats`` (registered by ``build_app``)."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def attempt_finished(self, record: AttemptRecord) -> None:
        name = record.start.endpoint.name
        self._stats.attempt_finished(name, record.outcome.value)
        if record.failover is not None:
            self._stats.failed_over(name, record.failover)

    def request_finished(self, record: RequestRecord) -> None:
        self._stats.request_finished(record, record.ended)
