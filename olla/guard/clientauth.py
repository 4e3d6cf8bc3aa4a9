# -*- test-case-name: tests.test_clientauth -*-
"""Client API keys (``server.auth.api_keys``): which key a request presents, and whose it is.

A key is accepted as ``Authorization: Bearer <key>`` (OpenAI SDKs, curl), ``x-api-key``
(Anthropic SDKs) or ``api-key`` (Azure-style clients). Every configured key is compared with
``hmac.compare_digest`` (no early exit on the first match either), so the time taken says
nothing about how close a guess was. Keys are never logged: a key is known by its ``name``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Callable, Sequence

from olla.config import ClientKey

#: the request headers a client key may arrive in, lower-cased (all stripped before forwarding)
KEY_HEADERS = (b"authorization", b"x-api-key", b"api-key")

GetHeader = Callable[[bytes], bytes | None]


def presented_key(get_header: GetHeader) -> bytes | None:
    """The key a request presents, or None."""
    authorization = get_header(b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    for name in KEY_HEADERS[1:]:
        value = get_header(name)
        if value is not None and value.strip():
            return value.strip()
    return None


class KeyRing:
    """The configured keys, matched in constant time."""

    def __init__(self, keys: Sequence[ClientKey]) -> None:
        self.keys = tuple(keys)
        # digests of equal length: compare_digest's time depends on neither key's length
        self._digests = tuple(hashlib.sha256(k.key.encode()).digest() for k in self.keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: bytes | None) -> ClientKey | None:
        """The key ``presented`` is, or None when it is missing or matches no key."""
        if presented is None:
            return None
        digest = hashlib.sha256(presented).digest()
        found: ClientKey | None = None
        for key, known in zip(self.keys, self._digests, strict=True):
            if hmac.compare_digest(digest, known):
                found = key
        return found


def model_allowed(key: ClientKey, model: str | None) -> bool:
    """Whether ``key`` may ask for ``model`` (exact names or ``*`` globs, case-insensitive).

    A request that names no model (a listing, a version) is allowed.
    """
    if not key.models or model is None:
        return True
    wanted = model.lower()
    return any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in key.models)
