"""Model discovery on a Clock, against the fake Ollama in memory."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig, FilterConfig, ModelDiscoveryConfig
from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import EndpointRegistry, EndpointStatus, Outcome, endpoints_from_config
from olla.fleet.listeners import LoadLearning
from olla.fleet.models import ModelCatalogue
from olla.fleet.modelsources import MODEL_SOURCES
from olla.interfaces import IModelSource
from olla.profiles import builtin_profiles
from olla.state.polls import SharedPolls
from olla.telemetry.records import AttemptRecord, AttemptStart
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.fakes.redis import FakeStore
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


class SharedDiscoveryTests(SynchronousTestCase):
    """Two processes sharing a store (fakeredis behind ``SharedPolls``), each with its own
    registry, catalogue and discovery, over one fake Ollama."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ollama = FakeOllama(self.clock, [FakeModel("llama3.2:latest")])
        self.ollama.state.loaded = {"llama3.2:latest"}
        self.agent = HostAgent({b"o:1": self.ollama})
        self.store = FakeStore()
        #: each process's load learning, beside its discovery
        self.loads: list[LoadLearning] = []
        self.processes = [self._process(name) for name in ("a", "b")]

    def _process(self, name: str) -> tuple[EndpointRegistry, ModelCatalogue, DiscoveryService]:
        (endpoint,) = endpoints_from_config(
            [EndpointConfig(url="http://o:1", name="o", type="ollama")], builtin_profiles()
        )
        registry = EndpointRegistry([endpoint], self.clock)
        catalogue = ModelCatalogue()
        share = SharedPolls(self.store.process(name, self.clock))
        service = DiscoveryService(
            registry,
            catalogue,
            self.agent,
            self.clock,
            ModelDiscoveryConfig(interval=60.0, timeout=5.0),
            "1.0",
            share=share,
        )
        service.set_intervals(cleanup=600.0, loaded=10.0)
        self.loads.append(LoadLearning(catalogue, service, share, registry.by_id))
        registry.set_status(endpoint, EndpointStatus.HEALTHY)
        service.startService()
        self.addCleanup(service.stopService)
        return registry, catalogue, service

    def _pump(self) -> None:
        for _ in range(8):
            self.agent.flush()
            self.clock.advance(0)

    def _asked(self, path: str) -> int:
        return len([r for r in self.ollama.requests if r.path == path])

    def _names(self, registry: EndpointRegistry, catalogue: ModelCatalogue) -> list[str]:
        return sorted(m.name for m in catalogue.models_of(next(iter(registry))))

    def test_startup_runs_in_every_process(self) -> None:
        """If processes start, then each discovers for itself (runs asked for now are not
        shared)."""
        self._pump()
        self.assertEqual(self._asked("/api/tags"), 2)
        self.assertEqual(self._asked("/api/show"), 2)
        for registry, catalogue, _ in self.processes:
            self.assertEqual(self._names(registry, catalogue), ["llama3.2:latest"])

    def test_interval_discovery_asked_once(self) -> None:
        """If a model is pulled, then the next interval asks the endpoint once (list, /api/ps,
        version, and /api/show of the new model), and both processes know the model and what
        /api/show said about it, each model its own answer."""
        self._pump()
        before = {path: self._asked(path) for path in ("/api/tags", "/api/ps", "/api/show")}
        self.ollama.apply_state(
            {
                "models": [
                    "llama3.2:latest",
                    {"name": "new:1b", "capabilities": ["completion", "tools"]},
                    {"name": "other:1b", "context_length": 4096},
                ],
                # every answer takes 0.1 s: /api/show's come after the list's run is over
                "default_ttft_ms": 100,
            }
        )
        self.clock.advance(60)
        for _ in range(8):  # each answer 0.1 s after its ask
            self._pump()
            self.clock.advance(0.1)
        self.assertEqual(self._asked("/api/tags"), before["/api/tags"] + 1)
        # the discovery's own, and refresh_interval's (10 s) once: each in one process
        self.assertEqual(self._asked("/api/ps"), before["/api/ps"] + 2)
        self.assertEqual(self._asked("/api/show"), before["/api/show"] + 2)
        for registry, catalogue, _ in self.processes:
            names = self._names(registry, catalogue)
            self.assertEqual(names, ["llama3.2:latest", "new:1b", "other:1b"])
            shown = {
                info.name: catalogue.shown(info)
                for info in catalogue.models_of(next(iter(registry)))
            }
            new, other = shown["new:1b"], shown["other:1b"]
            assert new is not None and other is not None
            self.assertEqual(
                (new.capabilities, new.context_length), (("completion", "tools"), 131072)
            )
            self.assertEqual(other.context_length, 4096)

    def test_loaded_set_asked_once(self) -> None:
        """If refresh_interval passes, then one process asks /api/ps and both learn what the
        Ollama holds."""
        self._pump()
        before = self._asked("/api/ps")
        self.ollama.apply_state({"loaded": []})
        self.clock.advance(10)
        self._pump()
        self.assertEqual(self._asked("/api/ps"), before + 1)
        for registry, catalogue, _ in self.processes:
            self.assertEqual(catalogue.loaded_on(next(iter(registry))), set())

    def test_store_down_every_process_asks(self) -> None:
        """If the store does not answer, then each process discovers for itself."""
        self._pump()
        before = self._asked("/api/tags")
        self.store.down = True
        self.clock.advance(60)
        self._pump()
        self.assertEqual(self._asked("/api/tags"), before + 2)

    def test_rediscover_told_to_all(self) -> None:
        """If one process rediscovers an endpoint (model management pulled a model there),
        then the others know the new model at once, without asking."""
        self._pump()
        before = self._asked("/api/tags")
        self.ollama.apply_state({"models": ["llama3.2:latest", "new:1b"]})
        (registry, _, service), (other, catalogue, _) = self.processes
        service.rediscover(next(iter(registry)))
        self._pump()
        self.assertEqual(self._asked("/api/tags"), before + 1)
        self.assertEqual(self._names(other, catalogue), ["llama3.2:latest", "new:1b"])

    def test_loads_told_to_all(self) -> None:
        """If one process starts loading a model on a host, then the others see it loading
        there since then (none starts a second load elsewhere); its answer makes it warm
        everywhere, and the load time it reported is learnt everywhere."""
        self._pump()
        (registry, _, _), (other, catalogue, _) = self.processes
        endpoint, seen = next(iter(registry)), next(iter(other))
        start = AttemptStart("r1", 1, endpoint, "new:1b", 5.0, cold=True, path=b"/api/chat")
        self.loads[0].attempt_started(start)
        self.assertEqual(catalogue.loading_since(seen, "new:1b"), 5.0)
        self.assertFalse(catalogue.warm(seen, "new:1b"))
        self.loads[0].attempt_answered(start, 200)
        self.assertTrue(catalogue.warm(seen, "new:1b"))
        self.assertIsNone(catalogue.loading_since(seen, "new:1b"))
        self.loads[0].attempt_finished(AttemptRecord(start, 9.0, Outcome.OK, 200, load_seconds=3.5))
        self.assertEqual(catalogue.learned_load_time("new:1b"), 3.5)

    def test_failed_load_told_to_all(self) -> None:
        """If a load fails where it started (not olla's own timeout), then the others stop
        counting it as under way; a loading mark never lands where the model is warm."""
        self._pump()
        (registry, _, _), (other, catalogue, _) = self.processes
        endpoint, seen = next(iter(registry)), next(iter(other))
        start = AttemptStart("r1", 1, endpoint, "new:1b", 5.0, cold=True)
        self.loads[0].attempt_started(start)
        self.loads[0].attempt_finished(AttemptRecord(start, 6.0, Outcome.FAILED))
        self.assertIsNone(catalogue.loading_since(seen, "new:1b"))
        warm = AttemptStart("r2", 1, endpoint, "llama3.2:latest", 7.0, cold=True)
        self.loads[0].attempt_started(warm)  # a thought it cold; b knows it is in memory
        self.assertIsNone(catalogue.loading_since(seen, "llama3.2:latest"))
