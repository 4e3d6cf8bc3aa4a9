# -*- test-case-name: tests.test_tokens -*-
"""Token counts from the last bytes of an answer, without buffering or parsing the body.

Every dialect puts its figures at the end: Ollama's final NDJSON chunk (``prompt_eval_count``,
``eval_count``, ``eval_duration``, ``load_duration``), OpenAI's ``usage`` (the whole answer's
last key, or a stream's last chunk with ``stream_options.include_usage``) and Anthropic's
``usage`` (the answer's, or a stream's ``message_delta``). ``StreamBody`` keeps the body's
last ``TAIL_SIZE`` bytes; this reads the keys from them, the last occurrence winning. A key
inside generated text is escaped (``\\"eval_count\\"``) and does not match. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIGURE = re.compile(
    rb'"(prompt_eval_count|eval_count|eval_duration|load_duration|prompt_tokens|'
    rb'completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)'
)
#: cheap tests that rule out the regex for answers with no figures at all
_MARKERS = (b"_count", b"_tokens", b"_duration")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What a backend said it consumed and produced for one answer."""

    prompt: int | None = None
    completion: int | None = None
    #: the backend's own generation time (Ollama's ``eval_duration``), when it says
    generation_seconds: float | None = None
    #: Ollama's ``load_duration``: the model was loaded for this request when it is long
    load_seconds: float | None = None

    def tokens_per_second(self, elapsed: float | None) -> float | None:
        """Completion tokens per second of generation: the backend's own time when it gave
        one, else ``elapsed`` (olla's first byte to last, or the whole request)."""
        if not self.completion:
            return None
        seconds = self.generation_seconds or elapsed
        if not seconds or seconds <= 0:
            return None
        return self.completion / seconds


def read_usage(tail: bytes) -> TokenUsage | None:
    """The token figures in an answer's last bytes, or ``None`` when it has none."""
    if not any(marker in tail for marker in _MARKERS):
        return None
    found: dict[bytes, int] = {}
    for match in _FIGURE.finditer(tail):
        found[match.group(1)] = int(match.group(2))
    if not found:
        return None
    if b"eval_count" in found or b"prompt_eval_count" in found or b"load_duration" in found:
        eval_ns = found.get(b"eval_duration")
        load_ns = found.get(b"load_duration")
        return TokenUsage(
            prompt=found.get(b"prompt_eval_count"),
            completion=found.get(b"eval_count"),
            generation_seconds=eval_ns / 1e9 if eval_ns else None,
            load_seconds=load_ns / 1e9 if load_ns is not None else None,
        )
    if b"prompt_tokens" in found or b"completion_tokens" in found:
        return TokenUsage(found.get(b"prompt_tokens"), found.get(b"completion_tokens"))
    if b"input_tokens" in found or b"output_tokens" in found:
        return TokenUsage(found.get(b"input_tokens"), found.get(b"output_tokens"))
    return None
