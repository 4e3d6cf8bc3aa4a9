# -*- test-case-name: tests.test_models -*-
"""Model listings answered from the catalogue (never proxied), in each client's shape."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from olla.fleet.endpoints import Endpoint
from olla.fleet.models import (
    ModelCatalogue,
    denormalise_quantization,
    family_and_variant,
)
from olla.fleet.values import ModelInfo

_EPOCH = "1970-01-01T00:00:00Z"


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return _EPOCH
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _details(info: ModelInfo) -> dict[str, Any]:
    return {
        "format": info.format or "gguf",
        "family": info.family or "",
        "families": [info.family] if info.family else None,
        "parameter_size": info.parameter_size or "",
        "quantization_level": denormalise_quantization(info.quantization) or "",
    }


def resource_view(catalogue: ModelCatalogue, endpoint: Endpoint, name: str) -> dict[str, Any]:
    """What ``endpoint``'s profile says about ``name``: its size class, the memory it needs,
    the prior for its load time (or the learnt one) and the per-host cap."""
    sizing = catalogue.sizing(endpoint, name)
    if sizing is None:
        return {}
    learned = catalogue.learned_load_time(name)
    prior = sizing.load_seconds
    return {
        "size_class": sizing.size_class,
        "min_memory_gb": round(sizing.min_memory_gb, 3),
        "recommended_memory_gb": round(sizing.recommended_memory_gb, 3),
        "min_gpu_memory_gb": round(sizing.min_gpu_memory_gb, 3),
        "requires_gpu": sizing.requires_gpu,
        "load_time_prior_ms": None if prior is None else round(prior * 1000),
        "load_time_learned_ms": None if learned is None else round(learned * 1000),
        "max_concurrent": sizing.max_concurrent,
    }


def ollama_tags(catalogue: ModelCatalogue, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """``/api/tags``: each model once, newest first as Ollama orders it. An entry an Ollama
    backend listed is replayed as it was; others get ``name`` and ``model`` both set (the SDK
    reads ``model``)."""
    models = []
    for info, hosts in catalogue.merged(endpoints):
        if info.native is not None:
            models.append({**info.native, "model": info.native.get("model", info.name)})
            continue
        synced = max((catalogue.synced_at(ep) or 0.0) for ep in hosts)
        models.append(
            {
                "name": info.name,
                "model": info.name,
                "modified_at": info.modified_at or _iso(synced),
                "size": info.size or 0,
                "digest": info.digest or "",
                "details": _details(info),
            }
        )
    models.sort(key=lambda entry: _timestamp(entry.get("modified_at")), reverse=True)
    return {"models": models}


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def ollama_ps(catalogue: ModelCatalogue, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """``/api/ps`` merged: the rows every Ollama endpoint reported, each model once."""
    models: list[Mapping[str, object]] = []
    seen: set[tuple[object, object]] = set()
    for endpoint in endpoints:
        for row in catalogue.running_on(endpoint):
            key = (row.get("name"), row.get("digest"))
            if key not in seen:
                seen.add(key)
                models.append(row)
    return {"models": models}


def openai_models(
    catalogue: ModelCatalogue, endpoints: Sequence[Endpoint], now: float
) -> dict[str, Any]:
    """OpenAI ``/v1/models`` over ``endpoints``."""
    return {
        "object": "list",
        "data": [
            {"id": info.name, "object": "model", "created": int(now), "owned_by": "olla"}
            for info, _ in catalogue.merged(endpoints)
        ],
    }


def lmstudio_models(catalogue: ModelCatalogue, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """LM Studio's ``/api/v0/models`` shape: type and load state per model."""
    data = []
    for info, hosts in catalogue.merged(endpoints):
        loaded = any(catalogue.in_memory(ep, info.name) for ep in hosts)
        facts = catalogue.facts(info, hosts)
        kind = facts.kind
        entry: dict[str, Any] = {
            "id": info.name,
            "object": "model",
            "type": {"embeddings": "embeddings", "vlm": "vlm"}.get(kind, "llm"),
            "state": "loaded" if loaded else "not-loaded",
        }
        if info.family:
            entry["arch"] = info.family
        if info.quantization:
            entry["quantization"] = denormalise_quantization(info.quantization)
        if facts.context_length:
            entry["max_context_length"] = facts.context_length
        data.append(entry)
    return {"object": "list", "data": data}


def unified_models(
    catalogue: ModelCatalogue, endpoints: Sequence[Endpoint], now: float
) -> dict[str, Any]:
    """``/olla/models``: the unified view, with where each model is and whether it is warm."""
    data = []
    for info, hosts in catalogue.merged(endpoints):
        facts = catalogue.facts(info, hosts)
        data.append(
            {
                "id": info.name,
                "object": "model",
                "owned_by": "olla",
                "created": int(now),
                "olla": {
                    "type": facts.kind,
                    "capabilities": list(facts.capabilities),
                    "max_context_length": facts.context_length,
                    "family": info.family or family_and_variant(info.name)[0],
                    "variant": family_and_variant(info.name)[1],
                    "parameter_size": info.parameter_size,
                    "quantization": info.quantization,
                    "availability": [
                        {
                            "endpoint": ep.name,
                            "state": "loaded"
                            if catalogue.in_memory(ep, info.name)
                            else "available",
                            **resource_view(catalogue, ep, info.name),
                        }
                        for ep in hosts
                    ],
                },
            }
        )
    return {"object": "list", "data": data}


def model_detail(
    catalogue: ModelCatalogue, endpoints: Sequence[Endpoint], name: str
) -> dict[str, Any] | None:
    """``/olla/models/{id}``: one model, or None."""
    for info, hosts in catalogue.merged(endpoints):
        if info.name.lower() == name.lower():
            facts = catalogue.facts(info, hosts)
            return {
                "id": info.name,
                "family": info.family or "unknown",
                "parameter_size": info.parameter_size,
                "quantization": info.quantization,
                "format": info.format,
                "total_disk_size": info.size,
                "digest": info.digest,
                "endpoints": [ep.name for ep in hosts],
                "type": facts.kind,
                "capabilities": list(facts.capabilities),
                "max_context_length": facts.context_length,
                "loaded_endpoints": [ep.name for ep in hosts if catalogue.in_memory(ep, info.name)],
                "resources": {ep.name: resource_view(catalogue, ep, info.name) for ep in hosts},
            }
    return None
