# -*- test-case-name: tests.test_security -*-
"""What olla refused to protect itself: oversized requests, rate limits, bad client keys.

One ``SecurityStats`` per process, written by the HTTP layer (size and header limits), the
rate limiter and client authentication, read by ``/internal/status`` and the metrics. The
distinct rate-limited addresses are kept in a bounded LRU so an attacker who rotates source
addresses costs a fixed amount of memory; ``blocked_ips`` is the size of that window.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: ``security.status`` turns ``elevated`` past this many violations or blocked addresses.
ELEVATED_VIOLATIONS = 100
ELEVATED_BLOCKED_IPS = 10


@dataclass(frozen=True)
class SecuritySnapshot:
    """The counters at one moment."""

    size_limits: int
    header_limits: int
    rate_limits: int
    auth_failures: int
    blocked_ips: int

    @property
    def violations(self) -> int:
        return self.size_limits + self.header_limits + self.rate_limits + self.auth_failures

    @property
    def status(self) -> str:
        """``elevated`` when refusals pile up or many addresses were limited, else ``normal``."""
        if self.violations > ELEVATED_VIOLATIONS or self.blocked_ips > ELEVATED_BLOCKED_IPS:
            return "elevated"
        return "normal"


class SecurityStats:
    """Counters of refused requests; fixed memory whatever the traffic."""

    def __init__(self, max_tracked_ips: int = 10_000) -> None:
        self._max_tracked_ips = max_tracked_ips
        self._size_limits = 0
        self._header_limits = 0
        self._rate_limits = 0
        self._auth_failures = 0
        self._limited_ips: OrderedDict[str, None] = OrderedDict()

    def size_limit(self) -> None:
        """A request body was over ``max_body_size`` (413)."""
        self._size_limits += 1

    def header_limit(self) -> None:
        """A request line or header block was over its limit (414, 431)."""
        self._header_limits += 1

    def rate_limited(self, client: str) -> None:
        """``client`` was refused by a rate limit (429)."""
        self._rate_limits += 1
        self._limited_ips[client] = None
        self._limited_ips.move_to_end(client)
        if len(self._limited_ips) > self._max_tracked_ips:
            self._limited_ips.popitem(last=False)

    def auth_failed(self) -> None:
        """A request came without a valid client key (401)."""
        self._auth_failures += 1

    def snapshot(self) -> SecuritySnapshot:
        return SecuritySnapshot(
            size_limits=self._size_limits,
            header_limits=self._header_limits,
            rate_limits=self._rate_limits,
            auth_failures=self._auth_failures,
            blocked_ips=len(self._limited_ips),
        )
