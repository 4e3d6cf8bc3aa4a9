"""Client API keys: where a key is read from, constant-time matching, model allow-lists, and
``server.auth`` in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from olla.config import ClientKey, ConfigError, parse_config
from olla.guard.clientauth import KeyRing, model_allowed, presented_key
from olla.proxy.headers import request_headers_for_upstream

RING = KeyRing([ClientKey("sk-alice-12345", "alice"), ClientKey("sk-bob-678910", "bob")])


def headers(**values: bytes):  # type: ignore[no-untyped-def]
    lowered = {k.replace("_", "-").lower().encode(): v for k, v in values.items()}
    return lowered.get


@pytest.mark.parametrize(
    "given",
    [
        {"authorization": b"Bearer sk-alice-12345"},
        {"authorization": b"bearer  sk-alice-12345 "},
        {"x_api_key": b"sk-alice-12345"},
        {"api_key": b"sk-alice-12345"},
    ],
)
def test_key_read_from_each_header(given: dict[str, bytes]) -> None:
    """If the key arrives as Authorization: Bearer, x-api-key or api-key, then it matches."""
    key = RING.match(presented_key(headers(**given)))
    assert key is not None and key.name == "alice"


def test_missing_wrong_and_other_schemes_match_nothing() -> None:
    """If no key, a wrong key, a prefix of a key or a Basic credential is given, then no key
    matches."""
    assert RING.match(presented_key(headers())) is None
    assert RING.match(presented_key(headers(authorization=b"Bearer sk-alice-1234"))) is None
    assert RING.match(presented_key(headers(authorization=b"Basic c2stYWxpY2UtMTIzNDU="))) is None
    assert RING.match(b"sk-bob-678910x") is None


def test_model_allow_list() -> None:
    """If a key lists models (with globs), then only those are allowed, case-insensitively;
    a request naming no model is allowed; a key without a list allows every model."""
    key = ClientKey("k" * 10, "k", models=("llama3*", "qwen2.5:7b"))
    assert model_allowed(key, "llama3.1:8b")
    assert model_allowed(key, "Qwen2.5:7B")
    assert not model_allowed(key, "qwen2.5:14b")
    assert model_allowed(key, None)
    assert model_allowed(ClientKey("k" * 10), "anything")


def test_keys_never_forwarded() -> None:
    """If a client sends its key in any of the accepted headers, then none reaches a
    backend."""
    out = request_headers_for_upstream(
        [
            (b"Authorization", [b"Bearer sk-alice-12345"]),
            (b"X-Api-Key", [b"sk-alice-12345"]),
            (b"api-key", [b"sk-alice-12345"]),
            (b"Content-Type", [b"application/json"]),
        ],
        client_ip=b"10.0.0.1",
        scheme=b"http",
        host=b"olla",
        model=None,
    )
    sent = b" ".join(n + b":" + b",".join(v) for n, v in out)
    assert b"sk-alice" not in sent
    assert b"Content-Type" in sent


def test_config_inline_env_and_file(tmp_path: Path) -> None:
    """If keys are given inline, as ${VAR} and in a file, then all are loaded, named, with
    their limits and model lists, and the keys never appear in the config's repr."""
    (tmp_path / "keys.txt").write_text("# team keys\nsk-file-key-0001\n\n  sk-file-key-0002  \n")
    config = parse_config(
        {
            "server": {
                "auth": {
                    "api_keys": [
                        "sk-inline-key-1",
                        {
                            "key": "${ALICE_KEY}",
                            "name": "alice",
                            "requests_per_minute": 30,
                            "models": ["llama3*"],
                            "manage_models": True,
                        },
                    ],
                    "api_keys_file": "keys.txt",
                }
            }
        },
        {"ALICE_KEY": "sk-from-the-env"},
        str(tmp_path),
    )
    keys = config.server.auth.api_keys
    assert [k.key for k in keys] == [
        "sk-inline-key-1",
        "sk-from-the-env",
        "sk-file-key-0001",
        "sk-file-key-0002",
    ]
    assert [k.name for k in keys] == ["key-1", "alice", "key-3", "key-4"]
    assert keys[1].requests_per_minute == 30 and keys[1].models == ("llama3*",)
    assert [k.manage_models for k in keys] == [False, True, False, False]
    assert config.server.auth.enabled
    assert "sk-" not in repr(config)
    assert not parse_config({}, {}).server.auth.enabled


@pytest.mark.parametrize(
    ("auth", "path"),
    [
        ({"api_keys": "sk-not-a-list"}, "server.auth.api_keys"),
        ({"api_keys": ["short"]}, "server.auth.api_keys[0]"),
        ({"api_keys": ["sk-same-key-1", "sk-same-key-1"]}, "server.auth.api_keys[1]"),
        ({"api_keys": [{"name": "no key"}]}, "server.auth.api_keys[0]"),
        ({"api_keys": [{"key": "${UNSET_KEY}"}]}, "server.auth.api_keys[0].key"),
        ({"api_keys": [{"key": "sk-long-enough", "limit": 3}]}, "server.auth.api_keys[0]"),
        (
            {"api_keys": [{"key": "sk-long-enough", "requests_per_minute": -1}]},
            "server.auth.api_keys[0].requests_per_minute",
        ),
        ({"api_keys_file": "/nonexistent/keys"}, "server.auth.api_keys_file"),
        (
            {"api_keys": [{"key": "sk-long-enough", "manage_models": "yes"}]},
            "server.auth.api_keys[0].manage_models",
        ),
    ],
)
def test_config_errors_name_the_key(auth: dict[str, object], path: str) -> None:
    """If a client key setting is wrong, then startup fails with that key's path."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"auth": auth}}, {})
    assert path in str(caught.value)


def test_empty_key_file_is_an_error(tmp_path: Path) -> None:
    """If the key file holds no key, then startup fails naming api_keys_file (an empty file
    must not silently turn authentication off)."""
    (tmp_path / "keys.txt").write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"auth": {"api_keys_file": "keys.txt"}}}, {}, str(tmp_path))
    assert "server.auth.api_keys_file" in str(caught.value)
