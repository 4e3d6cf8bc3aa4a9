# -*- test-case-name: tests.test_failures -*-
"""Short stable identifiers: FNV-1a hashes written in base 36 (endpoint ids, ETags)."""

from __future__ import annotations

#: bits -> (offset basis, prime) of FNV-1a
_FNV = {
    32: (0x811C9DC5, 0x01000193),
    64: (0xCBF29CE484222325, 0x100000001B3),
}


def fnv1a(data: bytes, bits: int = 32) -> int:
    """The FNV-1a hash of ``data`` in ``bits`` (32 or 64) bits."""
    h, prime = _FNV[bits]
    mask = (1 << bits) - 1
    for byte in data:
        h = ((h ^ byte) * prime) & mask
    return h


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
