"""The exchange walks routing's list: busy answers and dead machines fail over, on a Clock."""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.config import ProxyConfig, RetryConfig
from olla.fleet.endpoints import EndpointStatus
from tests.proxyharness import REFUSE, Harness, http_request
from tests.test_proxy import Backend

MODEL = "llama3.2:latest"
#: a body larger than one read, to show it is replayed byte for byte
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()


def _harness(a: object, b: object, **kw: object) -> Harness:
    h = Harness({"a:1": a, "b:1": b}, models={"a:1": [MODEL], "b:1": [MODEL]}, **kw)  # type: ignore[arg-type]
    for endpoint in h.endpoints:
        h.catalogue.set_loaded(endpoint, [])
    h.catalogue.set_loaded(h.endpoints[0], [MODEL])  # a is warm: a goes first
    return h


class BusyFailoverTests(SynchronousTestCase):
    def test_503_goes_to_the_next_candidate_with_the_same_body(self) -> None:
        """If the warm host answers 503 (its queue is full), then the request is served by the
        other host with the identical body, and the warm host stays healthy."""
        busy = Backend(Clock(), status=503, name="a")
        ok = Backend(Clock(), name="b")
        h = _harness(busy, ok)
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(busy.received[0]["body"], CHAT)
        self.assertEqual(ok.received[0]["body"], CHAT)
        state = h.registry.state(h.endpoints[0])
        self.assertEqual(state.status, EndpointStatus.HEALTHY)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)
        self.assertTrue(h.registry.breakers.allows(h.endpoints[0]))

    def test_busy_host_goes_last_then_returns(self) -> None:
        """If the warm host said 503, then for a second the next requests go to the other host
        first (no extra hop), and after that the warm host is first again."""
        busy = Backend(Clock(), status=503, name="a")
        ok = Backend(Clock(), name="b")
        h = _harness(busy, ok)
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        self.assertEqual(len(busy.received), 1)
        h.advance(1.0)
        busy.status = 200
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.header(b"x-olla-endpoint"), b"a")

    def test_429_honours_retry_after(self) -> None:
        """If a host answers 429 with Retry-After: 5, then it is skipped for 5 s, not marked
        unhealthy."""
        limited = Backend(Clock(), status=429, name="a", extra_headers={b"Retry-After": b"5"})
        h = _harness(limited, Backend(Clock(), name="b"))
        for _ in range(3):
            response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
            assert response is not None
            self.assertEqual(response.status, 200)
        self.assertEqual(len(limited.received), 1)
        self.assertEqual(h.registry.state(h.endpoints[0]).status, EndpointStatus.HEALTHY)
        h.advance(5.0)
        limited.status = 200
        served = set()
        for _ in range(2):  # b is warm too by now: the two take turns
            response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
            assert response is not None
            served.add(response.header(b"x-olla-endpoint"))
        self.assertEqual(served, {b"a", b"b"})

    def test_every_candidate_busy_passes_the_last_answer(self) -> None:
        """If every host answers 503, then the client gets the last 503 as the backend sent it."""
        h = _harness(Backend(Clock(), status=503, name="a"), Backend(Clock(), status=503, name="b"))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(json.loads(response.body)["from"], "b")
        self.assertEqual([h.registry.load.in_flight(ep) for ep in h.endpoints], [0, 0])

    def test_on_status_empty_passes_through(self) -> None:
        """If ``proxy.retry.on_status`` is ``[]``, then the warm host's 503 is the answer."""
        retry = replace(RetryConfig(), on_status=())
        proxy = replace(ProxyConfig(), read_timeout=30.0, retry=retry)
        h = _harness(
            Backend(Clock(), status=503, name="a"), Backend(Clock(), name="b"), proxy=proxy
        )
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"a")

    def test_500_is_not_retried(self) -> None:
        """If a host answers 500 (a real error, not busy), then it is passed to the client."""
        h = _harness(Backend(Clock(), status=500, name="a"), Backend(Clock(), name="b"))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 500)


class DeadWarmHostTests(SynchronousTestCase):
    def test_dead_warm_host_fails_over_to_cold(self) -> None:
        """If the only warm host refuses connections, then the cold host serves (200)."""
        ok = Backend(Clock(), name="b")
        h = _harness(REFUSE, ok)
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(h.failures[0][0], "a")

    def test_served_model_is_warm_where_it_answered(self) -> None:
        """If the cold host answered, then it counts as warm for the model from then on."""
        h = _harness(Backend(Clock(), name="a"), Backend(Clock(), name="b"))
        self.assertFalse(h.catalogue.warm(h.endpoints[1], MODEL))
        h.registry.backend_busy(h.endpoints[0], 10.0)
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertTrue(h.catalogue.warm(h.endpoints[1], MODEL))


class ResidencyTests(SynchronousTestCase):
    def test_a_load_asks_what_is_in_memory_now(self) -> None:
        """If a cold Ollama answered (it loaded the model, maybe evicting another), then olla
        asks that endpoint's /api/ps again; a warm answer asks nothing."""
        h = _harness(Backend(Clock(), name="a"), Backend(Clock(), name="b"))
        asked: list[list[str]] = []

        def refresh_loaded(endpoints: object) -> Deferred[None]:
            asked.append([ep.name for ep in endpoints])  # type: ignore[attr-defined]
            return succeed(None)

        h.app.discovery.refresh_loaded = refresh_loaded  # type: ignore[method-assign]
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))  # a: warm
        self.assertEqual(asked, [])
        h.registry.backend_busy(h.endpoints[0], 10.0)
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))  # b: cold
        self.assertEqual(asked, [["b"]])


class LoadTimeTests(SynchronousTestCase):
    def test_load_duration_learned_from_the_last_chunk(self) -> None:
        """If a cold Ollama streams an answer whose last chunk says load_duration 1.5 s, then
        olla expects 1.5 s to load that model from then on."""

        class Loading(Backend):
            def render(self, request: object) -> bytes:  # type: ignore[override]
                super().render(request)  # type: ignore[arg-type]
                return b'{"done":false}\n{"done":true,"load_duration":1500000000}\n'

        h = _harness(Backend(Clock(), name="a"), Loading(Clock(), name="b"))
        h.registry.backend_busy(h.endpoints[0], 10.0)
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        self.assertEqual(h.catalogue.learned_load_time(MODEL), 1.5)


def test_no_failover_on_connection_failure_when_off() -> None:
    """If ``proxy.retry.on_connection_failure`` is off, then a refused connection is the
    client's 502 (no second attempt)."""
    retry = replace(RetryConfig(), on_connection_failure=False)
    proxy = replace(ProxyConfig(), read_timeout=30.0, retry=retry)
    ok = Backend(Clock(), name="b")
    h = _harness(REFUSE, ok, proxy=proxy)
    response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
    assert response is not None
    assert response.status == 502
    assert ok.received == []
