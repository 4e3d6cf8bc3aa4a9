"""The Anthropic routes on the wire, in memory: modes, streaming as chunks arrive, errors."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.anthropic.stats import Fallback
from olla.config import AnthropicTranslatorConfig
from tests.proxyharness import Harness, http_request

MESSAGE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


def sse_chunk(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class ScriptedBackend(Resource):
    """Answers each POST with a script: a status, and body pieces written at clock times."""

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.status = 200
        self.content_type = b"application/json"
        self.pieces: list[tuple[float, bytes]] = []
        self.seen: list[tuple[bytes, dict[str, Any] | None]] = []

    def render(self, request: Request) -> int:
        assert request.content is not None
        raw = request.content.read()
        self.seen.append((request.path, json.loads(raw) if raw else None))
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", self.content_type)
        for at, piece in self.pieces:
            self.clock.callLater(at, self._write, request, piece)
        last = max((at for at, _ in self.pieces), default=0.0)
        self.clock.callLater(last, request.finish)
        return NOT_DONE_YET

    @staticmethod
    def _write(request: Request, piece: bytes) -> None:
        if piece == b"!cut":
            assert request.channel is not None
            request.channel.transport.abortConnection()  # type: ignore[attr-defined]
        elif not request.finished:
            request.write(piece)


def events(body: bytes) -> list[str]:
    return [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]


class AnthropicWireTests(SynchronousTestCase):
    def build(
        self, types: dict[str, str] | None = None, config: AnthropicTranslatorConfig | None = None
    ) -> tuple[Harness, ScriptedBackend]:
        clock = Clock()
        backend = ScriptedBackend(clock)
        harness = Harness(
            {"a:1": backend},
            clock=clock,
            types=types or {"a:1": "openai-compatible"},
            anthropic=config,
        )
        return harness, backend

    def post(self, h: Harness, path: str, body: object, **headers: str) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return h.send(
            http_request(
                "POST",
                f"/olla/anthropic{path}",
                raw,
                {"Content-Type": "application/json", **headers},
            )
        )

    def test_translated_stream_flows_chunk_by_chunk(self) -> None:
        """If the backend streams three chunks a second apart, then the client has the matching
        Anthropic events after each second, not all at the end."""
        h, backend = self.build()
        backend.content_type = b"text/event-stream"
        backend.pieces = [
            (1.0, sse_chunk({"choices": [{"delta": {"content": "a"}}]})),
            (2.0, sse_chunk({"choices": [{"delta": {"content": "b"}}]})),
            (3.0, sse_chunk({"choices": [{"delta": {}, "finish_reason": "stop"}]})),
            (3.0, b"data: [DONE]\n\n"),
        ]
        client = self.post(h, "/v1/messages", {**MESSAGE, "stream": True})
        h.advance(1.0)
        first = client.response()
        self.assertEqual(first.status, 200)
        self.assertEqual(first.header(b"content-type"), b"text/event-stream")
        self.assertEqual(first.header(b"x-olla-mode"), b"translation")
        self.assertEqual(
            events(first.body), ["message_start", "content_block_start", "content_block_delta"]
        )
        self.assertFalse(first.complete)
        h.advance(1.0)
        self.assertEqual(events(client.response().body).count("content_block_delta"), 2)
        h.advance(1.0)
        done = client.response()
        self.assertTrue(done.complete)
        self.assertEqual(
            events(done.body)[-3:], ["content_block_stop", "message_delta", "message_stop"]
        )
        path, asked = backend.seen[0]
        self.assertEqual(path, b"/v1/chat/completions")
        assert asked is not None
        self.assertEqual(asked["stream_options"], {"include_usage": True})
        self.assertEqual(h.translator_stats.succeeded, 1)

    def test_backend_cut_mid_stream(self) -> None:
        """If the backend's connection dies mid-stream, then the client gets one error event and
        a complete (chunked) body: a clean end, not a hang or a cut."""
        h, backend = self.build()
        backend.content_type = b"text/event-stream"
        backend.pieces = [
            (1.0, sse_chunk({"choices": [{"delta": {"content": "a"}}]})),
            (2.0, b"!cut"),
        ]
        client = self.post(h, "/v1/messages", {**MESSAGE, "stream": True})
        h.advance(1.0)
        h.advance(1.0)
        h.advance(0)
        response = client.response()
        self.assertTrue(response.complete)
        self.assertEqual(events(response.body)[-1], "error")
        self.assertEqual(h.translator_stats.failed, 1)

    def test_whole_answer_translated(self) -> None:
        """If the backend answers a chat completion, then the client gets an Anthropic message."""
        h, backend = self.build()
        backend.pieces = [
            (
                0.0,
                json.dumps(
                    {
                        "model": "m",
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": "hi"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
                    }
                ).encode(),
            )
        ]
        response = self.post(h, "/v1/messages", MESSAGE).response()
        self.assertEqual(response.status, 200)
        message = json.loads(response.body)
        self.assertEqual(message["content"], [{"type": "text", "text": "hi"}])
        self.assertEqual(message["stop_reason"], "end_turn")
        self.assertEqual(message["usage"], {"input_tokens": 2, "output_tokens": 1})

    def test_malformed_answer(self) -> None:
        """If the backend's 2xx body is not JSON, then 502 in the Anthropic envelope."""
        h, backend = self.build()
        backend.pieces = [(0.0, b"<html>oops</html>")]
        response = self.post(h, "/v1/messages", MESSAGE).response()
        self.assertEqual(response.status, 502)
        self.assertEqual(json.loads(response.body)["error"]["type"], "api_error")

    def test_backend_error_status_kept(self) -> None:
        """If the backend answers 429 with an OpenAI error, then 429 rate_limit_error with the
        backend's message."""
        h, backend = self.build()
        backend.status = 429
        backend.pieces = [(0.0, json.dumps({"error": {"message": "slow down"}}).encode())]
        response = self.post(h, "/v1/messages", {**MESSAGE, "stream": True}).response()
        self.assertEqual(response.status, 429)
        error = json.loads(response.body)
        self.assertEqual(error["error"], {"type": "rate_limit_error", "message": "slow down"})

    def test_passthrough_verbatim(self) -> None:
        """If the endpoint speaks Anthropic (vLLM's profile), then the body goes unchanged to its
        messages path and the answer comes back byte for byte, marked passthrough."""
        h, backend = self.build({"a:1": "vllm"})
        answer = b'{"type":"message","content":[],"odd":  "spacing kept"}'
        backend.pieces = [(0.0, answer)]
        raw = json.dumps(MESSAGE, indent=1).encode()
        response = self.post(h, "/v1/messages", raw).response()
        self.assertEqual(response.body, answer)
        self.assertEqual(response.header(b"x-olla-mode"), b"passthrough")
        self.assertEqual(backend.seen[0][0], b"/v1/messages")
        self.assertEqual(h.agent.sent[0][1], b"http://a:1/v1/messages")

    def test_old_ollama_is_translated(self) -> None:
        """If an Ollama endpoint reports a version before 0.14.0 (or none yet), then requests are
        translated; from 0.14.0 on they pass through."""
        h, backend = self.build({"a:1": "ollama"})
        backend.pieces = [(0.0, b'{"choices":[{"message":{"content":"x"}}]}')]
        self.post(h, "/v1/messages", MESSAGE)
        h.registry.state(h.endpoints[0]).version = "0.5.4"
        self.post(h, "/v1/messages", MESSAGE)
        h.registry.state(h.endpoints[0]).version = "0.14.0"
        self.post(h, "/v1/messages", MESSAGE)
        self.assertEqual(
            [path for path, _ in backend.seen],
            [b"/v1/chat/completions", b"/v1/chat/completions", b"/v1/messages"],
        )

    def test_passthrough_disabled(self) -> None:
        """If passthrough is off, then even an Anthropic-speaking backend gets translations."""
        h, backend = self.build(
            {"a:1": "vllm"}, AnthropicTranslatorConfig(passthrough_enabled=False)
        )
        backend.pieces = [(0.0, b'{"choices":[{"message":{"content":"x"}}]}')]
        self.post(h, "/v1/messages", MESSAGE)
        self.assertEqual(backend.seen[0][0], b"/v1/chat/completions")
        self.assertEqual(h.translator_stats.fallbacks[Fallback.PASSTHROUGH_DISABLED], 1)

    def test_count_tokens(self) -> None:
        """If the backend counts tokens natively (llama.cpp, a build with the Messages API),
        then count_tokens is asked of it; otherwise olla estimates locally without asking
        anyone."""
        h, backend = self.build({"a:1": "llamacpp"})
        h.registry.version_read(h.endpoints[0], "b4847-1a2b3c4")  # as /props says
        backend.pieces = [(0.0, b'{"input_tokens": 42}')]
        native = self.post(h, "/v1/messages/count_tokens", MESSAGE).response()
        self.assertEqual(json.loads(native.body), {"input_tokens": 42})
        self.assertEqual(backend.seen[0][0], b"/v1/messages/count_tokens")
        h2, backend2 = self.build({"a:1": "openai-compatible"})
        local = self.post(h2, "/v1/messages/count_tokens", {"messages": [{"content": "x" * 40}]})
        self.assertEqual(json.loads(local.response().body), {"input_tokens": 10})
        self.assertEqual(backend2.seen, [])

    def test_oversized_message(self) -> None:
        """If a message is over max_message_size, then 413 request_too_large, nothing sent."""
        h, backend = self.build(config=AnthropicTranslatorConfig(max_message_size=100))
        response = self.post(h, "/v1/messages", {**MESSAGE, "system": "x" * 200}).response()
        self.assertEqual(response.status, 413)
        self.assertEqual(json.loads(response.body)["error"]["type"], "request_too_large")
        self.assertEqual(backend.seen, [])

    def test_unknown_route_and_method(self) -> None:
        """If a path or method is not part of the API, then 404 / 405 in the envelope."""
        h, _ = self.build()
        missing = h.send(http_request("GET", "/olla/anthropic/v1/nothing")).response()
        self.assertEqual(missing.status, 404)
        self.assertEqual(json.loads(missing.body)["error"]["type"], "not_found_error")
        wrong = h.send(http_request("GET", "/olla/anthropic/v1/messages")).response()
        self.assertEqual(wrong.status, 405)

    def test_client_leaves_mid_stream(self) -> None:
        """If the client goes away mid-stream, then the backend request is stopped."""
        h, backend = self.build()
        backend.content_type = b"text/event-stream"
        backend.pieces = [
            (1.0, sse_chunk({"choices": [{"delta": {"content": "a"}}]})),
            (5.0, sse_chunk({"choices": [{"delta": {"content": "b"}}]})),
        ]
        client = self.post(h, "/v1/messages", {**MESSAGE, "stream": True})
        h.advance(1.0)
        client.disconnect()
        h.advance(5.0)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)
