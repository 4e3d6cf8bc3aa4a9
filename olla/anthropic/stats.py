# -*- test-case-name: tests.test_anthropic_translate -*-
"""Translator counters for ``/internal/stats/translators`` (§10) and the metrics."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Fallback(enum.Enum):
    """Why a request was translated instead of passed through."""

    NO_COMPATIBLE_ENDPOINTS = "no_compatible_endpoints"
    PASSTHROUGH_DISABLED = "translator_does_not_support_passthrough"
    CANNOT_PASSTHROUGH = "cannot_passthrough"


@dataclass
class TranslatorStats:
    """One translator's requests: how they ended, how they were served, and why a request
    was translated instead of passed through."""

    name: str
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    latency_total: float = 0.0  # of the successful ones
    #: why translated: per reason
    fallbacks: dict[Fallback, int] = field(default_factory=lambda: dict.fromkeys(Fallback, 0))
    passthrough: int = 0
    translation: int = 0
    streaming: int = 0
    non_streaming: int = 0

    def started(self, *, passthrough: bool, streaming: bool, fallback: Fallback | None) -> None:
        self.total += 1
        if passthrough:
            self.passthrough += 1
        else:
            self.translation += 1
        if streaming:
            self.streaming += 1
        else:
            self.non_streaming += 1
        if fallback is not None:
            self.fallbacks[fallback] += 1

    def ended(self, *, ok: bool, latency: float) -> None:
        if ok:
            self.succeeded += 1
            self.latency_total += latency
        else:
            self.failed += 1

    def as_json(self) -> dict[str, Any]:
        done = self.succeeded + self.failed
        entry: dict[str, Any] = {
            "translator_name": self.name,
            "total_requests": self.total,
            "successful_requests": self.succeeded,
            "failed_requests": self.failed,
            "success_rate": _percent(self.succeeded, done),
            "passthrough_rate": _percent(self.passthrough, self.total),
            "passthrough_requests": self.passthrough,
            "translation_requests": self.translation,
            "streaming_requests": self.streaming,
            "non_streaming_requests": self.non_streaming,
            "average_latency": _millis(self.latency_total / self.succeeded)
            if self.succeeded
            else "0ms",
        }
        for reason, count in self.fallbacks.items():
            entry[f"fallback_{reason.value}"] = count
        return entry


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"


def _millis(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def translators_payload(stats: list[TranslatorStats], timestamp: str) -> dict[str, Any]:
    """``/internal/stats/translators`` in the Go original's shape: a list of entries, each
    named by ``translator_name`` (sorted by it), and the summary over all of them."""
    total = sum(s.total for s in stats)
    succeeded = sum(s.succeeded for s in stats)
    done = succeeded + sum(s.failed for s in stats)
    passthrough = sum(s.passthrough for s in stats)
    return {
        "timestamp": timestamp,
        "translators": [s.as_json() for s in sorted(stats, key=lambda s: s.name)],
        "summary": {
            "total_translators": len(stats),
            "active_translators": sum(1 for s in stats if s.total),
            "total_requests": total,
            "overall_success_rate": _percent(succeeded, done),
            "total_passthrough": passthrough,
            "total_translations": sum(s.translation for s in stats),
            "overall_passthrough_rate": _percent(passthrough, total),
            "total_streaming": sum(s.streaming for s in stats),
            "total_non_streaming": sum(s.non_streaming for s in stats),
        },
    }
