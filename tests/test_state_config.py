"""``state:``: memory by default; redis with a URL; bad values fail at load with the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from olla.config import ConfigError, RedisAddress, parse_config, redis_address


def test_memory_by_default() -> None:
    """If there is no state section, then state stays in each process."""
    config = parse_config({})
    assert (config.state.backend, config.state.shared) == ("memory", False)


def test_redis_url_and_password(tmp_path: Path) -> None:
    """If the URL names a TLS server with a database, then its parts are read; a password key
    (from a file here) wins over the URL's."""
    (tmp_path / "pw").write_text("from-file\n")
    state = parse_config(
        {
            "state": {
                "backend": "redis",
                "url": "rediss://olla:in%40url@valkey.internal:6380/3",
                "password_file": "pw",
                "key_prefix": "prod:",
                "pool_size": 4,
                "connect_timeout": "1s",
                "command_timeout": "100ms",
            }
        },
        base_dir=str(tmp_path),
    ).state
    assert redis_address(state) == RedisAddress(
        "valkey.internal", 6380, 3, True, "olla", "from-file"
    )
    assert (state.key_prefix, state.pool_size, state.command_timeout) == ("prod:", 4, 0.1)
    bare = parse_config({"state": {"backend": "redis", "url": "redis://h"}}).state
    assert redis_address(bare) == RedisAddress("h", 6379, 0, False, None, None)


def test_password_from_environment() -> None:
    """If the password is ${VAR}, then it comes from the environment."""
    state = parse_config(
        {"state": {"backend": "redis", "url": "redis://h", "password": "${PW}"}}, {"PW": "s3"}
    ).state
    assert redis_address(state).password == "s3"


@pytest.mark.parametrize(
    ("state", "path", "why"),
    [
        ({"backend": "redis"}, "state.url", "is required"),
        ({"backend": "valkey"}, "state.backend", "must be one of memory, redis"),
        ({"backend": "redis", "url": "http://h"}, "state.url", "redis://"),
        ({"backend": "redis", "url": "redis:///0"}, "state.url", "names no host"),
        ({"backend": "redis", "url": "redis://h/zero"}, "state.url", "database must be a number"),
        ({"backend": "redis", "url": "redis://h:99999"}, "state.url", "not a valid URL"),
        ({"backend": "redis", "url": "redis://h?x=1"}, "state.url", "no query"),
        ({"backend": "redis", "url": "redis://h", "pool_size": 0}, "state.pool_size", "at least 1"),
        (
            {"backend": "redis", "url": "redis://h", "command_timeout": "0"},
            "state.command_timeout",
            "more than 0",
        ),
        ({"backend": "redis", "url": "redis://h", "password": "${NOPE}"}, "state.password", "NOPE"),
    ],
)
def test_bad_values(state: dict[str, object], path: str, why: str) -> None:
    """If a state value is wrong, then loading fails naming its key and why."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"state": state}, {})
    assert str(caught.value).startswith(path + ":")
    assert why in str(caught.value)


def test_redis_keys_with_memory_warn() -> None:
    """If redis-only keys are set with backend memory, then each is a warning (no effect)."""
    config = parse_config({"state": {"url": "redis://h", "pool_size": 3}})
    assert "state.url: has no effect with backend: memory" in config.warnings
    assert "state.pool_size: has no effect with backend: memory" in config.warnings
