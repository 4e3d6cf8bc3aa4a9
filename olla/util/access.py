# -*- test-case-name: tests.test_dashboard,tests.test_policy -*-
"""Who may open the dashboard, and ``/internal/*`` under ``dashboard.gate_internal_api``
(``dashboard.access_policy``): a network check, as in the Go original, since neither has a
login.

Both must hold:

1. the TCP peer (never a proxy header such as ``X-Forwarded-For``) is inside one of
   ``allowed_cidrs``;
2. the ``Host`` header, port and IPv6 brackets stripped, compared case-insensitively, is an IP
   literal or one of ``allowed_hosts``. A name a browser resolved is what DNS rebinding abuses;
   an IP literal cannot be rebound.

A refusal says which check failed, the peer and the Host, and the keys to change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from olla.config import AccessPolicyConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def bare_host(host: str) -> str:
    """``Host`` without its ``:port`` and without IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        inside, sep, _ = host[1:].partition("]")
        return inside if sep else host
    name, sep, port = host.rpartition(":")
    if sep and ":" not in name and port.isdigit():
        return name
    return host


def parse_ip(text: str) -> IPAddress | None:
    """An address as peers and headers write it: bare, ``v4:port``, ``[v6]`` or ``[v6]:port``;
    an IPv4-mapped IPv6 address is its IPv4 one (a dual-stack listener sees IPv4 peers as
    ``::ffff:a.b.c.d``). ``None`` when it is no address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AccessPolicy:
    """``dashboard.access_policy``, ready to ask."""

    def __init__(self, cidrs: Iterable[str], hosts: Iterable[str]) -> None:
        self._networks: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._hosts = frozenset(bare_host(h) for h in hosts)

    @classmethod
    def from_config(cls, config: AccessPolicyConfig) -> AccessPolicy:
        return cls(config.allowed_cidrs, config.allowed_hosts)

    @property
    def loopback_only(self) -> bool:
        """Whether only loopback networks are allowed."""
        return all(net.network_address.is_loopback for net in self._networks)

    def refusal(self, peer: str, host: str | None) -> str | None:
        """Why a request from ``peer`` (the TCP source address) with ``Host: host`` may not pass,
        or ``None`` when it may. No ``Host`` at all (HTTP/1.0) skips the host check: browsers
        always send one, and the host check is there against DNS-rebound browser pages."""
        address = parse_ip(peer)
        if address is None or not any(address in net for net in self._networks):
            return self._explain("ip not in allowed range", peer, host)
        if host is None:
            return None
        name = bare_host(host)
        if parse_ip(name) is None and name not in self._hosts:
            return self._explain("host not accepted", peer, host)
        return None

    @staticmethod
    def _explain(reason: str, peer: str, host: str | None) -> str:
        return (
            f"403 forbidden: {reason} (ip={peer}, host={host}). Adjust "
            "dashboard.access_policy.allowed_hosts (or allowed_cidrs) in your config."
        )
