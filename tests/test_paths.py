"""The upstream path: built from the raw URI, dot segments removed, never above the base."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig
from olla.fleet.endpoints import EndpointStatus, endpoints_from_config
from olla.proxy.resource import BadTarget, remove_dot_segments
from tests.proxyharness import Harness, http_request
from tests.test_proxy import Backend


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        (["api", "chat"], b"/api/chat"),
        (["api", ".", "chat"], b"/api/chat"),
        (["api", "x", "..", "chat"], b"/api/chat"),
        (["api", "x", "%2e%2E", "chat"], b"/api/chat"),
        (["api", "%2e"], b"/api/"),
        (["api", "x", ".."], b"/api/"),
        ([""], b"/"),
        (["a%2Fb", "c"], b"/a%2Fb/c"),
    ],
)
def test_remove_dot_segments(segments: list[str], expected: bytes) -> None:
    """If a path has dot segments (also percent-encoded), then they are resolved."""
    assert remove_dot_segments([s.encode() for s in segments]) == expected


@pytest.mark.parametrize("segments", [[".."], ["%2e%2e", "api"], ["a", "..", "..", "b"]])
def test_climbing_out_is_refused(segments: list[str]) -> None:
    """If a path climbs above the route, then it is refused."""
    with pytest.raises(BadTarget):
        remove_dot_segments([s.encode() for s in segments])


class ProxyPathTests(SynchronousTestCase):
    def _harness(self, url: str = "http://a:1") -> tuple[Harness, Backend]:
        backend = Backend(Clock(), name="a")
        h = Harness({"a:1": backend})
        return h, backend

    def _get(self, h: Harness, path: str) -> tuple[int, bytes, bytes | None]:
        response = h.send(http_request("GET", path)).response()
        assert response is not None
        return response.status, response.body, response.header(b"content-type")

    def test_dot_segments_never_reach_a_backend(self) -> None:
        """If a path climbs out with (encoded) dot segments, then it is a 400 in JSON and no
        backend is asked; one that stays inside is resolved before it is sent."""
        h, backend = self._harness()
        for path in ("/olla/ollama/%2e%2e/%2e%2e/api/version", "/olla/ollama/../x"):
            status, body, ctype = self._get(h, path)
            self.assertEqual(status, 400, path)
            self.assertEqual(ctype, b"application/json; charset=utf-8")
            self.assertIn("climbs above", json.loads(body)["error"])
        self._get(h, "/olla/ollama/api/x/%2E%2E/version")
        self.assertEqual([r["path"] for r in backend.received], [b"/api/version"])

    def test_preserve_path_stays_under_the_base(self) -> None:
        """If an endpoint keeps its base path, then a resolved path is joined below it."""
        (endpoint,) = endpoints_from_config(
            [EndpointConfig(url="http://h:1/base", name="h", type="ollama", preserve_path=True)]
        )
        self.assertEqual(
            endpoint.upstream_url(remove_dot_segments([b"a", b"..", b"api", b"tags"])),
            b"http://h:1/base/api/tags",
        )

    def test_percent_encoded_prefix_is_counted_once(self) -> None:
        """If the prefix and path are percent-encoded (``/olla/%6fllama/api/ver%20sion``), then
        the backend gets the path as the client wrote it, and no in-flight count is left."""
        h, backend = self._harness()
        for _ in range(10):
            status, _, _ = self._get(h, "/olla/%6fllama/api/ver%20sion")
            self.assertEqual(status, 200)
        self.assertEqual(backend.received[0]["path"], b"/api/ver%20sion")
        state = h.registry.state(h.endpoints[0])
        in_flight = h.registry.load.in_flight(h.endpoints[0])
        self.assertEqual((in_flight, state.status), (0, EndpointStatus.HEALTHY))

    def test_bytes_agent_refuses_are_a_400(self) -> None:
        """If a path has bytes no URL may carry, then it is a 400 and nothing is counted."""
        h, backend = self._harness()
        response = h.send(b"GET /olla/ollama/api/\xff\x01 HTTP/1.1\r\nHost: x\r\n\r\n").response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertEqual(backend.received, [])
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)


DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deep_nesting_names_no_model() -> None:
    """If a body nests arrays 100,000 deep, then it names no model (no RecursionError)."""
    from olla.proxy.inspect import extract_model
    from olla.proxy.needs import body_needs

    assert extract_model(DEEP, b"/api/chat") is None
    assert extract_model(b'{"model": "m", "x": ' + DEEP + b"}", b"/api/chat") is None
    assert body_needs(DEEP, "/api/chat") == frozenset()


class DeepBodyTests(SynchronousTestCase):
    def test_deep_bodies_are_answered(self) -> None:
        """If deeply nested JSON is posted to the proxy and to the Anthropic route, then the
        proxy forwards it untouched and the Anthropic route answers 400 in its envelope."""
        backend = Backend(Clock(), name="a")
        h = Harness({"a:1": backend}, types={"a:1": "openai-compatible"})
        response = h.send(http_request("POST", "/olla/openai/v1/chat/completions", DEEP)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.received[0]["body"], DEEP)
        response = h.send(http_request("POST", "/olla/anthropic/v1/messages", DEEP)).response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertEqual(json.loads(response.body)["type"], "error")


class BreakerTrialTests(SynchronousTestCase):
    def test_encoded_requests_complete_the_half_open_trial(self) -> None:
        """If an endpoint's circuit is half-open and the trial is a percent-encoded request,
        then the trial completes (the circuit closes) and nothing stays in flight."""
        from olla.fleet.breaker import FAILURE_THRESHOLD, OPEN_FOR
        from olla.fleet.endpoints import Outcome

        backend = Backend(Clock(), name="a")
        h = Harness({"a:1": backend})
        endpoint = h.endpoints[0]
        for _ in range(FAILURE_THRESHOLD):
            started = h.clock.seconds()
            h.registry.attempt_started(endpoint, started)
            h.registry.attempt_ended(endpoint, Outcome.FAILED, started=started)
        self.assertFalse(h.registry.breakers.allows(endpoint))
        h.advance(OPEN_FOR)
        for _ in range(10):
            response = h.send(http_request("GET", "/olla/%6fllama/api/ver%20sion")).response()
            assert response is not None
            self.assertEqual(response.status, 200)
        self.assertTrue(h.registry.breakers.allows(endpoint))
        self.assertEqual(h.registry.load.in_flight(endpoint), 0)
