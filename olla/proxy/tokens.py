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

#: what follows a key up to its number; matched at the key's end, never searched
_VALUE = re.compile(rb"\s*:\s*(\d+)")


@dataclass(slots=True)
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


def _last(tail: bytes, key: bytes) -> int | None:
    """The number after the last ``key`` (a quoted JSON key) in ``tail``."""
    at = tail.rfind(key)
    if at < 0:
        return None
    match = _VALUE.match(tail, at + len(key))
    return int(match.group(1)) if match is not None else None


def read_usage(tail: bytes) -> TokenUsage | None:
    """The token figures in an answer's last bytes, or ``None`` when it has none."""
    if b"_count" not in tail and b"_tokens" not in tail and b"_duration" not in tail:
        return None  # no figures at all (an error, a list): no look-ups
    completion = _last(tail, b'"eval_count"')
    prompt = _last(tail, b'"prompt_eval_count"')
    load_ns = _last(tail, b'"load_duration"')
    if completion is not None or prompt is not None or load_ns is not None:
        eval_ns = _last(tail, b'"eval_duration"')
        return TokenUsage(
            prompt=prompt,
            completion=completion,
            generation_seconds=eval_ns / 1e9 if eval_ns else None,
            load_seconds=load_ns / 1e9 if load_ns is not None else None,
        )
    for prompt_key, completion_key in _USAGE_KEYS:
        completion = _last(tail, completion_key)
        prompt = _last(tail, prompt_key)
        if completion is not None or prompt is not None:
            return TokenUsage(prompt, completion)
    return None


#: OpenAI's, then Anthropic's names for the two counts in ``usage``
_USAGE_KEYS = (
    (b'"prompt_tokens"', b'"completion_tokens"'),
    (b'"input_tokens"', b'"output_tokens"'),
)
