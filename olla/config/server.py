# -*- test-case-name: tests.test_config -*-
"""``server:``: the listener, request limits, rate limits and CORS."""

from __future__ import annotations

from dataclasses import dataclass, field

from olla.config._base import SectionReader, _check_cidr


@dataclass(frozen=True)
class CorsConfig:
    enabled: bool = False
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allowed_headers: tuple[str, ...] = ("*",)
    exposed_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 300


@dataclass(frozen=True)
class RequestLimits:
    max_body_size: int = 104857600  # 0 or negative: no limit
    max_header_size: int = 1048576


@dataclass(frozen=True)
class RateLimits:
    global_requests_per_minute: int = 1000
    per_ip_requests_per_minute: int = 100
    health_requests_per_minute: int = 1000
    burst_size: int = field(default=50, metadata={"minimum": 0})
    cleanup_interval: float = 300.0
    trust_proxy_headers: bool = False
    trusted_proxy_cidrs: tuple[str, ...] = (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "localhost"
    port: int = 40114
    read_timeout: float = 30.0
    read_header_timeout: float = 10.0
    write_timeout: float = 0.0
    idle_timeout: float = 0.0
    shutdown_timeout: float = 10.0
    request_logging: bool = True
    request_limits: RequestLimits = field(default_factory=RequestLimits)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    cors: CorsConfig = field(default_factory=CorsConfig)


def _server(r: SectionReader) -> ServerConfig:
    d = ServerConfig()
    limits_r = r.section("request_limits")
    max_header = limits_r.size("max_header_size", d.request_limits.max_header_size)
    max_header = 1048576 if max_header <= 0 else max(max_header, 4096)
    limits = RequestLimits(
        max_body_size=limits_r.size("max_body_size", d.request_limits.max_body_size),
        max_header_size=max_header,
    )
    limits_r.finish()
    rl_r = r.section("rate_limits")
    rd = d.rate_limits
    rl_r.ignore("per_endpoint", "not supported, ignored")
    rate_limits = rl_r.fields(rd)
    for i, cidr in enumerate(rate_limits.trusted_proxy_cidrs):
        _check_cidr(cidr, (*rl_r.at("trusted_proxy_cidrs"), i))
    rl_r.finish()
    cors_r = r.section("cors")
    cd = d.cors
    cors = cors_r.fields(cd)
    cors_r.finish()
    server = ServerConfig(
        host=r.text("host", d.host),
        port=r.integer("port", d.port),
        read_timeout=r.duration("read_timeout", d.read_timeout),
        read_header_timeout=r.duration("read_header_timeout", d.read_header_timeout) or 10.0,
        write_timeout=r.duration("write_timeout", d.write_timeout),
        idle_timeout=r.duration("idle_timeout", d.idle_timeout),
        shutdown_timeout=r.duration("shutdown_timeout", d.shutdown_timeout),
        request_logging=r.flag("request_logging", d.request_logging),
        request_limits=limits,
        rate_limits=rate_limits,
        cors=cors,
    )
    r.finish()
    return server
