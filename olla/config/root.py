# -*- test-case-name: tests.test_config -*-
"""The whole configuration: :class:`OllaConfig`, one field per section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from olla.config.dashboard import DashboardConfig
from olla.config.discovery import DiscoveryConfig
from olla.config.engineering import EngineeringConfig
from olla.config.logging import LoggingConfig
from olla.config.management import ModelManagementConfig
from olla.config.models import ModelRegistryConfig
from olla.config.proxy import ProxyConfig
from olla.config.server import ServerConfig
from olla.config.state import StateConfig
from olla.config.translators import TranslatorsConfig


@dataclass(frozen=True)
class OllaConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    model_registry: ModelRegistryConfig = field(default_factory=ModelRegistryConfig)
    model_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    translators: TranslatorsConfig = field(default_factory=TranslatorsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    engineering: EngineeringConfig = field(default_factory=EngineeringConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    model_management: ModelManagementConfig = field(default_factory=ModelManagementConfig)
    state: StateConfig = field(default_factory=StateConfig)
    profiles_dir: str | None = None  # user profiles; None: "profiles/" beside the config file
    source: str | None = None  # the file it was read from
    warnings: tuple[str, ...] = ()  # "<key.path>: <why>" for unknown/deprecated keys etc.
    #: "<key.path>: <why>" for keys of the Go original's configs that it does not act on either
    notes: tuple[str, ...] = ()
