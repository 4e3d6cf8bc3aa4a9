# -*- test-case-name: tests.test_config -*-
"""The olla configuration: YAML parsed once into frozen, typed objects.

Every value a later module reads is here, with the documented default. Durations are
float seconds, sizes are int bytes. Errors carry the key path of the offending value.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """An invalid configuration value; ``str()`` is ``"<key.path>: <reason>"``."""

    def __init__(self, reason: str, path: tuple[str | int, ...] = ()) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{format_path(path)}: {reason}" if path else reason)


def format_path(path: tuple[str | int, ...]) -> str:
    """``("discovery", "endpoints", 1, "url")`` -> ``discovery.endpoints[1].url``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# --------------------------------------------------------------------------- server


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
    burst_size: int = 50
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


# --------------------------------------------------------------------------- proxy


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
    profile_filter: FilterConfig = field(default_factory=FilterConfig)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class AuthConfig:
    """A resolved endpoint credential: the one header it adds to upstream requests."""

    type: str  # bearer | api_key | basic
    header_name: str
    header_value: str

    def __repr__(self) -> str:  # never leak the secret through logs or tracebacks
        return f"AuthConfig(type={self.type!r}, header_name={self.header_name!r})"


@dataclass(frozen=True)
class EndpointConfig:
    url: str  # as configured, without trailing slash
    name: str
    type: str  # normalised profile name (ollama, lm-studio, openai-compatible, ...) or "auto"
    priority: int = 100
    preserve_path: bool = False
    health_check_url: str | None = None  # None: the profile default
    model_url: str | None = None  # None: the profile default
    check_interval: float = 5.0
    check_timeout: float = 2.0
    #: requests it serves in parallel (Ollama's parallel slots) before olla counts it as full
    max_concurrency: int = 4
    model_filter: FilterConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class ModelDiscoveryConfig:
    enabled: bool = True
    interval: float = 300.0
    timeout: float = 30.0
    concurrent_workers: int = 5
    retry_attempts: int = 3
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class DiscoveryConfig:
    type: str = "static"
    refresh_interval: float = 30.0
    model_discovery: ModelDiscoveryConfig = field(default_factory=ModelDiscoveryConfig)
    endpoints: tuple[EndpointConfig, ...] = ()


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class RoutingStrategyConfig:
    type: str = "strict"  # strict | optimistic | discovery
    fallback_behavior: str = "compatible_only"  # compatible_only | all | none
    discovery_timeout: float = 2.0
    discovery_refresh_on_miss: bool = False


@dataclass(frozen=True)
class UnificationConfig:
    stale_threshold: float = 86400.0
    cleanup_interval: float = 600.0


@dataclass(frozen=True)
class ModelRegistryConfig:
    type: str = "memory"
    enable_unifier: bool = True
    routing_strategy: RoutingStrategyConfig = field(default_factory=RoutingStrategyConfig)
    unification: UnificationConfig = field(default_factory=UnificationConfig)


# --------------------------------------------------------------------------- the rest


@dataclass(frozen=True)
class InspectorConfig:
    enabled: bool = False
    output_dir: str = "logs/inspector/anthropic"
    session_header: str = "X-Session-ID"


@dataclass(frozen=True)
class AnthropicTranslatorConfig:
    enabled: bool = True
    passthrough_enabled: bool = True
    max_message_size: int = 10485760
    inspector: InspectorConfig = field(default_factory=InspectorConfig)


@dataclass(frozen=True)
class TranslatorsConfig:
    anthropic: AnthropicTranslatorConfig = field(default_factory=AnthropicTranslatorConfig)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"  # debug | info | warn | error
    format: str = "json"  # json | text
    output: str = "stdout"  # stdout (or twistd's --logfile / --syslog) | file
    file: str | None = None  # absolute; required with output: file


@dataclass(frozen=True)
class EngineeringConfig:
    show_nerdstats: bool = False


@dataclass(frozen=True)
class AccessPolicyConfig:
    allowed_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    allowed_hosts: tuple[str, ...] = ("localhost",)


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True
    access_policy: AccessPolicyConfig = field(default_factory=AccessPolicyConfig)
    gate_internal_api: bool = False


@dataclass(frozen=True)
class OllaConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    model_registry: ModelRegistryConfig = field(default_factory=ModelRegistryConfig)
    model_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    translators: TranslatorsConfig = field(default_factory=TranslatorsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    engineering: EngineeringConfig = field(default_factory=EngineeringConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    profiles_dir: str | None = None  # user profiles; None: "profiles/" beside the config file
    source: str | None = None  # the file it was read from
    warnings: tuple[str, ...] = ()  # "<key.path>: <why>" for unknown/deprecated keys etc.


# =========================================================================== parsing

Path_ = tuple[str | int, ...]
T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: Spellings of endpoint types that mean another (route prefixes, older names).
_TYPE_ALIASES = {
    "openai": "openai-compatible",
    "lmstudio": "lm-studio",
    "dmr": "docker-model-runner",
    "": "auto",
}
_SYSTEM_DIRS = frozenset(
    {"/", "/etc", "/var", "/usr", "/bin", "/sbin", "/boot", "/sys", "/proc", "/dev", "/root"}
)
MAX_MESSAGE_SIZE_LIMIT = 100 * 1024 * 1024


def parse_duration(value: object, path: Path_) -> float:
    """Go duration syntax (``500ms``, ``30s``, ``1h30m``) to seconds; ``0`` is allowed bare."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"must be a duration like 5s, got {value!r}", path)
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ConfigError(f"must be a duration like 5s, got {value!r} (add a unit)", path)
    text = str(value).strip()
    if text in ("0", ""):
        if text == "":
            raise ConfigError("must be a duration like 5s, got ''", path)
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ConfigError(f"must be a duration like 5s, got {text!r}", path)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Seconds as a Go duration string (the inverse of :func:`parse_duration`)."""
    if seconds == 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if secs or not out:
        out += f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    return out


def parse_size(value: object, path: Path_) -> int:
    """Bytes from an int or ``100MB`` / ``1KB`` / ``10MiB`` (binary units, as in Olla)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"must be a size like 10MB, got {value!r}", path)
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if match is None:
        raise ConfigError(f"must be a size like 10MB, got {value!r}", path)
    unit = (match.group(2) or "").lower().replace("ib", "").replace("b", "")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def interpolate(text: str, environ: Mapping[str, str], path: Path_) -> str:
    """Expand ``${VAR}`` and ``${VAR:-fallback}``; an unset VAR with no fallback is fatal."""

    def expand(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        value = environ.get(name)
        if fallback is not None:
            return value if value else fallback
        if value is None:
            raise ConfigError(f'required environment variable "{name}" is not set', path)
        return value

    return _ENV_REF.sub(expand, text)


class SectionReader:
    """Reads one mapping of the YAML document, remembering which keys were used.

    Every getter takes the key and the default; the value's type is checked and errors carry
    the key path. ``finish()`` reports keys nobody asked for as warnings.
    """

    def __init__(self, data: object, path: Path_, warnings: list[str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", path)
        self.data: dict[Any, Any] = data
        self.path = path
        self.warnings = warnings
        self._used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        self._used.add(key)
        return self.data.get(key)

    def at(self, key: str) -> Path_:
        return (*self.path, key)

    def ignore(self, key: str, why: str) -> None:
        if key in self.data:
            self._used.add(key)
            self.warnings.append(f"{format_path(self.at(key))}: {why}")

    def _get(self, key: str, default: T, convert: Callable[[Any, Path_], T]) -> T:
        self._used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        return convert(self.data[key], self.at(key))

    def text(self, key: str, default: str) -> str:
        def convert(v: Any, p: Path_) -> str:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ConfigError(f"must be a string, got {v!r}", p)
            return str(v)

        return self._get(key, default, convert)

    def flag(self, key: str, default: bool) -> bool:
        def convert(v: Any, p: Path_) -> bool:
            if not isinstance(v, bool):
                raise ConfigError(f"must be true or false, got {v!r}", p)
            return v

        return self._get(key, default, convert)

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        def convert(v: Any, p: Path_) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"must be an integer, got {v!r}", p)
            if minimum is not None and v < minimum:
                raise ConfigError(f"must be at least {minimum}, got {v}", p)
            return v

        return self._get(key, default, convert)

    def duration(self, key: str, default: float) -> float:
        return self._get(key, default, parse_duration)

    def size(self, key: str, default: int) -> int:
        return self._get(key, default, parse_size)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        def convert(v: Any, p: Path_) -> tuple[str, ...]:
            if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
                raise ConfigError(f"must be a list of strings, got {v!r}", p)
            return tuple(v)

        return self._get(key, default, convert)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}", self.at(key))
        return value

    def section(self, key: str) -> SectionReader:
        self._used.add(key)
        return SectionReader(self.data.get(key), self.at(key), self.warnings)

    def finish(self) -> None:
        for key in self.data:
            if key not in self._used:
                self.warnings.append(f"{format_path(self.at(str(key)))}: unknown key, ignored")


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
    rate_limits = RateLimits(
        global_requests_per_minute=rl_r.integer(
            "global_requests_per_minute", rd.global_requests_per_minute
        ),
        per_ip_requests_per_minute=rl_r.integer(
            "per_ip_requests_per_minute", rd.per_ip_requests_per_minute
        ),
        health_requests_per_minute=rl_r.integer(
            "health_requests_per_minute", rd.health_requests_per_minute
        ),
        burst_size=rl_r.integer("burst_size", rd.burst_size, minimum=0),
        cleanup_interval=rl_r.duration("cleanup_interval", rd.cleanup_interval),
        trust_proxy_headers=rl_r.flag("trust_proxy_headers", rd.trust_proxy_headers),
        trusted_proxy_cidrs=rl_r.strings("trusted_proxy_cidrs", rd.trusted_proxy_cidrs),
    )
    for i, cidr in enumerate(rate_limits.trusted_proxy_cidrs):
        _check_cidr(cidr, (*rl_r.at("trusted_proxy_cidrs"), i))
    rl_r.finish()
    cors_r = r.section("cors")
    cd = d.cors
    cors = CorsConfig(
        enabled=cors_r.flag("enabled", cd.enabled),
        allowed_origins=cors_r.strings("allowed_origins", cd.allowed_origins),
        allowed_methods=cors_r.strings("allowed_methods", cd.allowed_methods),
        allowed_headers=cors_r.strings("allowed_headers", cd.allowed_headers),
        exposed_headers=cors_r.strings("exposed_headers", cd.exposed_headers),
        allow_credentials=cors_r.flag("allow_credentials", cd.allow_credentials),
        max_age=cors_r.integer("max_age", cd.max_age),
    )
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


def _proxy(r: SectionReader) -> ProxyConfig:
    d = ProxyConfig()
    r.ignore("max_retries", "deprecated, has no effect (use proxy.retry.max_attempts)")
    r.ignore("retry_backoff", "deprecated, has no effect")
    retry_r = r.section("retry")
    retry = RetryConfig(
        enabled=retry_r.flag("enabled", d.retry.enabled),
        on_connection_failure=retry_r.flag("on_connection_failure", d.retry.on_connection_failure),
        max_attempts=retry_r.integer("max_attempts", d.retry.max_attempts, minimum=0),
        on_status=_statuses(retry_r, "on_status", d.retry.on_status),
    )
    retry_r.finish()
    warm_r = r.section("warm_routing")
    warm = WarmRoutingConfig(
        enabled=warm_r.flag("enabled", d.warm_routing.enabled),
        default_load_time=warm_r.duration("default_load_time", d.warm_routing.default_load_time),
    )
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


def _check_cidr(value: str, path: Path_) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"must be a CIDR like 10.0.0.0/8, got {value!r}", path) from None


def _read_secret(
    r: SectionReader, field_name: str, environ: Mapping[str, str], base_dir: Path
) -> str | None:
    """An auth field given inline (``token``) or as a file (``token_file``), never both."""
    inline, from_file = r.has(field_name), r.has(f"{field_name}_file")
    if inline and from_file:
        raise ConfigError(
            f"set either {field_name} or {field_name}_file, not both", r.at(field_name)
        )
    if inline:
        path = r.at(field_name)
        value: str = interpolate(r.text(field_name, ""), environ, path)
    elif from_file:
        path = r.at(f"{field_name}_file")
        file_path = Path(interpolate(r.text(f"{field_name}_file", ""), environ, path))
        if not file_path.is_absolute():
            file_path = base_dir / file_path
        try:
            value = file_path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {file_path}: {e.strerror}", path) from None
    else:
        return None
    if not value:
        raise ConfigError("resolves to an empty value", path)
    return value


_AUTH_FIELDS = {
    "bearer": ("token",),
    "api_key": ("key", "header"),
    "basic": ("username", "password"),
}


def _auth(r: SectionReader, environ: Mapping[str, str], base_dir: Path) -> AuthConfig:
    kind = r.text("type", "")
    if kind not in _AUTH_FIELDS:
        raise ConfigError(
            f"unknown auth type {kind!r} (known: bearer, api_key, basic)", r.at("type")
        )
    own = {*_AUTH_FIELDS[kind], *(f"{n}_file" for n in _AUTH_FIELDS[kind])}
    for other, names in _AUTH_FIELDS.items():
        if other == kind:
            continue
        for name in names:
            for key in (name, f"{name}_file"):
                if key in r.data and key not in own:
                    raise ConfigError(f"not a field of auth type {kind}", r.at(key))
    if kind == "bearer":
        bearer = _read_secret(r, "token", environ, base_dir)
        if bearer is None:
            raise ConfigError("bearer auth needs token or token_file", r.path)
        result = AuthConfig("bearer", "Authorization", f"Bearer {bearer}")
    elif kind == "api_key":
        api_key = _read_secret(r, "key", environ, base_dir)
        if api_key is None:
            raise ConfigError("api_key auth needs key or key_file", r.path)
        header = r.text("header", "X-Api-Key").strip()
        if not header:
            raise ConfigError("must not be empty", r.at("header"))
        result = AuthConfig("api_key", header, api_key)
    else:
        user = _read_secret(r, "username", environ, base_dir)
        password = _read_secret(r, "password", environ, base_dir)
        if user is None or password is None:
            raise ConfigError("basic auth needs username and password (or their _file)", r.path)
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        result = AuthConfig("basic", "Authorization", f"Basic {token}")
    r.finish()
    return result


def _endpoint(
    r: SectionReader, environ: Mapping[str, str], base_dir: Path, defaults: EndpointConfig
) -> EndpointConfig:
    url = r.text("url", "").strip()
    if not url:
        raise ConfigError("is required", r.at("url"))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"must be an http(s) URL with a host, got {url!r}", r.at("url"))
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "credentials in the URL are not allowed; use an auth: block "
            "(type: basic, username, password) instead",
            r.at("url"),
        )
    url = url.rstrip("/")
    raw_type = r.text("type", "").strip().lower().replace("_", "-")
    kind = _TYPE_ALIASES.get(raw_type, _TYPE_ALIASES.get(raw_type.replace("-", ""), raw_type))
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", kind):
        raise ConfigError(f"unsupported endpoint type {raw_type!r}", r.at("type"))
    check_interval = r.duration("check_interval", defaults.check_interval)
    if check_interval < 1.0:
        raise ConfigError(
            f"must be at least 1s, got {format_duration(check_interval)}", r.at("check_interval")
        )
    check_timeout = r.duration("check_timeout", defaults.check_timeout)
    if check_timeout <= 0 or check_timeout >= check_interval or check_timeout > 30:
        raise ConfigError(
            f"must be above 0, below check_interval ({format_duration(check_interval)}) "
            f"and at most 30s, got {format_duration(check_timeout)}",
            r.at("check_timeout"),
        )
    for key in ("health_check_url", "model_url"):
        value = r.text(key, "")
        if value and urlsplit(value).scheme not in ("", "http", "https"):
            raise ConfigError(f"must be a path or an http(s) URL, got {value!r}", r.at(key))
    headers_r = r.section("headers")
    headers: dict[str, str] = {}
    for name, value in headers_r.data.items():
        path = headers_r.at(str(name))
        if not isinstance(name, str) or not isinstance(value, str | int | float):
            raise ConfigError("header names and values must be strings", path)
        headers[name] = interpolate(str(value), environ, path)
        headers_r.raw(name)
    headers_r.finish()
    auth = _auth(r.section("auth"), environ, base_dir) if r.has("auth") else None
    r.raw("auth")
    model_filter = _filter(r.section("model_filter")) if r.has("model_filter") else None
    r.raw("model_filter")
    endpoint = EndpointConfig(
        url=url,
        name=r.text("name", "").strip() or (parts.netloc or url),
        type=kind,
        priority=r.integer("priority", defaults.priority, minimum=0),
        preserve_path=r.flag("preserve_path", False),
        health_check_url=r.text("health_check_url", "") or None,
        model_url=r.text("model_url", "") or None,
        check_interval=check_interval,
        check_timeout=check_timeout,
        max_concurrency=r.integer("max_concurrency", defaults.max_concurrency, minimum=1),
        model_filter=model_filter,
        headers=headers,
        auth=auth,
    )
    r.finish()
    return endpoint


def _discovery(r: SectionReader, environ: Mapping[str, str], base_dir: Path) -> DiscoveryConfig:
    d = DiscoveryConfig()
    kind = r.choice("type", d.type, ("static",))
    refresh_interval = r.duration("refresh_interval", d.refresh_interval)
    health_r = r.section("health_check")
    for key in list(health_r.data):
        health_r.ignore(str(key), "not used by olla (health checks follow each endpoint)")
    md_r = r.section("model_discovery")
    md = d.model_discovery
    model_discovery = ModelDiscoveryConfig(
        enabled=md_r.flag("enabled", md.enabled),
        interval=md_r.duration("interval", md.interval),
        timeout=md_r.duration("timeout", md.timeout),
        concurrent_workers=md_r.integer("concurrent_workers", md.concurrent_workers),
        retry_attempts=md_r.integer("retry_attempts", md.retry_attempts, minimum=0),
        retry_backoff=md_r.duration("retry_backoff", md.retry_backoff),
    )
    if model_discovery.enabled:
        for key in ("interval", "timeout", "concurrent_workers"):
            if getattr(model_discovery, key) <= 0:
                raise ConfigError("must be above 0 while discovery is enabled", md_r.at(key))
    md_r.finish()
    static_r = r.section("static")
    raw_endpoints = static_r.raw("endpoints") or []
    if not isinstance(raw_endpoints, list):
        raise ConfigError("must be a list", static_r.at("endpoints"))
    by_url: dict[str, EndpointConfig] = {}
    for i, item in enumerate(raw_endpoints):
        reader = SectionReader(item, (*static_r.at("endpoints"), i), r.warnings)
        endpoint = _endpoint(reader, environ, base_dir, EndpointConfig(url="", name="", type=""))
        if endpoint.url in by_url:
            r.warnings.append(
                f"{format_path(reader.path)}: duplicate url {endpoint.url}, the last one wins"
            )
            del by_url[endpoint.url]
        by_url[endpoint.url] = endpoint
    static_r.finish()
    r.finish()
    return DiscoveryConfig(
        type=kind,
        refresh_interval=refresh_interval,
        model_discovery=model_discovery,
        endpoints=tuple(by_url.values()),
    )


def _model_registry(r: SectionReader) -> ModelRegistryConfig:
    d = ModelRegistryConfig()
    kind = r.text("type", d.type) or "memory"
    if kind != "memory":
        raise ConfigError(f"must be memory, got {kind!r}", r.at("type"))
    rs_r = r.section("routing_strategy")
    strategy = rs_r.text("type", d.routing_strategy.type)
    if strategy not in ("strict", "optimistic", "discovery"):
        r.warnings.append(
            f"{format_path(rs_r.at('type'))}: unknown strategy {strategy!r}, using strict"
        )
        strategy = "strict"
    opts = rs_r.section("options")
    routing = RoutingStrategyConfig(
        type=strategy,
        fallback_behavior=opts.choice(
            "fallback_behavior",
            d.routing_strategy.fallback_behavior,
            ("compatible_only", "all", "none"),
        ),
        discovery_timeout=opts.duration("discovery_timeout", d.routing_strategy.discovery_timeout),
        discovery_refresh_on_miss=opts.flag(
            "discovery_refresh_on_miss", d.routing_strategy.discovery_refresh_on_miss
        ),
    )
    opts.finish()
    rs_r.finish()
    un_r = r.section("unification")
    unification = UnificationConfig(
        stale_threshold=un_r.duration("stale_threshold", d.unification.stale_threshold),
        cleanup_interval=un_r.duration("cleanup_interval", d.unification.cleanup_interval),
    )
    un_r.finish()
    result = ModelRegistryConfig(
        type="memory",
        enable_unifier=r.flag("enable_unifier", d.enable_unifier),
        routing_strategy=routing,
        unification=unification,
    )
    r.finish()
    return result


def _aliases(data: object, warnings: list[str]) -> dict[str, tuple[str, ...]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of alias to model names", ("model_aliases",))
    aliases: dict[str, tuple[str, ...]] = {}
    for alias, names in data.items():
        path: Path_ = ("model_aliases", str(alias))
        if not isinstance(alias, str) or not alias.strip():
            raise ConfigError("alias names must not be empty", ("model_aliases",))
        if alias != alias.strip():
            raise ConfigError("alias has leading or trailing whitespace", path)
        if not isinstance(names, list) or not names:
            raise ConfigError("must be a non-empty list of model names", path)
        seen: list[str] = []
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ConfigError("model names must be non-empty strings", (*path, i))
            if name in seen:
                warnings.append(f"{format_path((*path, i))}: duplicate model {name!r}")
                continue
            seen.append(name)
        aliases[alias] = tuple(seen)
    return aliases


def _translators(r: SectionReader) -> TranslatorsConfig:
    a_r = r.section("anthropic")
    d = AnthropicTranslatorConfig()
    i_r = a_r.section("inspector")
    inspector = InspectorConfig(
        enabled=i_r.flag("enabled", d.inspector.enabled),
        output_dir=i_r.text("output_dir", d.inspector.output_dir),
        session_header=i_r.text("session_header", d.inspector.session_header),
    )
    if os.path.normpath(os.path.abspath(inspector.output_dir)) in _SYSTEM_DIRS:
        raise ConfigError(
            f"must not be a system directory, got {inspector.output_dir!r}",
            i_r.at("output_dir"),
        )
    if not re.fullmatch(r"[A-Za-z0-9-]+", inspector.session_header):
        raise ConfigError("must be a valid header name", i_r.at("session_header"))
    i_r.finish()
    size = a_r.size("max_message_size", d.max_message_size)
    if size < 0 or size > MAX_MESSAGE_SIZE_LIMIT:
        raise ConfigError(f"must be between 0 and 100MB, got {size}", a_r.at("max_message_size"))
    anthropic = AnthropicTranslatorConfig(
        enabled=a_r.flag("enabled", d.enabled),
        passthrough_enabled=a_r.flag("passthrough_enabled", d.passthrough_enabled),
        max_message_size=size,
        inspector=inspector,
    )
    a_r.finish()
    r.finish()
    return TranslatorsConfig(anthropic=anthropic)


def _logging(r: SectionReader, base_dir: Path) -> LoggingConfig:
    d = LoggingConfig()
    values = {"level": r.text("level", d.level).lower(), "format": r.text("format", d.format)}
    allowed = {"level": ("debug", "info", "warn", "warning", "error"), "format": ("json", "text")}
    for key, value in values.items():
        if value not in allowed[key]:
            r.warnings.append(
                f"{format_path(r.at(key))}: must be one of {', '.join(allowed[key])}, "
                f"got {value!r}; using {getattr(d, key)}"
            )
            values[key] = getattr(d, key)
    output = r.choice("output", d.output, ("stdout", "file"))
    result = LoggingConfig(
        level=values["level"],
        format=values["format"],
        output=output,
        file=_log_file(r, base_dir, required=output == "file"),
    )
    r.finish()
    return result


def _log_file(r: SectionReader, base_dir: Path, required: bool) -> str | None:
    """``logging.file``, relative to the config file's directory, in a directory that exists
    (checked here, so a typo fails at startup and not at the first log line)."""
    text = r.text("file", "").strip()
    if not text:
        if required:
            raise ConfigError("is required when logging.output is file", r.at("file"))
        return None
    if not required:
        r.warnings.append(f"{format_path(r.at('file'))}: ignored unless logging.output is file")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base_dir.resolve() / path
    if path.is_dir():
        raise ConfigError(f"must be a file, {str(path)!r} is a directory", r.at("file"))
    if not path.parent.is_dir():
        raise ConfigError(f"directory {str(path.parent)!r} does not exist", r.at("file"))
    return str(path)


def _dashboard(r: SectionReader) -> DashboardConfig:
    d = DashboardConfig()
    p_r = r.section("access_policy")
    policy = AccessPolicyConfig(
        allowed_cidrs=p_r.strings("allowed_cidrs", d.access_policy.allowed_cidrs),
        allowed_hosts=p_r.strings("allowed_hosts", d.access_policy.allowed_hosts),
    )
    result = DashboardConfig(
        enabled=r.flag("enabled", d.enabled),
        access_policy=policy,
        gate_internal_api=r.flag("gate_internal_api", d.gate_internal_api),
    )
    if result.enabled:
        if not policy.allowed_cidrs:
            raise ConfigError(
                "must not be empty while the dashboard is enabled", p_r.at("allowed_cidrs")
            )
        for i, cidr in enumerate(policy.allowed_cidrs):
            _check_cidr(cidr, (*p_r.at("allowed_cidrs"), i))
    p_r.finish()
    r.finish()
    return result


def _validate(config: OllaConfig) -> None:
    if not 1 <= config.server.port <= 65535:
        raise ConfigError(
            f"must be an integer between 1 and 65535, got {config.server.port}", ("server", "port")
        )
    cors = config.server.cors
    if cors.enabled:
        if not cors.allowed_origins:
            raise ConfigError(
                'must not be empty when cors is enabled; use ["*"] to allow all',
                ("server", "cors", "allowed_origins"),
            )
        if cors.allow_credentials and "*" in cors.allowed_origins:
            raise ConfigError(
                'cannot be true with allowed_origins ["*"]; list the origins',
                ("server", "cors", "allow_credentials"),
            )
    if cors.max_age < 0:
        raise ConfigError("must not be negative", ("server", "cors", "max_age"))


def parse_config(
    data: object, environ: Mapping[str, str] | None = None, base_dir: str = "."
) -> OllaConfig:
    """Build an :class:`OllaConfig` from a decoded YAML document and the environment.

    Raises:
        ConfigError: with the key path of the first invalid value.
    """
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    root = SectionReader(data, (), warnings)
    root = SectionReader(_apply_env(root.data, environ, warnings), (), warnings)
    base = Path(base_dir)
    config = OllaConfig(
        server=_server(root.section("server")),
        proxy=_proxy(root.section("proxy")),
        discovery=_discovery(root.section("discovery"), environ, base),
        model_registry=_model_registry(root.section("model_registry")),
        model_aliases=_aliases(root.raw("model_aliases"), warnings),
        translators=_translators(root.section("translators")),
        logging=_logging(root.section("logging"), base),
        engineering=_engineering(root.section("engineering")),
        dashboard=_dashboard(root.section("dashboard")),
        profiles_dir=root.text("profiles_dir", "") or None,
    )
    root.finish()
    _validate(config)
    return replace(config, warnings=tuple(warnings))


def _engineering(r: SectionReader) -> EngineeringConfig:
    result = EngineeringConfig(show_nerdstats=r.flag("show_nerdstats", False))
    r.finish()
    return result


# --------------------------------------------------------------------------- not built yet

#: Keys olla accepts (so Go configs load unchanged) but does not act on yet. Each is reported
#: as ``<key path>: accepted, has no effect yet`` by validate-config and the startup log when
#: it is set to anything but its default: the default is what olla does without the feature,
#: so that one predicate fits every row. A key path is also its attribute path in
#: :class:`OllaConfig`; ``.*`` stands for every field of that section. Remove a row once the
#: key works.
NO_EFFECT_YET: tuple[str, ...] = (
    "server.write_timeout",
    "server.rate_limits.*",
    "server.cors.enabled",
    "proxy.engine",
    "proxy.profile",
    "proxy.connection_keep_alive",
    "proxy.response_timeout",
    "proxy.tls_handshake_timeout",
    "proxy.stream_buffer_size",
    "proxy.sticky_sessions.enabled",
    "proxy.profile_filter.*",
    "discovery.refresh_interval",
    "discovery.model_discovery.retry_attempts",
    "discovery.model_discovery.retry_backoff",
    "model_registry.enable_unifier",
    "model_registry.unification.cleanup_interval",
    "translators.anthropic.inspector.enabled",
    "engineering.show_nerdstats",
    "dashboard.access_policy.*",
    "dashboard.gate_internal_api",
)


def _attribute(config: OllaConfig, key: str) -> Any:
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def no_effect_warnings(config: OllaConfig) -> list[str]:
    """``"<key path>: accepted, has no effect yet"`` for every :data:`NO_EFFECT_YET` key that
    ``config`` sets to something other than the default, in table order."""
    default = OllaConfig()
    found: list[str] = []
    for path in NO_EFFECT_YET:
        if path.endswith(".*"):
            section = path[:-2]
            keys = [f"{section}.{f.name}" for f in fields(_attribute(default, section))]
        else:
            keys = [path]
        found.extend(
            f"{key}: accepted, has no effect yet"
            for key in keys
            if _attribute(config, key) != _attribute(default, key)
        )
    return found


# --------------------------------------------------------------------------- environment

#: The OLLA_* variables olla honours (as the Go original does), and the key each one sets.
_RL = ("server", "rate_limits")
_CORS = ("server", "cors")
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "OLLA_SERVER_HOST": (("server", "host"), "str"),
    "OLLA_SERVER_PORT": (("server", "port"), "int"),
    "OLLA_SERVER_READ_TIMEOUT": (("server", "read_timeout"), "duration"),
    "OLLA_SERVER_READ_HEADER_TIMEOUT": (("server", "read_header_timeout"), "duration"),
    "OLLA_SERVER_WRITE_TIMEOUT": (("server", "write_timeout"), "duration"),
    "OLLA_SERVER_MAX_BODY_SIZE": (("server", "request_limits", "max_body_size"), "size"),
    "OLLA_SERVER_MAX_HEADER_SIZE": (("server", "request_limits", "max_header_size"), "size"),
    "OLLA_SERVER_GLOBAL_RATE_LIMIT": (
        ("server", "rate_limits", "global_requests_per_minute"),
        "int",
    ),
    "OLLA_SERVER_PER_IP_RATE_LIMIT": (
        ("server", "rate_limits", "per_ip_requests_per_minute"),
        "int",
    ),
    "OLLA_SERVER_RATE_BURST_SIZE": ((*_RL, "burst_size"), "int"),
    "OLLA_SERVER_HEALTH_RATE_LIMIT": (
        ("server", "rate_limits", "health_requests_per_minute"),
        "int",
    ),
    "OLLA_SERVER_RATE_CLEANUP_INTERVAL": (
        ("server", "rate_limits", "cleanup_interval"),
        "duration",
    ),
    "OLLA_SERVER_TRUST_PROXY_HEADERS": ((*_RL, "trust_proxy_headers"), "bool"),
    "OLLA_SERVER_TRUSTED_PROXY_CIDRS": ((*_RL, "trusted_proxy_cidrs"), "list"),
    "OLLA_SERVER_CORS_ENABLED": ((*_CORS, "enabled"), "bool"),
    "OLLA_SERVER_CORS_ALLOWED_ORIGINS": ((*_CORS, "allowed_origins"), "list"),
    "OLLA_SERVER_CORS_ALLOWED_METHODS": ((*_CORS, "allowed_methods"), "list"),
    "OLLA_SERVER_CORS_ALLOWED_HEADERS": ((*_CORS, "allowed_headers"), "list"),
    "OLLA_SERVER_CORS_EXPOSED_HEADERS": ((*_CORS, "exposed_headers"), "list"),
    "OLLA_SERVER_CORS_ALLOW_CREDENTIALS": ((*_CORS, "allow_credentials"), "bool"),
    "OLLA_SERVER_CORS_MAX_AGE": ((*_CORS, "max_age"), "int"),
    "OLLA_PROXY_ENGINE": (("proxy", "engine"), "str"),
    "OLLA_PROXY_PROFILE": (("proxy", "profile"), "str"),
    "OLLA_PROXY_LOAD_BALANCER": (("proxy", "load_balancer"), "str"),
    "OLLA_PROXY_RESPONSE_TIMEOUT": (("proxy", "response_timeout"), "duration"),
    "OLLA_PROXY_READ_TIMEOUT": (("proxy", "read_timeout"), "duration"),
    "OLLA_PROXY_RESPONSE_HEADER_TIMEOUT": (("proxy", "response_header_timeout"), "duration"),
    "OLLA_PROXY_TLS_HANDSHAKE_TIMEOUT": (("proxy", "tls_handshake_timeout"), "duration"),
    "OLLA_PROXY_CONNECTION_KEEP_ALIVE": (("proxy", "connection_keep_alive"), "duration"),
    "OLLA_PROXY_STICKY_SESSIONS_ENABLED": (("proxy", "sticky_sessions", "enabled"), "bool"),
    "OLLA_LOGGING_LEVEL": (("logging", "level"), "str"),
    "OLLA_LOGGING_FORMAT": (("logging", "format"), "str"),
    "OLLA_SHOW_NERD_STATS": (("engineering", "show_nerdstats"), "bool"),
    "OLLA_MODEL_REGISTRY_TYPE": (("model_registry", "type"), "str"),
    "OLLA_MODEL_UNIFIER_ENABLED": (("model_registry", "enable_unifier"), "bool"),
    "OLLA_TRANSLATORS_ANTHROPIC_ENABLED": (("translators", "anthropic", "enabled"), "bool"),
    "OLLA_TRANSLATORS_ANTHROPIC_PASSTHROUGH_ENABLED": (
        ("translators", "anthropic", "passthrough_enabled"),
        "bool",
    ),
    "OLLA_TRANSLATORS_ANTHROPIC_MAX_MESSAGE_SIZE": (
        ("translators", "anthropic", "max_message_size"),
        "size",
    ),
}


def _env_value(raw: str, kind: str, path: Path_) -> object:
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"must be an integer, got {raw!r}", path) from None
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"must be true or false, got {raw!r}", path)
    if kind == "duration":
        parse_duration(raw, path)
        return raw
    if kind == "size":
        return parse_size(raw, path)
    if kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _apply_env(
    data: dict[Any, Any], environ: Mapping[str, str], warnings: list[str]
) -> dict[Any, Any]:
    """The document with the honoured OLLA_* variables applied; bad values are warnings."""
    merged: dict[Any, Any] = _deep_copy(data)
    for name, (path, kind) in ENV_OVERRIDES.items():
        if name not in environ:
            continue
        try:
            value = _env_value(environ[name], kind, path)
        except ConfigError as e:
            warnings.append(f"{name}: {e.reason}; ignored")
            continue
        node = merged
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# --------------------------------------------------------------------------- files

SEARCH_PATHS = ("config/config.local.yaml", "config/config.yaml", "config.yaml", "default.yaml")

#: With no config file at all: one local Ollama, as the Go original does.
DEFAULT_DOCUMENT: dict[str, Any] = {
    "discovery": {
        "static": {
            "endpoints": [
                {
                    "url": "http://localhost:11434",
                    "name": "localhost",
                    "type": "ollama",
                    "priority": 100,
                    "health_check_url": "/",
                    "model_url": "/api/tags",
                    "check_interval": "5s",
                    "check_timeout": "2s",
                }
            ]
        }
    }
}


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> OllaConfig:
    """Read, parse and validate the config file.

    ``path`` wins; else ``OLLA_CONFIG_FILE``; else the first of :data:`SEARCH_PATHS` that
    exists; else the built-in default (one Ollama on localhost:11434).
    """
    environ = os.environ if environ is None else environ
    chosen = path or environ.get("OLLA_CONFIG_FILE") or None
    if chosen is None:
        chosen = next((p for p in SEARCH_PATHS if os.path.isfile(p)), None)
        if chosen is None:
            config = parse_config(DEFAULT_DOCUMENT, environ)
            return replace(config, warnings=("no config file found: using built-in defaults",))
    try:
        text = Path(chosen).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {chosen}: {e.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{chosen}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    config = parse_config(document, environ, str(Path(chosen).resolve().parent))
    return replace(config, source=str(chosen))


def check_endpoint_types(config: OllaConfig, known: Iterable[str]) -> None:
    """Every endpoint's type must name a loaded profile (or be ``auto``).

    Raises:
        ConfigError: naming the endpoint's key path and the known types.
    """
    names = sorted(set(known))
    for index, endpoint in enumerate(config.discovery.endpoints):
        if endpoint.type != "auto" and endpoint.type not in names:
            raise ConfigError(
                f"unsupported endpoint type {endpoint.type!r} (known: {', '.join(names)}, auto)",
                ("discovery", "static", "endpoints", index, "type"),
            )


def profiles_dir(config: OllaConfig) -> Path | None:
    """Where user profiles live: ``profiles_dir``, else ``profiles/`` beside the config."""
    if config.profiles_dir:
        base = Path(config.source).parent if config.source else Path(".")
        return base / config.profiles_dir
    return Path(config.source).parent / "profiles" if config.source else None
