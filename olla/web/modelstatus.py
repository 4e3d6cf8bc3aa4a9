# -*- test-case-name: tests.test_status -*-
"""``/internal/status/models`` in the Go original's shape.

``total_models``, ``total_families``, ``total_endpoints``, ``models_by_family`` (family ->
sorted names) and ``recent_models`` (the ten last seen); with ``?detailed=true&group=family``
also ``model_groups`` (per family: its models, the endpoints serving them, the count, the
``unknown`` family last). A model summary has ``name``, ``type``, ``family``, ``size``
(``"1.88 GB"``), ``params``, ``quant``, ``last_seen`` (``"2m ago"``), ``last_seen_at``,
``endpoints`` with their ``endpoint_ids`` in the same order, ``aliases`` (other names it is
known by: configured aliases, and native names merged with it) and ``capabilities``; olla
adds ``resources`` per endpoint: the model's size class there, the prior for its load time and
the per-host cap its profile gives. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from olla.fleet.endpoints import Endpoint
from olla.fleet.listings import resource_view
from olla.fleet.models import ModelCatalogue, denormalise_quantization
from olla.web.status import format_bytes, rfc3339, time_ago

RECENT = 10
UNKNOWN = "unknown"
#: what moves with the wall clock alone (left out of the ETag)
_CLOCK_FIELDS = ("last_seen",)


def _summaries(
    catalogue: ModelCatalogue, endpoints: Sequence[Endpoint], now: float
) -> list[tuple[float, dict[str, Any]]]:
    """(last seen, summary) per model."""
    summaries = []
    for info, hosts in catalogue.merged(endpoints):
        facts = catalogue.facts(info, hosts)
        pairs = sorted((ep.name, ep.id) for ep in hosts)
        seen = [t for ep in hosts if (t := catalogue.synced_at(ep)) is not None]
        last = max(seen) if seen else None
        names = {n for ep in hosts if (n := catalogue.native_name(ep, info.name))}
        names |= catalogue.aliases_of(info.name)
        summary: dict[str, Any] = {
            "name": info.name,
            "type": facts.kind,
            "family": info.family or UNKNOWN,
            "last_seen": time_ago(last, now),
            "endpoints": [name for name, _ in pairs],
            "endpoint_ids": [endpoint_id for _, endpoint_id in pairs],
            "capabilities": list(facts.capabilities),
            "resources": [
                {"endpoint": ep.name, **resource_view(catalogue, ep, info.name)}
                for ep in sorted(hosts, key=lambda ep: (ep.name, ep.id))
            ],
        }
        if info.size:
            summary["size"] = format_bytes(info.size)
        if info.parameter_size:
            summary["params"] = info.parameter_size
        if info.quantization:
            summary["quant"] = denormalise_quantization(info.quantization)
        if last is not None:
            summary["last_seen_at"] = rfc3339(last)
        aliases = sorted(names - {info.name})
        if aliases:
            summary["aliases"] = aliases
        summaries.append((last or 0.0, summary))
    return summaries


def _groups(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_family: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        by_family.setdefault(summary["family"], []).append(summary)
    groups = [
        {
            "family": family,
            "models": sorted(models, key=lambda m: m["name"]),
            "endpoints": sorted({ep for m in models for ep in m["endpoints"]}),
            "model_count": len(models),
        }
        for family, models in by_family.items()
    ]
    return sorted(groups, key=lambda g: (g["family"] == UNKNOWN, g["family"]))


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _CLOCK_FIELDS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def status_models(
    catalogue: ModelCatalogue,
    endpoints: Sequence[Endpoint],
    now: float,
    *,
    detailed: bool = False,
    group: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The payload, and its stable part (for the ETag)."""
    seen = _summaries(catalogue, endpoints, now)
    summaries = [summary for _, summary in seen]
    by_family: dict[str, list[str]] = {}
    for summary in summaries:
        by_family.setdefault(summary["family"], []).append(summary["name"])
    recent = [s for _, s in sorted(seen, key=lambda pair: (-pair[0], pair[1]["name"]))][:RECENT]
    payload: dict[str, Any] = {
        "timestamp": rfc3339(now),
        "total_models": len(summaries),
        "total_families": len(by_family),
        "total_endpoints": len({ep for m in summaries for ep in m["endpoint_ids"]}),
        "models_by_family": {k: sorted(v) for k, v in sorted(by_family.items())},
        "recent_models": recent,
    }
    if detailed and group == "family":
        payload["model_groups"] = _groups(summaries)
    stable = _stable({k: v for k, v in payload.items() if k != "timestamp"})
    return payload, stable
