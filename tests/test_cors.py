"""CORS answers under ``server.cors``."""

from __future__ import annotations

from olla.config import CorsConfig
from olla.guard.cors import OLLA_EXPOSED, CorsPolicy

LISTED = CorsPolicy(
    CorsConfig(
        enabled=True,
        allowed_origins=("https://chat.example",),
        allowed_methods=("GET", "POST", "OPTIONS"),
        allowed_headers=("Authorization", "Content-Type"),
        allow_credentials=True,
        max_age=600,
    )
)


def test_preflight_from_an_allowed_origin() -> None:
    """If an allowed origin asks for POST with allowed headers, then the answer echoes the
    origin, allows credentials, lists the methods and headers and the max age."""
    headers = dict(
        LISTED.preflight(b"https://chat.example", b"POST", b"authorization, content-type") or []
    )
    assert headers[b"Access-Control-Allow-Origin"] == b"https://chat.example"
    assert headers[b"Access-Control-Allow-Credentials"] == b"true"
    assert headers[b"Access-Control-Allow-Methods"] == b"GET, OPTIONS, POST"
    assert headers[b"Access-Control-Allow-Headers"] == b"authorization, content-type"
    assert headers[b"Access-Control-Max-Age"] == b"600"
    assert headers[b"Vary"] == b"Origin"


def test_preflight_refused() -> None:
    """If the origin, the method or a header is not allowed, then there is no CORS answer."""
    assert LISTED.preflight(b"https://evil.example", b"POST", None) is None
    assert LISTED.preflight(b"https://chat.example", b"DELETE", None) is None
    assert LISTED.preflight(b"https://chat.example", b"POST", b"x-secret") is None


def test_origin_compared_without_case_or_trailing_slash() -> None:
    """If an origin differs only in case or a trailing slash, then it is the same origin."""
    assert LISTED.origin_allowed(b"HTTPS://Chat.Example/")


def test_actual_request_exposes_the_olla_headers() -> None:
    """If an allowed origin makes a request, then the answer exposes the X-Olla-* and rate
    limit headers (the §9.5 list) unless exposed_headers names others."""
    headers = dict(LISTED.actual(b"https://chat.example") or [])
    exposed = headers[b"Access-Control-Expose-Headers"].decode().split(", ")
    assert exposed == list(OLLA_EXPOSED)
    assert "X-Olla-Request-ID" in exposed and "X-Olla-Routing-Decision" in exposed
    own = CorsPolicy(CorsConfig(enabled=True, exposed_headers=("X-Custom",)))
    assert dict(own.actual(b"https://a") or [])[b"Access-Control-Expose-Headers"] == b"X-Custom"
    assert LISTED.actual(b"https://evil.example") is None


def test_any_origin_without_credentials_is_a_star() -> None:
    """If every origin is allowed without credentials, then the answer is "*" and no Vary."""
    star = CorsPolicy(CorsConfig(enabled=True))
    headers = dict(star.preflight(b"https://x.example", b"POST", None) or [])
    assert headers[b"Access-Control-Allow-Origin"] == b"*"
    assert b"Vary" not in headers
    assert b"Access-Control-Allow-Credentials" not in headers
