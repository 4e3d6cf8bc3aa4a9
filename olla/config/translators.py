# -*- test-case-name: tests.test_config -*-
"""``translators:``: the Anthropic Messages translator and its inspector."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from olla.config._base import ConfigError, SectionReader

_SYSTEM_DIRS = frozenset(
    {"/", "/etc", "/var", "/usr", "/bin", "/sbin", "/boot", "/sys", "/proc", "/dev", "/root"}
)
MAX_MESSAGE_SIZE_LIMIT = 100 * 1024 * 1024


@dataclass(frozen=True)
class InspectorConfig:
    enabled: bool = False
    output_dir: str = "logs/inspector/anthropic"
    session_header: str = "X-Session-ID"


@dataclass(frozen=True)
class AnthropicTranslatorConfig:
    enabled: bool = True
    passthrough_enabled: bool = True
    max_message_size: int = 10485760
    inspector: InspectorConfig = field(default_factory=InspectorConfig)


@dataclass(frozen=True)
class TranslatorsConfig:
    anthropic: AnthropicTranslatorConfig = field(default_factory=AnthropicTranslatorConfig)


def _translators(r: SectionReader) -> TranslatorsConfig:
    a_r = r.section("anthropic")
    d = AnthropicTranslatorConfig()
    i_r = a_r.section("inspector")
    inspector = InspectorConfig(
        enabled=i_r.flag("enabled", d.inspector.enabled),
        output_dir=i_r.text("output_dir", d.inspector.output_dir),
        session_header=i_r.text("session_header", d.inspector.session_header),
    )
    if os.path.normpath(os.path.abspath(inspector.output_dir)) in _SYSTEM_DIRS:
        raise ConfigError(
            f"must not be a system directory, got {inspector.output_dir!r}",
            i_r.at("output_dir"),
        )
    if not re.fullmatch(r"[A-Za-z0-9-]+", inspector.session_header):
        raise ConfigError("must be a valid header name", i_r.at("session_header"))
    if inspector.enabled:
        # The Go original's debugging aid writes clients' whole conversations to disk; olla
        # does not offer it (its output_dir and session_header only matter when it is on).
        raise ConfigError(
            "olla has no Anthropic inspector (it would write clients' messages to disk); "
            "set it to false or remove it",
            i_r.at("enabled"),
        )
    i_r.finish()
    size = a_r.size("max_message_size", d.max_message_size)
    if size < 0 or size > MAX_MESSAGE_SIZE_LIMIT:
        raise ConfigError(f"must be between 0 and 100MB, got {size}", a_r.at("max_message_size"))
    anthropic = AnthropicTranslatorConfig(
        enabled=a_r.flag("enabled", d.enabled),
        passthrough_enabled=a_r.flag("passthrough_enabled", d.passthrough_enabled),
        max_message_size=size,
        inspector=inspector,
    )
    a_r.finish()
    r.finish()
    return TranslatorsConfig(anthropic=anthropic)
