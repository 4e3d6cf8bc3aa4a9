# -*- test-case-name: tests.test_profiles -*-
"""What a profile says about the endpoints configured for its platform.

``characteristics.auth`` is the platform's word on credentials: an endpoint of a platform that
``required`` them and has no ``auth:`` block is warned about; one whose auth type is not among
the platform's ``types`` gets a note. ``resources.slot_configuration.max_slots`` caps an
endpoint's ``max_concurrency``: a higher configured value is warned about (olla uses the cap).
Pure.
"""

from __future__ import annotations

from olla.config import OllaConfig
from olla.config._base import format_path
from olla.profiles.registry import ProfileRegistry


def check_endpoints(config: OllaConfig, profiles: ProfileRegistry) -> tuple[list[str], list[str]]:
    """(warnings, notes) about the configured endpoints, by their profiles."""
    warnings: list[str] = []
    notes: list[str] = []
    for index, endpoint in enumerate(config.discovery.endpoints):
        profile = profiles.get(endpoint.type)
        if profile is None:
            continue
        where = format_path(("discovery", "static", "endpoints", index))
        auth = profile.characteristics.auth
        if endpoint.auth is None and auth.required:
            kinds = ", ".join(auth.types) or "any"
            warnings.append(
                f"{where}.auth: the {profile.name} profile says this platform requires "
                f"credentials ({kinds}); none configured"
            )
        elif endpoint.auth is not None and auth.types and endpoint.auth.type not in auth.types:
            notes.append(
                f"{where}.auth.type: {endpoint.auth.type} is not among the {profile.name} "
                f"profile's auth types ({', '.join(auth.types)})"
            )
        most = profile.resources.slots.max_slots
        if endpoint.max_concurrency is not None and most is not None:
            if endpoint.max_concurrency > most:
                warnings.append(
                    f"{where}.max_concurrency: {endpoint.max_concurrency} is above the "
                    f"{profile.name} profile's slot_configuration.max_slots ({most}); "
                    f"{most} is used"
                )
    return warnings, notes
