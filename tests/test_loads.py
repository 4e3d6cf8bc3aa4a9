"""Slow model loads and the response bound, through the exchange, on a Clock: a host that is
loading is waited for (not failed over, not marked down), a response past its bound ends."""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from olla.config import ProxyConfig
from olla.fleet.endpoints import EndpointStatus
from olla.fleet.models import ModelInfo
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import HANG, Harness, http_request

BIG = "big:70b"
CHAT = json.dumps({"model": BIG, "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps(
    {"model": BIG, "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
#: the Ollama page's advice: a long response timeout; the header wait stays the default 30 s
PAGE = replace(ProxyConfig(), response_timeout=600.0, read_timeout=600.0)


def _fleet(
    load_ms: float, proxy: ProxyConfig = PAGE, **fake: object
) -> tuple[Harness, list[FakeOllama]]:
    clock = Clock()
    fakes = [FakeOllama(clock, [FakeModel(BIG, parameter_size="70.6B")], name=n) for n in "ab"]
    for f in fakes:
        f.apply_state({"load_ms": load_ms, "capacity": 4, **fake})
    h = Harness({"a:1": fakes[0], "b:1": fakes[1]}, proxy=proxy, clock=clock)
    for endpoint in h.endpoints:
        info = ModelInfo(BIG, parameter_size="70.6B", quantization="q4km")
        h.catalogue.set_models(endpoint, [info], 0.0)
        h.catalogue.set_loaded(endpoint, [])  # neither has it in memory
    return h, fakes


def _loads(fakes: list[FakeOllama]) -> int:
    return sum(f.scheduler.loads for f in fakes)


class SlowLoadTests(SynchronousTestCase):
    def test_first_requests_wait_for_one_load(self) -> None:
        """If two cold hosts list a 70b model whose load takes 40 s (longer than the 30 s
        header timeout), then four concurrent first requests all get 200 from one host, one
        load happens across the fleet, no host is marked down and nothing fails over: the
        header wait at a cold host is base_timeout_seconds plus the expected load."""
        h, fakes = _fleet(40_000)
        clients = [h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)) for _ in range(4)]
        for _ in range(45):
            h.advance(1.0)
            for endpoint in h.endpoints:
                self.assertEqual(h.registry.state(endpoint).status, EndpointStatus.HEALTHY)
        statuses = [c.response().status for c in clients]  # type: ignore[union-attr]
        self.assertEqual(statuses, [200] * 4)
        self.assertEqual(_loads(fakes), 1)
        self.assertEqual({c.response().header(b"x-olla-endpoint") for c in clients}, {b"a"})  # type: ignore[union-attr]
        self.assertEqual(h.failures, [])
        self.assertEqual(len(h.app.failovers.recent()), 0)
        self.assertTrue(all(h.registry.breakers.allows(ep) for ep in h.endpoints))
        # and the load time is learnt for next time
        self.assertAlmostEqual(h.catalogue.learned_load_time(BIG) or 0, 40.0, delta=1.0)

    def test_load_longer_than_the_wait_is_not_a_failure(self) -> None:
        """If a load outlasts even the loading wait (a 2 s base and the learnt 1 s load for a
        10 s load), then the client gets a 504 saying the host is still loading, the host is
        not marked down, its circuit does not count it, and no second host is sent the
        request; the load goes on, and the next request waits for what is left."""
        proxy = replace(PAGE, response_header_timeout=1.0)
        h, fakes = _fleet(10_000, proxy)
        ollama = h.endpoints[0].profile
        assert ollama is not None
        scaling = replace(ollama.resources.timeout_scaling, base_timeout_seconds=2.0)
        h.catalogue.observe_load(BIG, 1.0)
        _set_scaling(h, scaling)
        client = h.send(http_request("POST", "/olla/ollama/v1/chat/completions", CHAT))
        h.advance(3.5)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 504)
        error = json.loads(response.body)["error"]
        self.assertIn("still loading model 'big:70b'", error["message"])
        self.assertEqual(h.failures, [])
        self.assertEqual(sum(len(f.requests) for f in fakes if f.name == "b"), 0)
        for endpoint in h.endpoints:
            self.assertEqual(h.registry.state(endpoint).status, EndpointStatus.HEALTHY)
        self.assertEqual(h.registry.load.in_flight(h.endpoints[0]), 0)
        self.assertIsNotNone(h.catalogue.loading_since(h.endpoints[0], BIG))
        h.advance(7.0)
        self.assertEqual(_loads(fakes), 1)

    def test_reset_mid_load_fails_over(self) -> None:
        """If the host loading the model drops the connection, then that is a connection
        failure: the request goes to the other host at once (which loads it too)."""
        clock = Clock()
        fake = FakeOllama(clock, [FakeModel(BIG)], name="b")
        fake.apply_state({"load_ms": 5_000, "capacity": 4})
        h = Harness({"a:1": HANG, "b:1": fake}, proxy=PAGE, clock=clock)
        for endpoint in h.endpoints:
            h.catalogue.set_models(endpoint, [ModelInfo(BIG)], 0.0)
            h.catalogue.set_loaded(endpoint, [])
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(1.0)  # a is "loading"
        (loading,) = h.agent.hanging
        loading.errback(ResponseNeverReceived([Failure(ConnectionLost("reset"))]))
        h.pump()
        # (a reset could be a stale pooled connection: one fresh try, and the host is gone)
        h.agent.hanging[1].errback(ConnectionRefusedError("Connection refused"))
        h.advance(6.0)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual([name for name, _ in h.failures], ["a"])


class ResponseBoundTests(SynchronousTestCase):
    def test_bound_before_the_first_byte(self) -> None:
        """If proxy.response_timeout is 3 s and the answer would take 8 s to start, then the
        client gets a 504 in its dialect at 3 s, and the host is not marked down."""
        proxy = replace(PAGE, response_timeout=3.0)
        h, _ = _fleet(0, proxy, default_ttft_ms=8000)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(2.9)
        self.assertIsNone(client.response())
        h.advance(0.1)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 504)
        self.assertIn("proxy.response_timeout (3s)", json.loads(response.body)["error"])
        self.assertEqual(h.failures, [])
        self.assertTrue(h.registry.breakers.allows(h.endpoints[0]))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_bound_cuts_a_stream(self) -> None:
        """If a stream is still going when the bound runs out, then it is cut there."""
        proxy = replace(PAGE, response_timeout=3.0)
        h, _ = _fleet(0, proxy, default_chunks=8, default_delay_ms=1000)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", STREAM))
        h.advance(1.5)
        self.assertFalse(client.transport.disconnected)
        h.advance(1.5)
        self.assertTrue(client.transport.disconnected)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertIn(b'"done":false', response.body)
        self.assertNotIn(b'"done":true', response.body)
        self.assertFalse(response.complete)
        self.flushLoggedErrors()

    def test_platform_timeout_bounds_its_endpoints(self) -> None:
        """If the platform's characteristics.timeout is shorter than proxy.response_timeout,
        then it bounds that platform's answers."""
        h, _ = _fleet(0, PAGE, default_ttft_ms=8000)
        ollama = h.endpoints[0].profile
        assert ollama is not None
        chars = replace(ollama.characteristics, timeout=2.0)
        _set_profile(h, replace(ollama, characteristics=chars))
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(2.0)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 504)
        self.assertIn("ollama profile characteristics.timeout (2s)", response.body.decode())


def _set_profile(h: Harness, profile: object) -> None:
    """Give every endpoint ``profile`` (the platform the registry already knows)."""
    for endpoint in h.endpoints:
        object.__setattr__(endpoint, "configured", replace(endpoint.configured, profile=profile))


def _set_scaling(h: Harness, scaling: object) -> None:
    profile = h.endpoints[0].profile
    assert profile is not None
    _set_profile(h, replace(profile, resources=replace(profile.resources, timeout_scaling=scaling)))


class LearningTests(SynchronousTestCase):
    def test_learnt_where_the_profile_says_the_model_runs(self) -> None:
        """If a cold host loads the model for an /api/embed (a path the Ollama profile's
        parsing_rules do not name), then no load time is learnt from it although the answer
        reports one; a load for an /api/chat is learnt, and the answer's figures (the
        profile's metrics.extraction) are on its record and its log line."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        h, fakes = _fleet(3000)
        embed = json.dumps({"model": BIG, "input": "hi"}).encode()
        client = h.send(http_request("POST", "/olla/ollama/api/embed", embed))
        h.advance(5.0)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertGreaterEqual(json.loads(response.body)["load_duration"], 3e9)  # it loaded
        self.assertIsNone(h.catalogue.learned_load_time(BIG))
        for fake, endpoint in zip(fakes, h.endpoints, strict=True):
            fake.apply_state({"loaded": []})
            h.catalogue.set_loaded(endpoint, [])
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(10.0)
        response = client.response()
        assert response is not None
        loaded = json.loads(response.body.splitlines()[-1])["load_duration"] / 1e9
        self.assertGreaterEqual(loaded, 3.0)
        self.assertAlmostEqual(h.catalogue.learned_load_time(BIG) or 0, loaded)
        record = h.outcomes.requests[-1]
        assert record.backend_metrics is not None
        self.assertAlmostEqual(record.backend_metrics["model_load_ms"], loaded * 1000)
        self.assertEqual(record.backend_metrics["is_complete"], True)
        (line,) = [e for e in events if e.get("request_line") and e["path"].endswith("/chat")]
        self.assertEqual(line["backend_metrics"], record.backend_metrics)
