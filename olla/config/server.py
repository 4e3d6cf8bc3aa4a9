# -*- test-case-name: tests.test_config -*-
"""``server:``: the listener, request limits, rate limits, CORS and client API keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from olla.config._base import ConfigError, SectionReader, _check_cidr, interpolate, read_beside
from olla.util.priority import DEFAULT_CEILING, Priority, PriorityError, parse_priority


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
    # Off unless set (the Go original's default is 100): one front end or agent sends a whole
    # team's requests from one address, and olla should not refuse while the fleet has room.
    per_ip_requests_per_minute: int = 0
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
class ClientKey:
    """One API key a client may present; ``name`` is what logs show (never the key)."""

    key: str = field(repr=False)
    name: str = ""
    #: this key's own limit on top of the per-IP one (0: none)
    requests_per_minute: int = 0
    #: the models this key may ask for, exact names or ``*`` globs (empty: every model)
    models: tuple[str, ...] = ()
    #: may pull, create, copy, delete and push models (``model_management``)
    manage_models: bool = False
    #: the highest ``X-Olla-Priority`` this key's requests get (``olla.util.priority``)
    priority: Priority = DEFAULT_CEILING


@dataclass(frozen=True)
class ClientAuthConfig:
    """``server.auth``: client API keys; none configured means no key is asked for."""

    api_keys: tuple[ClientKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)


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
    auth: ClientAuthConfig = field(default_factory=ClientAuthConfig)


def _client_key(item: object, path: tuple[str | int, ...], environ: Mapping[str, str]) -> ClientKey:
    """A key given as a string, or as a mapping with ``key`` and its options."""
    if isinstance(item, str):
        item = {"key": item}
    k_r = SectionReader(item, path, [])
    if not k_r.has("key"):
        raise ConfigError("needs a key", path)
    secret = interpolate(k_r.text("key", ""), environ, k_r.at("key")).strip()
    try:
        priority = parse_priority(k_r.text("priority", DEFAULT_CEILING.label))
    except PriorityError as e:
        raise ConfigError(str(e), k_r.at("priority")) from None
    result = ClientKey(
        key=secret,
        name=k_r.text("name", ""),
        requests_per_minute=k_r.integer("requests_per_minute", 0, minimum=0),
        models=k_r.strings("models", ()),
        manage_models=k_r.flag("manage_models", False),
        priority=priority,
    )
    unknown = [
        str(name)
        for name in k_r.data
        if name not in ("key", "name", "requests_per_minute", "models", "manage_models", "priority")
    ]
    if unknown:
        raise ConfigError(f"unknown key option {unknown[0]!r}", path)
    return result


def _keys_file(path_text: str, at: tuple[str | int, ...], base_dir: Path) -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    lines = read_beside(path_text, base_dir, at).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _client_auth(r: SectionReader, environ: Mapping[str, str], base_dir: Path) -> ClientAuthConfig:
    keys: list[ClientKey] = []
    listed = r.raw("api_keys")
    if listed is not None and not isinstance(listed, list):
        raise ConfigError(f"must be a list, got {listed!r}", r.at("api_keys"))
    for i, item in enumerate(listed or ()):
        keys.append(_client_key(item, (*r.at("api_keys"), i), environ))
    file_at = r.at("api_keys_file")
    file_text = interpolate(r.text("api_keys_file", ""), environ, file_at)
    if file_text:
        keys.extend(ClientKey(key=k) for k in _keys_file(file_text, file_at, base_dir))
        if len(keys) == len(listed or ()):
            raise ConfigError("holds no key", file_at)
    r.finish()
    named: list[ClientKey] = []
    seen: set[str] = set()
    for i, key in enumerate(keys):
        where = (*r.at("api_keys"), i) if i < len(listed or ()) else file_at
        if len(key.key) < 8:
            raise ConfigError("a client key must be at least 8 characters", where)
        if key.key in seen:
            raise ConfigError("the same key is listed twice", where)
        seen.add(key.key)
        named.append(replace(key, name=key.name or f"key-{i + 1}"))
    return ClientAuthConfig(api_keys=tuple(named))


def _server(
    r: SectionReader, environ: Mapping[str, str] | None = None, base_dir: Path = Path(".")
) -> ServerConfig:
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
    rl_r.note(
        "per_endpoint",
        "not applied by the Go original either; olla limits clients (global, per IP, per key) "
        "and each backend by its max_concurrency",
    )
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
        auth=_client_auth(r.section("auth"), environ or {}, base_dir),
    )
    r.finish()
    return server
