# -*- test-case-name: tests.test_state_config -*-
"""``state:``: where olla keeps what its processes share (sticky pins, rate buckets, load,
slots, who probes an endpoint this interval).

``backend: memory`` (the default) keeps it in each process, as one process needs. ``backend:
redis`` keeps it in a Redis or Valkey server every worker and every olla instance reaches, so
they decide as one; olla falls back to its own memory while the server does not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from olla.config._base import ConfigError, Path_, SectionReader, interpolate
from olla.config.discovery import _read_secret

BACKENDS = ("memory", "redis")
#: the keys only ``backend: redis`` reads
_REDIS_KEYS = frozenset(
    ("url", "password", "password_file", "key_prefix", "pool_size")
    + ("connect_timeout", "command_timeout")
)


@dataclass(frozen=True)
class StateConfig:
    backend: str = "memory"
    #: ``redis://[user[:password]@]host[:port][/db]``; ``rediss://`` for TLS
    url: str = ""
    #: overrides the URL's password (``${VAR}`` or ``password_file``)
    password: str | None = field(default=None, repr=False)
    #: every key olla writes starts with it, so deployments can share one server
    key_prefix: str = "olla:"
    #: connections per process for commands (pub/sub has one more of its own)
    pool_size: int = 2
    connect_timeout: float = 2.0
    #: a command without an answer by then counts as the store being down: this process
    #: decides from its own memory until the store answers again
    command_timeout: float = 0.25

    @property
    def shared(self) -> bool:
        return self.backend == "redis"


@dataclass(frozen=True)
class RedisAddress:
    """The parts of ``state.url`` a connection needs."""

    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None = field(repr=False)

    @property
    def display(self) -> str:
        """The address as logs and status pages show it (never the password)."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str, path: Path_) -> RedisAddress:
    """``redis://`` or ``rediss://`` URL -> its parts.

    Raises:
        ConfigError: anything else, with ``path`` and why.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"is not a valid URL: {e}", path) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"must start with redis:// or rediss:// (TLS), got {url.split('://')[0]!r}", path
        )
    if not parts.hostname:
        raise ConfigError("names no host (redis://host:6379/0)", path)
    if parts.query or parts.fragment:
        raise ConfigError("takes no query or fragment; set the other state keys instead", path)
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigError(f"database must be a number (redis://host:6379/0), got {db_text!r}", path)
    return RedisAddress(
        host=parts.hostname,
        port=port or 6379,
        db=int(db_text),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def redis_address(config: StateConfig) -> RedisAddress:
    """The address ``config`` names (already checked at load), its ``password`` key first."""
    address = parse_redis_url(config.url, ("state", "url"))
    if config.password is not None:
        return RedisAddress(
            address.host, address.port, address.db, address.tls, address.username, config.password
        )
    return address


def _state(r: SectionReader, environ: Mapping[str, str], base_dir: Path) -> StateConfig:
    default = StateConfig()
    backend = r.choice("backend", default.backend, BACKENDS)
    url = interpolate(r.text("url", ""), environ, r.at("url")).strip()
    password = _read_secret(r, "password", environ, base_dir)
    config = StateConfig(
        backend=backend,
        url=url,
        password=password,
        key_prefix=r.text("key_prefix", default.key_prefix),
        pool_size=r.integer("pool_size", default.pool_size, minimum=1),
        connect_timeout=r.duration("connect_timeout", default.connect_timeout),
        command_timeout=r.duration("command_timeout", default.command_timeout),
    )
    r.finish()
    if backend == "redis":
        if not url:
            raise ConfigError("is required with backend: redis (redis://host:6379/0)", r.at("url"))
        parse_redis_url(url, r.at("url"))
        for key in ("connect_timeout", "command_timeout"):
            if getattr(config, key) <= 0:
                raise ConfigError("must be more than 0 with backend: redis", r.at(key))
    else:
        for key in sorted(set(r.data) & _REDIS_KEYS):
            r.warnings.append(f"state.{key}: has no effect with backend: memory")
    return config
