# -*- test-case-name: tests.test_profiles -*-
"""Backend profiles as data: one YAML per platform, shipped in this package.

- :mod:`~olla.profiles.spec`: the typed sections of a profile (:class:`Profile`);
- :mod:`~olla.profiles.parse`: a YAML document -> a :class:`Profile`, with key-path
  warnings for what olla does not read;
- :mod:`~olla.profiles.overlay`: a user file laid over the built-in of the same name;
- :mod:`~olla.profiles.registry`: loading them all, and looking them up;
- :mod:`~olla.profiles.sizing`, :mod:`~olla.profiles.patterns`: what a profile says about
  one model (its size class, load time, concurrency cap, capabilities, context);
- :mod:`~olla.profiles.expressions`: ``metrics.extraction.calculations``.
"""

from __future__ import annotations

from olla.profiles.parse import Findings, ProfileError, parse_profile
from olla.profiles.registry import (
    BUILTIN_DIR,
    DETECTION_ORDER,
    ProfileRegistry,
    builtin_profiles,
    load_profiles,
)
from olla.profiles.spec import AnthropicSupport, Profile

__all__ = [
    "BUILTIN_DIR",
    "DETECTION_ORDER",
    "AnthropicSupport",
    "Findings",
    "Profile",
    "ProfileError",
    "ProfileRegistry",
    "builtin_profiles",
    "load_profiles",
    "parse_profile",
]
