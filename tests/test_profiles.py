"""Profiles: the shipped set, user overrides, errors with file and key, prefix clashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from olla.daemon.app import provider_routes
from olla.interfaces import IProfile
from olla.profiles import ProfileError, builtin_profiles, load_profiles

SHIPPED = {
    "ollama": ("ollama",),
    "lm-studio": ("lmstudio", "lm-studio", "lm_studio"),
    "vllm": ("vllm",),
    "vllm-mlx": ("vllm-mlx",),
    "sglang": ("sglang",),
    "llamacpp": ("llamacpp",),
    "lemonade": ("lemonade",),
    "litellm": ("litellm",),
    "lmdeploy": ("lmdeploy",),
    "docker-model-runner": ("dmr",),
    "omlx": ("omlx",),
    "openai-compatible": ("openai", "openai-compatible"),
}


def test_shipped_profiles() -> None:
    """If no user folder exists, then the twelve shipped platforms load with their prefixes."""
    profiles = builtin_profiles()
    assert {p.name: p.prefixes for p in profiles} == SHIPPED
    for profile in profiles:
        assert verifyObject(IProfile, profile)
    ollama = profiles.get("ollama")
    assert ollama is not None
    assert (ollama.health_check_path, ollama.model_discovery_path) == ("/", "/api/tags")
    assert ollama.anthropic.min_version == "0.14.0"


def test_prefix_types() -> None:
    """If a provider prefix is routed, then it reaches its own type; openai reaches every
    OpenAI-compatible type."""
    profiles = builtin_profiles()
    assert profiles.types_for_prefix("lm_studio") == {"lm-studio"}
    assert profiles.types_for_prefix("openai") == set(SHIPPED)
    assert profiles.types_for_prefix("nope") == set()


def test_types_for_path() -> None:
    """If /olla/proxy/ gets a path, then it narrows to the platforms that serve it."""
    profiles = builtin_profiles()
    assert profiles.types_for_path("/api/chat") == {"ollama"}
    assert "vllm" in (profiles.types_for_path("/v1/chat/completions") or set())
    assert profiles.types_for_path("/totally/unknown") is None


def test_user_profile_overrides(tmp_path: Path) -> None:
    """If a user file names a built-in, then it is laid over it (here: adds prefix ai)."""
    (tmp_path / "mine.yaml").write_text(
        "name: ollama\nrouting: {prefixes: [ollama, ai]}\n"
        "api: {openai_compatible: true, paths: [/api/chat, /api/tags], "
        "health_check_path: /, model_discovery_path: /api/tags}\n"
        "request: {response_format: ollama}\n"
    )
    profiles = load_profiles(tmp_path)
    assert profiles.for_prefix("ai") is profiles.get("ollama")
    assert "ai" in {route.prefix for route in provider_routes(profiles)}


def test_broken_profile_names_file_and_key(tmp_path: Path) -> None:
    """If a profile file is broken, then the error names the file and the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrouting: {prefixes: x}\n")
    with pytest.raises(ProfileError) as raised:
        load_profiles(tmp_path)
    assert str(bad) in str(raised.value)
    assert "routing.prefixes: must be a list of strings" in str(raised.value)


def test_prefix_clash(tmp_path: Path) -> None:
    """If two profiles claim one prefix, then loading fails naming both."""
    (tmp_path / "x.yaml").write_text("name: mine\nrouting: {prefixes: [vllm]}\n")
    with pytest.raises(ProfileError, match="claimed by both vllm .* and mine"):
        load_profiles(tmp_path)


DATA = Path(__file__).parent / "data" / "page"


def test_builtins_parse_clean() -> None:
    """If the shipped profiles load, then not one key is warned about or noted: every key
    they carry has an effect in olla."""
    profiles = load_profiles(None)
    assert profiles.warnings == ()
    assert profiles.notes == ()
    for profile in profiles:
        assert profile.characteristics.timeout > 0, profile.name
        assert profile.resources.concurrency_limits, profile.name
        assert profile.metrics.enabled, profile.name


def test_page_customisation_overlays_the_builtin(tmp_path: Path) -> None:
    """If the Ollama page's ollama-custom.yaml sits in the profiles folder, then it adds the
    ai prefix, its timeout and its patterns, and keeps the built-in's paths, discovery,
    Anthropic support and resources; the profile says where it came from."""
    (tmp_path / "ollama-custom.yaml").write_text((DATA / "ollama-custom.yaml").read_text())
    profiles = load_profiles(tmp_path)
    assert profiles.warnings == ()
    ollama = profiles.get("ollama")
    builtin = builtin_profiles().get("ollama")
    assert ollama is not None and builtin is not None
    assert ollama.prefixes == ("ollama", "ai")
    assert profiles.for_prefix("ai") is ollama
    assert ollama.characteristics.timeout == 600
    assert ollama.characteristics.max_concurrent_requests == 10  # kept
    assert ollama.paths == builtin.paths
    assert ollama.model_discovery_path == "/api/tags"
    assert ollama.anthropic.enabled
    assert ollama.resources == builtin.resources
    # maps merge, lists replace: each capability's list is the page's; the others stay
    assert ollama.models.capability_patterns["vision"] == ("*llava*", "*bakllava*", "vision*")
    assert ollama.models.capability_patterns["math"] == builtin.models.capability_patterns["math"]
    assert [c.pattern for c in ollama.models.context_patterns] == ["*-32k*", "*-16k*", "llama3*"]
    assert ollama.sources == ("built-in ollama.yaml", str(tmp_path / "ollama-custom.yaml"))


def test_overlay_rules() -> None:
    """If one document is laid over another, then maps merge key by key, lists and scalars
    replace, a null keeps what was there, and neither input changes."""
    from olla.profiles.overlay import overlay, overlay_profile

    base = {"a": {"x": 1, "y": [1, 2]}, "b": "keep", "c": {"deep": {"k": 1}}}
    over = {"a": {"y": [3]}, "c": {"deep": {"j": 2}}, "b": None, "n": True}
    assert overlay(base, over) == {
        "a": {"x": 1, "y": [3]},
        "b": "keep",
        "c": {"deep": {"k": 1, "j": 2}},
        "n": True,
    }
    assert base["a"] == {"x": 1, "y": [1, 2]}
    # a file that replaces the paths keeps each purpose on its path, or drops it
    doc = {"api": {"paths": ["/h", "/chat", "/tags"]}, "path_indices": {"health": 0, "models": 2}}
    merged = overlay_profile(doc, {"api": {"paths": ["/tags", "/chat"]}})
    assert merged["path_indices"] == {"models": 0}


def test_unknown_and_documentation_keys(tmp_path: Path) -> None:
    """If a user profile carries a key olla does not read, then it is warned with its file and
    key path; documentation-only sections are noted, not warned."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "name: mine\nrouting: {prefixes: [mine]}\n"
        "characteristics: {turbo: true}\n"
        "resources: {slot_configuration: {slot_monitoring: true}}\n"
        "features: {magic: {enabled: true}}\n"
    )
    profiles = load_profiles(tmp_path)
    assert profiles.warnings == (
        f"{mine}: characteristics.turbo: unknown key, ignored",
        f"{mine}: resources.slot_configuration.slot_monitoring: unknown key, ignored",
    )
    assert profiles.notes == (
        f"{mine}: features: documentation only: olla (like the Go original) does not read it",
    )


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ("resources: {model_sizes: [{patterns: [], min_memory_gb: 1}]}", "model_sizes[0].patterns"),
        ("resources: {concurrency_limits: [{min_memory_gb: 1}]}", "concurrency_limits[0]"),
        ("resources: {quantization: {multipliers: {q4: 0}}}", "multipliers.q4: must be above 0"),
        ("resources: {quantization: {multipliers: {q4: -1}}}", "q4: must be above 0, got -1"),
        ("resources: {defaults: {min_memory_gb: -1}}", "min_memory_gb: must be at least 0, got -1"),
        ("resources: {timeout_scaling: {base_timeout_seconds: -0.5}}", "at least 0, got -0.5"),
        ("resources: {timeout_scaling: {per_token_timeout_ms: x}}", "must be a number, got 'x'"),
        ("characteristics: {timeout: fast}", "characteristics.timeout"),
        ("models: {name_format: '{{.ID}}'}", "models.name_format"),
        ("metrics: {extraction: {calculations: {ttft_ms: 'a +'}}}", "calculations.ttft_ms"),
        ("path_indices: {health: 7}", "path_indices.health"),
        ("detection: {default_ports: [70000]}", "detection.default_ports[0]"),
    ],
)
def test_profile_errors_name_the_key(tmp_path: Path, yaml_text: str, where: str) -> None:
    """If a profile value is wrong, then loading fails naming the file and the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nrouting: {{prefixes: [x]}}\napi: {{paths: [/]}}\n{yaml_text}\n")
    with pytest.raises(ProfileError) as raised:
        load_profiles(tmp_path)
    assert str(bad) in str(raised.value)
    assert where in str(raised.value)


def test_profile_filter() -> None:
    """If proxy.profile_filter excludes a profile, then it is not loaded at all."""
    from olla.config import FilterConfig

    profiles = load_profiles(None, FilterConfig(exclude=("lm*",)))
    names = {p.name for p in profiles}
    assert "lm-studio" not in names and "lmdeploy" not in names and "ollama" in names
    assert set(profiles.excluded) == {"lm-studio", "lmdeploy"}
    only = load_profiles(None, FilterConfig(include=("ollama", "vllm")))
    assert {p.name for p in only} == {"ollama", "vllm"}


@pytest.mark.parametrize(
    ("text", "env", "value"),
    [
        (
            "eval_duration_ns > 0 ? (output_tokens * 1000000000.0) / eval_duration_ns : 0",
            {"eval_duration_ns": 2e9, "output_tokens": 300.0},
            150.0,
        ),
        ("eval_duration_ns > 0 ? (output_tokens * 1000000000.0) / eval_duration_ns : 0", {}, 0.0),
        ("len(finish_reason) > 0", {"finish_reason": "stop"}, 1.0),
        ('finish_reason != null && finish_reason != ""', {}, 0.0),
        (
            "cache_read_tokens != null ? total_tokens - cache_read_tokens : total_tokens",
            {"total_tokens": 10.0, "cache_read_tokens": 4.0},
            6.0,
        ),
        ("a > 0 ? a : (b > 0 ? b * 2 : -1)", {"b": 2.0}, 4.0),
        ("x / 0", {"x": 1.0}, 0.0),
        ("x / 4 + -x * 2", {"x": 2.0}, -3.5),
        ('"a" + "b" == "ab" || x', {}, 1.0),
        ("(" * 40 + "x" + ")" * 40, {"x": 2.0}, 2.0),
    ],
)
def test_calculations(text: str, env: dict[str, object], value: float) -> None:
    """If a profile's calculation is evaluated, then it reads as the Go original's expr
    language does: missing figures are null, division by zero is 0, truth is 1."""
    from olla.profiles.expressions import compile_expression

    assert compile_expression(text).evaluate(env) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["a +", "(a", "a ? b", "a $ b", "len(a", "(" * 190 + "a" + ")" * 190]
)
def test_calculation_errors(text: str) -> None:
    """If a calculation cannot be read, then compiling it fails (startup names the key)."""
    from olla.profiles.expressions import ExpressionError, compile_expression

    with pytest.raises(ExpressionError):
        compile_expression(text)
