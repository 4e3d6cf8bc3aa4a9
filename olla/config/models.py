# -*- test-case-name: tests.test_config -*-
"""``model_registry:`` (routing strategy, unification) and ``model_aliases:``."""

from __future__ import annotations

from dataclasses import dataclass, field

from olla.config._base import ConfigError, Path_, SectionReader, format_path


@dataclass(frozen=True)
class RoutingStrategyConfig:
    type: str = "strict"  # strict | optimistic | discovery
    fallback_behavior: str = "compatible_only"  # compatible_only | all | none
    discovery_timeout: float = 2.0
    discovery_refresh_on_miss: bool = False


@dataclass(frozen=True)
class UnificationConfig:
    stale_threshold: float = 86400.0
    cleanup_interval: float = 600.0


@dataclass(frozen=True)
class ModelRegistryConfig:
    type: str = "memory"
    enable_unifier: bool = True
    routing_strategy: RoutingStrategyConfig = field(default_factory=RoutingStrategyConfig)
    unification: UnificationConfig = field(default_factory=UnificationConfig)


def _model_registry(r: SectionReader) -> ModelRegistryConfig:
    d = ModelRegistryConfig()
    kind = r.text("type", d.type) or "memory"
    if kind != "memory":
        raise ConfigError(f"must be memory, got {kind!r}", r.at("type"))
    rs_r = r.section("routing_strategy")
    strategy = rs_r.text("type", d.routing_strategy.type)
    if strategy not in ("strict", "optimistic", "discovery"):
        r.warnings.append(
            f"{format_path(rs_r.at('type'))}: unknown strategy {strategy!r}, using strict"
        )
        strategy = "strict"
    opts = rs_r.section("options")
    routing = RoutingStrategyConfig(
        type=strategy,
        fallback_behavior=opts.choice(
            "fallback_behavior",
            d.routing_strategy.fallback_behavior,
            ("compatible_only", "all", "none"),
        ),
        discovery_timeout=opts.duration("discovery_timeout", d.routing_strategy.discovery_timeout),
        discovery_refresh_on_miss=opts.flag(
            "discovery_refresh_on_miss", d.routing_strategy.discovery_refresh_on_miss
        ),
    )
    opts.finish()
    rs_r.finish()
    un_r = r.section("unification")
    unification = un_r.fields(d.unification)
    un_r.finish()
    result = ModelRegistryConfig(
        type="memory",
        enable_unifier=r.flag("enable_unifier", d.enable_unifier),
        routing_strategy=routing,
        unification=unification,
    )
    r.finish()
    return result


def _aliases(data: object, warnings: list[str]) -> dict[str, tuple[str, ...]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of alias to model names", ("model_aliases",))
    aliases: dict[str, tuple[str, ...]] = {}
    for alias, names in data.items():
        path: Path_ = ("model_aliases", str(alias))
        if not isinstance(alias, str) or not alias.strip():
            raise ConfigError("alias names must not be empty", ("model_aliases",))
        if alias != alias.strip():
            raise ConfigError("alias has leading or trailing whitespace", path)
        if not isinstance(names, list) or not names:
            raise ConfigError("must be a non-empty list of model names", path)
        seen: list[str] = []
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ConfigError("model names must be non-empty strings", (*path, i))
            if name in seen:
                warnings.append(f"{format_path((*path, i))}: duplicate model {name!r}")
                continue
            seen.append(name)
        aliases[alias] = tuple(seen)
    return aliases
