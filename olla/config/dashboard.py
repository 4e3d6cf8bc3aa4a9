# -*- test-case-name: tests.test_config -*-
"""``dashboard:``: the web dashboard and who may reach it."""

from __future__ import annotations

from dataclasses import dataclass, field

from olla.config._base import ConfigError, SectionReader, _check_cidr


@dataclass(frozen=True)
class AccessPolicyConfig:
    allowed_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    allowed_hosts: tuple[str, ...] = ("localhost",)


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True
    access_policy: AccessPolicyConfig = field(default_factory=AccessPolicyConfig)
    #: true: ``/internal/*`` (but ``/internal/health``) only for peers and hosts
    #: ``access_policy`` allows
    gate_internal_api: bool = False


def _dashboard(r: SectionReader) -> DashboardConfig:
    d = DashboardConfig()
    p_r = r.section("access_policy")
    policy = AccessPolicyConfig(
        allowed_cidrs=p_r.strings("allowed_cidrs", d.access_policy.allowed_cidrs),
        allowed_hosts=p_r.strings("allowed_hosts", d.access_policy.allowed_hosts),
    )
    result = DashboardConfig(
        enabled=r.flag("enabled", d.enabled),
        access_policy=policy,
        gate_internal_api=r.flag("gate_internal_api", d.gate_internal_api),
    )
    if result.enabled or result.gate_internal_api:
        if not policy.allowed_cidrs:
            raise ConfigError(
                "must not be empty while the dashboard is enabled or gate_internal_api is true",
                p_r.at("allowed_cidrs"),
            )
        for i, cidr in enumerate(policy.allowed_cidrs):
            _check_cidr(cidr, (*p_r.at("allowed_cidrs"), i))
    p_r.finish()
    r.finish()
    return result
