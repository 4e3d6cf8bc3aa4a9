# -*- test-case-name: tests.test_guard -*-
"""``GuardResource``: the protections applied to every request before the resource tree.

In order: the client IP (through trusted proxies), CORS (a preflight is answered here and
never reaches a backend), the internal-routes policy, then on the limited routes (everything
but ``/internal/*`` and ``/version``) the per-IP and global limits, the client key and its own
limit and model list. ``/internal/health`` has its own per-IP budget and is never gated. Every
refusal is JSON in the route's dialect and counted in ``SecurityStats``; headers olla owns
(``X-RateLimit-*``, ``Access-Control-*``) are set as the answer's head goes out, over any a
backend sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from olla.config import OllaConfig
from olla.guard.clientauth import KeyRing, model_allowed, presented_key
from olla.guard.clientip import TrustedProxies
from olla.guard.cors import CorsPolicy, Headers
from olla.guard.policy import HEALTH_PATH, InternalPolicy, is_internal
from olla.guard.ratelimit import LimitSettings, RateLimiter, Verdict
from olla.telemetry.security import SecurityStats
from olla.web.site import error_body_for

#: routes that are neither limited nor need a key (besides ``/internal/*``)
_OPEN_PATHS = frozenset({b"/version"})


@dataclass
class Guards:
    """The protections of one olla, built from its config."""

    proxies: TrustedProxies
    cors: CorsPolicy
    policy: InternalPolicy
    limiter: RateLimiter
    keys: KeyRing
    security: SecurityStats

    @classmethod
    def from_config(
        cls, config: OllaConfig, limiter: RateLimiter, security: SecurityStats
    ) -> Guards:
        limits = config.server.rate_limits
        return cls(
            proxies=TrustedProxies(limits.trusted_proxy_cidrs, enabled=limits.trust_proxy_headers),
            cors=CorsPolicy(config.server.cors),
            policy=InternalPolicy(config.dashboard),
            limiter=limiter,
            keys=KeyRing(config.server.auth.api_keys),
            security=security,
        )


def limit_settings(config: OllaConfig) -> LimitSettings:
    limits = config.server.rate_limits
    return LimitSettings(
        global_per_minute=limits.global_requests_per_minute,
        per_ip_per_minute=limits.per_ip_requests_per_minute,
        health_per_minute=limits.health_requests_per_minute,
        burst=limits.burst_size,
        cleanup_interval=limits.cleanup_interval,
    )


class Answer(Resource):
    """What the guard answers itself: a JSON error in the route's dialect, or an empty 204."""

    isLeaf = True

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__()
        self._status = status
        self._message = message

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._status)
        if self._status == http.NO_CONTENT:
            return b""
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        rid = getattr(request, "request_id", None)
        return error_body_for(
            request.uri, self._status, self._message, rid if isinstance(rid, str) else None
        )


def _owned_headers(headers: Headers, replaced_prefix: bytes) -> Callable[[Request], None]:
    """A head hook setting ``headers`` over any whose name starts with ``replaced_prefix``."""

    def hook(request: Request) -> None:
        out = request.responseHeaders
        for name, _ in list(out.getAllRawHeaders()):
            if name.lower().startswith(replaced_prefix):
                out.removeHeader(name)
        for name, value in headers:
            if name == b"Vary":
                out.addRawHeader(name, value)
            else:
                out.setRawHeaders(name, [value])

    return hook


class GuardResource(Resource):
    """``inner`` behind the guards: each request is checked as its path is first resolved."""

    _log = Logger()

    def __init__(self, inner: IResource, guards: Guards) -> None:
        super().__init__()
        self._inner = inner
        #: swapped whole by a reload (``olla.daemon.reload``): a request sees one config's guards
        self.guards = guards

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        child: IResource = self._inner.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> bytes | int:
        refusal = self._check(request)
        rendered: bytes | int = (refusal or self._inner).render(request)
        return rendered

    # ------------------------------------------------------------------ the checks

    def _check(self, request: Request) -> IResource | None:
        guards = self.guards
        peer = getattr(request, "client_ip", "") or _peer(request)
        headers = request.requestHeaders
        client_ip = guards.proxies.client_ip(
            peer, headers.getRawHeaders(b"x-forwarded-for"), request.getHeader(b"x-real-ip")
        )
        request.client_ip = client_ip  # type: ignore[attr-defined]
        # decoded as the tree will route it: /%69nternal/status is /internal/status
        path = unquote_to_bytes(request.path)

        origin = request.getHeader(b"origin") if guards.cors.enabled else None
        if origin is not None:
            asked = request.getHeader(b"access-control-request-method")
            if request.method == b"OPTIONS" and asked is not None:
                preflight = guards.cors.preflight(
                    origin, asked, request.getHeader(b"access-control-request-headers")
                )
                if preflight is None:
                    return self._refuse(request, 403, "CORS preflight not allowed", client_ip)
                self._own_headers(request, preflight, b"access-control-")
                return Answer(http.NO_CONTENT)
            actual = guards.cors.actual(origin)
            if actual is not None:
                self._own_headers(request, actual, b"access-control-")

        if is_internal(path):
            why = guards.policy.refusal(path, peer, request.getHeader(b"host"))
            if why is not None:
                return self._refuse(request, 403, why, client_ip)
            if path == HEALTH_PATH:
                return self._limited(request, guards.limiter.check_health(client_ip), client_ip)
            return None
        if path in _OPEN_PATHS:
            return None

        refusal = self._limited(request, guards.limiter.check(client_ip), client_ip)
        if refusal is not None or not guards.keys.enabled:
            return refusal
        key = guards.keys.match(presented_key(request.getHeader))
        if key is None:
            guards.security.auth_failed()
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="olla"')
            return self._refuse(request, 401, "missing or invalid API key", client_ip)
        request.client_key = key  # type: ignore[attr-defined]
        if key.models:
            request.allows_model = lambda model: model_allowed(key, model)  # type: ignore[attr-defined]
        return self._limited(
            request, guards.limiter.check_key(key.name, key.requests_per_minute), client_ip
        )

    def _limited(
        self, request: Request, verdict: Verdict | None, client_ip: str
    ) -> IResource | None:
        if verdict is None:
            return None
        self._own_headers(request, verdict.headers(), b"x-ratelimit-")
        if verdict.allowed:
            return None
        self.guards.security.rate_limited(client_ip)
        message = f"rate limit exceeded, retry in {verdict.retry_after}s"
        return self._refuse(request, 429, message, client_ip)

    def _own_headers(self, request: Request, headers: Headers, prefix: bytes) -> None:
        hooks: list[Callable[[Request], None]] | None = getattr(request, "head_hooks", None)
        if hooks is not None:
            hooks.append(_owned_headers(headers, prefix))
        else:  # a plain Request (tests): nothing can overwrite them later
            _owned_headers(headers, prefix)(request)

    def _refuse(self, request: Request, status: int, why: str, client_ip: str) -> IResource:
        self._log.info(
            "{method} {path} refused {status}: {why} client={client_ip}",
            request_id=getattr(request, "request_id", "-"),
            method=request.method.decode("latin-1"),
            path=request.path[:200].decode("utf-8", "replace"),
            status=status,
            why=why,
            client_ip=client_ip,
            request_line=True,
        )
        return Answer(status, why)


def _peer(request: Request) -> str:
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else "unknown"
