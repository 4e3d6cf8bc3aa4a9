"""Malformed and slow requests at the HTTP layer: JSON answers, deadlines, no tracebacks."""

from __future__ import annotations

import json
import warnings
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import MethodNotAllowed

from olla.config import OllaConfig
from olla.fleet.endpoints import EndpointRegistry
from olla.web.internal import InternalApp
from olla.web.site import OllaSite
from tests.proxyharness import ClientConnection, Harness, Response, http_request, parse_response
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

    def test_whole_request_in_one_chunk_makes_no_timer(self) -> None:
        """If a request's headers and body arrive in one chunk, then no header or body deadline
        is ever scheduled (nothing to time: it is all in)."""
        made: list[str] = []
        call_later = self.h.clock.callLater

        def recorded(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
            made.append(getattr(f, "__name__", repr(f)))
            return call_later(delay, f, *args, **kw)

        self.patch(self.h.clock, "callLater", recorded)
        body = b'{"model": "m", "messages": []}'
        raw = b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        self.h.send(raw % (len(body), body))
        self.assertNotIn("_too_slow", made)

    def test_status_line_and_headers_are_one_write(self) -> None:
        """If olla answers, then the status line and every header reach the transport as one
        write, in the order and spelling Twisted would have written them."""
        writes: list[bytes] = []

        class Recording(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

            def writeSequence(self, seq: Any) -> None:
                raise AssertionError("every write is whole")

        from olla.web.site import OllaChannel

        channel = self.h.site.buildProtocol(None)
        assert isinstance(channel, OllaChannel)
        channel.makeConnection(Recording(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)))
        channel.dataReceived(b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\n\r\n")
        head = writes[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertTrue(head.endswith(b"\r\n\r\n"), head)
        self.assertIn(b"\r\nContent-Type: application/json; charset=utf-8\r\n", head)
        response = parse_response(b"".join(writes))
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertIn("models", json.loads(response.body))

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


class _HalfCloseTransport(StringTransport):
    """A socket that can close its write side alone, as TCP can."""

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40114),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50001),
        )
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RequestTargetTests(SynchronousTestCase):
    """Hosts and request targets: what is refused, and what is served."""

    def setUp(self) -> None:
        self.backend = Backend(Clock(), name="a")
        self.h = Harness({"a:1": self.backend})

    def answer(self, raw: bytes) -> tuple[int, Any, Response]:
        with captured_errors() as errors:
            response = self.h.send(raw).response()
        self.assertEqual(errors, [])
        assert response is not None
        self.assertEqual(response.header(b"content-type"), b"application/json; charset=utf-8")
        return response.status, json.loads(response.body), response

    def test_hosts_werkzeug_cannot_encode_are_400_on_every_route(self) -> None:
        """If a Host has an empty or a 64-character label (werkzeug raises BadHost on them),
        then every route answers 400 in its own dialect, and no backend is asked."""
        for host in (b"a..b", b".", b"a" * 64 + b":80", b".example"):
            for path, shape in (
                (b"/internal/health", str),
                (b"/olla/ollama/api/version", str),
                (b"/olla/openai/v1/models", dict),
            ):
                raw = b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
                status, body, _ = self.answer(raw)
                self.assertEqual(status, 400, (host, path))
                self.assertIsInstance(body["error"], shape)
        self.assertEqual(self.backend.received, [])

    def test_invalid_request_targets_are_400(self) -> None:
        """If the request target is neither a path nor an http(s) URL with a valid host, or
        is ``*`` without OPTIONS, then 400."""
        for target in (
            b"foo",
            b"*",
            b"ftp://h/x",
            b"http://a..b/olla/ollama/api/version",
            b"http://user@h/internal/health",
            b"http:///internal/health",
        ):
            raw = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
            status, body, _ = self.answer(raw)
            self.assertEqual(status, 400, target)
            self.assertIn("target", body["error"])
        self.assertEqual(self.backend.received, [])

    def test_options_star_is_answered_empty(self) -> None:
        """If ``OPTIONS *`` arrives, then a bare 200 with no body (nothing to be JSON)."""
        response = self.h.send(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").response()
        assert response is not None
        self.assertEqual((response.status, response.body), (200, b""))

    def test_absolute_form_is_routed_on_its_path(self) -> None:
        """If the target is an absolute URL (RFC 9112 §3.2.2), then it is served as its path,
        with its authority as the Host (the Host header is ignored)."""
        status, body, _ = self.answer(
            b"GET http://olla.test:40114/internal/health HTTP/1.1\r\nHost: other\r\n\r\n"
        )
        self.assertEqual((status, body), (200, {"status": "healthy"}))
        raw = b"GET HTTP://olla.test/olla/ollama/api/version?x=1 HTTP/1.1\r\nHost: o\r\n\r\n"
        response = self.h.send(raw).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        [got] = self.backend.received
        self.assertEqual(got["path"], b"/api/version?x=1")
        self.assertEqual(got["headers"][b"x-forwarded-host"], [b"olla.test"])


class JSONGuardTests(SynchronousTestCase):
    """Whatever twisted.web would answer with an HTML page is JSON from olla's site."""

    def setUp(self) -> None:
        class GetOnly(Resource):
            isLeaf = True

            def render_GET(self, request: Request) -> bytes:
                request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
                return b'{"ok": true}'

        class Nothing(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                raise UnsupportedMethod(())

        class Text(Resource):
            isLeaf = True

            def render(self, request: Request) -> str:
                return "not bytes"

        root = Resource()
        root.putChild(b"get-only", GetOnly())
        root.putChild(b"nothing", Nothing())
        root.putChild(b"text", Text())
        root.putChild(b"tree", Resource())  # its children are Twisted's NoResource pages
        self.site = OllaSite(
            root, clock=Clock(), max_body_size=1024, max_header_size=65536, timeout=0.0
        )

    def answer(self, method: str, path: str) -> Response:
        client = ClientConnection(self.site, http_request(method, path))
        response = client.response()
        assert response is not None
        if method != "HEAD":
            self.assertEqual(response.header(b"content-type"), b"application/json; charset=utf-8")
            json.loads(response.body)
        return response

    def test_unknown_methods(self) -> None:
        """If a resource has no render method for the request's, then 405 with its Allow, or
        501 when it allows none; HEAD is still answered from GET."""
        with captured_errors() as errors:
            brew = self.answer("BREW", "/get-only")
            none = self.answer("POST", "/nothing")
            head = self.answer("HEAD", "/get-only")
        self.assertEqual(errors, [])
        self.assertEqual(brew.status, 405)
        self.assertEqual(sorted((brew.header(b"allow") or b"").split(b", ")), [b"GET", b"HEAD"])
        self.assertEqual(json.loads(brew.body), {"error": "method BREW not allowed"})
        self.assertEqual(none.status, 501)
        self.assertEqual((head.status, head.body), (200, b""))

    def test_twisted_error_pages_become_json(self) -> None:
        """If traversal ends at one of Twisted's error pages (NoResource), then its status
        goes out with a JSON body, in the path's dialect."""
        with captured_errors() as errors, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # NoResource is deprecated
            ollama = self.answer("GET", "/tree/x")
            openai = self.answer("GET", "/tree/v1/x")
        self.assertEqual(errors, [])
        self.assertEqual((ollama.status, json.loads(ollama.body)), (404, {"error": "Not Found"}))
        self.assertEqual(openai.status, 404)
        self.assertEqual(json.loads(openai.body)["error"]["message"], "Not Found")

    def test_a_render_that_returns_no_bytes_is_a_logged_500(self) -> None:
        """If a resource renders something that is not bytes (a bug), then its traceback is
        logged once and the client gets a JSON 500 with the request id."""
        with captured_errors() as errors:
            response = self.answer("GET", "/text")
        self.assertEqual(len(errors), 1)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(response.status, 500)
        rid = response.header(b"x-olla-request-id")
        assert rid is not None
        self.assertIn(rid.decode(), json.loads(response.body)["error"])

    def test_klein_errors_are_json(self) -> None:
        """If werkzeug's router raises something other than NotFound (405 for a route that
        limits its methods), then the internal app answers it in JSON with its headers."""
        app = InternalApp(EndpointRegistry([], Clock()), clock=Clock(), config=OllaConfig())
        request = DummyRequest([b"internal"])
        body = app.http_error(request, Failure(MethodNotAllowed(["GET", "HEAD"])))
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"application/json; charset=utf-8"],
        )
        self.assertIn("method is not allowed", json.loads(body)["error"])


class RefusalTests(SynchronousTestCase):
    """Limits and deadlines: answered once, in the route's dialect, then the connection ends."""

    def setUp(self) -> None:
        self.backend = Backend(Clock(), name="a")
        self.h = Harness({"a:1": self.backend}, max_body_size=1000)
        self.h.site.header_timeout = 10.0
        self.h.site.body_timeout = 30.0

    def connect(self) -> tuple[_HalfCloseTransport, Any]:
        transport = _HalfCloseTransport()
        channel = self.h.site.buildProtocol(None)
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        return transport, channel

    def refused(self, transport: _HalfCloseTransport) -> tuple[int, Any]:
        response = parse_response(transport.value())
        assert response is not None, transport.value()
        self.assertEqual(response.header(b"content-type"), b"application/json; charset=utf-8")
        self.assertEqual(response.header(b"connection"), b"close")
        return response.status, json.loads(response.body)

    def test_big_header_block_is_431_before_the_rest_is_read(self) -> None:
        """If a client sends a 2 MB header block (max_header_size 1 MB), then 431 goes out
        once the limit is passed, the write side closes, the rest is not parsed, and the
        connection is cut if the client lingers."""
        self.h.site.max_header_size = 1024 * 1024
        transport, channel = self.connect()
        with captured_errors() as errors:
            channel.dataReceived(b"GET /olla/openai/v1/models HTTP/1.1\r\nHost: h\r\n")
            sent = 0
            while not transport.value():  # 10 KB lines: under the line and field-count limits
                channel.dataReceived(b"X-Pad-%d: %s\r\n" % (sent, b"p" * 10_000))
                sent += 1
            self.assertLess(sent, 110)
            for _ in range(20):  # the client keeps sending: ignored
                channel.dataReceived(b"X-More: " + b"m" * 50_000 + b"\r\n")
        self.assertEqual(errors, [])
        status, body = self.refused(transport)
        self.assertEqual(status, 431)
        self.assertIn("too large", body["error"]["message"])  # the /v1/ dialect
        self.assertTrue(transport.write_closed)
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.h.advance(5.0)
        self.assertTrue(transport.aborted)

    def test_header_line_over_the_line_limit_is_431(self) -> None:
        """If one header line is 20 KB (the line limit is 16 KB, the block limit larger), then
        431 before its end arrives."""
        transport, channel = self.connect()
        channel.dataReceived(b"GET /olla/ollama/api/tags HTTP/1.1\r\nHost: h\r\nX-Long: ")
        channel.dataReceived(b"y" * 20_000)
        status, body = self.refused(transport)
        self.assertEqual(status, 431)
        self.assertIn("line", body["error"])

    def test_too_many_header_fields_are_431(self) -> None:
        """If a request has more header fields than twisted.web keeps (500), then 431."""
        transport, channel = self.connect()
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(600))
        channel.dataReceived(b"GET /internal/health HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n")
        self.assertEqual(self.refused(transport)[0], 431)

    def test_body_over_the_limit_is_413_in_the_route_dialect_and_stops_reading(self) -> None:
        """If a declared body is over max_body_size, then an OpenAI-shaped 413 on a /v1/
        route, the write side closes and nothing more is read or sent to a backend."""
        transport, channel = self.connect()
        head = b"POST /olla/openai/v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
        channel.dataReceived(head + b"Content-Length: 5000\r\n\r\n" + b"x" * 100)
        channel.dataReceived(b"x" * 4900)
        self.h.pump()
        status, body = self.refused(transport)
        self.assertEqual(status, 413)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertTrue(transport.write_closed)
        self.assertEqual(self.backend.received, [])

    def test_slow_headers_do_not_hold_up_other_clients(self) -> None:
        """If one client drips its headers, then others are answered meanwhile, and the slow
        one gets 408 at read_header_timeout counted from its first byte, in its dialect."""
        transport, channel = self.connect()
        self.h.advance(3.0)  # connected but silent: the deadline has not started
        channel.dataReceived(b"POST /olla/anthropic/v1/messages HTTP/1.1\r\n")
        started = self.h.clock.seconds()
        for byte in b"Host: h\r\nX-Slow: " * 3:
            if transport.value():
                break
            other = self.h.send(http_request("GET", "/internal/health")).response()
            assert other is not None
            self.assertEqual(other.status, 200)
            channel.dataReceived(bytes([byte]))
            self.h.advance(0.5)
        status, body = self.refused(transport)
        self.assertEqual(status, 408)
        self.assertEqual(body["error"]["type"], "timeout_error")  # Anthropic's shape
        self.assertEqual(self.h.clock.seconds() - started, 10.0)

    def test_slow_body_is_408_at_read_timeout_after_the_headers(self) -> None:
        """If the headers arrive on time and the body drips, then 408 at read_timeout after
        the end of the headers, and no backend is asked."""
        transport, channel = self.connect()
        channel.dataReceived(
            b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: h\r\nContent-Length: 900\r\n\r\n"
        )
        for _ in range(29):
            self.h.advance(1.0)
            channel.dataReceived(b" ")
        self.assertEqual(transport.value(), b"")
        self.h.advance(1.0)
        self.assertEqual(self.refused(transport)[0], 408)
        self.assertEqual(self.backend.received, [])
        self.assertEqual(self.h.clock.getDelayedCalls()[0].getTime(), 35.0)  # the linger cut
