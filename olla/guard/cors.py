# -*- test-case-name: tests.test_cors -*-
"""CORS as ``server.cors`` configures it: the headers for a browser's preflight and for the
answer to its actual request, or None when the origin is not allowed.

Requests without ``Origin`` are not cross-origin and get nothing. With credentials allowed the
origin is echoed (a browser refuses ``*`` with credentials); with ``*`` and none, ``*``.
"""

from __future__ import annotations

from olla.config import CorsConfig

#: what a browser may read of olla's own headers when ``exposed_headers`` is empty (§9.5)
OLLA_EXPOSED = (
    "X-Olla-Request-ID",
    "X-Olla-Endpoint",
    "X-Olla-Backend-Type",
    "X-Olla-Model",
    "X-Olla-Response-Time",
    "X-Olla-Routing-Strategy",
    "X-Olla-Routing-Decision",
    "X-Olla-Routing-Reason",
    "X-Olla-Mode",
    "X-Olla-Sticky-Session",
    "X-Olla-Sticky-Key-Source",
    "X-Olla-Session-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
)

Headers = list[tuple[bytes, bytes]]


class CorsPolicy:
    """Answers for cross-origin requests under one ``CorsConfig``."""

    def __init__(self, config: CorsConfig) -> None:
        self.enabled = config.enabled
        self._any_origin = "*" in config.allowed_origins
        self._origins = frozenset(o.rstrip("/").lower() for o in config.allowed_origins)
        self._methods = frozenset(m.upper() for m in config.allowed_methods)
        self._any_header = "*" in config.allowed_headers
        self._headers = frozenset(h.lower() for h in config.allowed_headers)
        self._credentials = config.allow_credentials
        self._max_age = config.max_age
        exposed = config.exposed_headers or OLLA_EXPOSED
        self._exposed = ", ".join(exposed).encode("latin-1")

    def origin_allowed(self, origin: bytes) -> bool:
        if self._any_origin:
            return True
        return origin.decode("latin-1").rstrip("/").lower() in self._origins

    def _allow_origin(self, origin: bytes) -> Headers:
        value = b"*" if self._any_origin and not self._credentials else origin
        out: Headers = [(b"Access-Control-Allow-Origin", value)]
        if value != b"*":
            out.append((b"Vary", b"Origin"))
        if self._credentials:
            out.append((b"Access-Control-Allow-Credentials", b"true"))
        return out

    def preflight(self, origin: bytes, method: bytes, asked: bytes | None) -> Headers | None:
        """The headers of a preflight's answer, or None when olla does not allow it.

        Args:
            origin: the ``Origin`` header.
            method: ``Access-Control-Request-Method``.
            asked: ``Access-Control-Request-Headers``, if any.
        """
        if not self.origin_allowed(origin):
            return None
        wanted = method.decode("latin-1").strip().upper()
        if wanted not in self._methods and wanted not in ("GET", "HEAD", "POST"):
            return None
        names = [n.strip() for n in (asked or b"").decode("latin-1").split(",") if n.strip()]
        if not self._any_header and any(n.lower() not in self._headers for n in names):
            return None
        out = self._allow_origin(origin)
        out.append((b"Access-Control-Allow-Methods", ", ".join(sorted(self._methods)).encode()))
        if names:  # echo what was asked: a browser will not accept "*" with credentials
            out.append((b"Access-Control-Allow-Headers", ", ".join(names).encode("latin-1")))
        out.append((b"Access-Control-Max-Age", b"%d" % self._max_age))
        return out

    def actual(self, origin: bytes) -> Headers | None:
        """The headers for the answer to an actual cross-origin request, or None."""
        if not self.origin_allowed(origin):
            return None
        out = self._allow_origin(origin)
        out.append((b"Access-Control-Expose-Headers", self._exposed))
        return out
