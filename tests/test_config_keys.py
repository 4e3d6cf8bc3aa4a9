"""docs/CONFIG_KEYS.md stays true: every key olla reads, of the config and of the profiles, has
its row."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from olla.config import EndpointConfig, OllaConfig
from olla.profiles import BUILTIN_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIG_KEYS.md"
#: OllaConfig fields that are not keys: where it came from, and what loading it found
NOT_KEYS = {"source", "warnings", "notes", "discovery.endpoints"}
#: profile keys the shipped profiles do not use, that olla reads
PROFILE_EXTRAS = (
    "characteristics.single_model_server",
    "characteristics.auth.default_header",
    "detection.server_signatures",
    "detection.response_headers",
    "models.provider_prefixes",
    "resources.model_sizes[].max_concurrent",
    "resources.model_sizes[].notes",
    "resources.timeout_scaling.per_token_timeout_ms",
    "resources.slot_configuration.default_slots",
    "resources.slot_configuration.max_slots",
    "features",
    "deployment",
    "security",
    "performance",
    "olla_integration",
)


def _rows() -> list[str]:
    return [line.split("|")[1] for line in DOC.read_text().splitlines() if line.startswith("| `")]


#: config attributes whose YAML key sits elsewhere
YAML_PATHS = {
    f"model_registry.routing_strategy.{name}": f"model_registry.routing_strategy.options.{name}"
    for name in ("fallback_behavior", "discovery_timeout", "discovery_refresh_on_miss")
}


def _covered(key: str, rows: list[str]) -> bool:
    """A row names ``key``: whole, or as ``parent.x`` with the leaf listed beside it, or under
    a ``parent.*``/``parent.<name>`` row."""
    key = YAML_PATHS.get(key, key)
    parent, _, leaf = key.rpartition(".")
    for row in rows:
        if f"`{key}`" in row or f"`{key} " in row:
            return True
        if parent and f"`{parent}." in row and f"`{leaf}`" in row:
            return True
        if parent and (f"`{parent}.*`" in row or f"`{parent}.<" in row):
            return True
    return False


def _config_keys(value: Any, path: str = "") -> list[str]:
    keys = []
    for spec in fields(value):
        key = f"{path}.{spec.name}" if path else spec.name
        if key in NOT_KEYS:
            continue
        child = getattr(value, spec.name)
        if is_dataclass(child) and not isinstance(child, type):
            keys += _config_keys(child, key)
        else:
            keys.append(key)
    return keys


def _profile_keys(document: Any, path: str = "") -> list[str]:
    keys = []
    if isinstance(document, dict):
        for name, value in document.items():
            key = f"{path}.{name}" if path else str(name)
            keys.append(key)
            keys += _profile_keys(value, key)
    elif isinstance(document, list):
        for item in document:
            keys += _profile_keys(item, path + "[]")
    return sorted(set(keys))


@pytest.mark.parametrize("key", _config_keys(OllaConfig()))
def test_config_key_documented(key: str) -> None:
    """If olla reads a config key, then docs/CONFIG_KEYS.md has its row."""
    assert _covered(key, _rows()), key


@pytest.mark.parametrize("key", [f"…endpoints[].{spec.name}" for spec in fields(EndpointConfig)])
def test_endpoint_key_documented(key: str) -> None:
    """If olla reads an endpoint key, then docs/CONFIG_KEYS.md has its row."""
    assert _covered(key, _rows()), key


#: profile keys that hold other keys (each of those has its row)
SECTIONS = frozenset(
    {
        "routing",
        "api",
        "api.anthropic_support",
        "characteristics",
        "characteristics.auth",
        "detection",
        "models",
        "models.capability_patterns",
        "models.context_patterns",
        "request",
        "request.parsing_rules",
        "path_indices",
        "resources",
        "resources.model_sizes",
        "resources.quantization",
        "resources.quantization.multipliers",
        "resources.defaults",
        "resources.concurrency_limits",
        "resources.timeout_scaling",
        "resources.slot_configuration",
        "metrics",
        "metrics.extraction",
        "metrics.extraction.paths",
        "metrics.extraction.calculations",
    }
)


def _shipped_profile_keys() -> list[str]:
    keys: set[str] = set(PROFILE_EXTRAS)
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        keys.update(_profile_keys(yaml.safe_load(path.read_text())))
    # maps keyed by data (patterns by capability, figures, multipliers...) are one row each
    data_maps = (
        "models.capability_patterns.",
        "metrics.extraction.paths.",
        "metrics.extraction.calculations.",
        "resources.quantization.multipliers.",
        "path_indices.",
        "request.parsing_rules.",
    )
    return sorted(k for k in keys if not any(k.startswith(m) and k != m[:-1] for m in data_maps))


@pytest.mark.parametrize("key", _shipped_profile_keys())
def test_profile_key_documented(key: str) -> None:
    """If a profile key is shipped or read, then docs/CONFIG_KEYS.md has its row."""
    rows = _rows()
    sections = ("routing", "api", "characteristics", "detection", "models", "request", "resources")
    if key in (
        *sections,
        "metrics",
        "metrics.extraction",
        "api.anthropic_support",
        "resources.quantization",
        "resources.quantization.multipliers",
        "resources.defaults",
        "resources.timeout_scaling",
        "resources.slot_configuration",
        "characteristics.auth",
        "request.parsing_rules",
        "path_indices",
        "models.capability_patterns",
        "models.context_patterns",
        "resources.model_sizes",
        "resources.concurrency_limits",
        "metrics.extraction.paths",
        "metrics.extraction.calculations",
    ):
        return  # a section: its keys have the rows
    assert _covered(key, rows), key
