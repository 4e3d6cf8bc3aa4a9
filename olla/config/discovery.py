# -*- test-case-name: tests.test_config -*-
"""``discovery:``: the static endpoints, their credentials, and model discovery."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from olla.config._base import (
    ConfigError,
    SectionReader,
    format_duration,
    format_path,
    interpolate,
    read_beside,
)
from olla.config.proxy import FilterConfig, _filter


@dataclass(frozen=True)
class AuthConfig:
    """A resolved endpoint credential: the one header it adds to upstream requests."""

    type: str  # bearer | api_key | basic
    header_name: str
    header_value: str
    #: ``api_key``: the header was written in the config (else the profile's
    #: ``characteristics.auth.default_header`` may choose it)
    header_given: bool = True

    def __repr__(self) -> str:  # never leak the secret through logs or tracebacks
        return f"AuthConfig(type={self.type!r}, header_name={self.header_name!r})"


@dataclass(frozen=True)
class EndpointConfig:
    url: str  # as configured, without trailing slash
    name: str
    type: str  # normalised profile name (ollama, lm-studio, openai-compatible, ...) or "auto"
    #: None: the profile's ``characteristics.default_priority`` (else 100)
    priority: int | None = None
    preserve_path: bool = False
    health_check_url: str | None = None  # None: the profile default
    model_url: str | None = None  # None: the profile default
    check_interval: float = 5.0
    check_timeout: float = 2.0
    #: requests it serves in parallel (Ollama's parallel slots) before olla counts it as full;
    #: None: what the backend reports (llama.cpp's slots), else the profile's
    #: ``resources.slot_configuration.default_slots``, else 4 (``EndpointRegistry.slots``)
    max_concurrency: int | None = None
    #: models it holds in memory at once (Ollama's ``OLLAMA_MAX_LOADED_MODELS``, or what its
    #: memory fits); None: unknown, and olla loads a model beside a busy one only as a first
    #: home (``olla.proxy.placement``)
    max_loaded_models: int | None = None
    model_filter: FilterConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class ModelDiscoveryConfig:
    enabled: bool = True
    interval: float = 300.0
    timeout: float = 30.0
    concurrent_workers: int = 5
    retry_attempts: int = field(default=3, metadata={"minimum": 0})
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class HealthCheckConfig:
    #: how long olla waits after starting before the first health checks
    initial_delay: float = 0.0


@dataclass(frozen=True)
class DiscoveryConfig:
    type: str = "static"
    refresh_interval: float = 30.0
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    model_discovery: ModelDiscoveryConfig = field(default_factory=ModelDiscoveryConfig)
    endpoints: tuple[EndpointConfig, ...] = ()


#: Spellings of endpoint types that mean another (route prefixes, older names).
_TYPE_ALIASES = {
    "openai": "openai-compatible",
    "lmstudio": "lm-studio",
    "dmr": "docker-model-runner",
    "": "auto",
}


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
        file_text = interpolate(r.text(f"{field_name}_file", ""), environ, path)
        value = read_beside(file_text, base_dir, path).strip()
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
        result = AuthConfig("api_key", header, api_key, header_given=r.has("header"))
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
        priority=_optional_int(r, "priority", 0),
        preserve_path=r.flag("preserve_path", False),
        health_check_url=r.text("health_check_url", "") or None,
        model_url=r.text("model_url", "") or None,
        check_interval=check_interval,
        check_timeout=check_timeout,
        max_concurrency=_optional_int(r, "max_concurrency", 1),
        max_loaded_models=_optional_int(r, "max_loaded_models", 1),
        model_filter=model_filter,
        headers=headers,
        auth=auth,
    )
    r.finish()
    return endpoint


def _optional_int(r: SectionReader, key: str, minimum: int) -> int | None:
    """An integer, or None when the key is absent (the profile decides then)."""
    if not r.has(key):
        r.raw(key)
        return None
    return r.integer(key, minimum, minimum=minimum)


def _discovery(r: SectionReader, environ: Mapping[str, str], base_dir: Path) -> DiscoveryConfig:
    d = DiscoveryConfig()
    kind = r.choice("type", d.type, ("static",))
    refresh_interval = r.duration("refresh_interval", d.refresh_interval)
    health_r = r.section("health_check")
    health_check = health_r.fields(HealthCheckConfig())
    if health_check.initial_delay < 0:
        raise ConfigError("must not be negative", health_r.at("initial_delay"))
    health_r.finish()
    md_r = r.section("model_discovery")
    md = d.model_discovery
    model_discovery = md_r.fields(md)
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
        health_check=health_check,
        model_discovery=model_discovery,
        endpoints=tuple(by_url.values()),
    )
