"""The client IP: the TCP peer, or the client a trusted proxy names, walking right to left."""

from __future__ import annotations

import pytest

from olla.guard.clientip import TrustedProxies, parse_ip

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.0/8"], enabled=True)


def test_untrusted_peer_headers_are_ignored() -> None:
    """If the peer is not a trusted proxy, then its X-Forwarded-For and X-Real-IP are
    ignored and the peer is the client."""
    assert PROXIES.client_ip("203.0.113.9", [b"1.2.3.4"], b"5.6.7.8") == "203.0.113.9"


def test_trusted_peer_names_the_client() -> None:
    """If a trusted proxy forwards, then the last address it names is the client."""
    assert PROXIES.client_ip("10.0.0.2", [b"198.51.100.7"], None) == "198.51.100.7"


def test_chain_walked_right_to_left_past_trusted_hops() -> None:
    """If the chain holds a spoofed first entry, the client and a second trusted proxy, then
    the walk from the right skips the trusted hop and stops at the client, never reaching
    the spoofed entry (the Go original would take it)."""
    chain = [b"6.6.6.6, 198.51.100.7", b"10.1.1.1"]
    assert PROXIES.client_ip("127.0.0.1", chain, None) == "198.51.100.7"


def test_all_trusted_chain_gives_the_leftmost() -> None:
    """If every hop is a trusted proxy, then the leftmost address is the client."""
    assert PROXIES.client_ip("10.0.0.2", [b"10.9.9.9, 10.0.0.3"], None) == "10.9.9.9"


def test_garbage_stops_the_walk_at_the_last_believed_hop() -> None:
    """If an entry is not an address, then the walk stops at the hop to its right."""
    assert PROXIES.client_ip("10.0.0.2", [b"nonsense, 10.0.0.5"], None) == "10.0.0.5"
    assert PROXIES.client_ip("10.0.0.2", [b"unknown"], None) == "10.0.0.2"


def test_real_ip_when_no_forwarded_for() -> None:
    """If a trusted proxy sends only X-Real-IP, then that is the client; if it is not an
    address, the peer is."""
    assert PROXIES.client_ip("10.0.0.2", None, b"198.51.100.8") == "198.51.100.8"
    assert PROXIES.client_ip("10.0.0.2", None, b"<script>") == "10.0.0.2"


def test_disabled_means_the_peer() -> None:
    """If trust_proxy_headers is false, then the peer is the client whatever the headers."""
    off = TrustedProxies(["10.0.0.0/8"], enabled=False)
    assert off.client_ip("10.0.0.2", [b"198.51.100.7"], b"1.1.1.1") == "10.0.0.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4:8080 ", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("example.com", None),
        ("", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    """If a header entry carries an address (with a port, brackets or v4-mapped), then it is
    parsed to the bare address; anything else is None."""
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected
