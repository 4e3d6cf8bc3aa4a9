# -*- test-case-name: tests.test_model_facts -*-
"""What a model can do and how much context it takes, from its name and what its backend said.

The backend's own word wins: Ollama's ``/api/show`` lists ``capabilities`` (``completion``,
``vision``, ``tools``, ``embedding``, ``thinking``...) and ``<arch>.context_length``. Where it
says nothing, the hosting platforms' profiles decide by name: ``models.capability_patterns``
(capability -> globs) and ``models.context_patterns`` (the first matching glob). Names are
matched without a router's provider prefix (``openai/gpt-4o`` as ``gpt-4o``) and without
Ollama's ``library/`` namespace. Pure.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from olla.profiles.spec import ModelRules

#: what one capability pattern (or a backend's capability) adds to the unified list (§6.2)
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "vision": ("vision", "multimodal", "image-understanding"),
    "embeddings": ("embeddings", "similarity", "vector-search"),
    "embedding": ("embeddings", "similarity", "vector-search"),
    "code": ("code-generation", "programming", "code-completion"),
    "chat": ("instruction-following", "chat"),
    "reasoning": ("reasoning", "logic"),
    "thinking": ("reasoning", "logic"),
    "math": ("mathematics", "problem-solving"),
    "function_calling": ("tools", "function-calling"),
    "tools": ("tools", "function-calling"),
    "insert": ("code-completion",),
    "completion": ("text-generation", "completion"),
}
_GENERATIVE = ("text-generation", "chat", "completion")


@dataclass(frozen=True)
class BackendFacts:
    """What a backend said about one model itself (Ollama's ``/api/show``)."""

    capabilities: tuple[str, ...] | None = None
    context_length: int | None = None


def glob_match(name: str, pattern: str) -> bool:
    """Case-insensitive glob (``*``, ``?``, ``[...]``), as profile patterns are written."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def bare_name(name: str, rules: Iterable[ModelRules] = ()) -> str:
    """``name`` without a provider prefix the profiles list, or Ollama's ``library/``."""
    lowered = name.lower()
    for rule in rules:
        for prefix in rule.provider_prefixes:
            if prefix and lowered.startswith(prefix.lower()):
                return lowered[len(prefix) :]
    return lowered.removeprefix("library/")


def pattern_capabilities(name: str, rules: Sequence[ModelRules]) -> list[str]:
    """The capability names (``vision``, ``code``...) whose patterns match ``name`` in any of
    ``rules``, in the order the profiles list them."""
    bare = bare_name(name, rules)
    found: list[str] = []
    for rule in rules:
        for capability, globs in rule.capability_patterns.items():
            if capability not in found and any(glob_match(bare, g) for g in globs):
                found.append(capability)
    return found


def context_from_patterns(name: str, rules: Sequence[ModelRules]) -> int | None:
    """The first matching ``context_patterns`` entry of the first profile that has one."""
    bare = bare_name(name, rules)
    for rule in rules:
        for entry in rule.context_patterns:
            if glob_match(bare, entry.pattern):
                return entry.context
    return None


def model_kind(name: str, rules: Sequence[ModelRules], backend: BackendFacts) -> str:
    """``embeddings``, ``vlm`` or ``llm``."""
    said = backend.capabilities
    named = pattern_capabilities(name, rules)
    if said is not None:
        if "embedding" in said or "embeddings" in said:
            return "embeddings"
        if "vision" in said:
            return "vlm"
        if said:
            return "llm"
    if "embeddings" in named:
        return "embeddings"
    if "vision" in named:
        return "vlm"
    return "llm"


def context_length(name: str, rules: Sequence[ModelRules], backend: BackendFacts) -> int | None:
    return backend.context_length or context_from_patterns(name, rules)


def capabilities(name: str, rules: Sequence[ModelRules], backend: BackendFacts) -> list[str]:
    """The unified capability list (§6.2): the backend's, else the patterns', then context."""
    kind = model_kind(name, rules, backend)
    out: list[str] = []

    def add(items: Iterable[str]) -> None:
        out.extend(item for item in items if item not in out)

    if kind == "embeddings":
        add(EXPANSIONS["embeddings"])
    else:
        add(_GENERATIVE)
        if kind == "vlm":
            add(EXPANSIONS["vision"])
    sources = list(backend.capabilities or ())
    sources += [c for c in pattern_capabilities(name, rules) if c not in ("embeddings", "vision")]
    for capability in sources:
        if kind == "embeddings" and capability in ("completion", "chat"):
            continue
        add(EXPANSIONS.get(capability, (capability.replace("_", "-"),)))
    context = context_length(name, rules, backend) or 0
    if context >= 1_000_000:
        add(("ultra-long-context",))
    elif context >= 100_000:
        add(("long-context",))
    elif context >= 32_000:
        add(("extended-context",))
    return out
