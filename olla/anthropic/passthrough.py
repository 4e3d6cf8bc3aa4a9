# -*- test-case-name: tests.test_anthropic_translate -*-
"""Which endpoints may take an Anthropic request as it is (§8.2): pure decisions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from olla.anthropic.request import uses_images, uses_thinking, uses_tools
from olla.fleet.endpoints import Endpoint
from olla.profiles import Profile, ProfileRegistry
from olla.util.versions import version_at_least

#: profile limitation -> the request feature it rules out
_LIMITS: Mapping[str, Callable[[Mapping[str, Any]], bool]] = {
    "no_tool_use": uses_tools,
    "no_extended_thinking": uses_thinking,
    "no_vision": uses_images,
}

#: the platforms whose version olla reads (Ollama's ``/api/version``, llama.cpp's ``/props``
#: ``build_info``, by discovery); for the others a profile's ``min_version`` cannot be checked
#: and the profile is trusted
VERSIONED_TYPES = frozenset({"ollama", "llamacpp"})


def speaks_anthropic(profile: Profile | None, version: str | None, body: Mapping[str, Any]) -> bool:
    """Whether an endpoint of ``profile`` at ``version`` can answer ``body`` natively."""
    if profile is None or not profile.anthropic.enabled:
        return False
    checked = profile.name in VERSIONED_TYPES
    if checked and not version_at_least(version, profile.anthropic.min_version):
        return False
    return not any(
        _LIMITS[limit](body) for limit in profile.anthropic.limitations if limit in _LIMITS
    )


def passthrough_endpoints(
    candidates: Sequence[Endpoint],
    profiles: ProfileRegistry,
    versions: Callable[[Endpoint], str | None],
    body: Mapping[str, Any],
) -> dict[Endpoint, str]:
    """The candidates that take ``body`` natively, in their order, each with its messages
    path."""
    return {
        ep: _messages_path(profiles.get(ep.type))
        for ep in candidates
        if speaks_anthropic(profiles.get(ep.type), versions(ep), body)
    }


def _messages_path(profile: Profile | None) -> str:
    return profile.anthropic.messages_path if profile else "/v1/messages"


def chat_completions_path(profile: Profile | None) -> str:
    """Where an endpoint of ``profile`` takes OpenAI chat completions."""
    for path in profile.paths if profile else ():
        if path.endswith("/chat/completions"):
            return path
    return "/v1/chat/completions"
