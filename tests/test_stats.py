"""Request and probe statistics in fixed memory (``olla.telemetry.stats``) and the
``/internal/stats/models`` page built from them (``olla.web.modelstats``)."""

from __future__ import annotations

from olla.telemetry.stats import (
    LATENCY_WINDOW,
    MAX_REQUEST_SERIES,
    OTHER,
    Histogram,
    RequestRecord,
    Stats,
)
from olla.web.modelstats import models_stats_payload


def _record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "endpoint": "a",
        "model": "llama3",
        "route": "ollama",
        "status": 200,
        "outcome": "ok",
        "attempts": 1,
        "bytes": 100,
        "duration": 0.5,
    }
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def test_histogram_buckets() -> None:
    """If values are observed, then each lands in the first bucket whose bound holds it, the
    counts come out cumulative ending with ``+Inf``, and sum and count add up."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == 7.65


def test_request_counted_once_everywhere() -> None:
    """If a streamed request with tokens finishes, then it counts once by endpoint, model,
    route and status, its duration and TTFT are observed once, and its tokens are added by
    direction and to its model."""
    stats = Stats()
    stats.request_finished(
        _record(ttft=0.05, prompt_tokens=10, completion_tokens=40, tokens_per_second=80.0), 100.0
    )
    assert stats.requests == {("a", "llama3", "ollama", "200"): 1}
    assert stats.durations["a"].count == 1
    assert stats.ttft["a"].count == 1
    assert stats.tokens_per_second["a"].count == 1
    assert stats.tokens == {("a", "llama3", "prompt"): 10, ("a", "llama3", "completion"): 40}
    model = stats.models["llama3"]
    assert (model.requests, model.successes, model.failures) == (1, 1, 0)
    assert (model.prompt_tokens, model.completion_tokens) == (10, 40)
    assert model.endpoints["a"].requests == 1


def test_rejected_request_only_counted() -> None:
    """If a request is rejected before any attempt, then it counts under endpoint ``none``
    and nowhere else (no latency, no model figures); a model nobody served is ``other``."""
    stats = Stats()
    stats.request_finished(_record(endpoint=None, status=404, outcome="rejected"), 1.0)
    assert stats.requests == {("none", OTHER, "ollama", "404"): 1}
    assert stats.durations == {} and stats.models == {}
    stats.request_finished(_record(), 2.0)
    stats.request_finished(_record(endpoint=None, status=503, outcome="rejected"), 3.0)
    assert stats.requests[("none", "llama3", "ollama", "503")] == 1


def test_failures_and_client_gone() -> None:
    """If requests fail or their clients leave, then failures count the failed ones only, a
    success resets the endpoint's consecutive errors, and latency averages successes."""
    stats = Stats()
    stats.request_finished(_record(outcome="failed", status=502, duration=9.0), 1.0)
    stats.request_finished(_record(outcome="failed", status=502, duration=9.0), 2.0)
    assert stats.models["llama3"].endpoints["a"].consecutive_errors == 2
    stats.request_finished(_record(outcome="client_gone"), 3.0)
    stats.request_finished(_record(duration=1.0), 4.0)
    model = stats.models["llama3"]
    assert (model.requests, model.successes, model.failures) == (4, 1, 2)
    assert model.avg_latency == 1.0
    assert model.endpoints["a"].consecutive_errors == 0


def test_models_past_the_cap_fold_into_other() -> None:
    """If more distinct models than the cap are requested, then the first ``max_models`` keep
    their own labels and every later one counts as ``other`` (an entry of its own)."""
    stats = Stats(max_models=3)
    for name in ("m1", "m2", "m3", "m4", "m5"):
        stats.request_finished(_record(model=name, prompt_tokens=1), 1.0)
    assert set(stats.models) == {"m1", "m2", "m3", OTHER}
    assert stats.models[OTHER].requests == 2
    assert stats.model_label("m4") == OTHER
    assert stats.model_label("m2") == "m2"
    stats.request_finished(_record(model="m2"), 2.0)
    assert stats.models["m2"].requests == 2
    assert stats.requests[("a", OTHER, "ollama", "200")] == 2
    assert stats.tokens[("a", OTHER, "prompt")] == 2


def test_label_sets_stay_bounded() -> None:
    """If 20,000 requests each name a different model, on two endpoints and many statuses,
    then the number of labelled series stays bounded (models past the cap are ``other``;
    request series past their cap fold too)."""
    stats = Stats()
    for i in range(20_000):
        stats.request_finished(
            _record(
                model=f"model-{i}",
                endpoint="a" if i % 2 else "b",
                status=200 + i % 300,
                prompt_tokens=1,
                completion_tokens=2,
            ),
            float(i),
        )
    assert len(stats.models) == stats.max_models + 1  # and other
    assert len(stats.requests) <= MAX_REQUEST_SERIES + 2 * 300
    bound = stats.label_sets()
    for i in range(20_000, 30_000):
        stats.request_finished(
            _record(model=f"model-{i}", status=200 + i % 300, prompt_tokens=1), float(i)
        )
    assert stats.label_sets() <= bound + 2 * 300


def test_latency_window_and_percentiles() -> None:
    """If more successes than the window arrive, then p95/p99 come from the latest
    ``LATENCY_WINDOW`` latencies only (nearest rank)."""
    stats = Stats()
    for _ in range(50):
        stats.request_finished(_record(duration=100.0), 1.0)
    for i in range(1, LATENCY_WINDOW + 1):
        stats.request_finished(_record(duration=i / 1000), 2.0)
    model = stats.models["llama3"]
    assert len(model.recent) == LATENCY_WINDOW
    assert model.percentile(0.95) == 0.095
    assert model.percentile(0.99) == 0.099


def test_probes_and_attempts() -> None:
    """If probes, attempts and failovers are reported, then each is counted by its labels and
    probe latencies are observed."""
    stats = Stats()
    stats.probe_finished("a", "healthy", 0.01)
    stats.probe_finished("a", "offline", 2.0)
    stats.attempt_finished("a", "refused")
    stats.failed_over("a", "status_503")
    assert stats.probes == {("a", "healthy"): 1, ("a", "offline"): 1}
    assert stats.probe_latency["a"].count == 2
    assert stats.attempts == {("a", "refused"): 1}
    assert stats.failovers == {("a", "status_503"): 1}


def test_models_page_shape() -> None:
    """If two models were requested, then ``/internal/stats/models`` has the Go original's
    fields, most requested first, the summary over both, the endpoints serving each and their
    tokens; the endpoint breakdown and summary only when asked."""
    stats = Stats()
    for _ in range(3):
        stats.request_finished(_record(prompt_tokens=5, completion_tokens=7), 1000.0)
    stats.request_finished(_record(model="phi", endpoint="b", outcome="failed"), 1000.0)
    page = models_stats_payload(stats, 1010.0)
    assert set(page) == {"timestamp", "models", "endpoints", "summary"}
    assert page["endpoints"] == {}
    first, second = page["models"]
    assert first["name"] == "llama3" and second["name"] == "phi"
    go_fields = {
        "name",
        "total_requests",
        "successful_requests",
        "failed_requests",
        "success_rate",
        "total_traffic",
        "average_latency",
        "p95_latency",
        "p99_latency",
        "unique_clients",
        "last_requested",
        "routing_hits",
        "routing_misses",
        "routing_fallbacks",
    }
    assert go_fields <= set(first)
    assert "endpoint_breakdown" not in first
    assert first["total_requests"] == 3 and first["success_rate"] == "100%"
    assert first["average_latency"] == "500ms" and first["p95_latency"] == "500ms"
    assert first["total_traffic"] == "300 B"
    assert first["last_requested"] == "10s ago"
    assert first["endpoints"] == ["a"]
    assert (first["prompt_tokens"], first["completion_tokens"]) == (15, 21)
    assert second["failed_requests"] == 1 and second["success_rate"] == "0%"
    assert page["summary"] == {
        "overall_success_rate": "75.0%",
        "total_traffic": "400 B",
        "most_popular_model": "llama3",
        "least_popular_model": "phi",
        "total_models": 2,
        "active_models": 2,
        "total_requests": 4,
    }
    detailed = models_stats_payload(stats, 1010.0, include_endpoints=True, include_summary=True)
    breakdown = detailed["models"][0]["endpoint_breakdown"]["a"]
    assert breakdown["request_count"] == 3 and breakdown["success_rate"] == 100.0
    assert set(detailed["endpoints"]) == {"a", "b"}
    assert detailed["endpoints"]["b"]["consecutive_errors"] == 0
    later = models_stats_payload(stats, 1000.0 + 7200)
    assert later["summary"]["active_models"] == 0
