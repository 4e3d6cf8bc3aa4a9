"""Differential checks: the same client call made directly to a backend and through olla.

A ``Recorder`` is an httpx transport that keeps every exchange a real SDK makes (status, content
type, raw body bytes).  ``wire_shape`` turns one recorded body into its structure: JSON keys and
value types with volatile fields (timestamps, durations, ids) kept only as types, NDJSON and SSE
streams as one shape per chunk.  Two calls agree when their statuses, media types and shapes do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

# Values that differ between two identical calls; their presence and type still have to agree.
VOLATILE = frozenset(
    {
        "created_at",
        "created",
        "id",
        "expires_at",
        "modified_at",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        "system_fingerprint",
    }
)


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    media_type: str
    body: bytes = b""
    chunks: int = 0  # body pieces as they came off the socket (not asserted: TCP decides them)

    def shape(self) -> Any:
        return wire_shape(self.media_type, self.body)


class _RecordingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._inner:
            self._exchange.body += piece
            self._exchange.chunks += 1
            yield piece

    def close(self) -> None:
        self._inner.close()


@dataclass
class Recorder(httpx.BaseTransport):
    """Passes requests to a real transport and records each response as the client reads it."""

    exchanges: list[Exchange] = field(default_factory=list)
    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        exchange = Exchange(request.method, request.url.path, response.status_code, media)
        self.exchanges.append(exchange)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_RecordingStream(response.stream, exchange),
            extensions=response.extensions,
        )

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=self, **kwargs)

    def last(self) -> Exchange:
        return self.exchanges[-1]

    def take(self) -> list[Exchange]:
        taken, self.exchanges = self.exchanges, []
        return taken


def json_shape(value: Any, key: str | None = None) -> Any:
    if key == "error" and isinstance(value, dict):
        # OpenAI error objects: the same keys, but olla fills ``type``/``code`` the way OpenAI
        # does (invalid_request_error / model_not_found) where Ollama says api_error / null
        return dict.fromkeys(sorted(value), "any")
    if isinstance(value, dict):
        return {k: json_shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        if key in ("embedding", "embeddings") or (value and all(_is_number(v) for v in value)):
            # vectors: their length is the model's, the shape is "a list of numbers"
            return ["number"] if not value or _is_number(value[0]) else [json_shape(value[0])]
        return [json_shape(v) for v in value]
    if _is_number(value):
        return "number"
    if isinstance(value, str) and key not in VOLATILE and key in ("object", "role", "type"):
        return value  # protocol constants: the same on both sides
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def wire_shape(media_type: str, body: bytes) -> Any:
    text = body.decode("utf-8", errors="replace")
    if media_type == "text/event-stream":
        events = []
        for block in text.replace("\r\n", "\n").split("\n\n"):
            fields = [line.split(":", 1) for line in block.split("\n") if line and ":" in line]
            if not fields:
                continue
            event: dict[str, Any] = {}
            for name, raw in fields:
                raw = raw.removeprefix(" ")
                if name == "data" and raw != "[DONE]":
                    event[name] = json_shape(json.loads(raw))
                else:
                    event[name] = raw
            events.append(event)
        return {"sse": events}
    if media_type == "application/x-ndjson":
        return {"ndjson": [json_shape(json.loads(line)) for line in text.splitlines() if line]}
    if media_type == "application/json":
        return json_shape(json.loads(text)) if text.strip() else None
    return {"media_type": media_type, "text": text}


Client = TypeVar("Client")
Result = TypeVar("Result")


def compare_calls(
    bases: tuple[str, str],
    make: Callable[[str, Recorder], Client],
    use: Callable[[Client], Result],
) -> tuple[Result, Result]:
    """Make one client call against each base (a client from ``make`` per base, recording what
    it reads), assert the two wires agreed, and give back both results."""
    results = []
    recorded = []
    for base in bases:
        recorder = Recorder()
        results.append(use(make(base, recorder)))
        recorded.append(recorder.exchanges)
    assert_same_exchanges(recorded[0], recorded[1])
    assert recorded[1], "the call reached the wire"
    return results[0], results[1]


def assert_same_exchanges(direct: list[Exchange], proxied: list[Exchange]) -> None:
    """Each call through olla got what the same call got from the backend: status, media type,
    body structure and, for streams, the same number of events in the same format."""
    assert [(e.method, e.status) for e in proxied] == [(e.method, e.status) for e in direct]
    for straight, through in zip(direct, proxied, strict=True):
        where = f"{through.method} {through.path}"
        assert through.media_type == straight.media_type, where
        assert through.shape() == straight.shape(), where
