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
