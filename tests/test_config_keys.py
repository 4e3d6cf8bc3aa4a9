"""docs/CONFIG_KEYS.md stays true: every key olla reads, of the config and of the profiles, has
its row, and its Live column says what a reload does with it."""

from __future__ import annotations

import io
import re
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.task import Clock, Cooperator

from olla.config import EndpointConfig, ModelManagementConfig, OllaConfig
from olla.daemon.app import build_app
from olla.daemon.logging import StreamSink, SwitchableObserver, make_observer
from olla.daemon.reload import Reloader
from olla.daemon.tap import load_all
from olla.profiles import BUILTIN_DIR, builtin_profiles
from tests.proxyharness import HostAgent

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


# ------------------------------------------------------------------------------ the Live column


def _reloader() -> Reloader:
    """The daemon's reloader over a default app with every optional component on (model
    management): what its components say they apply."""
    clock = Clock()
    profiles = builtin_profiles()
    app = build_app(
        replace(OllaConfig(), model_management=ModelManagementConfig(enabled=True)),
        profiles,
        clock=clock,
        agent=HostAgent({}),
        cooperator=Cooperator(scheduler=lambda work: clock.callLater(0, work)),
    )
    sink = StreamSink(io.StringIO())
    observer = SwitchableObserver(make_observer("json", "info", sink), sink)
    return Reloader(app, load_all, clock=clock, profiles=profiles, observer=observer)


#: YAML key paths whose config attribute sits elsewhere (the reload compares attributes)
ATTRIBUTE_PATHS = {yaml_path: attribute for attribute, yaml_path in YAML_PATHS.items()}
#: rows whose Live cell speaks of some of their keys: the keys it says are live
PARTLY_LIVE = {"level, format: yes": ("logging.level", "logging.format")}


def _live_rows() -> list[tuple[list[str], str]]:
    """The config file table's rows: their keys (a bare name after a dotted one shares its
    parent) and their Live cell."""
    section = DOC.read_text().split("## Config file", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        keys: list[str] = []
        parent = ""
        for name in re.findall(r"`([^`]+)`", cells[0]):
            if name.startswith("…endpoints[]"):
                parent = "discovery.endpoints"  # the endpoint list is one value
                keys.append(parent)
                continue
            if parent == "discovery.endpoints":
                continue
            if "." in name:
                parent = name.rsplit(".", 1)[0]
            elif parent:
                name = f"{parent}.{name}"
            keys.append(ATTRIBUTE_PATHS.get(name, name).removesuffix(".*"))
        rows.append((keys, cells[-1]))
    return rows


def test_live_column_is_true() -> None:
    """If docs/CONFIG_KEYS.md says a key is live, then a reload applies it (a component's
    ``reconfigures`` names it); if it says no, then the reload says it needs a restart."""
    reloader = _reloader()
    wrong = []
    for keys, live in _live_rows():
        if not live:
            continue  # refused keys and notes: nothing to apply
        said = PARTLY_LIVE.get(live)
        for key in keys:
            expected = key in said if said is not None else live == "yes"
            if reloader.is_live(key) != expected:
                wrong.append(f"{key}: docs say {live!r}")
    assert wrong == []


def test_live_column_rule_bites() -> None:
    """If a component stopped naming a key it applies, then the check would see it."""
    reloader = _reloader()
    assert reloader.is_live("proxy.response_timeout")
    assert not reloader.is_live("server.port")
    rows = {tuple(keys): live for keys, live in _live_rows()}
    assert rows[("proxy.response_timeout",)] == "yes"
    assert rows[("server.request_limits.max_body_size", "server.request_limits.max_header_size")]
