"""Config loading: defaults, Go syntax, key-path errors, env overrides, auth, secrets."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from olla.__main__ import main as cli
from olla.config import (
    ConfigError,
    OllaConfig,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[1]


def _endpoints(*items: dict[str, Any]) -> dict[str, Any]:
    return {"discovery": {"static": {"endpoints": list(items)}}}


def _error(document: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, environ or {})
    return str(raised.value)


def test_defaults() -> None:
    """If the document is empty, then every section has its documented default."""
    config = parse_config(None, {})
    assert config.server.port == 40114 and config.server.host == "localhost"
    assert config.server.request_limits.max_body_size == 104857600
    assert config.proxy.load_balancer == "least-connections"
    assert config.proxy.response_header_timeout == 30.0
    assert config.proxy.retry.max_attempts == 0
    assert config.discovery.model_discovery.interval == 300.0
    assert config.model_registry.routing_strategy.type == "strict"
    assert config.translators.anthropic.max_message_size == 10485760
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("100us", 0.0001),
        ("10ns", 1e-8),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """If a duration is written in Go syntax, then it parses to seconds."""
    assert parse_duration(text, ()) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "5", 5, "5 s", "-5s", "", True, None, "1x"])
def test_bad_durations(bad: object) -> None:
    """If a duration has no unit or is not a duration, then it is rejected."""
    with pytest.raises(ConfigError, match="must be a duration like 5s"):
        parse_duration(bad, ("x",))


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=999))
def test_duration_round_trip(seconds: int, millis: int) -> None:
    """If seconds are formatted in Go syntax, then parsing gives them back."""
    value = seconds + millis / 1000
    assert parse_duration(format_duration(value), ()) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (104857600, 104857600),
        ("100MB", 104857600),
        ("1KB", 1024),
        ("500B", 500),
        ("10MiB", 10485760),
        ("1GB", 1073741824),
        ("1.5MB", 1572864),
    ],
)
def test_sizes(text: object, size: int) -> None:
    """If a size is an int or has a binary unit, then it parses to bytes."""
    assert parse_size(text, ()) == size


@pytest.mark.parametrize("bad", ["big", "10XB", True, "1 2 MB"])
def test_bad_sizes(bad: object) -> None:
    """If a size is not a size, then it is rejected with the expected form."""
    with pytest.raises(ConfigError, match="must be a size like 10MB"):
        parse_size(bad, ("x",))


def test_example_error_message() -> None:
    """If the second endpoint's check_interval is 'fast', then the error names its path."""
    message = _error(
        _endpoints(
            {"url": "http://a:1", "type": "ollama"},
            {"url": "http://b:1", "type": "ollama", "check_interval": "fast"},
        )
    )
    assert message == (
        "discovery.static.endpoints[1].check_interval: must be a duration like 5s, got 'fast'"
    )


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"port": "abc"}}, "server.port"),
        ({"server": {"cors": {"enabled": "yes"}}}, "server.cors.enabled"),
        ({"proxy": {"load_balancer": "weighted"}}, "proxy.load_balancer"),
        ({"proxy": {"engine": "nginx"}}, "proxy.engine"),
        ({"discovery": {"type": "consul"}}, "discovery.type"),
        ({"discovery": {"model_discovery": {"interval": "0s"}}}, "discovery.model_discovery"),
        ({"model_registry": {"type": "redis"}}, "model_registry.type"),
        ({"translators": {"anthropic": {"max_message_size": "200MB"}}}, "max_message_size"),
        (
            {"translators": {"anthropic": {"inspector": {"output_dir": "/etc"}}}},
            "inspector.output_dir",
        ),
        ({"server": {"cors": {"enabled": True, "allowed_origins": []}}}, "allowed_origins"),
        ({"server": {"cors": {"enabled": True, "allow_credentials": True}}}, "allow_credentials"),
        ({"dashboard": {"access_policy": {"allowed_cidrs": ["nope"]}}}, "allowed_cidrs[0]"),
        ({"model_aliases": {"a": []}}, "model_aliases.a"),
        ({"model_aliases": {" a": ["x"]}}, "model_aliases. a"),
        ({"model_aliases": {"a": ["x", ""]}}, "model_aliases.a[1]"),
        ({"proxy": {"retry": {"on_status": 503}}}, "proxy.retry.on_status"),
        ({"server": {"rate_limits": {"burst_size": -1}}}, "server.rate_limits.burst_size"),
        ({"server": {"cors": {"max_age": "long"}}}, "server.cors.max_age"),
        (
            {"discovery": {"model_discovery": {"retry_attempts": -1}}},
            "discovery.model_discovery.retry_attempts",
        ),
        ({"proxy": {"warm_routing": {"enabled": "sure"}}}, "proxy.warm_routing.enabled"),
        ({"proxy": {"retry": {"on_status": [503, 700]}}}, "proxy.retry.on_status[1]"),
        ({"proxy": {"warm_routing": {"default_load_time": "soon"}}}, "default_load_time"),
        (
            _endpoints({"url": "http://a:1", "type": "ollama", "max_concurrency": 0}),
            "endpoints[0].max_concurrency",
        ),
    ],
)
def test_fatal_values(document: dict[str, Any], path: str) -> None:
    """If a value is invalid, then loading fails with the key path in the message."""
    assert path in _error(document)


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ({"type": "ollama"}, "endpoints[0].url: is required"),
        ({"url": "ftp://x", "type": "ollama"}, "endpoints[0].url: must be an http(s) URL"),
        ({"url": "http://a:1", "type": "tgi server"}, "endpoints[0].type: unsupported endpoint"),
        ({"url": "http://a:1", "priority": -1}, "endpoints[0].priority: must be at least 0"),
        ({"url": "http://a:1", "check_interval": "500ms"}, "check_interval: must be at least 1s"),
        ({"url": "http://a:1", "check_timeout": "10s"}, "check_timeout: must be above 0"),
        ({"url": "http://a:1", "check_timeout": "40s", "check_interval": "1m"}, "at most 30s"),
    ],
)
def test_endpoint_rules(endpoint: dict[str, Any], fragment: str) -> None:
    """If an endpoint breaks a rule, then the error names the endpoint's key."""
    assert fragment in _error(_endpoints(endpoint))


def test_userinfo_rejected_without_echo() -> None:
    """If a URL carries user:pass@, then it is rejected with a hint and without the password."""
    message = _error(_endpoints({"url": "http://bob:hunter2@a:1", "type": "ollama"}))
    assert "use an auth: block" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("openai", "openai-compatible"),
        ("lmstudio", "lm-studio"),
        ("lm_studio", "lm-studio"),
        ("LM-Studio", "lm-studio"),
        ("dmr", "docker-model-runner"),
        ("", "auto"),
        ("vllm", "vllm"),
    ],
)
def test_type_normalised(raw: str, normalised: str) -> None:
    """If an endpoint type is written as a prefix or alias, then it is normalised."""
    config = parse_config(_endpoints({"url": "http://a:1/", "type": raw}), {})
    endpoint = config.discovery.endpoints[0]
    assert endpoint.type == normalised
    assert endpoint.url == "http://a:1"
    assert endpoint.name == "a:1"


def test_unknown_and_deprecated_keys_warn() -> None:
    """If a config has unknown keys, then it loads with warnings naming them; keys the Go
    original deprecated (and ignores) are compatibility notes instead."""
    config = parse_config(
        {"proxy": {"max_retries": 3, "shiny": 1}, "extra_section": {}, "server": {"x": 1}}, {}
    )
    assert config.notes == (
        "proxy.max_retries: deprecated in the Go original, not used (proxy.retry.max_attempts is)",
    )
    assert "proxy.shiny: unknown key, ignored" in config.warnings
    assert "extra_section: unknown key, ignored" in config.warnings
    assert "server.x: unknown key, ignored" in config.warnings


def test_go_original_config_loads() -> None:
    """If the Go original's shipped config is loaded, then it parses with only warnings."""
    config = load_config(str(REPO / "tests" / "data" / "go-original.yaml"), {})
    assert [ep.name for ep in config.discovery.endpoints] == [
        "local-ollama",
        "local-lm-studio",
        "local-vllm",
    ]
    assert config.discovery.endpoints[0].check_interval == 2.0
    assert config.proxy.retry.enabled is True


def test_env_overrides() -> None:
    """If OLLA_* variables are set, then they override the file; bad ones only warn."""
    config = parse_config(
        {"server": {"port": 1234}},
        {
            "OLLA_SERVER_PORT": "5555",
            "OLLA_SERVER_MAX_BODY_SIZE": "1MB",
            "OLLA_PROXY_LOAD_BALANCER": "priority",
            "OLLA_PROXY_READ_TIMEOUT": "bogus",
            "OLLA_LOGGING_LEVEL": "debug",
            "OLLA_SERVER_TRUSTED_PROXY_CIDRS": "10.0.0.0/8, 192.168.0.0/16",
        },
    )
    assert config.server.port == 5555
    assert config.server.request_limits.max_body_size == 1048576
    assert config.proxy.load_balancer == "priority"
    assert config.proxy.read_timeout == 600.0
    assert config.logging.level == "debug"
    assert config.server.rate_limits.trusted_proxy_cidrs == ("10.0.0.0/8", "192.168.0.0/16")
    assert any(w.startswith("OLLA_PROXY_READ_TIMEOUT:") for w in config.warnings)


def test_header_interpolation() -> None:
    """If endpoint headers use ${VAR} and ${VAR:-fallback}, then they are expanded."""
    config = parse_config(
        _endpoints(
            {
                "url": "http://a:1",
                "headers": {"X-Tenant": "${TENANT}", "X-Zone": "${ZONE:-eu}", "X-N": 5},
            }
        ),
        {"TENANT": "acme", "ZONE": ""},
    )
    assert config.discovery.endpoints[0].headers == {
        "X-Tenant": "acme",
        "X-Zone": "eu",
        "X-N": "5",
    }


def test_missing_variable_fatal() -> None:
    """If ${VAR} names an unset variable without fallback, then startup fails naming both."""
    message = _error(_endpoints({"url": "http://a:1", "headers": {"X-Key": "${NOPE}"}}))
    assert message == (
        'discovery.static.endpoints[0].headers.X-Key: required environment variable "NOPE" '
        "is not set"
    )


def _auth(auth: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    config = parse_config(_endpoints({"url": "http://a:1", "auth": auth}), environ or {})
    return config.discovery.endpoints[0].auth


def test_auth_kinds(tmp_path: Path) -> None:
    """If an endpoint has bearer, api_key or basic auth, then it resolves to one header."""
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    bearer = _auth({"type": "bearer", "token_file": str(token_file)})
    assert (bearer.header_name, bearer.header_value) == ("Authorization", "Bearer from-file")
    key = _auth({"type": "api_key", "key": "${K}", "header": "X-Key"}, {"K": "s3"})
    assert (key.header_name, key.header_value) == ("X-Key", "s3")
    basic = _auth({"type": "basic", "username": "u", "password": "p"})
    assert basic.header_value == "Basic " + base64.b64encode(b"u:p").decode()
    assert "p" not in repr(basic).split("type")[0] and "Basic" not in repr(basic)


def test_auth_file_relative_to_config(tmp_path: Path) -> None:
    """If a token_file path is relative, then it is read next to the config file."""
    (tmp_path / "secret").write_text("t0k")
    path = tmp_path / "olla.yaml"
    path.write_text(
        "discovery:\n  static:\n    endpoints:\n"
        "      - url: http://a:1\n        auth: {type: bearer, token_file: secret}\n"
    )
    auth = load_config(str(path), {}).discovery.endpoints[0].auth
    assert auth is not None and auth.header_value == "Bearer t0k"


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ({"type": "oauth"}, "unknown auth type"),
        ({"type": "bearer"}, "needs token"),
        ({"type": "bearer", "token": "s3cr3t-value", "token_file": "/x"}, "not both"),
        ({"type": "bearer", "token": "s3cr3t-value", "username": "u"}, "not a field"),
        ({"type": "bearer", "token": "${EMPTY}"}, "empty"),
        ({"type": "bearer", "token_file": "/nonexistent/s3cr3t-value"}, "cannot read"),
        ({"type": "basic", "username": "u"}, "needs username and password"),
        ({"type": "api_key", "key": "s3cr3t-value", "header": " "}, "must not be empty"),
    ],
)
def test_auth_errors_never_leak(auth: dict[str, Any], fragment: str) -> None:
    """If an auth block is wrong, then the error explains it and never shows a secret."""
    message = _error(_endpoints({"url": "http://a:1", "auth": auth}), {"EMPTY": ""})
    assert fragment in message
    assert "endpoints[0].auth" in message
    if "s3cr3t-value" in str(auth.get("token", "")) + str(auth.get("key", "")):
        assert "s3cr3t-value" not in message


def test_alias_duplicates_warn() -> None:
    """If an alias lists a model twice, then it warns and keeps one."""
    config = parse_config({"model_aliases": {"llama": ["a", "b", "a"]}}, {})
    assert config.model_aliases == {"llama": ("a", "b")}
    assert any("model_aliases.llama[2]" in w for w in config.warnings)


def test_bad_logging_values_fall_back() -> None:
    """If logging.level is invalid, then it warns and uses info."""
    config = parse_config({"logging": {"level": "loud", "format": "xml"}}, {})
    assert (config.logging.level, config.logging.format) == ("info", "json")
    assert len(config.warnings) == 2


def test_unknown_strategy_warns() -> None:
    """If the routing strategy is unknown, then it warns and falls back to strict."""
    config = parse_config({"model_registry": {"routing_strategy": {"type": "smart"}}}, {})
    assert config.model_registry.routing_strategy.type == "strict"
    assert config.warnings


def test_load_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If no path is given, then OLLA_CONFIG_FILE, then the search list, then defaults apply."""
    monkeypatch.chdir(tmp_path)
    default = load_config(None, {})
    assert default.discovery.endpoints[0].url == "http://localhost:11434"
    assert default.source is None
    (tmp_path / "config.yaml").write_text("server: {port: 4000}\n")
    assert load_config(None, {}).server.port == 4000
    other = tmp_path / "other.yaml"
    other.write_text("server: {port: 5000}\n")
    assert load_config(None, {"OLLA_CONFIG_FILE": str(other)}).server.port == 5000
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"), {})


def test_yaml_syntax_error(tmp_path: Path) -> None:
    """If the YAML is malformed, then the error names the file and line."""
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml at line \d+: invalid YAML"):
        load_config(str(path), {})


def test_shipped_config_is_clean() -> None:
    """If the shipped etc/olla.yaml is validated, then it passes with exit 0."""
    out = io.StringIO()
    assert cli(["validate-config", str(REPO / "etc" / "olla.yaml")], out) == 0
    assert out.getvalue().splitlines()[-1] == "Result: PASS"


def test_validate_config_reports(tmp_path: Path) -> None:
    """If a config has warnings or errors, then validate-config says so and exits 1."""
    warn = tmp_path / "warn.yaml"
    warn.write_text(
        "proxy: {max_retries: 3, shiny: 1}\n"
        + "discovery: {static: {endpoints: [{url: 'http://a:1'}]}}\n"
    )
    out = io.StringIO()
    assert cli(["validate-config", str(warn)], out) == 1
    assert "[WARN] proxy.shiny: unknown key" in out.getvalue()
    assert "[NOTE] proxy.max_retries" in out.getvalue()
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 99999}\n")
    out = io.StringIO()
    assert cli(["validate-config", str(bad)], out) == 1
    assert "[FAIL] server.port" in out.getvalue()
    assert out.getvalue().endswith("Result: FAIL\n")


def test_cli_subprocess() -> None:
    """If `python -m olla version` runs, then it prints the version and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "olla", "version"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert result.stdout.startswith("olla ")
    bad = subprocess.run(
        [sys.executable, "-m", "olla", "frobnicate"],
        capture_output=True,
        cwd=str(REPO),
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 2


def test_config_is_frozen() -> None:
    """If code tries to change a loaded config, then it cannot."""
    config = OllaConfig()
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


def test_endpoint_type_must_have_profile() -> None:
    """If an endpoint's type names no loaded profile, then startup fails naming the key."""
    from olla.config import check_endpoint_types
    from olla.profiles import builtin_profiles

    config = parse_config(
        _endpoints({"url": "http://a:1"}, {"url": "http://b:1", "type": "tgi"}), {}
    )
    with pytest.raises(ConfigError, match=r"endpoints\[1\]\.type: unsupported endpoint type 'tgi'"):
        check_endpoint_types(config, (p.name for p in builtin_profiles()))


def test_routing_keys() -> None:
    """If the routing keys are set, then they are read; by default Olla's busy statuses fail
    over, warm routing is on with a 5 s load estimate, and an endpoint has 4 slots."""
    default = parse_config({}, {})
    assert default.proxy.retry.on_status == (429, 502, 503, 504)
    assert default.proxy.warm_routing.enabled
    assert default.proxy.warm_routing.default_load_time == 5.0
    config = parse_config(
        {
            "proxy": {
                "retry": {"on_status": []},
                "warm_routing": {"enabled": False, "default_load_time": "1500ms"},
            },
            **_endpoints({"url": "http://a:1", "type": "ollama", "max_concurrency": 8}),
        },
        {},
    )
    assert config.proxy.retry.on_status == ()
    assert not config.proxy.warm_routing.enabled
    assert config.proxy.warm_routing.default_load_time == 1.5
    assert config.discovery.endpoints[0].max_concurrency == 8
    assert not config.warnings


# --------------------------------------------------------------------------- logging.output/file


def test_logging_file_output(tmp_path: Path) -> None:
    """If logging.output is file, then logging.file is read, relative to the config file's
    directory, and stored as an absolute path."""
    (tmp_path / "logs").mkdir()
    config = parse_config(
        {"logging": {"output": "file", "file": "logs/olla.log"}}, {}, base_dir=str(tmp_path)
    )
    assert config.logging.output == "file"
    assert config.logging.file == str(tmp_path / "logs" / "olla.log")
    absolute = str(tmp_path / "a.log")
    assert parse_config({"logging": {"output": "file", "file": absolute}}, {}).logging.file == (
        absolute
    )
    assert parse_config({}, {}).logging.file is None
    assert not config.warnings


@pytest.mark.parametrize(
    ("logging", "fragment"),
    [
        ({"output": "file"}, "logging.file: is required when logging.output is file"),
        ({"output": "file", "file": ""}, "logging.file: is required"),
        ({"output": "file", "file": "missing/olla.log"}, "logging.file: directory "),
        ({"output": "file", "file": "."}, "logging.file: must be a file"),
        ({"output": "syslog"}, "logging.output: must be one of stdout, file"),
        ({"output": "file", "file": ["a"]}, "logging.file: must be a string"),
    ],
)
def test_logging_file_errors(tmp_path: Path, logging: dict[str, Any], fragment: str) -> None:
    """If logging.output is file without a usable logging.file, then the config is rejected
    naming the key path."""
    with pytest.raises(ConfigError) as raised:
        parse_config({"logging": logging}, {}, base_dir=str(tmp_path))
    assert fragment in str(raised.value)


def test_logging_file_without_file_output_warns(tmp_path: Path) -> None:
    """If logging.file is set while logging.output is stdout, then it warns that it is
    ignored."""
    config = parse_config({"logging": {"file": "olla.log"}}, {}, base_dir=str(tmp_path))
    assert config.warnings == ("logging.file: ignored unless logging.output is file",)


def test_refresh_interval_is_a_duration() -> None:
    """If discovery.refresh_interval is set, then it is read as a duration like any other."""
    assert parse_config({"discovery": {"refresh_interval": "1m"}}, {}).discovery.refresh_interval
    assert "discovery.refresh_interval" in _error({"discovery": {"refresh_interval": "often"}})


# ------------------------------------------------------------------- no key without an effect


def test_no_key_without_an_effect() -> None:
    """If the table of keys accepted without an effect is read, then it is empty: every key
    works or is refused (docs/CONFIG_KEYS.md)."""
    from olla.config import NO_EFFECT_YET, no_effect_warnings

    assert NO_EFFECT_YET == ()
    go = load_config(str(REPO / "tests" / "data" / "go-original.yaml"), {})
    assert no_effect_warnings(go) == []


def test_go_original_config_validates(tmp_path: Path) -> None:
    """If validate-config reads a config in the Go original's shape, then it passes: the keys
    the Go original ignores itself are notes, not failures."""
    out = io.StringIO()
    assert cli(["validate-config", str(REPO / "tests" / "data" / "go-original.yaml")], out) == 0
    text = out.getvalue()
    assert "[WARN]" not in text, text
    assert "[NOTE] server.rate_limits.per_endpoint:" in text
    assert text.endswith("Result: PASS\n")


def test_refused_keys(tmp_path: Path) -> None:
    """If a config turns on what olla does not offer, then it is refused with the key's path
    and why."""
    with pytest.raises(ConfigError, match="translators.anthropic.inspector.enabled: olla has no"):
        parse_config({"translators": {"anthropic": {"inspector": {"enabled": True}}}}, {})
    with pytest.raises(ConfigError, match="discovery.health_check.initial_delay: must be a"):
        parse_config({"discovery": {"health_check": {"initial_delay": "soon"}}}, {})


def test_model_management_defaults_and_targets() -> None:
    """If model_management is not set, then it is off with every Ollama endpoint a target; a
    list of names (or "all") is read as given."""
    assert OllaConfig().model_management.enabled is False
    assert parse_config({}, {}).model_management.targets is None
    endpoints = _endpoints(
        {"url": "http://a:1", "name": "a", "type": "ollama"},
        {"url": "http://b:1", "name": "b", "type": "auto"},
    )
    config = parse_config({**endpoints, "model_management": {"enabled": True, "targets": ["b"]}})
    assert config.model_management.enabled and config.model_management.targets == ("b",)
    everyone = parse_config({**endpoints, "model_management": {"targets": "all"}})
    assert everyone.model_management.targets is None


@pytest.mark.parametrize(
    ("management", "fragment"),
    [
        ({"enabled": "yes"}, "model_management.enabled: must be true or false"),
        ({"targets": "some"}, 'model_management.targets: must be "all" or a list'),
        ({"targets": []}, 'model_management.targets: must be "all" or a list'),
        ({"targets": ["x"]}, "model_management.targets[0]: no endpoint is named 'x'"),
        ({"targets": ["a", "v"]}, "model_management.targets[1]: 'v' is a vllm endpoint"),
    ],
)
def test_model_management_errors(management: dict[str, Any], fragment: str) -> None:
    """If model_management names no endpoint, or one that does not speak Ollama's API, then
    loading fails with the list entry's path."""
    endpoints = _endpoints(
        {"url": "http://a:1", "name": "a", "type": "ollama"},
        {"url": "http://v:1", "name": "v", "type": "vllm"},
    )
    assert fragment in _error({**endpoints, "model_management": management})
