# -*- test-case-name: tests.test_guard -*-
"""``Guard``: the protections every request passes right after the front, before any route.

In order: the client address (through trusted proxies), CORS (a preflight is answered here and
never reaches a backend), the internal-routes policy, then on the limited routes (everything
but ``/internal/*`` and ``/version``) the per-IP and global limits, the client key and its own
limit and model list, and the request's priority in the admission queue (``X-Olla-Priority``,
lowered to the key's ``priority`` when keys are on; a value that names no priority is a
``400``). ``/internal/health`` has its own per-IP budget and is never gated.

The guard reads the request and writes only its ``RequestContext`` (who is asking, the key,
the headers it owns: ``X-RateLimit-*``, ``Access-Control-*``) and the rate store; a refusal is
a ``LocalAnswer`` the front renders in the route's dialect, counted in ``SecurityStats``.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from zope.interface import implementer

from olla.config import OllaConfig
from olla.front.context import ContextRequest, LocalAnswer, RequestContext
from olla.guard.clientauth import KeyRing, presented_key
from olla.guard.clientip import TrustedProxies
from olla.guard.cors import CorsPolicy
from olla.guard.policy import HEALTH_PATH, InternalPolicy, is_internal
from olla.guard.ratelimit import RateLimiter, Verdict
from olla.interfaces import IReconfigurable
from olla.telemetry.security import SecurityStats
from olla.util.priority import PRIORITY_HEADER, PriorityError, request_priority

#: routes that are neither limited nor need a key (besides ``/internal/*``)
_OPEN_PATHS = frozenset({b"/version"})


@implementer(IReconfigurable)
class Guard:
    """The protections of one olla, rebuilt from each config (the limiter owns its own)."""

    reconfigures = (
        "server.cors.",
        "server.auth.",
        "server.rate_limits.trust_proxy_headers",
        "server.rate_limits.trusted_proxy_cidrs",
        "dashboard.gate_internal_api",
        "dashboard.access_policy.",
    )

    def __init__(self, config: OllaConfig, limiter: RateLimiter, security: SecurityStats) -> None:
        self.limiter = limiter
        self.security = security
        self.reconfigure(config)

    def reconfigure(self, config: OllaConfig) -> None:
        limits = config.server.rate_limits
        self.proxies = TrustedProxies(
            limits.trusted_proxy_cidrs, enabled=limits.trust_proxy_headers
        )
        self.cors = CorsPolicy(config.server.cors)
        self.policy = InternalPolicy(config.dashboard)
        self.keys = KeyRing(config.server.auth.api_keys)

    def check(self, request: ContextRequest) -> LocalAnswer | None | Deferred[LocalAnswer | None]:
        """The answer that stops ``request`` here, or None to pass it on (with its context
        filled in): at once when no store had to be asked, else a Deferred of it."""
        context = request.context
        headers = request.requestHeaders
        client_ip = context.client_ip = self.proxies.client_ip(
            context.peer, headers.getRawHeaders(b"x-forwarded-for"), request.getHeader(b"x-real-ip")
        )
        # decoded as the tree will route it: /%69nternal/status is /internal/status
        path = unquote_to_bytes(request.path)

        origin = request.getHeader(b"origin") if self.cors.enabled else None
        if origin is not None:
            asked = request.getHeader(b"access-control-request-method")
            if request.method == b"OPTIONS" and asked is not None:
                preflight = self.cors.preflight(
                    origin, asked, request.getHeader(b"access-control-request-headers")
                )
                if preflight is None:
                    return LocalAnswer(403, "CORS preflight not allowed")
                context.own_headers(b"access-control-", preflight)
                return LocalAnswer(204)
            actual = self.cors.actual(origin)
            if actual is not None:
                context.own_headers(b"access-control-", actual)

        if is_internal(path):
            why = self.policy.refusal(path, context.peer, request.getHeader(b"host"))
            if why is not None:
                return LocalAnswer(403, why)
            if path == HEALTH_PATH:
                return self.limiter.check_health(client_ip).addCallback(self._limited, context)
            return None
        if path in _OPEN_PATHS:
            return None
        if not self.keys.enabled:  # without keys the header is honoured as it is
            refused = self._prioritise(request, context)
            if refused is not None or not self.limiter.enabled:
                return refused
            return self.limiter.check(client_ip).addCallback(self._limited, context)
        checked = self.limiter.check(client_ip).addCallback(self._limited, context)
        return checked.addCallback(self._keyed, request, context)

    def _keyed(
        self, refused: LocalAnswer | None, request: ContextRequest, context: RequestContext
    ) -> LocalAnswer | None | Deferred[LocalAnswer | None]:
        if refused is not None:
            return refused
        key = self.keys.match(presented_key(request.getHeader))
        if key is None:
            self.security.auth_failed()
            return LocalAnswer(
                401,
                "missing or invalid API key",
                ((b"WWW-Authenticate", b'Bearer realm="olla"'),),
            )
        context.key = key
        refused = self._prioritise(request, context)
        if refused is not None:
            return refused
        return self.limiter.check_key(key.name, key.requests_per_minute).addCallback(
            self._limited, context
        )

    @staticmethod
    def _prioritise(request: ContextRequest, context: RequestContext) -> LocalAnswer | None:
        """The request's priority: what ``X-Olla-Priority`` asks for, within its key's."""
        asked = request.getHeader(PRIORITY_HEADER)
        if asked is None and context.key is None:
            return None  # normal: the context's default
        ceiling = context.key.priority if context.key is not None else None
        try:
            context.priority = request_priority(asked, ceiling)
        except PriorityError as e:
            return LocalAnswer(400, f"X-Olla-Priority {e}")
        return None

    def _limited(self, verdict: Verdict | None, context: RequestContext) -> LocalAnswer | None:
        if verdict is None:
            return None
        context.own_headers(b"x-ratelimit-", verdict.headers())
        if verdict.allowed:
            return None
        self.security.rate_limited(context.client_ip)
        return LocalAnswer(429, f"rate limit exceeded, retry in {verdict.retry_after}s")
