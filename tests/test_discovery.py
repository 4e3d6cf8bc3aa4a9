"""Model discovery on a Clock, against the fake Ollama in memory."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig, FilterConfig, ModelDiscoveryConfig
from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import EndpointRegistry, EndpointStatus, endpoints_from_config
from olla.fleet.models import ModelCatalogue
from olla.fleet.modelsources import MODEL_SOURCES
from olla.interfaces import IModelSource
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import HANG, HostAgent


class DiscoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ollama = FakeOllama(self.clock, [FakeModel("llama3.2:latest"), FakeModel("big:70b")])
        self.ollama.state.loaded = {"llama3.2:latest"}
        self.openai = FakeOllama(self.clock, [FakeModel("test-model")], openai_only=True)
        self.agent = HostAgent({b"o:1": self.ollama, b"c:1": self.openai})
        self.endpoints = endpoints_from_config(
            [
                EndpointConfig(
                    url="http://o:1",
                    name="o",
                    type="ollama",
                    model_filter=FilterConfig(exclude=("*70b*",)),
                ),
                EndpointConfig(url="http://c:1", name="c", type="openai-compatible"),
            ]
        )
        self.registry = EndpointRegistry(self.endpoints, self.clock)
        self.catalogue = ModelCatalogue()
        self.service = DiscoveryService(
            self.registry,
            self.catalogue,
            self.agent,
            self.clock,
            ModelDiscoveryConfig(interval=60.0, timeout=5.0),
            "1.0",
        )

    def _start(self) -> None:
        for endpoint in self.endpoints:
            self.registry.set_status(endpoint, EndpointStatus.HEALTHY)
        self.service.startService()
        self._pump()

    def _pump(self) -> None:
        for _ in range(6):
            self.agent.flush()
            self.clock.advance(0)

    def _names(self, index: int) -> list[str]:
        return sorted(m.name for m in self.catalogue.models_of(self.endpoints[index]))

    def test_sources_provide_interface(self) -> None:
        """If a model source is registered, then it provides IModelSource."""
        for source in MODEL_SOURCES.values():
            self.assertTrue(verifyObject(IModelSource, source))

    def test_first_discovery_after_health(self) -> None:
        """If the first health results are in, then both formats are discovered, the filter
        applies, and Ollama's loaded models are known."""
        self.service.startService()
        self._pump()
        self.assertEqual(self._names(0), [])  # nothing before the first probe
        self._start()
        self.assertEqual(self._names(0), ["llama3.2:latest"])
        self.assertEqual(self._names(1), ["test-model"])
        self.assertEqual(self.catalogue.loaded_on(self.endpoints[0]), {"llama3.2:latest"})
        self.assertEqual(self.registry.state(self.endpoints[0]).model_count, 1)
        headers = self.agent.sent[0][2]
        self.assertEqual(headers.getRawHeaders(b"user-agent"), [b"olla-Discovery/1.0"])

    def test_interval_and_pull(self) -> None:
        """If a model is pulled, then the next interval's discovery finds it."""
        self._start()
        self.ollama.apply_state({"models": ["llama3.2:latest", "new:1b"]})
        self.clock.advance(59)
        self._pump()
        self.assertEqual(self._names(0), ["llama3.2:latest"])
        self.clock.advance(1)
        self._pump()
        self.assertEqual(self._names(0), ["llama3.2:latest", "new:1b"])

    def test_failure_keeps_last_list(self) -> None:
        """If discovery fails, then the last good list stays and it is tried again later."""
        self._start()
        self.ollama.apply_state({"status": 500, "models": ["other:1b"]})
        self.clock.advance(60)
        self._pump()
        self.assertEqual(self._names(0), ["llama3.2:latest"])
        self.ollama.apply_state({"status": None})
        self.clock.advance(60)
        self._pump()
        self.assertEqual(self._names(0), ["other:1b"])

    def test_only_healthy_endpoints(self) -> None:
        """If an endpoint is offline, then discovery does not ask it."""
        self.registry.set_status(self.endpoints[1], EndpointStatus.OFFLINE)
        self.registry.set_status(self.endpoints[0], EndpointStatus.HEALTHY)
        self.service.startService()
        self._pump()
        self.assertEqual(self._names(1), [])
        self.assertTrue(all(b"c:1" not in uri for _, uri, _ in self.agent.sent))

    def test_refresh_coalesces(self) -> None:
        """If a refresh is asked while one runs, then one request goes out."""
        self._start()
        self.agent.behaviour[b"c:1"] = HANG  # the next discovery of c stays in flight
        before = len(self.agent.sent)
        first = self.service.refresh(self.endpoints[1])
        second = self.service.refresh(self.endpoints[1])
        self.assertEqual(len(self.agent.sent) - before, 1)
        self.assertNoResult(first)
        self.clock.advance(5.0)  # the discovery timeout ends it; the old list stays
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self._names(1), ["test-model"])

    def test_rediscover_follows_a_run_already_going(self) -> None:
        """If an endpoint's list is asked again after a change while a run that started
        before it is going, then a new run follows that one and sees the change."""
        self._start()
        self.agent.behaviour[b"o:1"] = HANG
        going = self.service.refresh(self.endpoints[0])
        self.ollama.apply_state({"models": ["llama3.2:latest", "new:1b"]})
        del self.agent.behaviour[b"o:1"]
        after = self.service.rediscover(self.endpoints[0])
        self.clock.advance(5.0)  # the old run times out (it had asked before the change)
        self._pump()
        self.successResultOf(going)
        self.successResultOf(after)
        self.assertEqual(self._names(0), ["llama3.2:latest", "new:1b"])

    def test_rediscover_without_a_run_going(self) -> None:
        """If nothing is running, then rediscover is a plain refresh."""
        self._start()
        self.ollama.apply_state({"models": ["new:1b"]})
        self.successResultOf(self.service.rediscover(self.endpoints[0]))
        self.assertEqual(self._names(0), ["new:1b"])

    def test_stale_lists_dropped(self) -> None:
        """If an endpoint's list was not refreshed for stale_threshold, then it is dropped at
        the next cleanup (every cleanup_interval)."""
        self.service.stale_threshold = 100.0
        self.service.cleanup_interval = 60.0
        self._start()
        self.registry.set_status(self.endpoints[1], EndpointStatus.OFFLINE)
        self.clock.advance(60)
        self._pump()
        self.clock.advance(60)
        self._pump()
        self.assertEqual(self._names(1), [])
        self.assertEqual(self._names(0), ["llama3.2:latest"])

    def test_stop_cancels(self) -> None:
        """If the service stops, then no timer is left."""
        self._start()
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def _shows(self) -> list[str]:
        return [r.body for r in self.ollama.requests if r.path == "/api/show"]

    def test_models_described_once_per_digest(self) -> None:
        """If an Ollama lists a model, then olla asks /api/show about it once (per model and
        digest), after the list is in, and keeps its capabilities and context window."""
        self.ollama.models[0].capabilities = ["completion", "tools"]
        self._start()
        self.assertEqual(len(self._shows()), 1)
        (info,) = self.catalogue.models_of(self.endpoints[0])
        shown = self.catalogue.shown(info)
        assert shown is not None
        self.assertEqual(shown.capabilities, ("completion", "tools"))
        self.assertEqual(shown.context_length, 131072)
        facts = self.catalogue.facts(info, [self.endpoints[0]])
        self.assertIn("tools", facts.capabilities)
        self.assertEqual(facts.context_length, 131072)
        self.clock.advance(60)  # the next discovery: known, not asked again
        self._pump()
        self.assertEqual(len(self._shows()), 1)
        self.ollama.apply_state(
            {"models": [{"name": "llama3.2:latest", "digest": "f" * 64, "context_length": 4096}]}
        )
        self.clock.advance(60)  # re-pulled: a new digest is asked about
        self._pump()
        self.assertEqual(len(self._shows()), 2)
        (info,) = self.catalogue.models_of(self.endpoints[0])
        self.assertEqual(self.catalogue.facts(info, [self.endpoints[0]]).context_length, 4096)

    def test_an_old_ollama_leaves_it_to_the_patterns(self) -> None:
        """If /api/show tells neither capabilities nor context, then the profile's patterns
        decide (llama3* has an 8192 context in the Ollama profile)."""
        self.ollama.apply_state({"show_info": "bare"})
        self._start()
        (info,) = self.catalogue.models_of(self.endpoints[0])
        self.assertEqual(self.catalogue.facts(info, [self.endpoints[0]]).context_length, 8192)

    def test_show_failure_is_asked_again(self) -> None:
        """If /api/show fails, then the list still counts and the model is asked about again
        at the next discovery."""
        route = self.ollama._routes["/api/show"]
        self.ollama._routes["/api/show"] = replace(
            route, handler=lambda call: self.ollama._fail(call, 500, "boom")
        )
        self._start()
        (info,) = self.catalogue.models_of(self.endpoints[0])
        self.assertIsNone(self.catalogue.shown(info))
        self.assertEqual(self.registry.state(self.endpoints[0]).model_count, 1)
        self.ollama._routes["/api/show"] = route
        self.clock.advance(60)
        self._pump()
        self.assertEqual(len(self._shows()), 2)
        self.assertIsNotNone(self.catalogue.shown(info))
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_list_asked_again(self) -> None:
        """If a model list fails to come, then it is asked again retry_attempts times,
        retry_backoff apart and doubling; the endpoint counts as listed once one answers."""
        self.ollama.apply_state({"status": 500})
        self._start()
        tags = lambda: len([r for r in self.ollama.requests if r.path == "/api/tags"])  # noqa: E731
        self.assertEqual(tags(), 1)
        self.clock.advance(1.0)
        self._pump()
        self.assertEqual(tags(), 2)
        self.ollama.apply_state({"status": None})
        self.clock.advance(2.0)
        self._pump()
        self.assertEqual(tags(), 3)
        self.assertEqual(self._names(0), ["llama3.2:latest"])
        self.assertEqual(self.registry.state(self.endpoints[0]).discoveries_failed, 0)

    def test_loaded_models_followed(self) -> None:
        """If refresh_interval is set, then each Ollama is asked what it has loaded that
        often, between full discoveries."""
        self.service.set_intervals(cleanup=600.0, loaded=10.0)
        self._start()
        ps = lambda: len([r for r in self.ollama.requests if r.path == "/api/ps"])  # noqa: E731
        before = ps()
        self.ollama.apply_state({"loaded": []})  # the model went idle and unloaded
        self.clock.advance(10.0)
        self._pump()
        self.assertEqual(ps(), before + 1)
        self.assertEqual(self.catalogue.loaded_on(self.endpoints[0]), set())
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
