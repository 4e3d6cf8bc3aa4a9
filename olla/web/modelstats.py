# -*- test-case-name: tests.test_stats -*-
"""``/internal/stats/models``: per-model usage in the Go original's shape (§10).

Fields the Go original has and never fills (``unique_clients``, ``routing_hits``,
``routing_misses``, ``routing_fallbacks``) are 0 there and here; olla adds what it knows on
top: the endpoints serving each model and its prompt and completion tokens.
"""

from __future__ import annotations

from typing import Any

from olla.telemetry.stats import ModelOnEndpoint, ModelStats, Stats
from olla.web.status import format_bytes, format_latency, format_percentage, rfc3339, time_ago

#: ``summary.active_models``: requested within this many seconds
ACTIVE_WINDOW = 3600.0


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _rate(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def _breakdown(name: str, there: ModelOnEndpoint, now: float) -> dict[str, Any]:
    average = there.latency_total / there.successes if there.successes else 0.0
    return {
        "endpoint_name": name,
        "average_latency": format_latency(_ms(average)),
        "last_used": time_ago(there.last, now),
        "request_count": there.requests,
        "success_rate": _rate(there.successes, there.requests),
        "consecutive_errors": there.consecutive_errors,
    }


def _model(name: str, stats: ModelStats, now: float, with_endpoints: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "total_requests": stats.requests,
        "successful_requests": stats.successes,
        "failed_requests": stats.failures,
        "success_rate": format_percentage(_rate(stats.successes, stats.requests)),
        "total_traffic": format_bytes(stats.bytes),
        "average_latency": format_latency(_ms(stats.avg_latency)),
        "p95_latency": format_latency(_ms(stats.percentile(0.95))),
        "p99_latency": format_latency(_ms(stats.percentile(0.99))),
        "unique_clients": 0,
        "last_requested": time_ago(stats.last, now),
        "routing_hits": 0,
        "routing_misses": 0,
        "routing_fallbacks": 0,
        "endpoints": sorted(stats.endpoints),
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
    }
    if with_endpoints:
        entry["endpoint_breakdown"] = {
            ep: _breakdown(ep, there, now) for ep, there in sorted(stats.endpoints.items())
        }
    return entry


def _endpoints(stats: Stats, now: float) -> dict[str, Any]:
    """Every endpoint's traffic summed over the models it served."""
    totals: dict[str, ModelOnEndpoint] = {}
    for model in stats.models.values():
        for name, there in model.endpoints.items():
            total = totals.setdefault(name, ModelOnEndpoint())
            total.requests += there.requests
            total.successes += there.successes
            total.latency_total += there.latency_total
            total.last = max(total.last, there.last)
    return {name: _breakdown(name, total, now) for name, total in sorted(totals.items())}


def models_stats_payload(
    stats: Stats, now: float, *, include_endpoints: bool = False, include_summary: bool = False
) -> dict[str, Any]:
    """The page: ``timestamp``, ``models`` (most requested first), ``endpoints`` (filled with
    ``include_summary``) and ``summary``."""
    ranked = list(stats.by_popularity())
    models = [_model(name, model, now, include_endpoints) for name, model in ranked]
    requested = [(name, model) for name, model in ranked if model.requests]
    total = sum(model.requests for _, model in ranked)
    return {
        "timestamp": rfc3339(now),
        "endpoints": _endpoints(stats, now) if include_summary else {},
        "models": models,
        "summary": {
            "overall_success_rate": format_percentage(
                _rate(sum(model.successes for _, model in ranked), total)
            ),
            "total_traffic": format_bytes(sum(model.bytes for _, model in ranked)),
            "most_popular_model": requested[0][0] if requested else "",
            "least_popular_model": requested[-1][0] if requested else "",
            "total_models": len(models),
            "active_models": sum(1 for _, model in ranked if now - model.last < ACTIVE_WINDOW),
            "total_requests": total,
        },
    }
