# -*- test-case-name: tests.test_clientip -*-
"""Who is asking: the TCP peer, or the client a trusted reverse proxy names.

``X-Forwarded-For`` is read only when the peer itself is a trusted proxy, and from the right:
each trusted hop names the one before it, so the first address that is not a trusted proxy is
the client. Entries further left were written by the client and prove nothing (the Go original
takes the leftmost, which any client can forge). Without the header, a trusted peer's
``X-Real-IP`` counts; anything unparsable stops the walk at the last hop that was believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from olla.util.access import IPAddress, IPNetwork, parse_ip


class TrustedProxies:
    """Resolves the client IP of a request from its peer and its forwarding headers."""

    def __init__(self, cidrs: Sequence[str], *, enabled: bool) -> None:
        self.enabled = enabled and bool(cidrs)
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in cidrs
        )

    def trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)

    def client_ip(
        self, peer: str, forwarded_for: Sequence[bytes] | None, real_ip: bytes | None
    ) -> str:
        """The client's address as text.

        Args:
            peer: the TCP peer's address.
            forwarded_for: every ``X-Forwarded-For`` value, in order, or None.
            real_ip: the ``X-Real-IP`` value, or None.
        """
        if not self.enabled or (forwarded_for is None and real_ip is None):
            return peer
        hop = parse_ip(peer)
        if hop is None or not self.trusted(hop):
            return peer
        if forwarded_for:
            entries = b",".join(forwarded_for).decode("latin-1").split(",")
            for entry in reversed(entries):
                named = parse_ip(entry)
                if named is None:
                    break  # garbage: the last believed hop is as far as olla can see
                hop = named
                if not self.trusted(hop):
                    break
            return str(hop)
        if real_ip is not None:
            named = parse_ip(real_ip.decode("latin-1"))
            if named is not None:
                return str(named)
        return peer
