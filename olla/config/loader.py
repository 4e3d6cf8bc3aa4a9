# -*- test-case-name: tests.test_config -*-
"""Finding, reading and parsing the config file into an :class:`OllaConfig`, the checks
that need the whole of it, and the keys accepted that have no effect yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from olla.config._base import ConfigError, SectionReader
from olla.config.dashboard import _dashboard
from olla.config.discovery import _discovery
from olla.config.engineering import _engineering
from olla.config.env import _apply_env
from olla.config.logging import _logging
from olla.config.management import _model_management, check_targets
from olla.config.models import _aliases, _model_registry
from olla.config.proxy import _proxy
from olla.config.root import OllaConfig
from olla.config.server import _server
from olla.config.state import _state
from olla.config.translators import _translators


def _validate(config: OllaConfig) -> None:
    if not 1 <= config.server.port <= 65535:
        raise ConfigError(
            f"must be an integer between 1 and 65535, got {config.server.port}", ("server", "port")
        )
    cors = config.server.cors
    if cors.enabled:
        if not cors.allowed_origins:
            raise ConfigError(
                'must not be empty when cors is enabled; use ["*"] to allow all',
                ("server", "cors", "allowed_origins"),
            )
        if cors.allow_credentials and "*" in cors.allowed_origins:
            raise ConfigError(
                'cannot be true with allowed_origins ["*"]; list the origins',
                ("server", "cors", "allow_credentials"),
            )
    if cors.max_age < 0:
        raise ConfigError("must not be negative", ("server", "cors", "max_age"))
    check_targets(config.model_management, config.discovery.endpoints)


def parse_config(
    data: object, environ: Mapping[str, str] | None = None, base_dir: str = "."
) -> OllaConfig:
    """Build an :class:`OllaConfig` from a decoded YAML document and the environment.

    Raises:
        ConfigError: with the key path of the first invalid value.
    """
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    notes: list[str] = []
    root = SectionReader(data, (), warnings)
    root = SectionReader(_apply_env(root.data, environ, warnings), (), warnings, notes)
    base = Path(base_dir)
    config = OllaConfig(
        server=_server(root.section("server"), environ, base),
        proxy=_proxy(root.section("proxy")),
        discovery=_discovery(root.section("discovery"), environ, base),
        model_registry=_model_registry(root.section("model_registry")),
        model_aliases=_aliases(root.raw("model_aliases"), warnings),
        translators=_translators(root.section("translators")),
        logging=_logging(root.section("logging"), base),
        engineering=_engineering(root.section("engineering")),
        dashboard=_dashboard(root.section("dashboard")),
        model_management=_model_management(root.section("model_management")),
        state=_state(root.section("state"), environ, base),
        profiles_dir=root.text("profiles_dir", "") or None,
    )
    root.finish()
    _validate(config)
    return replace(config, warnings=tuple(warnings), notes=tuple(notes))


SEARCH_PATHS = ("config/config.local.yaml", "config/config.yaml", "config.yaml", "default.yaml")
#: With no config file at all: one local Ollama, as the Go original does.
DEFAULT_DOCUMENT: dict[str, Any] = {
    "discovery": {
        "static": {
            "endpoints": [
                {
                    "url": "http://localhost:11434",
                    "name": "localhost",
                    "type": "ollama",
                    "priority": 100,
                    "health_check_url": "/",
                    "model_url": "/api/tags",
                    "check_interval": "5s",
                    "check_timeout": "2s",
                }
            ]
        }
    }
}


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> OllaConfig:
    """Read, parse and validate the config file.

    ``path`` wins; else ``OLLA_CONFIG_FILE``; else the first of :data:`SEARCH_PATHS` that
    exists; else the built-in default (one Ollama on localhost:11434).
    """
    environ = os.environ if environ is None else environ
    chosen = path or environ.get("OLLA_CONFIG_FILE") or None
    if chosen is None:
        chosen = next((p for p in SEARCH_PATHS if os.path.isfile(p)), None)
        if chosen is None:
            config = parse_config(DEFAULT_DOCUMENT, environ)
            return replace(config, warnings=("no config file found: using built-in defaults",))
    try:
        text = Path(chosen).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {chosen}: {e.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{chosen}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    config = parse_config(document, environ, str(Path(chosen).resolve().parent))
    return replace(config, source=str(chosen))


def check_endpoint_types(
    config: OllaConfig, known: Iterable[str], excluded: Iterable[str] = ()
) -> None:
    """Every endpoint's type must name a loaded profile (or be ``auto``).

    Raises:
        ConfigError: naming the endpoint's key path and the known types (and, for a type
            ``proxy.profile_filter`` left out, saying so).
    """
    names = sorted(set(known))
    left_out = set(excluded)
    for index, endpoint in enumerate(config.discovery.endpoints):
        if endpoint.type != "auto" and endpoint.type not in names:
            why = " (excluded by proxy.profile_filter)" if endpoint.type in left_out else ""
            raise ConfigError(
                f"unsupported endpoint type {endpoint.type!r}{why} "
                f"(known: {', '.join(names)}, auto)",
                ("discovery", "static", "endpoints", index, "type"),
            )


def profiles_dir(config: OllaConfig) -> Path | None:
    """Where user profiles live: ``profiles_dir``, else ``profiles/`` beside the config."""
    if config.profiles_dir:
        base = Path(config.source).parent if config.source else Path(".")
        return base / config.profiles_dir
    return Path(config.source).parent / "profiles" if config.source else None


#: Keys olla would accept (so Go configs load unchanged) without acting on them. It is empty
#: and must stay so: every key works (docs/CONFIG_KEYS.md says how) or is refused at startup
#: with its path and why; keys of the Go original's configs that it ignores itself are
#: compatibility notes (``OllaConfig.notes``). A row would be reported as
#: ``<key path>: accepted, has no effect yet`` when set to anything but its default.
NO_EFFECT_YET: tuple[str, ...] = ()


def _attribute(config: OllaConfig, key: str) -> Any:
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def no_effect_warnings(config: OllaConfig) -> list[str]:
    """``"<key path>: accepted, has no effect yet"`` for every :data:`NO_EFFECT_YET` key that
    ``config`` sets to something other than the default, in table order."""
    default = OllaConfig()
    found: list[str] = []
    for path in NO_EFFECT_YET:
        if path.endswith(".*"):
            section = path[:-2]
            keys = [f"{section}.{f.name}" for f in fields(_attribute(default, section))]
        else:
            keys = [path]
        found.extend(
            f"{key}: accepted, has no effect yet"
            for key in keys
            if _attribute(config, key) != _attribute(default, key)
        )
    return found
