"""Who may read ``/internal/*``."""

from __future__ import annotations

from olla.config import DashboardConfig
from olla.config.dashboard import AccessPolicyConfig
from olla.guard.policy import InternalPolicy

GATED = InternalPolicy(DashboardConfig(gate_internal_api=True))
LAN = InternalPolicy(
    DashboardConfig(
        gate_internal_api=True,
        access_policy=AccessPolicyConfig(
            allowed_cidrs=("192.168.1.0/24",), allowed_hosts=("olla.lan",)
        ),
    )
)


def test_open_by_default() -> None:
    """If gate_internal_api is false (the default), then every peer may read internal
    routes."""
    policy = InternalPolicy(DashboardConfig())
    assert policy.mode == "open"
    assert policy.refusal(b"/internal/status", "203.0.113.9", b"olla.example") is None


def test_loopback_only() -> None:
    """If the gate is on with the default CIDRs, then only loopback peers may read them."""
    assert GATED.mode == "loopback"
    assert GATED.refusal(b"/internal/status", "127.0.0.1", b"localhost:40114") is None
    assert GATED.refusal(b"/internal/status", "::1", b"[::1]:40114") is None
    assert GATED.refusal(b"/internal/status", "192.168.1.5", b"127.0.0.1") is not None


def test_allowed_cidrs_and_hosts() -> None:
    """If the gate allows a LAN, then its peers may read under an IP or an allowed host name,
    not under another name (DNS rebinding) and not from elsewhere."""
    assert LAN.mode == "cidrs"
    assert LAN.refusal(b"/internal/status", "192.168.1.5", b"olla.lan:40114") is None
    assert LAN.refusal(b"/internal/status", "192.168.1.5", b"192.168.1.2:40114") is None
    assert LAN.refusal(b"/internal/status", "192.168.1.5", b"evil.example") is not None
    assert LAN.refusal(b"/internal/status", "10.0.0.1", b"olla.lan") is not None


def test_health_always_reachable_and_other_routes_untouched() -> None:
    """If the gate is on, then /internal/health is still answered to anyone, and routes
    outside /internal are not the policy's business."""
    assert GATED.refusal(b"/internal/health", "203.0.113.9", b"x") is None
    assert GATED.refusal(b"/olla/ollama/api/chat", "203.0.113.9", b"x") is None
    assert GATED.refusal(b"/internal", "203.0.113.9", b"x") is not None
