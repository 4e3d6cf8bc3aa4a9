# -*- test-case-name: tests.test_config -*-
"""The olla configuration: YAML parsed once into frozen, typed objects.

Every value a later module reads is here, with the documented default. Durations are
float seconds, sizes are int bytes. Errors carry the key path of the offending value.

The package is laid out by job: :mod:`olla.config._base` holds the reader toolkit
(:class:`ConfigError`, :class:`SectionReader`, durations, sizes, ``${VAR}``); each section
module holds its dataclasses beside their reader (``server``, ``proxy``, ``discovery``,
``models``, ``translators``, ``logging``, ``dashboard``, ``engineering``, ``management``,
``state``); :mod:`~olla.config.root` holds :class:`OllaConfig`, :mod:`~olla.config.env` the
``OLLA_*`` table, and :mod:`~olla.config.loader` file search, parsing and the whole-config checks.
Import from ``olla.config``: every name other modules use is re-exported here.
"""

from __future__ import annotations

from olla.config._base import (
    ConfigError,
    Path_,
    SectionReader,
    format_duration,
    format_path,
    interpolate,
    parse_duration,
    parse_size,
)
from olla.config.dashboard import AccessPolicyConfig, DashboardConfig
from olla.config.discovery import (
    AuthConfig,
    DiscoveryConfig,
    EndpointConfig,
    HealthCheckConfig,
    ModelDiscoveryConfig,
)
from olla.config.engineering import EngineeringConfig
from olla.config.env import ENV_OVERRIDES
from olla.config.loader import (
    DEFAULT_DOCUMENT,
    NO_EFFECT_YET,
    SEARCH_PATHS,
    _attribute,
    check_endpoint_types,
    load_config,
    no_effect_warnings,
    parse_config,
    profiles_dir,
)
from olla.config.logging import LoggingConfig
from olla.config.management import ModelManagementConfig
from olla.config.models import ModelRegistryConfig, RoutingStrategyConfig, UnificationConfig
from olla.config.proxy import (
    FilterConfig,
    ProxyConfig,
    QueueConfig,
    RetryConfig,
    StickySessionsConfig,
    WarmRoutingConfig,
)
from olla.config.root import OllaConfig
from olla.config.server import (
    ClientAuthConfig,
    ClientKey,
    CorsConfig,
    RateLimits,
    RequestLimits,
    ServerConfig,
)
from olla.config.state import RedisAddress, StateConfig, parse_redis_url, redis_address
from olla.config.translators import (
    MAX_MESSAGE_SIZE_LIMIT,
    AnthropicTranslatorConfig,
    InspectorConfig,
    TranslatorsConfig,
)

__all__ = [
    "AccessPolicyConfig",
    "AnthropicTranslatorConfig",
    "AuthConfig",
    "ConfigError",
    "ClientAuthConfig",
    "ClientKey",
    "CorsConfig",
    "DEFAULT_DOCUMENT",
    "DashboardConfig",
    "DiscoveryConfig",
    "HealthCheckConfig",
    "ENV_OVERRIDES",
    "EndpointConfig",
    "EngineeringConfig",
    "FilterConfig",
    "InspectorConfig",
    "LoggingConfig",
    "MAX_MESSAGE_SIZE_LIMIT",
    "ModelDiscoveryConfig",
    "ModelManagementConfig",
    "ModelRegistryConfig",
    "NO_EFFECT_YET",
    "OllaConfig",
    "Path_",
    "ProxyConfig",
    "QueueConfig",
    "RateLimits",
    "RedisAddress",
    "RequestLimits",
    "RetryConfig",
    "RoutingStrategyConfig",
    "SEARCH_PATHS",
    "SectionReader",
    "ServerConfig",
    "StateConfig",
    "StickySessionsConfig",
    "TranslatorsConfig",
    "UnificationConfig",
    "WarmRoutingConfig",
    "_attribute",
    "check_endpoint_types",
    "format_duration",
    "format_path",
    "interpolate",
    "load_config",
    "no_effect_warnings",
    "parse_config",
    "parse_duration",
    "parse_redis_url",
    "parse_size",
    "profiles_dir",
    "redis_address",
]
