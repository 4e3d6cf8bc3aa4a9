# -*- test-case-name: tests.test_profiles -*-
"""Backend profiles as data: one YAML per platform, shipped in this package.

A user profiles folder (``profiles/`` beside the config file unless configured) may replace a
built-in of the same name entirely, or add a new platform. A broken file stops startup with the
file and key path; two profiles claiming one route prefix is an error naming both.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from zope.interface import implementer

from olla.config import ConfigError, SectionReader
from olla.interfaces import IProfile

BUILTIN_DIR = Path(__file__).resolve().parent

#: What ``type: auto`` tries, in this order (§6.1): the platforms whose model list says who they
#: are come first, and the generic OpenAI shape, which every one of them also speaks, last.
DETECTION_ORDER = ("ollama", "llamacpp", "lm-studio", "vllm", "omlx", "openai-compatible")


class ProfileError(ConfigError):
    """A profile file is broken; the message names the file and the key."""


@dataclass(frozen=True)
class AnthropicSupport:
    enabled: bool = False
    messages_path: str = "/v1/messages"
    token_count: bool = False
    min_version: str | None = None
    limitations: tuple[str, ...] = ()


@implementer(IProfile)
@dataclass(frozen=True)
class Profile:
    """One platform: which prefixes route to it, which paths it serves, how to check it."""

    name: str
    display_name: str
    prefixes: tuple[str, ...]
    openai_compatible: bool
    paths: tuple[str, ...]
    health_check_path: str
    model_discovery_path: str
    response_format: str
    anthropic: AnthropicSupport = field(default_factory=AnthropicSupport)
    source: str = "built-in"

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of this platform's API paths (exactly, or ends with one)."""
        clean = path.split("?", 1)[0].rstrip("/") or "/"
        return any(clean == p or (p != "/" and clean.endswith(p)) for p in self.paths)


def parse_profile(document: object, source: str) -> Profile:
    """A :class:`Profile` from one YAML document; errors name ``source`` and the key."""
    try:
        warnings: list[str] = []
        r = SectionReader(document, (), warnings)
        name = r.text("name", "").strip()
        if not name:
            raise ConfigError("is required", ("name",))
        routing = r.section("routing")
        prefixes = routing.strings("prefixes", ())
        api = r.section("api")
        anthropic_r = api.section("anthropic_support")
        anthropic = AnthropicSupport(
            enabled=anthropic_r.flag("enabled", False),
            messages_path=anthropic_r.text("messages_path", "/v1/messages"),
            token_count=anthropic_r.flag("token_count", False),
            min_version=anthropic_r.text("min_version", "") or None,
            limitations=anthropic_r.strings("limitations", ()),
        )
        request = r.section("request")
        profile = Profile(
            name=name,
            display_name=r.text("display_name", name),
            prefixes=tuple(p.strip().lower() for p in prefixes if p.strip()),
            openai_compatible=api.flag("openai_compatible", False),
            paths=api.strings("paths", ()),
            health_check_path=api.text("health_check_path", "/"),
            model_discovery_path=api.text("model_discovery_path", "/v1/models"),
            response_format=request.text("response_format", "openai"),
            anthropic=anthropic,
            source=source,
        )
        if not profile.prefixes:
            raise ConfigError("must list at least one prefix", ("routing", "prefixes"))
    except ConfigError as e:
        raise ProfileError(f"{source}: {e}") from None
    return profile


class ProfileRegistry:
    """The loaded profiles, by name and by route prefix."""

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self._by_name = {p.name: p for p in profiles}
        self._by_prefix: dict[str, Profile] = {}
        for profile in profiles:
            for prefix in profile.prefixes:
                other = self._by_prefix.get(prefix)
                if other is not None and other.name != profile.name:
                    raise ProfileError(
                        f"prefix {prefix!r} is claimed by both {other.name} ({other.source}) "
                        f"and {profile.name} ({profile.source})"
                    )
                self._by_prefix[prefix] = profile

    def __iter__(self) -> Iterator[Profile]:
        return iter(self._by_name.values())

    def get(self, name: str) -> Profile | None:
        return self._by_name.get(name)

    def for_prefix(self, prefix: str) -> Profile | None:
        return self._by_prefix.get(prefix.lower())

    @property
    def prefixes(self) -> dict[str, Profile]:
        return dict(self._by_prefix)

    def types_for_prefix(self, prefix: str) -> frozenset[str]:
        """Endpoint types a provider prefix reaches: its own, or every OpenAI-compatible one
        for ``openai``/``openai-compatible`` (fail-closed otherwise)."""
        profile = self.for_prefix(prefix)
        if profile is None:
            return frozenset()
        if profile.name == "openai-compatible":
            return frozenset(p.name for p in self if p.openai_compatible)
        return frozenset({profile.name})

    def detection_candidates(self) -> tuple[Profile, ...]:
        """The loaded profiles ``type: auto`` may turn out to be, in the order they are tried."""
        return tuple(p for name in DETECTION_ORDER if (p := self.get(name)) is not None)

    def types_for_path(self, path: str) -> frozenset[str] | None:
        """Endpoint types whose profile serves ``path`` (None: no profile claims it)."""
        found = frozenset(p.name for p in self if p.serves(path))
        if "openai-compatible" in found:
            found |= {"ollama", "lm-studio"}
        return found or None


def _read_dir(directory: Path, source_prefix: str) -> list[Profile]:
    profiles = []
    for path in sorted(directory.rglob("*.yaml")) + sorted(directory.rglob("*.yml")):
        try:
            document: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ProfileError(f"{path}: cannot read profile: {e}") from None
        profiles.append(parse_profile(document, f"{source_prefix}{path}"))
    return profiles


@functools.cache
def builtin_profiles() -> ProfileRegistry:
    """The shipped profiles alone (read once)."""
    return load_profiles(None)


def load_profiles(user_dir: Path | None = None) -> ProfileRegistry:
    """The built-in profiles, overridden or extended by ``user_dir``'s YAML files."""
    by_name = {p.name: p for p in _read_dir(BUILTIN_DIR, "built-in ")}
    if user_dir is not None and user_dir.is_dir():
        for profile in _read_dir(user_dir, ""):
            by_name[profile.name] = profile  # a user file replaces a built-in entirely
    return ProfileRegistry(list(by_name.values()))
