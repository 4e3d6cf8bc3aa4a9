"""The fake Ollama itself: wire shapes, stream timing on a Clock, knobs, recording, control API
(in memory), and one real process driven by the real ollama and openai SDKs."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from tests.fakes.ollama import (
    FakeModel,
    FakeOllama,
    FakeSite,
    floats_base64,
    tool_arguments,
    version_tuple,
)
from tests.fakes.process import FakeProcess, start_fake

URL = "http://fake.test"
CHAT = {"model": "m:1", "messages": [{"role": "user", "content": "hi there"}]}


class InMemory(SynchronousTestCase):
    """A FakeOllama on a Clock, reached through treq's in-memory agent."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeOllama(self.clock, [FakeModel("m:1"), FakeModel("all-minilm:l6")], name="A")
        self.http: Any = StubTreq(self.fake)  # treq's functions, set at run time

    def send(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> IResponse:
        kwargs: dict[str, Any] = {"headers": headers or {}, "unbuffered": True}
        if body is not None:
            kwargs["json"] = body
        if data is not None:
            kwargs["data"] = data
        d = self.http.request(method, URL + path, **kwargs)
        self.http.flush()
        response: IResponse = self.successResultOf(d)
        return response

    def read(self, response: IResponse) -> bytes:
        d = self.http.content(response)
        self.http.flush()
        body: bytes = self.successResultOf(d)
        return body

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[IResponse, bytes]:
        response = self.send(method, path, body, headers)
        return response, self.read(response)

    def doc(self, method: str, path: str, body: object = None, **headers: str) -> Any:
        response, raw = self.call(method, path, body, headers)
        return json.loads(raw)

    def header(self, response: IResponse, name: str) -> str | None:
        values = response.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    def stream(self, response: IResponse) -> list[bytes]:
        """A live list of the body's bytes as they arrive (call ``http.flush`` to move them)."""
        received: list[bytes] = []
        self.http.collect(response, received.append)
        self.http.flush()
        return received

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.http.flush()

    def raw(self, request: bytes) -> tuple[StringTransport, Any]:
        """A raw client connection (so the test can drop it)."""
        site = FakeSite(self.fake, reactor=Clock())  # the channel's timers stay off self.clock
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        return transport, protocol


def _lines(received: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in b"".join(received).splitlines() if line.strip()]


def _events(raw: bytes) -> list[str]:
    """SSE ``data:`` payloads, in order."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: ") :])
    return events


def _sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic's SSE: ``(event name, data)`` pairs, checking each is ``event: X\\ndata: {}``."""
    assert raw.endswith(b"\n\n")
    pairs = []
    for block in raw.decode().split("\n\n")[:-1]:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == event[len("event: ") :]
        pairs.append((event[len("event: ") :], payload))
    return pairs


def _chunks(raw: bytes) -> list[dict[str, Any]]:
    """OpenAI SSE chunks, checking the stream ends with ``[DONE]``."""
    events = _events(raw)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _post(path: str, body: dict[str, Any], headers: str = "") -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: fake\r\n{headers}Content-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


class ShapeTests(InMemory):
    def test_root_version_and_head(self) -> None:
        """If / and /api/version are asked (GET or HEAD), then the real bodies and content
        types come back, with a Date and without a Server header."""
        response, body = self.call("GET", "/")
        self.assertEqual((response.code, body), (200, b"Ollama is running"))
        self.assertEqual(self.header(response, "content-type"), "text/plain; charset=utf-8")
        response, body = self.call("GET", "/api/version")
        self.assertEqual(body, b'{"version":"0.5.4"}')
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        self.assertIsNotNone(self.header(response, "date"))
        self.assertIsNone(self.header(response, "server"))
        response, body = self.call("HEAD", "/api/version")
        self.assertEqual((response.code, body), (200, b""))

    def test_tags(self) -> None:
        """If /api/tags is asked, then each model has name, model, modified_at, size, a stable
        sha256 digest and the six details; embedding models are bert-family."""
        models = self.doc("GET", "/api/tags")["models"]
        self.assertEqual([m["name"] for m in models], ["m:1", "all-minilm:l6"])
        first = models[0]
        self.assertEqual(first["model"], "m:1")
        self.assertEqual(first["digest"], hashlib.sha256(b"m:1").hexdigest())
        self.assertTrue(first["modified_at"].endswith("Z"))
        self.assertIsInstance(first["size"], int)
        self.assertEqual(
            first["details"],
            {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        )
        self.assertEqual(models[1]["details"]["family"], "bert")

    def test_show(self) -> None:
        """If /api/show is asked by model or by name, then it has model_info, details,
        modelfile, parameters, template, modified_at and capabilities; unknown is a 404 and
        no name a 400, with the real messages."""
        shown = self.doc("POST", "/api/show", {"model": "m:1"})
        for key in ("model_info", "details", "modelfile", "parameters", "template"):
            self.assertIn(key, shown)
        self.assertEqual(shown["capabilities"], ["completion"])
        self.assertEqual(shown["model_info"]["general.architecture"], "llama")
        by_name = self.doc("POST", "/api/show", {"name": "all-minilm:l6"})
        self.assertEqual(by_name["capabilities"], ["embedding"])
        response, body = self.call("POST", "/api/show", {"name": "nope"})
        self.assertEqual((response.code, body), (404, b'{"error":"model \'nope\' not found"}'))
        response, body = self.call("POST", "/api/show", {})
        self.assertEqual((response.code, body), (400, b'{"error":"model is required"}'))

    def test_tag_defaults_to_latest(self) -> None:
        """If a model is named without a tag, then it means ``:latest``, as in Ollama."""
        fake = FakeOllama(self.clock)
        found = fake.model("llama3.2")
        self.assertEqual(found.name if found else None, "llama3.2:latest")
        self.assertIsNone(fake.model("llama3.2:1b"))

    def test_chat_stream(self) -> None:
        """If /api/chat is streamed (the default), then it is chunked NDJSON without a length:
        three content lines and a final done line with every metric."""
        response = self.send("POST", "/api/chat", CHAT)
        self.assertEqual(self.header(response, "content-type"), "application/x-ndjson")
        self.assertEqual(response.length, UNKNOWN_LENGTH)  # chunked
        lines = _lines(self.stream(response))
        self.assertEqual([line["message"]["content"] for line in lines], ["A0 ", "A1 ", "A2 ", ""])
        self.assertEqual([line["done"] for line in lines], [False, False, False, True])
        final = lines[-1]
        self.assertEqual(final["done_reason"], "stop")
        for key in (
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_count",
            "eval_duration",
        ):
            self.assertGreater(final[key], 0, key)
        self.assertEqual(final["eval_count"], 3)

    def test_chat_not_streamed(self) -> None:
        """If /api/chat says stream false, then one JSON object comes back with the text."""
        response, body = self.call("POST", "/api/chat", {**CHAT, "stream": False})
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        doc = json.loads(body)
        self.assertEqual(doc["message"], {"role": "assistant", "content": "A0 A1 A2 "})
        self.assertTrue(doc["done"])

    def test_generate(self) -> None:
        """If /api/generate has only a model, then it is the preload answer; with a prompt it
        streams response lines and a final line with context."""
        loaded = self.doc("POST", "/api/generate", {"model": "m:1"})
        self.assertEqual(
            {k: loaded[k] for k in ("response", "done", "done_reason")},
            {"response": "", "done": True, "done_reason": "load"},
        )
        response = self.send("POST", "/api/generate", {"model": "m:1", "prompt": "Hello"})
        lines = _lines(self.stream(response))
        self.assertEqual("".join(line["response"] for line in lines), "A0 A1 A2 ")
        self.assertIn("context", lines[-1])
        response, body = self.call("POST", "/api/generate", {"model": "nope", "prompt": "x"})
        self.assertEqual((response.code, body), (404, b'{"error":"model \'nope\' not found"}'))

    def test_ps_follows_use(self) -> None:
        """If a model is chatted with, then /api/ps lists it (with expires_at and size_vram);
        keep_alive 0 unloads it."""
        self.assertEqual(self.doc("GET", "/api/ps"), {"models": []})
        self.call("POST", "/api/chat", {**CHAT, "stream": False})
        (entry,) = self.doc("GET", "/api/ps")["models"]
        self.assertEqual((entry["name"], entry["model"], entry["size_vram"]), ("m:1", "m:1", 0))
        self.assertIn("expires_at", entry)
        self.assertIn("details", entry)
        unload = self.doc("POST", "/api/generate", {"model": "m:1", "keep_alive": 0})
        self.assertEqual(unload["done_reason"], "unload")
        self.assertEqual(self.doc("GET", "/api/ps"), {"models": []})

    def test_embed(self) -> None:
        """If /api/embed gets a string or a list, then one unit vector per input comes back,
        the same for the same text; /api/embeddings answers a single vector."""
        one = self.doc("POST", "/api/embed", {"model": "all-minilm:l6", "input": "a"})
        two = self.doc("POST", "/api/embed", {"model": "all-minilm:l6", "input": ["a", "b"]})
        self.assertEqual(len(one["embeddings"]), 1)
        self.assertEqual(two["embeddings"][0], one["embeddings"][0])
        self.assertNotEqual(two["embeddings"][0], two["embeddings"][1])
        self.assertAlmostEqual(math.hypot(*one["embeddings"][0]), 1.0, places=5)
        single = self.doc("POST", "/api/embeddings", {"model": "all-minilm:l6", "prompt": "a"})
        self.assertEqual(len(single["embedding"]), 8)

    def test_openai_models(self) -> None:
        """If /v1/models is asked, then it is an OpenAI list owned by library, and ``data``
        is null when there are no models; /v1/models/{id} answers one model or a 404."""
        listing = self.doc("GET", "/v1/models")
        self.assertEqual(listing["object"], "list")
        self.assertEqual(
            listing["data"][0],
            {
                "id": "m:1",
                "object": "model",
                "created": listing["data"][0]["created"],
                "owned_by": "library",
            },
        )
        self.assertEqual(self.doc("GET", "/v1/models/m:1")["id"], "m:1")
        response, body = self.call("GET", "/v1/models/nope")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["error"]["type"], "api_error")
        self.fake.apply_state({"models": []})
        self.assertEqual(self.doc("GET", "/v1/models"), {"object": "list", "data": None})

    def test_openai_chat(self) -> None:
        """If /v1/chat/completions is not streamed, then one chat.completion with usage comes
        back as application/json."""
        response, body = self.call("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        doc = json.loads(body)
        self.assertEqual(doc["object"], "chat.completion")
        self.assertEqual(doc["choices"][0]["message"]["content"], "A0 A1 A2 ")
        self.assertEqual(doc["choices"][0]["finish_reason"], "stop")
        self.assertEqual(doc["usage"]["completion_tokens"], 3)

    def test_openai_chat_stream(self) -> None:
        """If /v1/chat/completions streams with include_usage, then SSE chunks come, a final
        chunk with finish_reason, a usage chunk with no choices, then [DONE]."""
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        response = self.send("POST", "/v1/chat/completions", body)
        self.assertEqual(self.header(response, "content-type"), "text/event-stream")
        events = _events(b"".join(self.stream(response)))
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        self.assertEqual(
            [c["choices"][0]["delta"]["content"] for c in chunks[:3]], ["A0 ", "A1 ", "A2 "]
        )
        self.assertEqual(chunks[3]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[4]["choices"], [])
        self.assertEqual(chunks[4]["usage"]["completion_tokens"], 3)
        plain = self.send("POST", "/v1/chat/completions", {**CHAT, "stream": True})
        self.assertEqual(len(_events(b"".join(self.stream(plain)))), 5)  # no usage chunk

    def test_openai_completions(self) -> None:
        """If /v1/completions is asked, then text_completion objects come back, streamed as
        SSE when asked."""
        doc = self.doc("POST", "/v1/completions", {"model": "m:1", "prompt": "Hi"})
        self.assertEqual(
            (doc["object"], doc["choices"][0]["text"]), ("text_completion", "A0 A1 A2 ")
        )
        response = self.send(
            "POST", "/v1/completions", {"model": "m:1", "prompt": "Hi", "stream": True}
        )
        events = _events(b"".join(self.stream(response)))
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "stop")

    def test_openai_embeddings(self) -> None:
        """If /v1/embeddings asks for base64, then each vector is base64 of little-endian
        float32, equal to the float answer."""
        body = {"model": "all-minilm:l6", "input": ["a", "b"]}
        floats = self.doc("POST", "/v1/embeddings", body)["data"]
        encoded = self.doc("POST", "/v1/embeddings", {**body, "encoding_format": "base64"})
        for plain, packed in zip(floats, encoded["data"], strict=True):
            raw = base64.b64decode(packed["embedding"])
            vector = plain["embedding"]
            self.assertEqual(raw, struct.pack(f"<{len(vector)}f", *vector))  # same float32s
            self.assertEqual(packed["embedding"], floats_base64(plain["embedding"]))
        self.assertEqual(encoded["usage"]["prompt_tokens"], 2)


class ErrorTests(InMemory):
    def test_unknown_model_shapes(self) -> None:
        """If a model is unknown, then /api/chat and /v1/chat/completions answer 404 with the
        exact bodies real Ollama gives."""
        response, body = self.call("POST", "/api/chat", {"model": "nope", "messages": []})
        self.assertEqual(response.code, 404)
        self.assertEqual(body, b'{"error":"model \\"nope\\" not found, try pulling it first"}')
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        response, body = self.call("POST", "/v1/chat/completions", {**CHAT, "model": "nope"})
        self.assertEqual(response.code, 404)
        self.assertEqual(
            json.loads(body),
            {
                "error": {
                    "message": 'model "nope" not found, try pulling it first',
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    def test_embedding_model_refuses_chat(self) -> None:
        """If a chat asks an embedding model, then it is a 400 saying it does not support chat."""
        response, body = self.call("POST", "/api/chat", {**CHAT, "model": "all-minilm:l6"})
        self.assertEqual(response.code, 400)
        self.assertEqual(body, b'{"error":"\\"all-minilm:l6\\" does not support chat"}')

    def test_bad_bodies(self) -> None:
        """If a body is truncated, not JSON, empty or not an object, then Go's messages come
        back as 400s; a valid body without a Content-Type is still read."""
        cases = [
            (b'{"model": "m:1"', "unexpected EOF"),
            (b"xyz", "invalid character 'x' looking for beginning of value"),
            (b"", "missing request body"),
            (b"[1]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        ]
        for raw, message in cases:
            response = self.send("POST", "/api/chat", data=raw)
            self.assertEqual(response.code, 400)
            self.assertEqual(json.loads(self.read(response)), {"error": message})
        response = self.send("POST", "/v1/chat/completions", data=b"{")
        error = json.loads(self.read(response))["error"]
        self.assertEqual(
            (error["type"], error["message"]), ("invalid_request_error", "unexpected EOF")
        )
        response = self.send(
            "POST", "/api/chat", data=json.dumps({**CHAT, "stream": False}).encode()
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fake.requests[-1].headers.get("content-type"), None)

    def test_unknown_path_and_method(self) -> None:
        """If a path or method is not served, then gin's plain 404 comes back."""
        for method, path in (("GET", "/nope"), ("GET", "/api/chat"), ("POST", "/api/tags")):
            response, body = self.call(method, path)
            self.assertEqual((response.code, body), (404, b"404 page not found"))
            self.assertEqual(self.header(response, "content-type"), "text/plain")

    def test_openai_only(self) -> None:
        """If the fake is OpenAI-only, then /api/* and / are 404 while /v1/* and /health work."""
        fake = FakeOllama(self.clock, [FakeModel("test-model")], openai_only=True)
        http: Any = StubTreq(fake)
        for path, code in (("/api/tags", 404), ("/", 404), ("/health", 200), ("/v1/models", 200)):
            d = http.get(URL + path)
            http.flush()
            self.assertEqual(self.successResultOf(d).code, code, path)

    def test_required_token(self) -> None:
        """If a token is required, then requests without that bearer token are 401s."""
        self.fake.required_token = "s3cret"
        self.assertEqual(self.send("GET", "/v1/models").code, 401)
        authorised = self.send("GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(authorised.code, 200)

    def test_bad_knob(self) -> None:
        """If a knob is not a number, then the fake says so with a 400 instead of crashing."""
        response = self.send("POST", "/api/chat", CHAT, headers={"X-Fake-Chunks": "many"})
        self.assertEqual(response.code, 400)
        self.assertIn("x-fake-chunks", json.loads(self.read(response))["error"])


class TimingTests(InMemory):
    def test_chunks_on_an_absolute_clock(self) -> None:
        """If 20 chunks 50 ms apart are asked, then chunk i is written at exactly i * 50 ms
        however the clock is advanced (no drift), and the done line at 1 s."""
        headers = {"X-Fake-Chunks": "20", "X-Fake-Delay-Ms": "50"}
        received = self.stream(self.send("POST", "/api/chat", CHAT, headers))
        elapsed = 0.0
        for _ in range(34):  # 30 ms steps, out of phase with the chunks
            self.assertEqual(len(_lines(received)), min(21, int(round(elapsed * 1000)) // 50 + 1))
            self.advance(0.03)
            elapsed += 0.03
        lines = _lines(received)
        self.assertEqual(len(lines), 21)
        self.assertTrue(lines[-1]["done"])

    def test_exact_boundaries(self) -> None:
        """If the clock stops 1 ms before a chunk is due, then it has not come; 1 ms later it
        has."""
        query = "?chunks=5&delay_ms=100"
        received = self.stream(
            self.send("POST", "/api/generate" + query, {"model": "m:1", "prompt": "x"})
        )
        self.assertEqual(len(_lines(received)), 1)
        for expected in range(2, 7):
            self.advance(0.099)
            self.assertEqual(len(_lines(received)), expected - 1)
            self.advance(0.001)
            self.assertEqual(len(_lines(received)), expected)

    def test_time_to_first_token(self) -> None:
        """If a time to first token is set, then not even the headers come before it."""
        d = self.http.post(
            URL + "/api/chat", json=CHAT, headers={"X-Fake-Ttft-Ms": "500"}, unbuffered=True
        )
        self.advance(0.499)
        self.assertNoResult(d)
        self.advance(0.001)
        received = self.stream(self.successResultOf(d))
        self.assertEqual(len(_lines(received)), 4)  # no delay: everything at once

    def test_not_streamed_waits_for_the_whole_generation(self) -> None:
        """If a non-streamed chat has ttft 50 ms and 3 chunks 100 ms apart, then the answer
        comes at 350 ms, with a Content-Length."""
        d = self.http.post(
            URL + "/api/chat?ttft_ms=50&delay_ms=100", json={**CHAT, "stream": False}
        )
        self.advance(0.349)
        self.assertNoResult(d)
        self.advance(0.001)
        response = self.successResultOf(d)
        body = self.read(response)
        self.assertEqual(response.length, len(body))
        self.assertEqual(json.loads(body)["message"]["content"], "A0 A1 A2 ")

    def test_time_to_first_byte_on_lists(self) -> None:
        """If a time to first token is set on a list route, then its answer waits that long."""
        d = self.http.get(URL + "/api/tags", headers={"X-Fake-Ttft-Ms": "200"})
        self.advance(0.199)
        self.assertNoResult(d)
        self.advance(0.001)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_chunk_count_from_the_body(self) -> None:
        """If no knob is given, then options.num_predict (Ollama) or max_tokens (OpenAI) set the
        chunk count; a knob header wins over both."""
        body = {**CHAT, "options": {"num_predict": 5}}
        self.assertEqual(len(_lines(self.stream(self.send("POST", "/api/chat", body)))), 6)
        v1 = self.doc("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 2})
        self.assertEqual(v1["usage"]["completion_tokens"], 2)
        knob = self.send("POST", "/api/chat", body, headers={"X-Fake-Chunks": "1"})
        self.assertEqual(len(_lines(self.stream(knob))), 2)

    def test_client_disconnect_stops_the_stream(self) -> None:
        """If the client goes away mid-stream, then no timer is left, nothing more is written,
        and the fake counts it as cancelled."""
        transport, protocol = self.raw(_post("/api/chat?chunks=10&delay_ms=1000", CHAT))
        self.clock.advance(2)
        written = transport.value()
        self.assertEqual(written.count(b'"done":false'), 3)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(transport.value(), written)
        state = self.fake.describe_state()
        self.assertEqual((state["cancelled"], state["in_flight"]), (1, 0))


class KnobTests(InMemory):
    def test_status(self) -> None:
        """If a status is forced by header, query or state, then that status comes with the
        route's error shape; the server-wide one spares the health routes."""
        response, body = self.call("POST", "/api/chat", CHAT, {"X-Fake-Status": "503"})
        self.assertEqual((response.code, json.loads(body)), (503, {"error": "fake error 503"}))
        response, body = self.call("POST", "/v1/chat/completions?status=429", CHAT)
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["error"]["type"], "api_error")
        self.fake.apply_state({"status": 500})
        self.assertEqual(self.send("GET", "/api/tags").code, 500)
        self.assertEqual(self.send("GET", "/").code, 200)
        self.fake.apply_state({"status": None})
        self.assertEqual(self.send("GET", "/api/tags").code, 200)

    def test_hang(self) -> None:
        """If hang is asked, then no answer ever comes; when the client leaves, nothing is left
        behind."""
        d = self.http.get(URL + "/api/tags", headers={"X-Fake-Hang": "1"})
        self.advance(3600)
        self.assertNoResult(d)
        transport, protocol = self.raw(b"GET /api/tags?hang=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(3600)
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.fake.cancelled, 1)

    def test_drop_mid_stream(self) -> None:
        """If drop_after is 2, then the client gets two chunks and then a cut connection, so
        the chunked body is incomplete."""
        response = self.send("POST", "/api/chat?chunks=5&delay_ms=10&drop_after=2", CHAT)
        received: list[bytes] = []
        done = self.http.collect(response, received.append)
        for _ in range(10):
            self.advance(0.01)
        self.failureResultOf(done)
        self.assertEqual(len(_lines(received)), 2)
        self.assertEqual(self.fake.dropped, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drop_before_anything(self) -> None:
        """If drop_after is 0, then the connection is cut before any byte of the answer."""
        transport, _ = self.raw(_post("/api/chat", CHAT, "X-Fake-Drop-After: 0\r\n"))
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)

    def test_drop_a_json_answer(self) -> None:
        """If drop_after is set on a JSON answer, then half its body follows the headers and
        the connection is cut."""
        transport, _ = self.raw(b"GET /api/tags?drop_after=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(0)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        self.assertEqual(len(body), length // 2)
        self.assertTrue(transport.disconnected)

    def test_malformed(self) -> None:
        """If malformed is asked, then a 200 comes whose body is not JSON."""
        response, body = self.call("POST", "/api/chat", CHAT, {"X-Fake-Malformed": "1"})
        self.assertEqual(response.code, 200)
        self.assertRaises(ValueError, json.loads, body)

    def test_health_modes(self) -> None:
        """If health is set to fail, then / and /api/version answer 500 while the rest works;
        with hang they never answer; back to ok they answer again."""
        self.fake.apply_state({"health": "fail"})
        self.assertEqual(self.send("GET", "/").code, 500)
        self.assertEqual(self.send("GET", "/api/version").code, 500)
        self.assertEqual(self.send("GET", "/api/tags").code, 200)
        self.fake.apply_state({"health": "hang"})
        d = self.http.get(URL + "/")
        self.advance(60)
        self.assertNoResult(d)
        self.fake.apply_state({"health": "ok"})
        self.assertEqual(self.send("GET", "/").code, 200)

    def test_models_and_loaded_change_at_runtime(self) -> None:
        """If the models and loaded set change (a pull after startup), then /api/tags,
        /v1/models and /api/ps follow, and an unknown model becomes routable."""
        self.assertEqual(self.send("POST", "/api/chat", {**CHAT, "model": "new:1b"}).code, 404)
        self.fake.apply_state({"models": ["m:1", "new:1b"], "loaded": ["new:1b"]})
        self.assertEqual(
            [m["name"] for m in self.doc("GET", "/api/tags")["models"]], ["m:1", "new:1b"]
        )
        self.assertEqual(
            [m["id"] for m in self.doc("GET", "/v1/models")["data"]], ["m:1", "new:1b"]
        )
        self.assertEqual([m["name"] for m in self.doc("GET", "/api/ps")["models"]], ["new:1b"])
        self.assertEqual(self.send("POST", "/api/chat", {**CHAT, "model": "new:1b"}).code, 200)


class RecordingTests(InMemory):
    def test_requests_are_recorded(self) -> None:
        """If requests arrive, then method, path, query, lower-cased headers (lists), body,
        size, sha256 and clock time are recorded; /_fake/* calls are not."""
        self.clock.advance(7)
        self.call("POST", "/api/show?x=1", {"name": "m:1"}, {"X-Thing": "1"})
        self.call("GET", "/_fake/state")
        (recorded,) = self.fake.requests
        self.assertEqual(
            (recorded.method, recorded.path, recorded.query), ("POST", "/api/show", "x=1")
        )
        self.assertEqual(recorded.headers["x-thing"], ["1"])
        self.assertEqual(json.loads(recorded.body), {"name": "m:1"})
        self.assertEqual(recorded.body_size, len(recorded.body))
        self.assertEqual(recorded.body_sha256, hashlib.sha256(recorded.body.encode()).hexdigest())
        self.assertEqual(recorded.time, 7)

    def test_binary_and_big_bodies(self) -> None:
        """If a body is not UTF-8, then it is recorded as base64; above 1 MiB only its size and
        sha256 are kept, and /upload answers them."""
        self.send("POST", "/upload", data=b"\xff\x00")
        self.assertEqual(self.fake.requests[-1].body, base64.b64encode(b"\xff\x00").decode())
        big = b"y" * (1024 * 1024 + 1)
        answer = json.loads(self.read(self.send("POST", "/upload", data=big)))
        self.assertEqual(answer, {"bytes": len(big), "sha256": hashlib.sha256(big).hexdigest()})
        recorded = self.fake.requests[-1]
        self.assertEqual((recorded.body, recorded.body_size), ("", len(big)))

    def test_big_download(self) -> None:
        """If /big?bytes=N is asked, then exactly N bytes come, with a Content-Length."""
        response, body = self.call("GET", "/big?bytes=200001")
        self.assertEqual(len(body), 200001)
        self.assertEqual(response.length, 200001)

    def test_control_api(self) -> None:
        """If the control API is used over HTTP, then it lists and resets the recorded requests
        and reads and changes the state; a bad state is a 400."""
        self.call("GET", "/api/tags", headers={"X-A": "b"})
        self.call("GET", "/api/version")
        listed = self.doc("GET", "/_fake/requests")
        self.assertEqual([r["path"] for r in listed], ["/api/tags", "/api/version"])
        self.assertEqual(listed[0]["headers"]["x-a"], ["b"])
        self.assertEqual(len(self.doc("GET", "/_fake/requests?path=/api/version")), 1)
        self.call("POST", "/_fake/reset")
        self.assertEqual(self.doc("GET", "/_fake/requests"), [])
        state = self.doc(
            "POST",
            "/_fake/state",
            {
                "health": "fail",
                "models": ["x:1"],
                "loaded": ["x:1"],
                "default_chunks": 7,
                "default_delay_ms": 5,
                "status": 502,
            },
        )
        self.assertEqual(
            {k: state[k] for k in ("health", "models", "loaded", "default_chunks", "status")},
            {
                "health": "fail",
                "models": ["x:1"],
                "loaded": ["x:1"],
                "default_chunks": 7,
                "status": 502,
            },
        )
        self.assertEqual(self.doc("GET", "/_fake/state")["default_delay_ms"], 5)
        response, _ = self.call("POST", "/_fake/state", {"helth": "ok"})
        self.assertEqual(response.code, 400)
        self.assertEqual(self.fake.requests, [])


MESSAGES: dict[str, Any] = {
    "model": "m:1",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi there"}],
}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "note": {"type": "string"},
        },
        "required": ["city", "days", "unit"],
    },
}
WEATHER_ARGS = {"city": "x", "days": 1, "unit": "celsius"}
FUNCTIONS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]},
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]


class AnthropicTests(InMemory):
    """``/v1/messages`` on a fake that says it is Ollama 0.14.0."""

    def setUp(self) -> None:
        super().setUp()
        self.fake.apply_state({"version": "0.14.0"})

    def test_served_from_ollama_0_14(self) -> None:
        """If the fake's version is below 0.14.0 (the default 0.5.4, or 0.13.9), then
        /v1/messages is gin's plain 404; from 0.14.0 on (compared as numbers, suffixes and a
        leading v allowed) it is served, and /v1/messages/count_tokens stays a 404."""
        self.assertEqual(FakeOllama(self.clock).version, "0.5.4")
        for version, code in (
            ("0.5.4", 404),
            ("0.5.4-ipexllm-20250407", 404),
            ("0.13.9", 404),
            ("0.14.0", 200),
            ("0.14.0-rc1", 200),
            ("v0.15.2", 200),
            ("1.0", 200),
            ("nonsense", 404),
        ):
            self.fake.apply_state({"version": version})
            response, body = self.call("POST", "/v1/messages", MESSAGES)
            self.assertEqual(response.code, code, version)
            if code == 404:
                self.assertEqual(body, b"404 page not found")
                self.assertEqual(self.header(response, "content-type"), "text/plain")
        self.assertEqual(self.doc("GET", "/api/version"), {"version": "nonsense"})
        self.assertEqual(self.doc("GET", "/_fake/state")["version"], "nonsense")
        self.assertGreater(version_tuple("0.14.0"), version_tuple("0.9.9"))
        fake = FakeOllama(self.clock, [FakeModel("m:1")], version="0.14.0")
        http: Any = StubTreq(fake)
        d = http.post(URL + "/v1/messages", json=MESSAGES)
        http.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        response, body = self.call("POST", "/v1/messages/count_tokens", MESSAGES)
        self.assertEqual((response.code, body), (404, b"404 page not found"))
        self.assertEqual(self.send("GET", "/v1/messages").code, 404)

    def test_not_streamed(self) -> None:
        """If a message is asked without stream, then one JSON message comes back (as Go's
        json.Encoder writes it) with a msg_ id, the model as asked, one text block, end_turn,
        a null stop_sequence and the token usage."""
        response, body = self.call("POST", "/v1/messages", MESSAGES)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertTrue(body.endswith(b"}\n"))
        doc = json.loads(body)
        self.assertRegex(doc.pop("id"), r"^msg_[0-9a-f]{24}$")
        self.assertEqual(
            doc,
            {
                "type": "message",
                "role": "assistant",
                "model": "m:1",
                "content": [{"type": "text", "text": "A0 A1 A2 "}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 3},
            },
        )
        self.assertEqual(list(json.loads(body)), ["id", *doc])  # Go's field order
        self.assertIn("m:1", self.fake.state.loaded)

    def test_streamed(self) -> None:
        """If a message is streamed, then it is SSE with Anthropic's event names: message_start,
        content_block_start, ping, one text_delta per chunk, content_block_stop, message_delta
        (stop_reason and usage) and message_stop."""
        response = self.send("POST", "/v1/messages", {**MESSAGES, "stream": True})
        self.assertEqual(self.header(response, "content-type"), "text/event-stream")
        self.assertEqual(self.header(response, "cache-control"), "no-cache")
        self.assertEqual(response.length, UNKNOWN_LENGTH)
        events = _sse(b"".join(self.stream(response)))
        self.assertEqual(
            [name for name, _ in events],
            ["message_start", "content_block_start", "ping"]
            + ["content_block_delta"] * 3
            + ["content_block_stop", "message_delta", "message_stop"],
        )
        started = events[0][1]["message"]
        self.assertEqual(
            {k: started[k] for k in ("type", "role", "model", "content", "stop_reason")},
            {
                "type": "message",
                "role": "assistant",
                "model": "m:1",
                "content": [],
                "stop_reason": None,
            },
        )
        self.assertEqual(started["usage"], {"input_tokens": 12, "output_tokens": 0})
        self.assertEqual(
            events[1][1],
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        self.assertEqual({d["type"] for d in deltas}, {"text_delta"})
        self.assertEqual("".join(d["text"] for d in deltas), "A0 A1 A2 ")
        self.assertEqual(events[-3][1], {"type": "content_block_stop", "index": 0})
        self.assertEqual(
            events[-2][1],
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 12, "output_tokens": 3},
            },
        )

    def test_stream_paced_by_the_knobs(self) -> None:
        """If chunks are 100 ms apart after a 50 ms first token, then nothing comes before
        50 ms, the opening events and first delta come together, each later delta 100 ms on,
        and the closing events with the last group."""
        d = self.http.post(
            URL + "/v1/messages?ttft_ms=50&delay_ms=100",
            json={**MESSAGES, "stream": True},
            unbuffered=True,
        )
        self.advance(0.049)
        self.assertNoResult(d)
        self.advance(0.001)
        received = self.stream(self.successResultOf(d))
        self.assertEqual(len(b"".join(received).split(b"\n\n")) - 1, 4)
        for expected in (5, 6):
            self.advance(0.099)
            self.assertEqual(len(b"".join(received).split(b"\n\n")) - 1, expected - 1)
            self.advance(0.001)
            self.assertEqual(len(b"".join(received).split(b"\n\n")) - 1, expected)
        self.advance(0.1)
        self.assertEqual(_sse(b"".join(received))[-1][0], "message_stop")

    def test_not_streamed_waits_for_the_generation(self) -> None:
        """If a non-streamed message has 3 chunks 100 ms apart, then it answers at 300 ms."""
        d = self.http.post(URL + "/v1/messages?delay_ms=100", json=MESSAGES)
        self.advance(0.299)
        self.assertNoResult(d)
        self.advance(0.001)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_max_tokens_caps_the_chunks(self) -> None:
        """If max_tokens is below the chunk count, then the text is cut there and stop_reason is
        max_tokens; a large max_tokens (required on every request) does not set the chunk count,
        which stays the knob or the server default."""
        short = self.doc("POST", "/v1/messages", {**MESSAGES, "max_tokens": 2})
        self.assertEqual(short["content"][0]["text"], "A0 A1 ")
        self.assertEqual((short["stop_reason"], short["usage"]["output_tokens"]), ("max_tokens", 2))
        large = self.doc("POST", "/v1/messages", {**MESSAGES, "max_tokens": 4096})
        self.assertEqual((large["usage"]["output_tokens"], large["stop_reason"]), (3, "end_turn"))
        knob = self.doc(
            "POST", "/v1/messages", {**MESSAGES, "max_tokens": 4096}, **{"X-Fake-Chunks": "5"}
        )
        self.assertEqual(knob["usage"]["output_tokens"], 5)
        streamed = self.send("POST", "/v1/messages", {**MESSAGES, "max_tokens": 1, "stream": True})
        events = _sse(b"".join(self.stream(streamed)))
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "max_tokens")
        self.assertEqual(events[-2][1]["usage"]["output_tokens"], 1)

    def test_errors(self) -> None:
        """If the model is unknown, then a 404 comes in Anthropic's error envelope; a missing
        model, max_tokens or messages, a body that is not JSON or of the wrong types, and an
        embedding model are 400 invalid_request_errors with Ollama's messages."""
        response, body = self.call("POST", "/v1/messages", {**MESSAGES, "model": "x"})
        self.assertEqual(response.code, 404)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(
            json.loads(body),
            {
                "type": "error",
                "error": {"type": "not_found_error", "message": "model 'x' not found"},
            },
        )
        streamed, body = self.call(
            "POST", "/v1/messages", {**MESSAGES, "model": "x", "stream": True}
        )
        self.assertEqual(
            (streamed.code, json.loads(body)["error"]["type"]), (404, "not_found_error")
        )
        without = {key: {k: v for k, v in MESSAGES.items() if k != key} for key in MESSAGES}
        field = "MessagesRequest.max_tokens"
        cases: list[tuple[object, str]] = [
            (without["model"], "model is required"),
            (without["max_tokens"], "max_tokens is required and must be positive"),
            ({**MESSAGES, "max_tokens": 0}, "max_tokens is required and must be positive"),
            (without["messages"], "messages is required"),
            ({**MESSAGES, "messages": []}, "messages is required"),
            (
                {**MESSAGES, "max_tokens": "8"},
                f"json: cannot unmarshal string into Go struct field {field} of type int",
            ),
            (
                {**MESSAGES, "max_tokens": 1.5},
                f"json: cannot unmarshal number 1.5 into Go struct field {field} of type int",
            ),
            ([1], "json: cannot unmarshal array into Go value of type anthropic.MessagesRequest"),
            ({**MESSAGES, "model": "all-minilm:l6"}, '"all-minilm:l6" does not support chat'),
        ]
        for request, message in cases:
            response, body = self.call("POST", "/v1/messages", request)
            self.assertEqual(response.code, 400, message)
            expected = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": message},
            }
            self.assertEqual(json.loads(body), expected)
        response = self.send("POST", "/v1/messages", data=b"{")
        self.assertEqual(json.loads(self.read(response))["error"]["message"], "unexpected EOF")

    def test_knobs(self) -> None:
        """If a status is forced, then it comes in Anthropic's envelope typed by status; a bad
        knob is an invalid_request_error; drop_after cuts the stream after that many groups."""
        for status, kind in (
            (529, "overloaded_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
        ):
            response, body = self.call(
                "POST", "/v1/messages", MESSAGES, {"X-Fake-Status": str(status)}
            )
            self.assertEqual(response.code, status)
            self.assertEqual(
                json.loads(body)["error"], {"type": kind, "message": f"fake error {status}"}
            )
        self.fake.apply_state({"status": 503})
        response, body = self.call("POST", "/v1/messages", MESSAGES)
        self.assertEqual(
            (response.code, json.loads(body)["error"]["type"]), (503, "overloaded_error")
        )
        self.fake.apply_state({"status": None})
        response, body = self.call("POST", "/v1/messages", MESSAGES, {"X-Fake-Delay-Ms": "soon"})
        self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")
        response = self.send(
            "POST", "/v1/messages?chunks=5&delay_ms=10&drop_after=2", {**MESSAGES, "stream": True}
        )
        received: list[bytes] = []
        done = self.http.collect(response, received.append)
        for _ in range(10):
            self.advance(0.01)
        self.failureResultOf(done)
        names = [name for name, _ in _sse(b"".join(received))]
        self.assertEqual(names[-2:], ["content_block_delta", "content_block_delta"])
        self.assertNotIn("message_stop", names)
        self.assertEqual(self.fake.dropped, 1)

    def test_auth_headers_are_recorded(self) -> None:
        """If the anthropic SDK's headers arrive (x-api-key with anthropic-version, or a bearer
        token), then the recorded request has them, and a request without them has none."""
        self.call(
            "POST",
            "/v1/messages",
            MESSAGES,
            {"X-Api-Key": "sk-old", "Anthropic-Version": "2023-06-01"},
        )
        self.call(
            "POST",
            "/v1/messages",
            MESSAGES,
            {"Authorization": "Bearer sk-new", "Anthropic-Version": "2026-10-21"},
        )
        self.call("POST", "/v1/messages", MESSAGES)
        old, new, bare = self.fake.requests_to("/v1/messages")
        self.assertEqual(
            (old.headers["x-api-key"], old.headers["anthropic-version"]),
            (["sk-old"], ["2023-06-01"]),
        )
        self.assertNotIn("authorization", old.headers)
        self.assertEqual(new.headers["authorization"], ["Bearer sk-new"])
        self.assertNotIn("x-api-key", new.headers)
        for name in ("x-api-key", "authorization", "anthropic-version"):
            self.assertNotIn(name, bare.headers)
        self.assertEqual(json.loads(bare.body), MESSAGES)

    def test_tool_use(self) -> None:
        """If tools are given, then the answer is a tool_use block calling the first tool with
        its schema's required properties, stop_reason tool_use; tool_choice can name another
        tool, and tool_choice none gets text."""
        doc = self.doc("POST", "/v1/messages", {**MESSAGES, "tools": [WEATHER]})
        (block,) = doc["content"]
        self.assertRegex(block.pop("id"), r"^toolu_[0-9a-f]{24}$")
        self.assertEqual(block, {"type": "tool_use", "name": "get_weather", "input": WEATHER_ARGS})
        self.assertEqual(doc["stop_reason"], "tool_use")
        other = {"name": "noop", "input_schema": {"type": "object"}}
        named = self.doc(
            "POST",
            "/v1/messages",
            {
                **MESSAGES,
                "tools": [WEATHER, other],
                "tool_choice": {"type": "tool", "name": "noop"},
            },
        )
        self.assertEqual((named["content"][0]["name"], named["content"][0]["input"]), ("noop", {}))
        none = self.doc(
            "POST",
            "/v1/messages",
            {**MESSAGES, "tools": [WEATHER], "tool_choice": {"type": "none"}},
        )
        self.assertEqual(none["content"][0]["type"], "text")
        empty = self.doc("POST", "/v1/messages", {**MESSAGES, "tools": []})
        self.assertEqual(empty["stop_reason"], "end_turn")

    def test_tool_use_streamed(self) -> None:
        """If tools are given to a stream, then content_block_start opens a tool_use block with
        an empty input, two or more input_json_delta pieces make up the input, and message_delta
        says tool_use."""
        response = self.send(
            "POST", "/v1/messages", {**MESSAGES, "tools": [WEATHER], "stream": True}
        )
        events = _sse(b"".join(self.stream(response)))
        opened = events[1][1]["content_block"]
        self.assertEqual(
            {k: opened[k] for k in ("type", "name", "input")},
            {"type": "tool_use", "name": "get_weather", "input": {}},
        )
        self.assertTrue(opened["id"].startswith("toolu_"))
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        self.assertGreaterEqual(len(deltas), 2)
        self.assertEqual({d["type"] for d in deltas}, {"input_json_delta"})
        self.assertEqual(json.loads("".join(d["partial_json"] for d in deltas)), WEATHER_ARGS)
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "tool_use")
        self.assertEqual(events[-2][1]["usage"]["output_tokens"], len(deltas))
        one = self.send(
            "POST", "/v1/messages?chunks=1", {**MESSAGES, "tools": [WEATHER], "stream": True}
        )
        events = _sse(b"".join(self.stream(one)))
        self.assertEqual(sum(name == "content_block_delta" for name, _ in events), 2)

    def test_tool_result_gets_text(self) -> None:
        """If the last user message carries a tool_result, then the answer is plain text."""
        turn = self.doc("POST", "/v1/messages", {**MESSAGES, "tools": [WEATHER]})
        result = {
            "type": "tool_result",
            "tool_use_id": turn["content"][0]["id"],
            "content": "sunny",
        }
        conversation = [
            *MESSAGES["messages"],
            {"role": "assistant", "content": turn["content"]},
            {"role": "user", "content": [result]},
        ]
        doc = self.doc(
            "POST", "/v1/messages", {**MESSAGES, "tools": [WEATHER], "messages": conversation}
        )
        self.assertEqual(
            (doc["content"], doc["stop_reason"]),
            ([{"type": "text", "text": "A0 A1 A2 "}], "end_turn"),
        )

    def test_ids_are_deterministic(self) -> None:
        """If two fakes of the same name get the same requests, then they give the same ids;
        within one fake every id differs."""
        other = FakeOllama(self.clock, [FakeModel("m:1")], name="A", version="0.14.0")
        http: Any = StubTreq(other)
        mine, theirs = [], []
        for _ in range(2):
            mine.append(self.doc("POST", "/v1/messages", MESSAGES)["id"])
            d = http.post(URL + "/v1/messages", json=MESSAGES)
            http.flush()
            response = self.successResultOf(d)
            d = http.json_content(response)
            http.flush()
            theirs.append(self.successResultOf(d)["id"])
        self.assertEqual(mine, theirs)
        self.assertNotEqual(mine[0], mine[1])


class ToolCallTests(InMemory):
    """Tool calls on /v1/chat/completions and /api/chat."""

    def test_arguments_from_the_schema(self) -> None:
        """If a tool's schema has required properties, then the arguments hold exactly those,
        with a sample per type ("x", 1, true, [], {}, an enum's first value)."""
        schema = {
            "type": "object",
            "properties": {
                "s": {"type": "string"},
                "i": {"type": "integer"},
                "n": {"type": ["number", "null"]},
                "b": {"type": "boolean"},
                "a": {"type": "array"},
                "o": {"type": "object"},
                "e": {"enum": [3, 4]},
                "optional": {"type": "string"},
            },
            "required": ["s", "i", "n", "b", "a", "o", "e", "untyped"],
        }
        self.assertEqual(
            tool_arguments(schema),
            {"s": "x", "i": 1, "n": 1, "b": True, "a": [], "o": {}, "e": 3, "untyped": "x"},
        )
        self.assertEqual(tool_arguments({"type": "object"}), {})
        self.assertEqual(tool_arguments(None), {})

    def test_openai_tool_call(self) -> None:
        """If a chat completion has tools, then the message carries one tool call of the first
        tool (id call_..., arguments a JSON string), empty content and finish_reason
        tool_calls."""
        doc = self.doc("POST", "/v1/chat/completions", {**CHAT, "tools": FUNCTIONS})
        (choice,) = doc["choices"]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        message = choice["message"]
        self.assertEqual((message["role"], message["content"]), ("assistant", ""))
        (tool_call,) = message["tool_calls"]
        self.assertRegex(tool_call["id"], r"^call_[0-9a-f]{8}$")
        self.assertEqual(tool_call["type"], "function")
        self.assertEqual(tool_call["function"]["name"], "get_weather")
        self.assertEqual(json.loads(tool_call["function"]["arguments"]), WEATHER_ARGS)
        chosen = {"type": "function", "function": {"name": "noop"}}
        named = self.doc(
            "POST", "/v1/chat/completions", {**CHAT, "tools": FUNCTIONS, "tool_choice": chosen}
        )
        self.assertEqual(
            named["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "noop"
        )
        none = self.doc(
            "POST", "/v1/chat/completions", {**CHAT, "tools": FUNCTIONS, "tool_choice": "none"}
        )
        self.assertEqual(none["choices"][0]["finish_reason"], "stop")

    def test_openai_tool_call_streamed(self) -> None:
        """If a streamed chat completion has tools, then the first delta has the call's index,
        id, type and name with empty arguments, the arguments follow in two or more deltas, the
        last chunk says tool_calls, then the usage chunk and [DONE]."""
        body = {
            **CHAT,
            "tools": FUNCTIONS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = self.send("POST", "/v1/chat/completions", body)
        self.assertEqual(self.header(response, "content-type"), "text/event-stream")
        chunks = _chunks(b"".join(self.stream(response)))
        first = chunks[0]["choices"][0]["delta"]["tool_calls"]
        self.assertEqual(len(first), 1)
        self.assertEqual(
            {k: first[0][k] for k in ("index", "type", "function")},
            {"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        )
        self.assertTrue(first[0]["id"].startswith("call_"))
        pieces = chunks[1:-2]
        self.assertGreaterEqual(len(pieces), 2)
        arguments = ""
        for piece in pieces:
            (tool_call,) = piece["choices"][0]["delta"]["tool_calls"]
            self.assertEqual(tool_call["index"], 0)
            self.assertNotIn("id", tool_call)
            self.assertIsNone(piece["choices"][0]["finish_reason"])
            arguments += tool_call["function"]["arguments"]
        self.assertEqual(json.loads(arguments), WEATHER_ARGS)
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(
            (chunks[-1]["choices"], chunks[-1]["usage"]["completion_tokens"]), ([], len(pieces))
        )

    def test_openai_tool_call_paced(self) -> None:
        """If a streamed tool call has chunks 100 ms apart, then the opening delta comes at once
        and each argument piece 100 ms after the one before."""
        response = self.send(
            "POST",
            "/v1/chat/completions?delay_ms=100",
            {**CHAT, "tools": FUNCTIONS, "stream": True},
        )
        received = self.stream(response)
        for count in (1, 2, 3, 4):
            self.assertEqual(len(b"".join(received).split(b"\n\n")) - 1, count)
            self.advance(0.1)
        self.assertEqual(_events(b"".join(received))[-1], "[DONE]")

    def test_openai_text_after_a_tool_message(self) -> None:
        """If the last message is a tool's answer, or tools is empty, then the answer is text."""
        messages = [
            *CHAT["messages"],
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        doc = self.doc(
            "POST", "/v1/chat/completions", {**CHAT, "tools": FUNCTIONS, "messages": messages}
        )
        self.assertEqual(
            doc["choices"][0]["message"], {"role": "assistant", "content": "A0 A1 A2 "}
        )
        self.assertEqual(doc["choices"][0]["finish_reason"], "stop")
        response = self.send(
            "POST",
            "/v1/chat/completions",
            {**CHAT, "tools": FUNCTIONS, "messages": messages, "stream": True},
        )
        chunks = _chunks(b"".join(self.stream(response)))
        self.assertEqual("".join(c["choices"][0]["delta"]["content"] for c in chunks), "A0 A1 A2 ")
        empty = self.doc("POST", "/v1/chat/completions", {**CHAT, "tools": []})
        self.assertNotIn("tool_calls", empty["choices"][0]["message"])

    def test_native_tool_call(self) -> None:
        """If /api/chat has tools, then the message carries Ollama's tool_calls (arguments as an
        object, no id) with empty content, whole in one line when streamed; after a tool
        message, or with the SDK's empty tools list, the answer is text."""
        doc = self.doc("POST", "/api/chat", {**CHAT, "tools": FUNCTIONS, "stream": False})
        self.assertEqual(
            doc["message"],
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": WEATHER_ARGS}}],
            },
        )
        self.assertEqual((doc["done"], doc["done_reason"]), (True, "stop"))
        lines = _lines(self.stream(self.send("POST", "/api/chat", {**CHAT, "tools": FUNCTIONS})))
        self.assertEqual([line["done"] for line in lines], [False, True])
        self.assertEqual(
            lines[0]["message"]["tool_calls"][0]["function"]["arguments"], WEATHER_ARGS
        )
        self.assertNotIn("tool_calls", lines[1]["message"])
        messages = [
            *CHAT["messages"],
            {"role": "assistant", "content": "", "tool_calls": doc["message"]["tool_calls"]},
            {"role": "tool", "content": "sunny"},
        ]
        after = self.doc(
            "POST", "/api/chat", {**CHAT, "tools": FUNCTIONS, "messages": messages, "stream": False}
        )
        self.assertEqual(after["message"], {"role": "assistant", "content": "A0 A1 A2 "})
        sdk = self.doc("POST", "/api/chat", {**CHAT, "tools": [], "stream": False})
        self.assertEqual(sdk["message"]["content"], "A0 A1 A2 ")


# --------------------------------------------------------------------------- a real process


@pytest.fixture
def fake_process() -> Iterator[FakeProcess]:
    with start_fake(
        "--models", "llama3.2:latest,nomic-embed-text:latest", "--name", "P"
    ) as process:
        yield process


@pytest.mark.e2e
def test_real_sdks_against_the_process(fake_process: FakeProcess) -> None:
    """If the fake runs as a process, then the real ollama and openai SDKs complete every call
    they make against Ollama, and SIGTERM stops it cleanly."""
    import ollama
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    chat = "llama3.2:latest"
    embed = "nomic-embed-text:latest"
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    client = ollama.Client(host=fake_process.url)
    assert [m.model for m in client.list().models] == [chat, embed]
    shown = client.show(chat)
    assert shown.modelinfo is not None
    assert shown.details is not None and shown.details.family == "llama"
    assert client.ps().models == []
    reply = client.chat(model=chat, messages=messages, options={"num_predict": 4})
    assert reply.message.content == "P0 P1 P2 P3 "
    streamed = list(client.chat(model=chat, messages=messages, stream=True))
    assert "".join(p.message.content or "" for p in streamed) == "P0 P1 P2 "
    assert streamed[-1].done and streamed[-1].eval_count == 3
    assert client.generate(model=chat, prompt="Hello").response == "P0 P1 P2 "
    pieces = list(client.generate(model=chat, prompt="Hello", stream=True))
    assert pieces[-1].done_reason == "stop"
    assert len(client.embed(model=embed, input=["a", "b"]).embeddings) == 2
    assert len(client.embeddings(model=embed, prompt="a").embedding) == 8
    assert {m.model for m in client.ps().models} == {chat, embed}
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=messages)
    assert missing.value.status_code == 404

    openai = OpenAI(base_url=f"{fake_process.url}/v1", api_key="x")
    assert [m.id for m in openai.models.list()] == [chat, embed]
    completion = openai.chat.completions.create(model=chat, messages=messages, max_tokens=2)
    assert completion.choices[0].message.content == "P0 P1 "
    events = list(
        openai.chat.completions.create(
            model=chat,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == "P0 P1 P2 "
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3
    text = openai.completions.create(model=chat, prompt="Hello", max_tokens=4)
    assert text.choices[0].text == "P0 P1 P2 P3 "
    vectors = openai.embeddings.create(model=embed, input=["a", "b"])  # base64 by default
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8
    assert math.isclose(math.hypot(*vectors.data[0].embedding), 1.0, rel_tol=1e-5)
    (sent,) = fake_process.requests("/v1/embeddings")
    assert json.loads(sent["body"])["encoding_format"] == "base64"

    fake_process.stop()
    assert fake_process.returncode == 0


@pytest.mark.e2e
def test_anthropic_and_tools_against_the_process() -> None:
    """If the fake runs as a process with --version 0.14.0, then /v1/messages answers JSON and
    SSE over real HTTP, and the real openai and ollama SDKs read its tool calls."""
    import httpx
    import ollama
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

    with start_fake("--version", "0.14.0", "--name", "P") as process:
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        body = {**MESSAGES, "model": "llama3.2:latest"}
        message = httpx.post(f"{process.url}/v1/messages", json=body, headers=headers).json()
        assert message["content"] == [{"type": "text", "text": "P0 P1 P2 "}]
        with httpx.stream(
            "POST", f"{process.url}/v1/messages", json={**body, "stream": True, "tools": [WEATHER]}
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            events = _sse(response.read())
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        (recorded, _) = process.requests("/v1/messages")
        assert recorded["headers"]["x-api-key"] == ["k"]

        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather?"}]
        tools: list[ChatCompletionToolParam] = [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
            }
        ]
        openai = OpenAI(base_url=f"{process.url}/v1", api_key="x")
        with openai.chat.completions.stream(
            model="llama3.2:latest", messages=messages, tools=tools
        ) as stream:
            final = stream.get_final_completion()
        (tool_call,) = final.choices[0].message.tool_calls or []
        assert tool_call.type == "function"
        assert json.loads(tool_call.function.arguments) == WEATHER_ARGS
        assert final.choices[0].finish_reason == "tool_calls"

        client = ollama.Client(host=process.url)
        reply = client.chat(
            model="llama3.2:latest", messages=[{"role": "user", "content": "w"}], tools=tools
        )
        (native,) = reply.message.tool_calls or []
        assert (native.function.name, dict(native.function.arguments)) == (
            "get_weather",
            WEATHER_ARGS,
        )


class ManagementTests(InMemory):
    """Pull, push, create, copy, delete and blobs, as Ollama 0.5.4 answers them."""

    def pull(self, model: str, **state: Any) -> list[dict[str, Any]]:
        self.fake.apply_state(state)
        received = self.stream(self.send("POST", "/api/pull", {"model": model}))
        for _ in range(200):
            self.advance(0.05)
        return _lines(received)

    def lines(self, method: str, path: str, body: object) -> list[dict[str, Any]]:
        return _lines([self.read(self.send(method, path, body))])

    def listed(self) -> list[str]:
        return [m["name"] for m in self.doc("GET", "/api/tags")["models"]]

    def test_pull_streams_each_layer_and_lists_the_model(self) -> None:
        """If a model is pulled at a given speed, then the manifest line comes first, the
        weights' progress grows one line per tick up to their size, the small layers follow
        whole, then verify, write and success; the model is listed after, with a digest every
        fake that pulls it agrees on."""
        lines = self.pull("new:1", pull_speed=1000, pull_size=500, pull_tick_ms=100)
        self.assertEqual(lines[0], {"status": "pulling manifest"})
        weights = [line for line in lines[1:] if line.get("total") == 500]
        self.assertNotIn("completed", weights[0])  # 0 is omitted, as Go does
        self.assertEqual([w.get("completed", 0) for w in weights], [0, 100, 200, 300, 400, 500])
        self.assertEqual(weights[0]["status"], "pulling " + weights[0]["digest"][7:19])
        self.assertEqual(
            [line["status"] for line in lines[-3:]],
            ["verifying sha256 digest", "writing manifest", "success"],
        )
        self.assertEqual(len({line["digest"] for line in lines if "digest" in line}), 4)
        listed = {m["name"]: m for m in self.doc("GET", "/api/tags")["models"]}
        self.assertEqual(listed["new:1"]["size"], 500)
        other = FakeOllama(self.clock, [], name="B")
        d = StubTreq(other).post(URL + "/api/pull", json={"model": "new:1", "stream": False})
        self.clock.advance(0)
        self.successResultOf(d)
        pulled = other.model("new:1")
        assert pulled is not None
        self.assertEqual(pulled.digest, listed["new:1"]["digest"])

    def test_pull_of_a_listed_model_reports_its_layers_at_once(self) -> None:
        """If the model is there already, then each layer is reported complete at once."""
        lines = self.pull("m:1", pull_speed=10, pull_size=10_000)
        weights = [line for line in lines if "digest" in line]
        self.assertTrue(all(w["completed"] == w["total"] for w in weights))
        self.assertEqual(lines[-1], {"status": "success"})

    def test_pull_failure_knobs(self) -> None:
        """If pull_fail_after is set, then an Ollama error line ends the stream and the model is
        not listed; with pull_die_after the connection is cut mid-stream."""
        lines = self.pull("x:1", pull_speed=1000, pull_size=1000, pull_fail_after=300)
        self.assertEqual(lines[-1], {"error": "max retries exceeded: fake: the registry went away"})
        self.assertEqual(lines[-2]["completed"], 200)
        self.assertNotIn("x:1", self.listed())
        self.fake.apply_state({"pull_fail_after": None, "pull_die_after": 300})
        response = self.send("POST", "/api/pull", {"model": "y:1"})
        failures: list[Failure] = []
        self.http.collect(response, lambda _: None).addErrback(failures.append)
        for _ in range(20):
            self.advance(0.1)
        self.assertEqual(len(failures), 1)
        self.assertEqual(self.fake.dropped, 1)
        self.assertNotIn("y:1", self.listed())

    def test_pull_not_streamed(self) -> None:
        """If stream is false, then one JSON object answers, once the pull is over; an error
        has status 500 (Ollama's waitForStream)."""
        self.fake.apply_state({"pull_speed": 1000, "pull_size": 1000})
        body = {"model": "z:1", "stream": False}
        d = self.http.request("POST", URL + "/api/pull", json=body, unbuffered=True)
        self.advance(0.5)
        self.assertNoResult(d)
        self.advance(1.0)
        response = self.successResultOf(d)
        self.assertEqual(self.read(response), b'{"status":"success"}')
        self.fake.apply_state({"pull_fail_after": 100})
        d = self.http.request("POST", URL + "/api/pull", json={**body, "model": "w:1"})
        self.advance(1.0)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 500)
        self.assertIn("error", json.loads(self.read(response)))

    def test_create_by_version(self) -> None:
        """If a 0.5.4 fake is sent a Modelfile FROM a listed model, then it creates it; the new
        shape is refused (path or Modelfile are required); from 0.5.5 on it is the other way
        round, the refusal an error line carrying status 400."""
        modelfile = {"model": "t:1", "modelfile": "FROM m:1\nSYSTEM hi\n"}
        self.assertEqual(self.lines("POST", "/api/create", modelfile)[-1], {"status": "success"})
        self.assertIn("t:1", self.listed())
        response, body = self.call("POST", "/api/create", {"model": "u:1", "from": "m:1"})
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body), {"error": "path or Modelfile are required"})
        self.fake.apply_state({"version": "0.6.0"})
        lines = self.lines("POST", "/api/create", {"model": "u:1", "from": "m:1"})
        self.assertEqual(lines[-1], {"status": "success"})
        lines = self.lines("POST", "/api/create", {"model": "v:1", "modelfile": "FROM m:1"})
        self.assertEqual(
            lines, [{"error": "neither 'from' or 'files' was specified", "status": 400}]
        )
        lines = self.lines("POST", "/api/create", {"model": "v:1", "from": "nope:1"})
        self.assertEqual(lines, [{"error": "pull model manifest: file does not exist"}])

    def test_blobs_then_create_from_one(self) -> None:
        """If a blob is uploaded with the right digest, then 201, HEAD finds it, a second
        upload is 200; a wrong digest is 400, a malformed one too; a create FROM @digest uses
        it."""
        data = b"GGUF" + b"\0" * 100
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.assertEqual(self.send("HEAD", f"/api/blobs/{digest}").code, 404)
        self.assertEqual(self.send("POST", f"/api/blobs/{digest}", data=data).code, 201)
        self.assertEqual(self.send("HEAD", f"/api/blobs/{digest}").code, 200)
        self.assertEqual(self.send("POST", f"/api/blobs/{digest}", data=data).code, 200)
        response = self.send("POST", "/api/blobs/sha256:" + "0" * 64, data=data)
        self.assertEqual(response.code, 400)
        self.assertIn("digest mismatch", json.loads(self.read(response))["error"])
        self.assertEqual(self.send("HEAD", "/api/blobs/sha256:zz").code, 400)
        lines = self.lines("POST", "/api/create", {"model": "g", "modelfile": f"FROM @{digest}"})
        self.assertEqual(lines[-1], {"status": "success"})
        created = self.fake.model("g")
        assert created is not None
        self.assertEqual(created.size, len(data))

    def test_copy_and_delete(self) -> None:
        """If a model is copied, then both names are listed (200, no body); deleted, it is
        gone; deleting it again is Ollama's 404."""
        response, body = self.call("POST", "/api/copy", {"source": "m:1", "destination": "m2"})
        self.assertEqual((response.code, body), (200, b""))
        self.assertIn("m2:latest", self.listed())
        response, body = self.call("POST", "/api/copy", {"source": "no", "destination": "x"})
        self.assertEqual(
            (response.code, json.loads(body)), (404, {"error": 'model "no" not found'})
        )
        response, body = self.call("DELETE", "/api/delete", {"model": "m2"})
        self.assertEqual((response.code, body), (200, b""))
        self.assertNotIn("m2:latest", self.listed())
        response, body = self.call("DELETE", "/api/delete", {"model": "m2"})
        self.assertEqual(
            (response.code, json.loads(body)), (404, {"error": "model 'm2' not found"})
        )

    def test_push(self) -> None:
        """If a listed model is pushed, then its layers and success stream back; an unknown
        one ends with Ollama's error line."""
        lines = self.lines("POST", "/api/push", {"model": "m:1"})
        self.assertEqual(lines[0], {"status": "retrieving manifest"})
        self.assertEqual(lines[-2:], [{"status": "pushing manifest"}, {"status": "success"}])
        self.assertIn("error", self.lines("POST", "/api/push", {"model": "none:1"})[-1])
