# -*- test-case-name: tests.test_profiles -*-
"""Loading the profiles (built-ins, then the user's folder) and looking them up.

A user file whose ``name`` is a built-in's is laid over it key by key
(:mod:`olla.profiles.overlay`); a new name is a new platform. Each profile remembers the
files it came from. ``proxy.profile_filter`` drops the platforms it excludes before anything
is built from them. Two profiles claiming one route prefix is an error naming both.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from olla.config import FilterConfig
from olla.profiles.overlay import overlay_profile
from olla.profiles.parse import Findings, ProfileError, parse_profile
from olla.profiles.spec import Profile

BUILTIN_DIR = Path(__file__).resolve().parent

#: What ``type: auto`` tries, in this order (§6.1): the platforms whose model list says who they
#: are come first, and the generic OpenAI shape, which every one of them also speaks, last.
DETECTION_ORDER = ("ollama", "llamacpp", "lm-studio", "vllm", "omlx", "openai-compatible")


class ProfileRegistry:
    """The loaded profiles, by name and by route prefix, and what loading them found."""

    def __init__(
        self,
        profiles: Sequence[Profile],
        findings: Findings | None = None,
        excluded: Sequence[str] = (),
    ) -> None:
        self._by_name = {p.name: p for p in profiles}
        self._by_prefix: dict[str, Profile] = {}
        findings = findings or Findings()
        #: keys olla does not read ("<file>: <key.path>: ..."): fail validate-config
        self.warnings: tuple[str, ...] = tuple(findings.warnings)
        #: documentation-only keys: shown, not a failure
        self.notes: tuple[str, ...] = tuple(findings.notes)
        #: profiles ``proxy.profile_filter`` left out
        self.excluded: tuple[str, ...] = tuple(excluded)
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

    def model_fields(self) -> tuple[str, ...]:
        """Every body path any profile names its model at (``request.model_field_paths``),
        ``model`` first: what ``/olla/proxy/`` reads a request's model from."""
        fields = ["model"]
        for profile in self:
            fields += [f for f in profile.request.model_field_paths if f not in fields]
        return tuple(fields)


def _documents(directory: Path, label: str) -> list[tuple[str, Any]]:
    """(source, document) for every YAML file below ``directory``, in name order."""
    found = []
    for path in sorted(directory.rglob("*.yaml")) + sorted(directory.rglob("*.yml")):
        source = f"{label}{path.name}" if label else str(path)
        try:
            document: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ProfileError(f"{source}: cannot read profile: {e}") from None
        found.append((source, document))
    return found


def _kept(name: str, profile_filter: FilterConfig | None) -> bool:
    if profile_filter is None:
        return True
    include = [p.lower() for p in profile_filter.include]
    lowered = name.lower()
    if include and not any(fnmatch.fnmatchcase(lowered, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(lowered, p.lower()) for p in profile_filter.exclude)


@functools.cache
def builtin_profiles() -> ProfileRegistry:
    """The shipped profiles alone (read once)."""
    return load_profiles(None)


def load_profiles(
    user_dir: Path | None = None, profile_filter: FilterConfig | None = None
) -> ProfileRegistry:
    """The built-in profiles, with ``user_dir``'s YAML files laid over them or added.

    Raises:
        ProfileError: a broken file (naming it and the key), or a prefix two profiles claim.
    """
    findings = Findings()
    documents: dict[str, Any] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for source, document in _documents(BUILTIN_DIR, "built-in "):
        profile = parse_profile(document, source, findings)
        documents[profile.name] = document
        sources[profile.name] = (source,)
    if user_dir is not None and user_dir.is_dir():
        for source, document in _documents(user_dir, ""):
            # read alone first, so its own mistakes name its own file
            own = parse_profile(document, source, findings, partial=True)
            if own.name in documents:
                documents[own.name] = overlay_profile(documents[own.name], document)
                sources[own.name] += (source,)
            else:
                documents[own.name] = document
                sources[own.name] = (source,)
    profiles = []
    excluded = []
    for name, document in documents.items():
        if not _kept(name, profile_filter):
            excluded.append(name)
            continue
        # warnings were reported per file above; this reading only builds the result
        merged = parse_profile(document, " + ".join(sources[name]), Findings())
        profiles.append(replace(merged, sources=sources[name]))
    return ProfileRegistry(profiles, findings, excluded)
