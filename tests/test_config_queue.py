"""Config of the admission queue: ``proxy.queue``, endpoints' slots and client keys' priority."""

from __future__ import annotations

from typing import Any

import pytest

from olla.config import ConfigError, QueueConfig, no_effect_warnings, parse_config
from olla.util.priority import Priority


def _error(document: object) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, {})
    return str(raised.value)


def test_queue_defaults() -> None:
    """If nothing is set, then the queue is on, holds up to 1000 requests for as long as the
    response timeout, with a 5 s service-time prior; an endpoint's slots are left to the
    registry (what the backend reports, else its profile's default)."""
    config = parse_config({"discovery": {"static": {"endpoints": [{"url": "http://a:1"}]}}}, {})
    assert config.proxy.queue == QueueConfig()
    assert (config.proxy.queue.enabled, config.proxy.queue.max_size) == (True, 1000)
    assert config.proxy.queue.max_wait is None
    assert config.proxy.queue_max_wait == config.proxy.response_timeout == 900.0
    assert config.proxy.queue.default_service_time == 5.0
    assert config.discovery.endpoints[0].max_concurrency is None


def test_queue_values() -> None:
    """If the keys are set, then they are read as given (durations in Go syntax)."""
    proxy = parse_config(
        {
            "proxy": {
                "response_timeout": "10m",
                "queue": {
                    "enabled": False,
                    "max_size": 2,
                    "max_wait": "90s",
                    "default_service_time": "1500ms",
                },
            }
        },
        {},
    ).proxy
    assert proxy.queue == QueueConfig(
        enabled=False, max_size=2, max_wait=90.0, default_service_time=1.5
    )
    assert proxy.queue_max_wait == 90.0


def test_max_wait_follows_the_response_timeout() -> None:
    """If max_wait is not set, then it is the response timeout; with no response timeout,
    15 minutes."""
    assert parse_config({"proxy": {"response_timeout": "2m"}}, {}).proxy.queue_max_wait == 120.0
    assert parse_config({"proxy": {"response_timeout": "0"}}, {}).proxy.queue_max_wait == 900.0


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ({"max_size": -1}, "proxy.queue.max_size: must be at least 0, got -1"),
        ({"max_size": "many"}, "proxy.queue.max_size: must be an integer"),
        ({"max_wait": "0s"}, "proxy.queue.max_wait: must be above 0"),
        ({"max_wait": 5}, "proxy.queue.max_wait: must be a duration like 5s"),
        ({"enabled": "yes"}, "proxy.queue.enabled: must be true or false"),
        ({"default_service_time": "0"}, "proxy.queue.default_service_time: must be above 0"),
    ],
)
def test_queue_errors(queue: dict[str, Any], message: str) -> None:
    """If a queue key has a bad value, then loading fails naming its key path and why."""
    assert message in _error({"proxy": {"queue": queue}})


def test_queue_unknown_key_warns() -> None:
    """If proxy.queue has a key olla does not know, then it is warned with its path."""
    config = parse_config({"proxy": {"queue": {"max_lenght": 3}}}, {})
    assert "proxy.queue.max_lenght: unknown key, ignored" in config.warnings


def test_queue_keys_have_effects() -> None:
    """If queue keys are set, then none is reported as without effect: the gate reads them."""
    config = parse_config({"proxy": {"queue": {"enabled": False, "max_wait": "1m"}}}, {})
    assert no_effect_warnings(config) == []


def test_endpoint_slots() -> None:
    """If an endpoint sets max_concurrency, then that is its slots; below 1 is refused."""
    document = {
        "discovery": {"static": {"endpoints": [{"url": "http://a:1", "max_concurrency": 1}]}}
    }
    assert parse_config(document, {}).discovery.endpoints[0].max_concurrency == 1
    document["discovery"]["static"]["endpoints"][0]["max_concurrency"] = 0
    assert "endpoints[0].max_concurrency: must be at least 1, got 0" in _error(document)


def test_endpoint_max_loaded_models() -> None:
    """If an endpoint sets max_loaded_models, then placement reads it; absent it is unknown
    (None); below 1 or not a whole number is refused with the key's path."""
    document: dict[str, Any] = {
        "discovery": {"static": {"endpoints": [{"url": "http://a:1", "max_loaded_models": 3}]}}
    }
    assert parse_config(document, {}).discovery.endpoints[0].max_loaded_models == 3
    endpoint = document["discovery"]["static"]["endpoints"][0]
    del endpoint["max_loaded_models"]
    assert parse_config(document, {}).discovery.endpoints[0].max_loaded_models is None
    endpoint["max_loaded_models"] = 0
    assert "endpoints[0].max_loaded_models: must be at least 1, got 0" in _error(document)
    endpoint["max_loaded_models"] = "two"
    assert "endpoints[0].max_loaded_models" in _error(document)


def _keys(*items: object) -> dict[str, Any]:
    return {"server": {"auth": {"api_keys": list(items)}}}


def test_client_key_priority() -> None:
    """If a client key names a priority (any case), then it is that key's ceiling; without
    one the ceiling is normal; a key given as a plain string is normal too."""
    config = parse_config(
        _keys(
            {"key": "sk-batch-0001", "priority": "low"},
            {"key": "sk-users-0001", "priority": "HIGH"},
            {"key": "sk-plain-0001"},
            "sk-string-001",
        ),
        {},
    )
    ceilings = [key.priority for key in config.server.auth.api_keys]
    assert ceilings == [Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.NORMAL]
    assert [key.name for key in config.server.auth.api_keys] == [
        "key-1",
        "key-2",
        "key-3",
        "key-4",
    ]


def test_client_key_priority_refused() -> None:
    """If a client key's priority names no priority, then loading fails at its path."""
    message = _error(_keys({"key": "sk-batch-0001", "priority": "urgent"}))
    assert message == (
        "server.auth.api_keys[0].priority: must be high, normal or low, got 'urgent'"
    )


def test_client_key_priority_is_not_warned() -> None:
    """If a client key names a priority, then loading warns nothing: the guard acts on it."""
    config = parse_config(
        _keys({"key": "sk-batch-0001", "priority": "low"}, {"key": "sk-x-000001"}), {}
    )
    assert config.warnings == ()
