# -*- test-case-name: tests.test_profiles -*-
"""A user profile laid over the built-in of the same name, key by key.

Maps merge (recursively); lists and scalars replace. So a file that says only
``routing: {prefixes: [ollama, ai]}`` and ``characteristics: {timeout: 10m}`` adds a prefix
and raises the timeout, and keeps the built-in's paths, discovery and Anthropic support. A
key set to ``null`` keeps the value below it (YAML's way of writing a key with nothing after
it). Pure: documents in, a new document out.

``path_indices`` point into ``api.paths``; a file that replaces the paths and not the indices
keeps each purpose on the path it named (or drops it, if the new list lacks that path).
"""

from __future__ import annotations

from typing import Any


def overlay(base: Any, over: Any) -> Any:
    """``over`` laid on ``base``; neither is changed."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if value is None:
                continue
            merged[key] = overlay(base.get(key), value) if key in base else value
        return merged
    return base if over is None else over


def overlay_profile(base: Any, over: Any) -> Any:
    """:func:`overlay` for two profile documents (see the module docstring on indices)."""
    if isinstance(base, dict) and isinstance(over, dict):
        api = over.get("api")
        if isinstance(api, dict) and api.get("paths") is not None and not over.get("path_indices"):
            base = {**base, "path_indices": _repointed(base, api["paths"])}
    return overlay(base, over)


def _repointed(base: dict[Any, Any], paths: Any) -> dict[Any, Any]:
    old_api = base.get("api") if isinstance(base.get("api"), dict) else {}
    old_paths = old_api.get("paths") if isinstance(old_api, dict) else None
    indices = base.get("path_indices")
    if (
        not isinstance(indices, dict)
        or not isinstance(old_paths, list)
        or not isinstance(paths, list)
    ):
        return {}
    kept = {}
    for purpose, index in indices.items():
        if isinstance(index, int) and 0 <= index < len(old_paths) and old_paths[index] in paths:
            kept[purpose] = paths.index(old_paths[index])
    return kept
