# -*- test-case-name: tests.test_config -*-
"""``model_management:``: pull, create, copy, delete and push across the Ollama machines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from olla.config._base import ConfigError, SectionReader
from olla.config.discovery import EndpointConfig

#: the endpoint types model management may talk to (``auto`` once detected as Ollama)
MANAGED_TYPES = ("ollama", "auto")


@dataclass(frozen=True)
class ModelManagementConfig:
    """Off by default: the five management routes answer 501, as the Go original does."""

    enabled: bool = False
    #: the endpoints a management call may change, by name; None: every Ollama endpoint
    targets: tuple[str, ...] | None = None


def _model_management(r: SectionReader) -> ModelManagementConfig:
    d = ModelManagementConfig()
    enabled = r.flag("enabled", d.enabled)
    raw = r.raw("targets")
    targets: tuple[str, ...] | None
    if raw is None or raw == "all":
        targets = None
    elif isinstance(raw, list) and raw and all(isinstance(n, str) and n for n in raw):
        targets = tuple(raw)
    else:
        why = f'must be "all" or a list of endpoint names, got {raw!r}'
        raise ConfigError(why, r.at("targets"))
    r.finish()
    return ModelManagementConfig(enabled=enabled, targets=targets)


def check_targets(config: ModelManagementConfig, endpoints: Sequence[EndpointConfig]) -> None:
    """Every name in ``targets`` must be a configured Ollama (or ``auto``) endpoint.

    Raises:
        ConfigError: naming the list entry and why.
    """
    by_name = {e.name: e for e in endpoints}
    for index, name in enumerate(config.targets or ()):
        where = ("model_management", "targets", index)
        endpoint = by_name.get(name)
        if endpoint is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"no endpoint is named {name!r} (endpoints: {known})", where)
        if endpoint.type not in MANAGED_TYPES:
            raise ConfigError(
                f"{name!r} is a {endpoint.type} endpoint; model management speaks Ollama's API",
                where,
            )
