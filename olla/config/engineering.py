# -*- test-case-name: tests.test_config -*-
"""``engineering:``: switches for developers."""

from __future__ import annotations

from dataclasses import dataclass

from olla.config._base import SectionReader


@dataclass(frozen=True)
class EngineeringConfig:
    show_nerdstats: bool = False


def _engineering(r: SectionReader) -> EngineeringConfig:
    result = EngineeringConfig(show_nerdstats=r.flag("show_nerdstats", False))
    r.finish()
    return result
