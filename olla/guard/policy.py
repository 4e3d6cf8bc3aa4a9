# -*- test-case-name: tests.test_policy -*-
"""Who may read ``/internal/*``: everyone, or (``dashboard.gate_internal_api: true``) the
peers and hosts ``dashboard.access_policy`` allows, as the Go original gates its dashboard.

The TCP peer must be in ``allowed_cidrs`` (forwarding headers are never consulted: a proxy in
front would otherwise open the gate for everyone), and the ``Host`` must be an IP literal or
in ``allowed_hosts`` (a browser page on another name, DNS-rebound to olla, is refused).
``/internal/health`` stays reachable for load balancers whatever the policy.
"""

from __future__ import annotations

import ipaddress

from olla.config import DashboardConfig
from olla.guard.clientip import IPNetwork, parse_ip

#: answered to every caller: load balancers and container health checks poll it
HEALTH_PATH = b"/internal/health"
INTERNAL_PREFIX = b"/internal/"


def is_internal(path: bytes) -> bool:
    return path.startswith(INTERNAL_PREFIX) or path == b"/internal"


class InternalPolicy:
    """Whether a request may read an internal route."""

    def __init__(self, config: DashboardConfig) -> None:
        self.gated = config.gate_internal_api
        policy = config.access_policy
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in policy.allowed_cidrs
        )
        self._hosts = frozenset(h.lower() for h in policy.allowed_hosts)

    @property
    def mode(self) -> str:
        """``open``, ``loopback`` (only loopback networks allowed) or ``cidrs``."""
        if not self.gated:
            return "open"
        if all(network.network_address.is_loopback for network in self._networks):
            return "loopback"
        return "cidrs"

    def refusal(self, path: bytes, peer: str, host: bytes | None) -> str | None:
        """Why the request may not have ``path``, or None when it may."""
        if not self.gated or not is_internal(path) or path == HEALTH_PATH:
            return None
        address = parse_ip(peer)
        if address is None or not any(address in network for network in self._networks):
            return "internal routes are not open to this address"
        name = _host_name(host)
        if name is not None and parse_ip(name) is None and name not in self._hosts:
            return "internal routes are not served under this host name"
        return None


def _host_name(host: bytes | None) -> str | None:
    """The name of a ``Host`` header without its port, lower-cased (None: no header)."""
    if host is None:
        return None
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if ":" in text else text
