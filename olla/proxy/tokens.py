# -*- test-case-name: tests.test_tokens -*-
"""Token counts from the last bytes of an answer, without buffering or parsing the body.

Every dialect puts its figures at the end: Ollama's final NDJSON chunk (``prompt_eval_count``,
``eval_count``, ``eval_duration``, ``load_duration``), OpenAI's ``usage`` (the whole answer's
last key, or a stream's last chunk with ``stream_options.include_usage``) and Anthropic's
``usage`` (the answer's, or a stream's ``message_delta``). ``StreamBody`` keeps the body's
last ``TAIL_SIZE`` bytes; this reads the keys from them, the last occurrence winning. A key
inside generated text is escaped (``\\"eval_count\\"``) and does not match. Pure.

The endpoint's profile says where its figures are (``metrics.extraction.paths``: the last key
of each JSONPath is looked up the same way) and what to work out from them
(``calculations``, e.g. ``tokens_per_second``); with ``enabled: false`` an answer yields no
figures. What a profile does not name is read as above.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from math import isfinite

from olla.profiles.expressions import Expression, Value, compile_expression
from olla.profiles.spec import MetricsExtraction

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
    #: the profile's ``tokens_per_second`` calculation, when it gave a positive one
    backend_rate: float | None = None
    #: every figure the profile's paths found and calculations gave, by name (the log line)
    figures: dict[str, Value] = field(default_factory=dict)

    def tokens_per_second(self, elapsed: float | None) -> float | None:
        """Completion tokens per second of generation: the profile's calculation, else the
        backend's own time when it gave one, else ``elapsed`` (olla's first byte to last, or
        the whole request)."""
        if self.backend_rate:
            return self.backend_rate
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


_SCALAR = re.compile(
    rb'\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"(?:[^"\\]|\\.)*"|true|false|null)'
)
_LAST_KEY = re.compile(r"([A-Za-z0-9_\-]+)(?:\[\d+\])*$")


def _scalar(token: bytes) -> Value:
    """A JSON scalar ``_SCALAR`` matched, read without ``json.loads`` where it is plain (every
    answer reads a dozen: a number, an unescaped string, a literal). A string JSON cannot read
    (bytes that are not UTF-8, an escape JSON has not: a broken backend) is no figure."""
    if token[0] == 0x22:  # a string
        try:
            if b"\\" not in token:
                return token[1:-1].decode("utf-8")
            value: object = json.loads(token)
        except ValueError:  # (a UnicodeDecodeError is one)
            return None
        return value if isinstance(value, str) else None
    if token == b"true":
        return True
    if token == b"false":
        return False
    if token == b"null":
        return None
    return float(token)  # the JSON number grammar ``_SCALAR`` matched is float()'s too


def read_figures(tail: bytes, extraction: MetricsExtraction) -> dict[str, Value]:
    """The figures a profile's ``metrics.extraction`` names, found in ``tail``, and its
    calculations over them."""
    reader = _reader(extraction)
    figures: dict[str, Value] = {}
    names_of = reader.names_of
    # one scan for every key, its pairs made in C; a later occurrence of a key overwrites an
    # earlier one
    for key, token in dict(reader.keys.findall(tail)).items():
        value = float(token) if token[0] in _NUMBER_START else _scalar(token)
        # a null is no figure, whatever came before it; nor is a number too big for a float
        # (JSON, the log line's, has no infinity)
        if value is not None and (value.__class__ is not float or isfinite(value)):
            for name in names_of[key]:
                figures[name] = value
    if not figures:
        return figures  # a calculation needs a figure
    for name, expression in reader.calculations:
        if not expression.names.isdisjoint(figures):  # (a figure is never None)
            result = expression.evaluate(figures)
            if isfinite(result):  # a quotient can overflow
                figures[name] = result
    return figures


#: the first byte of a JSON number (read with ``float`` at once; the rest by ``_scalar``)
_NUMBER_START = frozenset(b"-0123456789")


@dataclass(frozen=True, slots=True)
class _Reader:
    """A profile's extraction as it is read: one pattern for all its keys, each followed by a
    scalar (absent keys and keys of objects do not match), the names each key fills, and
    its calculations compiled (checked when the profile loaded)."""

    keys: re.Pattern[bytes]
    names_of: dict[bytes, tuple[str, ...]]
    calculations: tuple[tuple[str, Expression], ...]


@functools.lru_cache(maxsize=64)
def _reader(extraction: MetricsExtraction) -> _Reader:
    names_of: dict[bytes, tuple[str, ...]] = {}
    for name, path in extraction.paths.items():
        match = _LAST_KEY.search(path)
        if match is not None:
            key = json.dumps(match.group(1))[1:-1].encode()
            names_of[key] = (*names_of.get(key, ()), name)
    alternatives = b"|".join(re.escape(key) for key in names_of)
    keys = re.compile(b'"(' + (alternatives or b"(?!)") + b')"' + _SCALAR.pattern)
    calculations = tuple(
        (name, compile_expression(text)) for name, text in extraction.calculations.items()
    )
    return _Reader(keys, names_of, calculations)


def _float(figures: dict[str, Value], name: str, per: float = 1.0) -> float | None:
    """A figure as a number, divided by ``per`` (1e9 for nanoseconds to seconds)."""
    value = figures.get(name)
    return value / per if type(value) is float else None  # (a bool or a string is no number)


def read_usage(tail: bytes, extraction: MetricsExtraction | None = None) -> TokenUsage | None:
    """The token figures in an answer's last bytes, or ``None`` when it has none: where the
    endpoint's profile says they are first, then where each dialect puts them."""
    if extraction is not None and not extraction.enabled:
        return None
    if extraction is None or not (extraction.paths or extraction.calculations):
        return _read_dialects(tail)
    figures = read_figures(tail, extraction)
    if not figures:
        return _read_dialects(tail)
    prompt, completion = _float(figures, "input_tokens"), _float(figures, "output_tokens")
    generation = _float(figures, "eval_duration_ns", 1e9) or _float(
        figures, "generation_time_ms", 1e3
    )
    load = _float(figures, "load_duration_ns", 1e9)
    if load is None:
        load = _float(figures, "model_load_ms", 1e3)
    # the dialects' keys fill in what the profile's figures do not say (when they say all
    # four, as Ollama's final chunk does, there is nothing left to look up)
    covered = prompt is not None and completion is not None and generation and load is not None
    usage = (None if covered else _read_dialects(tail)) or TokenUsage()
    if prompt is not None:
        usage.prompt = int(prompt)
    if completion is not None:
        usage.completion = int(completion)
    if generation:
        usage.generation_seconds = generation
    if load is not None:
        usage.load_seconds = load
    rate = _float(figures, "tokens_per_second")
    usage.backend_rate = rate if rate and rate > 0 else None
    usage.figures = figures
    return usage


def _read_dialects(tail: bytes) -> TokenUsage | None:
    """The figures where Ollama, OpenAI and Anthropic put them."""
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
