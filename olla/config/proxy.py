# -*- test-case-name: tests.test_config -*-
"""``proxy:``: timeouts, retries, warm routing, sticky sessions, the admission queue and the
name filters."""

from __future__ import annotations

from dataclasses import dataclass, field

from olla.config._base import ConfigError, SectionReader


@dataclass(frozen=True)
class RetryConfig:
    enabled: bool = True
    on_connection_failure: bool = True
    max_attempts: int = 0  # 0 = try every candidate once
    #: backend statuses that, before any byte is relayed, send the request to the next candidate
    on_status: tuple[int, ...] = (429, 502, 503, 504)


@dataclass(frozen=True)
class WarmRoutingConfig:
    """Send a model's requests where it is loaded, while that host has a free slot."""

    enabled: bool = True
    #: expected model load time until one is observed (Ollama's ``load_duration``)
    default_load_time: float = 5.0


@dataclass(frozen=True)
class StickySessionsConfig:
    enabled: bool = False
    idle_ttl_seconds: int = 600
    max_sessions: int = 10000
    key_sources: tuple[str, ...] = ("session_header", "prefix_hash", "auth_header")
    prefix_hash_bytes: int = 512


@dataclass(frozen=True)
class QueueConfig:
    """``proxy.queue``: the admission gate (``olla.proxy.gate``). On: no endpoint gets more of
    olla's requests than its slots, and the rest wait in olla for the first free one. Off: every
    request goes to its best candidate at once, however full (olla before the gate)."""

    enabled: bool = True
    #: requests held at once; one more is refused at once (503 and ``Retry-After``)
    max_size: int = 1000
    #: how long a request may be held before it is refused the same way (None: as long as
    #: ``proxy.response_timeout``; see ``ProxyConfig.queue_max_wait``)
    max_wait: float | None = None
    #: a model's service time (seconds a request holds its slot) until one of its requests
    #: has finished, when its profile gives none
    default_service_time: float = 5.0


@dataclass(frozen=True)
class FilterConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxyConfig:
    engine: str = "olla"  # olla | sherpa
    profile: str = "auto"  # auto | streaming | standard
    load_balancer: str = "least-connections"  # priority | round-robin | least-connections
    connection_timeout: float = 60.0
    connection_keep_alive: float = 30.0
    response_timeout: float = 900.0
    read_timeout: float = 600.0  # idle gap between upstream body chunks
    response_header_timeout: float = 30.0
    tls_handshake_timeout: float = 10.0
    stream_buffer_size: int | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    warm_routing: WarmRoutingConfig = field(default_factory=WarmRoutingConfig)
    sticky_sessions: StickySessionsConfig = field(default_factory=StickySessionsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    profile_filter: FilterConfig = field(default_factory=FilterConfig)

    @property
    def queue_max_wait(self) -> float:
        """How long the admission queue holds a request: ``proxy.queue.max_wait``, else the
        response timeout (else, with none, 15 minutes)."""
        return self.queue.max_wait or self.response_timeout or 900.0


def _queue(r: SectionReader) -> QueueConfig:
    d = QueueConfig()
    max_wait = r.duration("max_wait", 0.0) if r.has("max_wait") else None
    if max_wait is not None and max_wait <= 0:
        raise ConfigError("must be above 0: it bounds how long a request is held", r.at("max_wait"))
    service = r.duration("default_service_time", d.default_service_time)
    if service <= 0:
        raise ConfigError("must be above 0", r.at("default_service_time"))
    queue = QueueConfig(
        enabled=r.flag("enabled", d.enabled),
        max_size=r.integer("max_size", d.max_size, minimum=0),
        max_wait=max_wait,
        default_service_time=service,
    )
    r.finish()
    return queue


def _proxy(r: SectionReader) -> ProxyConfig:
    d = ProxyConfig()
    r.note("max_retries", "deprecated in the Go original, not used (proxy.retry.max_attempts is)")
    r.note("retry_backoff", "deprecated in the Go original, not used")
    retry_r = r.section("retry")
    retry = RetryConfig(
        enabled=retry_r.flag("enabled", d.retry.enabled),
        on_connection_failure=retry_r.flag("on_connection_failure", d.retry.on_connection_failure),
        max_attempts=retry_r.integer("max_attempts", d.retry.max_attempts, minimum=0),
        on_status=_statuses(retry_r, "on_status", d.retry.on_status),
    )
    retry_r.finish()
    warm_r = r.section("warm_routing")
    warm = warm_r.fields(d.warm_routing)
    warm_r.finish()
    sticky_r = r.section("sticky_sessions")
    sd = d.sticky_sessions
    sticky = StickySessionsConfig(
        enabled=sticky_r.flag("enabled", sd.enabled),
        idle_ttl_seconds=sticky_r.integer("idle_ttl_seconds", sd.idle_ttl_seconds, minimum=0),
        max_sessions=sticky_r.integer("max_sessions", sd.max_sessions, minimum=1),
        key_sources=sticky_r.strings("key_sources", sd.key_sources),
        prefix_hash_bytes=sticky_r.integer("prefix_hash_bytes", sd.prefix_hash_bytes, minimum=1),
    )
    for i, source in enumerate(sticky.key_sources):
        if source not in ("session_header", "prefix_hash", "auth_header", "ip"):
            raise ConfigError(
                f"must be one of session_header, prefix_hash, auth_header, ip, got {source!r}",
                (*sticky_r.at("key_sources"), i),
            )
    sticky_r.finish()
    proxy = ProxyConfig(
        engine=r.choice("engine", d.engine, ("olla", "sherpa")),
        profile=r.choice("profile", d.profile, ("auto", "streaming", "standard")),
        load_balancer=r.choice(
            "load_balancer", d.load_balancer, ("priority", "round-robin", "least-connections")
        ),
        connection_timeout=r.duration("connection_timeout", d.connection_timeout),
        connection_keep_alive=r.duration("connection_keep_alive", d.connection_keep_alive),
        response_timeout=r.duration("response_timeout", d.response_timeout),
        read_timeout=r.duration("read_timeout", d.read_timeout) or 60.0,
        response_header_timeout=r.duration("response_header_timeout", d.response_header_timeout)
        or 30.0,
        tls_handshake_timeout=r.duration("tls_handshake_timeout", d.tls_handshake_timeout),
        stream_buffer_size=r.size("stream_buffer_size", 0) or None,
        retry=retry,
        warm_routing=warm,
        sticky_sessions=sticky,
        queue=_queue(r.section("queue")),
        profile_filter=_filter(r.section("profile_filter")),
    )
    r.finish()
    return proxy


def _statuses(r: SectionReader, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """A list of HTTP status codes (``[]`` is allowed: none)."""
    if not r.has(key):
        return default
    value = r.raw(key)
    if not isinstance(value, list):
        raise ConfigError(f"must be a list of HTTP status codes, got {value!r}", r.at(key))
    for i, code in enumerate(value):
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ConfigError(
                f"must be an HTTP status code (100-599), got {code!r}", (*r.at(key), i)
            )
    return tuple(value)


def _filter(r: SectionReader) -> FilterConfig:
    result = FilterConfig(include=r.strings("include", ()), exclude=r.strings("exclude", ()))
    r.finish()
    return result
