# -*- test-case-name: tests.test_policy -*-
"""Who may read ``/internal/*``: everyone, or (``dashboard.gate_internal_api: true``) the
peers and hosts ``dashboard.access_policy`` allows, as the Go original gates its dashboard.

The TCP peer must be in ``allowed_cidrs`` (forwarding headers are never consulted: a proxy in
front would otherwise open the gate for everyone), and the ``Host`` must be an IP literal or
in ``allowed_hosts`` (a browser page on another name, DNS-rebound to olla, is refused).
``/internal/health`` stays reachable for load balancers whatever the policy.
"""

from __future__ import annotations

from olla.config import DashboardConfig
from olla.util.access import AccessPolicy

#: answered to every caller: load balancers and container health checks poll it
HEALTH_PATH = b"/internal/health"
INTERNAL_PREFIX = b"/internal/"


def is_internal(path: bytes) -> bool:
    return path.startswith(INTERNAL_PREFIX) or path == b"/internal"


class InternalPolicy:
    """Whether a request may read an internal route."""

    def __init__(self, config: DashboardConfig) -> None:
        self.gated = config.gate_internal_api
        self._access = AccessPolicy.from_config(config.access_policy)

    @property
    def mode(self) -> str:
        """``open``, ``loopback`` (only loopback networks allowed) or ``cidrs``."""
        if not self.gated:
            return "open"
        return "loopback" if self._access.loopback_only else "cidrs"

    def refusal(self, path: bytes, peer: str, host: bytes | None) -> str | None:
        """Why the request may not have ``path``, or None when it may."""
        if not self.gated or not is_internal(path) or path == HEALTH_PATH:
            return None
        return self._access.refusal(peer, None if host is None else host.decode("latin-1"))
