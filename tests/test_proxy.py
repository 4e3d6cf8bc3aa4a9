"""The proxy path over the wire, in memory: streaming, failures, limits and header hygiene."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.config import ProxyConfig, RetryConfig, RoutingStrategyConfig
from olla.fleet.endpoints import EndpointStatus
from olla.fleet.models import ModelInfo
from tests.proxyharness import HANG, REFUSE, Harness, http_request


class Backend(Resource):
    """A tiny backend: JSON, or NDJSON chunks spaced on the clock; records what it got."""

    isLeaf = True

    def __init__(
        self,
        clock: Clock,
        *,
        chunks: int = 0,
        delay: float = 0.0,
        status: int = 200,
        drop_after: int | None = None,
        extra_headers: dict[bytes, bytes] | None = None,
        name: str = "backend",
    ) -> None:
        super().__init__()
        self.clock = clock
        self.chunks = chunks
        self.delay = delay
        self.status = status
        self.drop_after = drop_after
        self.extra_headers = extra_headers or {}
        self.name = name
        self.received: list[dict[str, Any]] = []
        self.disconnected = 0

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        self.received.append(
            {
                "method": request.method,
                "path": request.uri,
                "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                "body": body,
            }
        )
        request.setResponseCode(self.status)
        for name, value in self.extra_headers.items():
            request.setHeader(name, value)
        if not self.chunks:
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return json.dumps({"from": self.name, "bytes": len(body)}).encode()
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        calls: list[Any] = []

        def gone(_: object) -> None:
            self.disconnected += 1
            for call in calls:
                if call.active():
                    call.cancel()

        request.notifyFinish().addErrback(gone)

        def emit(i: int) -> None:
            if self.drop_after is not None and i == self.drop_after:
                request.channel.transport.abortConnection()
                return
            if i == self.chunks:
                request.write(b'{"done":true}\n')
                request.finish()
                return
            request.write(json.dumps({"i": i, "done": False}).encode() + b"\n")
            calls.append(self.clock.callLater(self.delay, emit, i + 1))

        emit(0)
        return NOT_DONE_YET


CHAT = json.dumps({"model": "Llama3.2:latest", "messages": []}).encode()


class RelayTests(SynchronousTestCase):
    def test_json_relayed_with_olla_headers(self) -> None:
        """If a backend answers JSON, then status, body and Content-Length reach the client
        with the X-Olla-* and Via headers added."""
        backend = Backend(Clock(), name="a")
        h = Harness({"a:1": backend})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None and response.complete
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body), {"from": "a", "bytes": len(CHAT)})
        self.assertEqual(response.header(b"x-olla-endpoint"), b"a")
        self.assertEqual(response.header(b"x-olla-backend-type"), b"ollama")
        self.assertEqual(response.header(b"x-olla-model"), b"llama3.2:latest")
        self.assertEqual(response.header(b"x-olla-response-time"), b"0ms")
        self.assertEqual(response.header(b"x-served-by")[:5], b"Olla/")  # type: ignore[index]
        self.assertIn(b"olla/", response.header(b"via") or b"")
        self.assertIsNotNone(response.header(b"x-olla-request-id"))
        self.assertEqual(response.header(b"content-length"), b"%d" % len(response.body))
        self.assertEqual(backend.received[0]["path"], b"/api/chat")
        self.assertEqual(backend.received[0]["body"], CHAT)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)
        self.assertEqual(h.registry.state(h.endpoints[0]).successes, 1)

    def test_figures_json_cannot_read_are_skipped(self) -> None:
        """If an answer's last bytes hold what JSON cannot read where the profile looks for its
        figures (an escape JSON has not, bytes that are not UTF-8, a number too big for a
        float), then the answer is relayed whole, the request ends with the figures that could
        be read, and its slot is free again."""
        body = (
            b'{"model":"bad \\q escape","done_reason":"\xff\xfe","done":true,'
            b'"prompt_eval_count":1e999,"eval_count":3,"eval_duration":2000000000}'
        )

        class Broken(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                request.setHeader(b"Content-Type", b"application/json")
                return body

        h = Harness({"a:1": Broken()})
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None and response.complete
        self.assertEqual((response.status, response.body), (200, body))
        (record,) = h.outcomes.requests
        self.assertEqual((record.outcome, record.completion_tokens), ("ok", 3))
        self.assertEqual(record.tokens_per_second, 1.5)
        metrics = record.backend_metrics or {}
        self.assertNotIn("model", metrics)
        self.assertNotIn("input_tokens", metrics)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)
        self.assertEqual(h.app.dispatch.gate.in_use(h.endpoints[0]), 0)

    def test_request_id_echoed(self) -> None:
        """If the client sends a valid X-Request-ID, then it comes back as X-Olla-Request-ID."""
        h = Harness({"a:1": Backend(Clock())})
        client = h.send(
            http_request("GET", "/olla/ollama/api/tags", headers={"X-Request-ID": "abc-42"})
        )
        response = client.response()
        assert response is not None
        self.assertEqual(response.header(b"x-olla-request-id"), b"abc-42")

    def test_generated_request_ids(self) -> None:
        """If the client sends no request id, then olla makes ``<adjective>-<verb>-<4 hex>``
        ones, every word of both lists and every hex digit in use."""
        import random
        import re

        from olla.web.site import _ADJECTIVES, _VERBS, new_request_id

        rng = random.Random(7)
        ids = [new_request_id(rng) for _ in range(2000)]
        shape = re.compile(r"([a-z]+)-([a-z]+)-([0-9a-f]{4})")
        parts = [shape.fullmatch(rid) for rid in ids]
        self.assertTrue(all(parts), ids[:5])
        self.assertEqual({p.group(1) for p in parts if p}, set(_ADJECTIVES))
        self.assertEqual({p.group(2) for p in parts if p}, set(_VERBS))
        self.assertEqual({c for p in parts if p for c in p.group(3)}, set("0123456789abcdef"))
        self.assertGreater(len(set(ids)), 1990)

    def test_query_and_path_forwarded(self) -> None:
        """If the client path has a query, then the backend sees the path below the prefix
        with the same query."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend})
        h.send(http_request("GET", "/olla/ollama/api/version?x=1&y=%20"))
        self.assertEqual(backend.received[0]["path"], b"/api/version?x=1&y=%20")

    def test_credentials_and_spoofed_headers(self) -> None:
        """If the client sends credentials and the backend Set-Cookie / X-Olla-*, then
        neither crosses olla."""
        backend = Backend(
            Clock(),
            extra_headers={b"Set-Cookie": b"s=1", b"X-Olla-Endpoint": b"spoofed"},
        )
        h = Harness({"a:1": backend})
        client = h.send(
            http_request(
                "POST",
                "/olla/ollama/api/chat",
                CHAT,
                headers={"Authorization": "Bearer client", "Cookie": "c=1", "X-Api-Key": "k"},
            )
        )
        got = backend.received[0]["headers"]
        for name in (b"authorization", b"cookie", b"x-api-key"):
            self.assertNotIn(name, got)
        self.assertEqual(got[b"x-forwarded-for"], [b"127.0.0.1"])
        self.assertEqual(got[b"x-forwarded-host"], [b"olla.test:40114"])
        self.assertEqual(got[b"x-model"], [b"Llama3.2:latest"])
        response = client.response()
        assert response is not None
        self.assertIsNone(response.header(b"set-cookie"))
        self.assertEqual(response.header(b"x-olla-endpoint"), b"a")

    def test_show_reads_name(self) -> None:
        """If /api/show names its model with ``name`` and no Content-Type, then olla knows it."""
        h = Harness({"a:1": Backend(Clock())})
        client = h.send(http_request("POST", "/olla/ollama/api/show", b'{"name":"Qwen:7b"}'))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-model"), b"qwen:7b")

    def test_invalid_json_forwarded(self) -> None:
        """If the body is not JSON, then it is forwarded untouched for the backend to judge."""
        backend = Backend(Clock(), status=400)
        h = Harness({"a:1": backend})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", b"{oops"))
        self.assertEqual(backend.received[0]["body"], b"{oops")
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertIsNone(response.header(b"x-olla-model"))

    def test_backend_error_status_not_retried(self) -> None:
        """If a backend answers 500, then the client gets that 500 and no other endpoint
        is tried."""
        first, second = Backend(Clock(), status=500), Backend(Clock())
        h = Harness({"a:1": first, "b:1": second})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 500)
        self.assertEqual(len(first.received) + len(second.received), 1)

    def test_large_body_streamed_from_disk(self) -> None:
        """If the request body is large, then it reaches the backend byte for byte."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend})
        body = json.dumps({"model": "m", "prompt": "x" * 400_000}).encode()
        client = h.send(http_request("POST", "/olla/ollama/api/generate", body))
        for _ in range(200):
            h.pump()
            if client.response() is not None:
                break
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        got = backend.received[0]["body"]
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(body).hexdigest())


class StreamingTests(SynchronousTestCase):
    def test_chunks_arrive_as_sent(self) -> None:
        """If a backend streams 20 chunks 50 ms apart, then each reaches the client when it is
        sent, as its own chunk, with headers before the first."""
        clock = Clock()
        backend = Backend(clock, chunks=20, delay=0.05)
        h = Harness({"a:1": backend}, clock=clock)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.header(b"content-type"), b"application/x-ndjson")
        self.assertEqual(len(response.chunks), 1)
        for i in range(1, 20):
            h.advance(0.049)
            response = client.response()
            assert response is not None
            self.assertEqual(len(response.chunks), i, f"bunched or early at step {i}")
            h.advance(0.001)
            response = client.response()
            assert response is not None
            self.assertEqual(len(response.chunks), i + 1)
        h.advance(0.05)
        response = client.response()
        assert response is not None and response.complete
        self.assertEqual(len(response.chunks), 21)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)

    def test_client_disconnect_aborts_upstream(self) -> None:
        """If the client leaves mid-stream, then the upstream request is aborted at once and
        the in-flight count drops without a failure."""
        clock = Clock()
        backend = Backend(clock, chunks=10, delay=1.0)
        h = Harness({"a:1": backend}, clock=clock)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(1.0)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 1)
        client.disconnect()
        h.pump()
        self.assertEqual(backend.disconnected, 1)
        state = h.registry.state(h.endpoints[0])
        in_flight = h.registry.load.in_flight(h.endpoints[0])
        self.assertEqual((in_flight, state.failures), (0, 0))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_client_disconnect_before_headers_cancels(self) -> None:
        """If the client leaves before the backend answered, then the pending upstream request
        is cancelled."""
        h = Harness({"a:1": HANG})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        self.assertEqual(len(h.agent.hanging), 1)
        client.disconnect()
        self.assertTrue(h.agent.hanging[0].called)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)

    def test_backend_dies_mid_stream(self) -> None:
        """If the backend dies mid-stream, then the client connection is aborted rather than
        ended cleanly, and the attempt counts as failed."""
        clock = Clock()
        backend = Backend(clock, chunks=10, delay=0.1, drop_after=3)
        h = Harness({"a:1": backend}, clock=clock)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        for _ in range(5):
            h.advance(0.1)
        response = client.response()
        assert response is not None
        self.assertFalse(response.complete)
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(h.registry.state(h.endpoints[0]).failures, 1)
        self.flushLoggedErrors()

    def test_read_timeout(self) -> None:
        """If the backend goes quiet longer than read_timeout mid-stream, then the client
        connection is aborted."""
        clock = Clock()
        backend = Backend(clock, chunks=3, delay=100.0)
        proxy = replace(ProxyConfig(), read_timeout=5.0)
        h = Harness({"a:1": backend}, proxy=proxy, clock=clock)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(5.0)
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(backend.disconnected, 1)


class FailureTests(SynchronousTestCase):
    def test_unreachable_single_endpoint(self) -> None:
        """If the only endpoint refuses connections, then the client gets 502 with a JSON
        error naming it, and the endpoint is reported offline."""
        h = Harness({"a:1": REFUSE})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 502)
        message = json.loads(response.body)["error"]
        self.assertIn("a", message)
        self.assertIn("refused", message)
        self.assertEqual(h.failures, [("a", "connection refused")])

    def test_openai_dialect_error(self) -> None:
        """If an OpenAI-style path fails, then the error has the OpenAI shape."""
        h = Harness({"a:1": REFUSE})
        client = h.send(http_request("POST", "/olla/ollama/v1/chat/completions", CHAT))
        response = client.response()
        assert response is not None
        error = json.loads(response.body)["error"]
        self.assertEqual(response.status, 502)
        self.assertEqual(set(error), {"message", "type", "param", "code"})

    def test_failover_replays_body(self) -> None:
        """If the first endpoint refuses, then the same request body goes to the next one."""
        backend = Backend(Clock(), name="b")
        h = Harness({"a:1": REFUSE, "b:1": backend})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(backend.received[0]["body"], CHAT)
        self.assertEqual(h.registry.state(h.endpoints[0]).status, EndpointStatus.OFFLINE)

    def test_retry_disabled(self) -> None:
        """If retry is disabled, then a refused connection is not tried elsewhere."""
        backend = Backend(Clock())
        proxy = replace(ProxyConfig(), retry=RetryConfig(enabled=False))
        h = Harness({"a:1": REFUSE, "b:1": backend}, proxy=proxy)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 502)
        self.assertEqual(backend.received, [])

    def test_response_header_timeout(self) -> None:
        """If a backend sends no headers within response_header_timeout, then the attempt
        fails as a connection-class timeout and the client gets 502."""
        h = Harness({"a:1": HANG}, proxy=replace(ProxyConfig(), response_header_timeout=3.0))
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(2.9)
        self.assertIsNone(client.response())
        h.advance(0.1)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 502)
        self.assertIn("timed out", json.loads(response.body)["error"])

    def test_no_healthy_endpoint(self) -> None:
        """If no endpoint is healthy, then the client gets 503 and no backend is contacted."""
        h = Harness({"a:1": REFUSE})
        h.registry.set_status(h.endpoints[0], EndpointStatus.OFFLINE)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(h.agent.sent, [])

    def test_waits_for_first_probe(self) -> None:
        """If a request arrives before the first health check finished, then it waits for it
        instead of failing."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, healthy=False)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        self.assertIsNone(client.response())
        h.registry.set_status(h.endpoints[0], EndpointStatus.HEALTHY)
        h.pump()
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)


class RouteTests(SynchronousTestCase):
    def test_management_calls_refused(self) -> None:
        """If a client calls pull/push/create/copy/delete, then it gets 501 with an
        Ollama-style error and nothing is forwarded."""
        h = Harness({"a:1": REFUSE})
        for path in ("pull", "push", "create", "copy", "delete"):
            client = h.send(http_request("POST", f"/olla/ollama/api/{path}", b"{}"))
            response = client.response()
            assert response is not None
            self.assertEqual(response.status, 501)
            self.assertIn("not supported", json.loads(response.body)["error"])
        self.assertEqual(h.agent.sent, [])

    def test_prefix_without_slash_redirects(self) -> None:
        """If a client asks for /olla/ollama, then it is redirected to /olla/ollama/."""
        h = Harness({"a:1": REFUSE})
        response = h.send(http_request("GET", "/olla/ollama")).response()
        assert response is not None
        self.assertEqual(response.status, 301)
        self.assertEqual(response.header(b"location"), b"/olla/ollama/")

    def test_unknown_paths(self) -> None:
        """If a path is not served, then the answer is a JSON 404."""
        h = Harness({"a:1": REFUSE})
        for path in ("/nope", "/olla/nope/api/chat", "/internal/nope"):
            response = h.send(http_request("GET", path)).response()
            assert response is not None
            self.assertEqual(response.status, 404, path)
            self.assertIn("error", json.loads(response.body))

    def test_internal_health_and_version(self) -> None:
        """If /internal/health or /version is asked for, then olla answers JSON itself."""
        h = Harness({"a:1": REFUSE})
        response = h.send(http_request("GET", "/internal/health")).response()
        assert response is not None
        self.assertEqual(json.loads(response.body), {"status": "healthy"})
        self.assertIsNotNone(response.header(b"x-olla-request-id"))
        response = h.send(http_request("POST", "/version")).response()
        assert response is not None
        version = json.loads(response.body)
        self.assertEqual((version["name"], version["edition"]), ("Olla", "Community"))
        self.assertEqual(h.agent.sent, [])


class BodyLimitTests(SynchronousTestCase):
    def test_declared_length_over_limit(self) -> None:
        """If Content-Length exceeds max_body_size, then 413 goes out before the body is read
        and nothing is forwarded."""
        h = Harness({"a:1": Backend(Clock())}, max_body_size=100)
        raw = b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        client = h.send(raw)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertIn("too large", json.loads(response.body)["error"])
        self.assertEqual(h.agent.sent, [])

    def test_chunked_body_over_limit(self) -> None:
        """If a chunked body grows past max_body_size, then 413 is answered at that point."""
        h = Harness({"a:1": Backend(Clock())}, max_body_size=100)
        raw = (
            b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"50\r\n" + b"x" * 80 + b"\r\n"
        )
        client = h.send(raw)
        self.assertIsNone(client.response())
        client.channel.dataReceived(b"50\r\n" + b"x" * 80 + b"\r\n")
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertEqual(h.agent.sent, [])

    def test_body_at_limit_accepted(self) -> None:
        """If the body is exactly max_body_size, then it is forwarded."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, max_body_size=len(CHAT))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)


class ShutdownTests(SynchronousTestCase):
    def test_drain_waits_for_streams(self) -> None:
        """If olla stops while a stream is in flight, then draining waits for it to finish,
        closes idle connections at once, and the stream completes intact."""
        clock = Clock()
        backend = Backend(clock, chunks=3, delay=1.0)
        h = Harness({"a:1": backend}, clock=clock)
        idle = h.send(http_request("GET", "/internal/health"))
        busy = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        drained = h.site.drain(10.0)
        self.assertTrue(idle.transport.disconnecting)
        idle.disconnect()  # the socket closes once its buffer is flushed
        self.assertNoResult(drained)
        for _ in range(3):
            h.advance(1.0)
        self.assertTrue(busy.transport.disconnecting)  # closed after its response
        self.assertNoResult(drained)  # ... but not drained until the socket is gone
        busy.disconnect()
        self.successResultOf(drained)
        response = busy.response()
        assert response is not None and response.complete
        self.assertFalse(busy.transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_drain_timeout_cuts_streams(self) -> None:
        """If a stream outlives shutdown_timeout, then its connection is cut and draining
        ends."""
        clock = Clock()
        backend = Backend(clock, chunks=100, delay=1.0)
        h = Harness({"a:1": backend}, clock=clock)
        busy = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        drained = h.site.drain(2.5)
        for _ in range(5):
            h.advance(0.5)
        self.successResultOf(drained)
        self.assertTrue(busy.transport.disconnected)
        self.flushLoggedErrors()


class BreakerTests(SynchronousTestCase):
    def test_open_circuit_skips_endpoint(self) -> None:
        """If an endpoint's requests keep timing out although it stays healthy, then after
        five failures its circuit opens and requests go straight to the other endpoint."""
        backend = Backend(Clock(), name="b")
        proxy = replace(ProxyConfig(), response_header_timeout=1.0)
        h = Harness({"a:1": HANG, "b:1": backend}, proxy=proxy)
        h.app.health.report_connection_failure = lambda endpoint, reason: None  # stays green
        for _ in range(10):  # round-robin puts a first every other request: five timeouts
            client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
            h.advance(1.0)
            response = client.response()
            assert response is not None
            self.assertEqual(response.status, 200)  # failed over to b
        self.assertFalse(h.registry.breakers.allows(h.endpoints[0]))
        waiting = len(h.agent.hanging)
        for _ in range(4):
            response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
            assert response is not None
            self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(len(h.agent.hanging), waiting)  # a was not tried again


class ModelRoutingTests(SynchronousTestCase):
    def _fleet(self, **kw: Any) -> tuple[Harness, Backend, Backend]:
        a, b = Backend(Clock(), name="a"), Backend(Clock(), name="b")
        models = {"a:1": ["llama3.2:latest", "shared:7b"], "b:1": ["shared:7b", "qwen2.5:7b"]}
        return Harness({"a:1": a, "b:1": b}, models=models, **kw), a, b

    def _chat(self, h: Harness, model: str, path: str = "/olla/ollama/api/chat") -> Any:
        body = json.dumps({"model": model, "messages": []}).encode()
        response = h.send(http_request("POST", path, body)).response()
        assert response is not None
        return response

    def test_model_on_one_endpoint(self) -> None:
        """If only A hosts a model, then every request for it reaches A, with routing
        headers."""
        h, a, b = self._fleet()
        for _ in range(5):
            response = self._chat(h, "llama3.2:latest")
            self.assertEqual(response.header(b"x-olla-endpoint"), b"a")
        self.assertEqual((len(a.received), len(b.received)), (5, 0))
        self.assertEqual(response.header(b"x-olla-routing-strategy"), b"strict")
        self.assertEqual(response.header(b"x-olla-routing-decision"), b"routed")
        self.assertEqual(response.header(b"x-olla-routing-reason"), b"model_found")

    def test_unknown_model(self) -> None:
        """If no endpoint knows the model, then 404 model_not_found in the route's dialect,
        and no backend is contacted."""
        h, a, b = self._fleet()
        response = self._chat(h, "nope:1b")
        self.assertEqual(response.status, 404)
        # Ollama's own shape, exactly one key; the reason rides in the message and the headers
        self.assertEqual(list(json.loads(response.body)), ["error"])
        self.assertIn("(model_not_found)", json.loads(response.body)["error"])
        self.assertEqual(response.header(b"x-olla-routing-decision"), b"rejected")
        self.assertEqual(response.header(b"x-olla-routing-reason"), b"model_not_found")
        openai = self._chat(h, "nope:1b", "/olla/ollama/v1/chat/completions")
        error = json.loads(openai.body)["error"]
        self.assertEqual((error["code"], openai.status), ("model_not_found", 404))
        self.assertEqual(h.agent.sent, [])

    def test_model_unavailable(self) -> None:
        """If the only host is down, then 503 model_unavailable."""
        h, a, b = self._fleet()
        h.registry.set_status(h.endpoints[0], EndpointStatus.OFFLINE)
        response = self._chat(h, "llama3.2:latest")
        self.assertEqual(response.status, 503)
        self.assertIn("model_unavailable", json.loads(response.body)["error"])

    def test_warm_model_preferred(self) -> None:
        """If a shared model is loaded on B only, then requests go to B (model_loaded)."""
        h, a, b = self._fleet()
        h.catalogue.set_loaded(h.endpoints[0], [])  # A says it has nothing in memory
        h.catalogue.set_loaded(h.endpoints[1], ["shared:7b"])
        for _ in range(4):
            response = self._chat(h, "shared:7b")
            self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(response.header(b"x-olla-routing-reason"), b"model_loaded")

    def test_alias_rewrites_body(self) -> None:
        """If an alias is requested, then the chosen endpoint gets its own name in the body,
        everything else untouched, and the client sees the alias routing headers."""
        h, a, b = self._fleet(aliases={"Fast": ["qwen2.5:7b"]})
        body = b'{"model": "fast", "messages": [{"role": "user", "content": "fast"}]}'
        response = h.send(http_request("POST", "/olla/ollama/api/chat", body)).response()
        assert response is not None
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(response.header(b"x-olla-routing-strategy"), b"alias")
        self.assertEqual(response.header(b"x-olla-model"), b"fast")
        self.assertEqual(
            b.received[0]["body"],
            b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "fast"}]}',
        )
        self.assertEqual(
            b.received[0]["headers"][b"content-length"], [b"%d" % len(b.received[0]["body"])]
        )

    def test_refresh_on_miss(self) -> None:
        """If the discovery strategy refreshes on a miss, then a model pulled since the last
        discovery is found and routed at once."""
        refreshes: list[int] = []
        routing = RoutingStrategyConfig(type="discovery", discovery_refresh_on_miss=True)
        h, a, b = self._fleet(routing=routing)

        def refresh() -> Any:
            refreshes.append(1)
            h.catalogue.set_models(h.endpoints[1], [ModelInfo("fresh:1b")], 0.0)
            return succeed(None)

        h.app.planner.refresh_models = refresh
        response = self._chat(h, "fresh:1b")
        self.assertEqual((response.status, refreshes), (200, [1]))
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(response.header(b"x-olla-routing-reason"), b"model_found")

    def test_refresh_bounded(self) -> None:
        """If the refresh hangs, then the decision comes after discovery_timeout (503)."""
        routing = RoutingStrategyConfig(
            type="discovery", discovery_refresh_on_miss=True, discovery_timeout=2.0
        )
        h, a, b = self._fleet(routing=routing)
        h.app.planner.refresh_models = Deferred
        client = h.send(http_request("POST", "/olla/ollama/api/chat", b'{"model":"x"}'))
        self.assertIsNone(client.response())
        h.advance(2.0)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(
            response.header(b"x-olla-routing-reason"), b"discovery_failed_compatible_only"
        )

    def test_tags_answered_locally(self) -> None:
        """If /api/tags is asked, then olla answers from its catalogue, each model once."""
        h, a, b = self._fleet()
        response = h.send(http_request("GET", "/olla/ollama/api/tags")).response()
        assert response is not None
        names = [m["name"] for m in json.loads(response.body)["models"]]
        self.assertEqual(sorted(names), ["llama3.2:latest", "qwen2.5:7b", "shared:7b"])
        self.assertEqual(h.agent.sent, [])


class ModelsRouteTests(SynchronousTestCase):
    def _get(self, h: Harness, path: str) -> tuple[int, Any]:
        response = h.send(http_request("GET", path)).response()
        assert response is not None
        return response.status, json.loads(response.body)

    def test_filters(self) -> None:
        """If /olla/models is filtered by type, capability, endpoint or availability, then
        only matching models are listed; bad values are 400s."""
        models = {"a:1": ["llama3.2:latest", "llava:7b"], "b:1": ["nomic-embed-text:latest"]}
        h = Harness({"a:1": REFUSE, "b:1": REFUSE}, models=models)
        h.catalogue.set_loaded(h.endpoints[0], ["llava:7b"])

        def ids(query: str) -> list[str]:
            status, payload = self._get(h, "/olla/models" + query)
            self.assertEqual(status, 200)
            return sorted(m["id"] for m in payload["data"])

        self.assertEqual(ids("?type=embeddings"), ["nomic-embed-text:latest"])
        self.assertEqual(ids("?capability=vision"), ["llava:7b"])
        self.assertEqual(ids("?endpoint=b"), ["nomic-embed-text:latest"])
        self.assertEqual(ids("?available=true"), ["llava:7b"])
        self.assertEqual(len(ids("")), 3)
        h.registry.set_status(h.endpoints[1], EndpointStatus.OFFLINE)
        self.assertEqual(len(ids("")), 2)
        self.assertEqual(len(ids("?include_unavailable=true")), 3)
        for bad in ("?format=xml", "?type=robot", "?capability=telepathy", "?available=maybe"):
            self.assertEqual(self._get(h, "/olla/models" + bad)[0], 400, bad)
        status, detail = self._get(h, "/olla/models/llava:7b")
        self.assertEqual((status, detail["loaded_endpoints"]), (200, ["a"]))
        self.assertEqual(self._get(h, "/olla/models/nope")[0], 404)
        status, listing = self._get(h, "/olla/openai/v1/models")
        self.assertEqual(len(listing["data"]), 2)


class HostHeaderTests(SynchronousTestCase):
    def test_backend_gets_the_host_agent_would_write(self) -> None:
        """If olla proxies a request, then the backend gets one Host: the endpoint URL's host
        and port (the client's own Host goes to X-Forwarded-Host)."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend})
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        got = backend.received[0]["headers"]
        self.assertEqual(got[b"host"], [b"a:1"])
        self.assertEqual(got[b"x-forwarded-host"], [b"olla.test:40114"])

    def test_endpoint_host_forms(self) -> None:
        """If an endpoint URL has the scheme's default port, no port, an IPv6 address or
        credentials, then its Host is written as Agent writes it; a configured Host header
        wins (olla adds none)."""
        from olla.config import EndpointConfig
        from olla.fleet.endpoints import endpoints_from_config

        def host(url: str, **headers: str) -> object:
            config = EndpointConfig(name="e", url=url, type="ollama", headers=headers)
            (endpoint,) = endpoints_from_config([config])
            return endpoint.host_header

        self.assertEqual(host("http://h:80"), (b"Host", [b"h"]))
        self.assertEqual(host("https://h"), (b"Host", [b"h"]))
        self.assertEqual(host("https://h:8443/v1"), (b"Host", [b"h:8443"]))
        self.assertEqual(host("http://[::1]:11434"), (b"Host", [b"[::1]:11434"]))
        self.assertEqual(host("http://user:secret@h:9"), (b"Host", [b"h:9"]))
        self.assertIsNone(host("http://h:9", Host="vhost.example"))
