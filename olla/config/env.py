# -*- test-case-name: tests.test_config -*-
"""The ``OLLA_*`` environment variables olla honours, applied to the YAML document before
it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from olla.config._base import ConfigError, Path_, parse_duration, parse_size

#: The OLLA_* variables olla honours (as the Go original does), and the key each one sets.
_RL = ("server", "rate_limits")
_CORS = ("server", "cors")
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "OLLA_SERVER_HOST": (("server", "host"), "str"),
    "OLLA_SERVER_PORT": (("server", "port"), "int"),
    "OLLA_SERVER_READ_TIMEOUT": (("server", "read_timeout"), "duration"),
    "OLLA_SERVER_READ_HEADER_TIMEOUT": (("server", "read_header_timeout"), "duration"),
    "OLLA_SERVER_WRITE_TIMEOUT": (("server", "write_timeout"), "duration"),
    "OLLA_SERVER_MAX_BODY_SIZE": (("server", "request_limits", "max_body_size"), "size"),
    "OLLA_SERVER_MAX_HEADER_SIZE": (("server", "request_limits", "max_header_size"), "size"),
    "OLLA_SERVER_GLOBAL_RATE_LIMIT": ((*_RL, "global_requests_per_minute"), "int"),
    "OLLA_SERVER_PER_IP_RATE_LIMIT": ((*_RL, "per_ip_requests_per_minute"), "int"),
    "OLLA_SERVER_RATE_BURST_SIZE": ((*_RL, "burst_size"), "int"),
    "OLLA_SERVER_HEALTH_RATE_LIMIT": ((*_RL, "health_requests_per_minute"), "int"),
    "OLLA_SERVER_RATE_CLEANUP_INTERVAL": ((*_RL, "cleanup_interval"), "duration"),
    "OLLA_SERVER_TRUST_PROXY_HEADERS": ((*_RL, "trust_proxy_headers"), "bool"),
    "OLLA_SERVER_TRUSTED_PROXY_CIDRS": ((*_RL, "trusted_proxy_cidrs"), "list"),
    "OLLA_SERVER_CORS_ENABLED": ((*_CORS, "enabled"), "bool"),
    "OLLA_SERVER_CORS_ALLOWED_ORIGINS": ((*_CORS, "allowed_origins"), "list"),
    "OLLA_SERVER_CORS_ALLOWED_METHODS": ((*_CORS, "allowed_methods"), "list"),
    "OLLA_SERVER_CORS_ALLOWED_HEADERS": ((*_CORS, "allowed_headers"), "list"),
    "OLLA_SERVER_CORS_EXPOSED_HEADERS": ((*_CORS, "exposed_headers"), "list"),
    "OLLA_SERVER_CORS_ALLOW_CREDENTIALS": ((*_CORS, "allow_credentials"), "bool"),
    "OLLA_SERVER_CORS_MAX_AGE": ((*_CORS, "max_age"), "int"),
    "OLLA_PROXY_ENGINE": (("proxy", "engine"), "str"),
    "OLLA_PROXY_PROFILE": (("proxy", "profile"), "str"),
    "OLLA_PROXY_LOAD_BALANCER": (("proxy", "load_balancer"), "str"),
    "OLLA_PROXY_RESPONSE_TIMEOUT": (("proxy", "response_timeout"), "duration"),
    "OLLA_PROXY_READ_TIMEOUT": (("proxy", "read_timeout"), "duration"),
    "OLLA_PROXY_RESPONSE_HEADER_TIMEOUT": (("proxy", "response_header_timeout"), "duration"),
    "OLLA_PROXY_TLS_HANDSHAKE_TIMEOUT": (("proxy", "tls_handshake_timeout"), "duration"),
    "OLLA_PROXY_CONNECTION_KEEP_ALIVE": (("proxy", "connection_keep_alive"), "duration"),
    "OLLA_PROXY_STICKY_SESSIONS_ENABLED": (("proxy", "sticky_sessions", "enabled"), "bool"),
    "OLLA_LOGGING_LEVEL": (("logging", "level"), "str"),
    "OLLA_LOGGING_FORMAT": (("logging", "format"), "str"),
    "OLLA_SHOW_NERD_STATS": (("engineering", "show_nerdstats"), "bool"),
    "OLLA_MODEL_REGISTRY_TYPE": (("model_registry", "type"), "str"),
    "OLLA_MODEL_UNIFIER_ENABLED": (("model_registry", "enable_unifier"), "bool"),
    "OLLA_TRANSLATORS_ANTHROPIC_ENABLED": (("translators", "anthropic", "enabled"), "bool"),
    "OLLA_TRANSLATORS_ANTHROPIC_PASSTHROUGH_ENABLED": (
        ("translators", "anthropic", "passthrough_enabled"),
        "bool",
    ),
    "OLLA_TRANSLATORS_ANTHROPIC_MAX_MESSAGE_SIZE": (
        ("translators", "anthropic", "max_message_size"),
        "size",
    ),
}


def _env_value(raw: str, kind: str, path: Path_) -> object:
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"must be an integer, got {raw!r}", path) from None
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"must be true or false, got {raw!r}", path)
    if kind == "duration":
        parse_duration(raw, path)
        return raw
    if kind == "size":
        return parse_size(raw, path)
    if kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _apply_env(
    data: dict[Any, Any], environ: Mapping[str, str], warnings: list[str]
) -> dict[Any, Any]:
    """The document with the honoured OLLA_* variables applied; bad values are warnings."""
    merged: dict[Any, Any] = _deep_copy(data)
    for name, (path, kind) in ENV_OVERRIDES.items():
        if name not in environ:
            continue
        try:
            value = _env_value(environ[name], kind, path)
        except ConfigError as e:
            warnings.append(f"{name}: {e.reason}; ignored")
            continue
        node = merged
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
