"""Malformed and slow requests at the HTTP layer: JSON answers, deadlines, no tracebacks."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.proxyharness import Harness, http_request, parse_response
from tests.test_fuzz import captured_errors
from tests.test_proxy import Backend


class HostileHTTPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend(Clock(), name="a")
        self.h = Harness({"a:1": self.backend})
        self.h.site.header_timeout = 10.0
        self.h.site.body_timeout = 30.0

    def answer(self, raw: bytes, then: float = 0.0) -> tuple[int, dict[str, object], bytes]:
        with captured_errors() as errors:
            client = self.h.send(raw)
            if then:
                self.h.advance(then)
            data = client.transport.value()
        self.assertEqual(errors, [])
        response = parse_response(data)
        assert response is not None, data
        self.assertEqual(response.header(b"content-type"), b"application/json; charset=utf-8")
        return response.status, json.loads(response.body), data

    def test_oversized_header_block_is_431(self) -> None:
        """If the header block is over max_header_size, then the answer is a JSON 431."""
        self.h.site.max_header_size = 4096
        big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"x" * 100) for i in range(100))
        status, body, _ = self.answer(b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\n" + big)
        self.assertEqual(status, 431)
        self.assertIn("too large", body["error"])  # type: ignore[operator]

    def test_long_header_line_is_431_and_long_request_line_414(self) -> None:
        """If one header line is 20 KB, then 431; if the request line is 70 KB, then 414."""
        line = b"X-Long: " + b"y" * 20_000 + b"\r\n"
        status, _, _ = self.answer(b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\n" + line)
        self.assertEqual(status, 431)
        status, _, _ = self.answer(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(status, 414)

    def test_http11_without_host_is_400(self) -> None:
        """If an HTTP/1.1 request has no Host, then 400; HTTP/1.0 without one is served."""
        status, body, _ = self.answer(b"GET /olla/ollama/api/tags HTTP/1.1\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertIn("Host", body["error"])  # type: ignore[operator]
        status, _, _ = self.answer(b"GET /olla/ollama/api/tags HTTP/1.0\r\n\r\n")
        self.assertEqual(status, 200)

    def test_bad_hosts_are_400(self) -> None:
        """If the Host header is not a host name, then 400 (werkzeug never sees it)."""
        for host in (b"a b", b"\xff\xfe", b"x/y", b"a" * 70 + b".example"):
            status, _, _ = self.answer(
                b"GET /internal/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            )
            self.assertEqual(status, 400, host)

    def test_non_utf8_paths(self) -> None:
        """If the path is not UTF-8, then the internal routes answer a JSON 400."""
        status, _, _ = self.answer(b"GET /internal/%ff HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(status, 400)
        status, _, _ = self.answer(b"GET /\x80 HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(status, 400)

    def test_olla_itself_is_a_json_404(self) -> None:
        """If ``/olla`` or ``/olla/`` is asked for (any method), then a JSON 404."""
        for raw in (
            http_request("GET", "/olla"),
            http_request("GET", "/olla/"),
            http_request("BREW", "/olla"),
        ):
            status, _, _ = self.answer(raw)
            self.assertEqual(status, 404)

    def test_bad_content_type_is_400(self) -> None:
        """If a Content-Type has a vertical tab (Python's header parser would raise), then 400."""
        raw = b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: h\r\nContent-Type: a\x0bb\r\n"
        status, _, _ = self.answer(raw + b"Content-Length: 2\r\n\r\n{}")
        self.assertEqual(status, 400)

    def test_slow_headers_are_cut_at_the_deadline(self) -> None:
        """If headers trickle in a byte at a time, then at read_header_timeout the client gets
        408 and is closed, though every byte reset the idle timer."""
        client = self.h.send(b"G")
        for byte in b"ET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\nX-Slow: ":
            self.h.advance(1.0)
            if client.transport.value():
                break
            client.channel.dataReceived(bytes([byte]))
        response = parse_response(client.transport.value())
        assert response is not None
        self.assertEqual(response.status, 408)
        self.assertLessEqual(self.h.clock.seconds(), 10.0)

    def test_slow_body_is_cut_at_the_deadline(self) -> None:
        """If a body trickles in, then at read_timeout the client gets 408 and nothing reaches
        a backend."""
        head = b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n"
        client = self.h.send(head)
        for _ in range(40):
            self.h.advance(1.0)
            if client.transport.value():
                break
            client.channel.dataReceived(b"x")
        response = parse_response(client.transport.value())
        assert response is not None
        self.assertEqual(response.status, 408)
        self.assertEqual(self.backend.received, [])

    def test_keep_alive_requests_each_get_their_own_deadline(self) -> None:
        """If a client sends a request, waits past the header deadline and sends another on the
        same connection, then both are answered (the deadline runs per request)."""
        client = self.h.send(http_request("GET", "/olla/ollama/api/version"))
        self.h.advance(15.0)
        client.channel.dataReceived(http_request("GET", "/olla/ollama/api/version"))
        self.h.pump()
        self.assertEqual(client.transport.value().count(b"HTTP/1.1 200"), 2)

    def test_a_bug_is_a_json_500_with_the_request_id(self) -> None:
        """If a resource raises, then the traceback is logged once and the client gets a JSON
        500 naming the request id."""
        from tests.proxyharness import ClientConnection

        def boom(self: object, request: object) -> bytes:
            raise RuntimeError("boom")

        from olla.web.site import KleinGuard

        self.patch(KleinGuard, "render", boom)
        with captured_errors() as errors:
            client = ClientConnection(self.h.site, http_request("GET", "/internal/health"))
            self.h.pump()
        self.assertEqual(len(errors), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        response = parse_response(client.transport.value())
        assert response is not None
        self.assertEqual(response.status, 500)
        rid = response.header(b"x-olla-request-id")
        assert rid is not None
        self.assertIn(rid.decode(), json.loads(response.body)["error"])

    def test_unknown_methods_on_internal_routes(self) -> None:
        """If an internal route is asked with a method HTTP does not define, then a JSON 405
        with Allow; standard methods are answered as the Go original answers them."""
        client = self.h.send(http_request("BREW", "/internal/status"))
        response = parse_response(client.transport.value())
        assert response is not None
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header(b"allow"), b"GET, HEAD")
        self.assertIn("BREW", json.loads(response.body)["error"])
        for method in ("GET", "HEAD", "POST"):
            client = self.h.send(http_request(method, "/internal/health"))
            response = parse_response(client.transport.value())
            assert response is not None
            self.assertEqual(response.status, 200, method)
