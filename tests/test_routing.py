"""Routing as one pure step: every rule of ``olla.proxy.routing``, on a Clock."""

from __future__ import annotations

import random
from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig, RoutingStrategyConfig, WarmRoutingConfig
from olla.fleet.balancer import LeastConnectionsBalancer, PriorityBalancer, RoundRobinBalancer
from olla.fleet.breaker import FAILURE_THRESHOLD, OPEN_FOR
from olla.fleet.endpoints import (
    EndpointRegistry,
    EndpointStatus,
    Outcome,
    endpoints_from_config,
)
from olla.fleet.load import MemoryLoadStore
from olla.fleet.models import ModelCatalogue, ModelInfo
from olla.interfaces import IBalancer
from olla.profiles import builtin_profiles
from olla.proxy.needs import VISION
from olla.proxy.routing import (
    LISTS_PENDING,
    SPILLED,
    WARM_FIRST,
    ProviderRoute,
    RoutePlan,
    RouteQuery,
    Router,
)

OLLAMA = ProviderRoute("ollama", frozenset({"ollama"}), "ollama")
MODEL = "llama3.2:latest"


class Fleet:
    """Endpoints a, b, c... (all healthy Ollamas hosting MODEL, nothing loaded) and a router."""

    def __init__(
        self,
        *names: str,
        balancer: IBalancer | None = None,
        priorities: Sequence[int] = (),
        types: dict[str, str] | None = None,
        warm: WarmRoutingConfig | None = None,
        slots: int = 4,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        configs = [
            EndpointConfig(
                url=f"http://{n}:1",
                name=n,
                type=(types or {}).get(n, "ollama"),
                priority=priorities[i] if priorities else 100,
                max_concurrency=slots,
            )
            for i, n in enumerate(names)
        ]
        self.endpoints = endpoints_from_config(configs)
        self.by_name = {ep.name: ep for ep in self.endpoints}
        self.loads = MemoryLoadStore()
        self.registry = EndpointRegistry(self.endpoints, self.clock, load=lambda _: self.loads)
        self.catalogue = ModelCatalogue({"fast": ["qwen:7b", MODEL]})
        for ep in self.endpoints:
            self.registry.set_status(ep, EndpointStatus.HEALTHY)
            self.list_models(ep.name, [MODEL])
            self.catalogue.set_loaded(ep, [])
        self.router = Router(
            self.registry,
            self.catalogue,
            balancer or RoundRobinBalancer(),
            self.clock,
            strategy=RoutingStrategyConfig(),
            warm=warm or WarmRoutingConfig(),
        )

    def list_models(self, name: str, models: Sequence[str]) -> None:
        ep = self.by_name[name]
        self.catalogue.set_models(ep, [ModelInfo(m) for m in models], self.clock.seconds())
        self.registry.models_listed(ep, len(models))

    def load(self, name: str, *models: str) -> None:
        self.catalogue.set_loaded(self.by_name[name], models)

    def busy(self, name: str, in_flight: int, started_ago: float = 0.0) -> None:
        for _ in range(in_flight):
            self.registry.attempt_started(self.by_name[name], self.clock.seconds() - started_ago)

    def plan(self, model: str | None = MODEL, **kw: object) -> RoutePlan:
        route = kw.pop("route", OLLAMA)
        assert isinstance(route, ProviderRoute)
        return self.router.plan(RouteQuery(route=route, path="/api/chat", model=model, **kw))  # type: ignore[arg-type]

    def order(self, model: str | None = MODEL) -> list[str]:
        plan = self.plan(model)
        assert plan.rejection is None, plan.rejection
        return [ep.name for ep in plan.candidates]


class NarrowingTests(SynchronousTestCase):
    def test_route_types_fail_closed(self) -> None:
        """If the route serves Ollama, then an OpenAI-compatible host of the model is never a
        candidate, and with no Ollama healthy the answer is 503, not another type."""
        fleet = Fleet("a", "b", types={"b": "openai-compatible"})
        self.assertEqual(fleet.order(), ["a"])
        fleet.registry.set_status(fleet.by_name["a"], EndpointStatus.OFFLINE)
        plan = fleet.plan()
        assert plan.rejection is not None
        self.assertEqual(plan.rejection.status, 503)  # hosted, but on no healthy Ollama

    def test_only_healthy(self) -> None:
        """If one endpoint is offline and another busy, then only the healthy one is listed."""
        fleet = Fleet("a", "b", "c")
        fleet.registry.set_status(fleet.by_name["a"], EndpointStatus.OFFLINE)
        fleet.registry.set_status(fleet.by_name["b"], EndpointStatus.BUSY)
        self.assertEqual(fleet.order(), ["c"])

    def test_only_hosts_of_the_model(self) -> None:
        """If only b lists the model, then only b is a candidate; an unknown model is a 404."""
        fleet = Fleet("a", "b")
        fleet.list_models("a", ["other:1b"])
        self.assertEqual(fleet.order(), ["b"])
        plan = fleet.plan("nope:1b")
        assert plan.rejection is not None
        self.assertEqual((plan.rejection.status, plan.rejection.code), (404, "model_not_found"))

    def test_alias_rewrites_per_endpoint(self) -> None:
        """If an alias names two models, then each host is listed with its own name."""
        fleet = Fleet("a", "b")
        fleet.list_models("a", ["qwen:7b"])
        plan = fleet.plan("fast")
        self.assertEqual({ep.name for ep in plan.candidates}, {"a", "b"})
        self.assertEqual(
            {ep.name: name for ep, name in plan.rewrite.items()}, {"a": "qwen:7b", "b": MODEL}
        )

    def test_proxy_route_needs(self) -> None:
        """If ``/olla/proxy/`` is asked for vision, then the host of a vision model is kept."""
        fleet = Fleet("a", "b")
        fleet.list_models("a", ["llava:7b"])
        fleet.list_models("b", ["qwen:7b"])
        proxy = ProviderRoute("proxy", frozenset({"ollama"}), "", by_path=builtin_profiles())
        plan = fleet.plan(None, route=proxy, needs=frozenset({VISION}))
        self.assertEqual([ep.name for ep in plan.candidates], ["a"])

    def test_unlisted_endpoints_take_unknown_models(self) -> None:
        """If nobody lists the model but one endpoint's list is still unknown, then the
        request goes there (never a 404 while olla is still learning)."""
        fleet = Fleet("a", "b")
        late = endpoints_from_config([EndpointConfig(url="http://c:1", name="c", type="ollama")])
        fleet.registry = EndpointRegistry([*fleet.endpoints, *late], fleet.clock)
        fleet.router.registry = fleet.registry
        for ep in [*fleet.endpoints, *late]:
            fleet.registry.set_status(ep, EndpointStatus.HEALTHY)
        plan = fleet.plan("pulled-since:1b")
        self.assertIsNone(plan.rejection)
        self.assertEqual([ep.name for ep in plan.candidates], ["c"])
        assert plan.decision is not None
        self.assertEqual(plan.decision.reason, LISTS_PENDING)


class WarmOrderTests(SynchronousTestCase):
    def test_warm_first_but_cold_kept(self) -> None:
        """If a has the model loaded, then a goes first and b stays in the list behind it (so a
        dead warm host still fails over), with reason model_loaded."""
        fleet = Fleet("a", "b")
        fleet.load("a", MODEL)
        for _ in range(4):
            self.assertEqual(fleet.order(), ["a", "b"])
        plan = fleet.plan()
        assert plan.decision is not None
        self.assertEqual(plan.decision.reason, WARM_FIRST)

    def test_warm_hosts_share_by_balancer(self) -> None:
        """If both hosts are warm and free, then round-robin alternates between them."""
        fleet = Fleet("a", "b", "c")
        fleet.load("a", MODEL)
        fleet.load("b", MODEL)
        firsts = [fleet.order()[0] for _ in range(6)]
        self.assertEqual(sorted(set(firsts)), ["a", "b"])
        self.assertEqual(firsts.count("a"), 3)

    def test_full_warm_host_keeps_load_until_wait_exceeds_load(self) -> None:
        """If the warm host is full but its queue would clear before a load finishes, then it
        stays first; once its expected wait passes the load time, the cold host goes first."""
        fleet = Fleet("a", "b", slots=2, warm=WarmRoutingConfig(default_load_time=5.0))
        fleet.load("a", MODEL)
        fleet.loads.of(fleet.by_name["a"]).service_time = 2.0
        fleet.busy("a", 2)  # full: the next waits one slot, 2 s / 2 slots = 1 s
        self.assertEqual(fleet.order()[0], "a")
        fleet.busy("a", 3)  # 5 in flight: 4 ahead x 1 s = 4 s, less than a load
        self.assertEqual(fleet.order()[0], "a")
        fleet.busy("a", 2)  # 6 s > 5 s
        self.assertEqual(fleet.order(), ["b", "a"])
        plan = fleet.plan()
        assert plan.decision is not None
        self.assertEqual(plan.decision.reason, SPILLED)

    def test_learned_load_time(self) -> None:
        """If Ollama reported that loading the model takes 0.5 s, then a warm host with 2 s of
        queue loses to the cold one."""
        fleet = Fleet("a", "b", slots=1)
        fleet.load("a", MODEL)
        fleet.loads.of(fleet.by_name["a"]).service_time = 1.0
        fleet.busy("a", 2)
        self.assertEqual(fleet.order()[0], "a")  # 2 s < 5 s default
        fleet.catalogue.observe_load(MODEL, 0.5)
        self.assertEqual(fleet.order()[0], "b")

    def test_slow_requests_in_flight_count(self) -> None:
        """If the warm host's slots are held by requests running for 20 s (longer than its
        average), then its expected wait grows with them and the cold host takes the next."""
        fleet = Fleet("a", "b", slots=2)
        fleet.load("a", MODEL)
        fleet.loads.of(fleet.by_name["a"]).service_time = 0.1
        fleet.busy("a", 2)
        self.assertEqual(fleet.order()[0], "a")
        fleet.clock.advance(20.0)  # 1 ahead x 20 s / 2 slots = 10 s > 5 s load
        self.assertEqual(fleet.order()[0], "b")

    def test_a_load_under_way_is_joined(self) -> None:
        """If olla just sent a cold model to a, then the next requests for it go to a as well
        (they wait for the rest of that load) instead of loading it on b and c too."""
        fleet = Fleet("a", "b", "c", balancer=LeastConnectionsBalancer())
        first = fleet.order()[0]
        fleet.catalogue.mark_loading(fleet.by_name[first], MODEL, fleet.clock.seconds())
        fleet.busy(first, 1)
        fleet.clock.advance(1.0)
        self.assertEqual([fleet.order()[0] for _ in range(3)], [first] * 3)
        fleet.catalogue.load_failed(fleet.by_name[first], MODEL)
        self.assertNotEqual(fleet.order()[0], first)

    def test_cold_hosts_by_queue(self) -> None:
        """If no host has the model loaded, then the one with the shorter queue goes first."""
        fleet = Fleet("a", "b", slots=1, balancer=RoundRobinBalancer())
        for name in ("a", "b"):
            fleet.loads.of(fleet.by_name[name]).service_time = 1.0
        fleet.busy("a", 3)
        self.assertEqual(fleet.order(), ["b", "a"])
        self.assertEqual(fleet.order(), ["b", "a"])

    def test_no_residency_reports_means_warm(self) -> None:
        """If an endpoint never says what it has loaded (vLLM), then it counts as warm."""
        fleet = Fleet("a", "b")
        fleet.catalogue = ModelCatalogue()
        fleet.router.catalogue = fleet.catalogue
        fleet.list_models("a", [MODEL])
        fleet.list_models("b", [MODEL])
        fleet.load("b", "other:1b")  # b reports residency, without this model
        self.assertEqual(fleet.order(), ["a", "b"])
        self.assertEqual(fleet.order(), ["a", "b"])

    def test_warm_routing_off(self) -> None:
        """If warm routing is off, then round-robin ignores where the model is loaded."""
        fleet = Fleet("a", "b", warm=WarmRoutingConfig(enabled=False))
        fleet.load("a", MODEL)
        self.assertEqual([fleet.order()[0] for _ in range(4)], ["a", "b", "a", "b"])

    def test_least_connections_among_equals(self) -> None:
        """If three warm hosts are free, then least-connections puts the idlest first."""
        fleet = Fleet("a", "b", "c", balancer=LeastConnectionsBalancer())
        for name in ("a", "b", "c"):
            fleet.load(name, MODEL)
        fleet.busy("a", 2)
        fleet.busy("b", 1)
        self.assertEqual(fleet.order(), ["c", "b", "a"])

    def test_priority_keeps_tiers(self) -> None:
        """If the high-priority host is cold and the low one warm, then the priority balancer
        still puts its top tier first."""
        fleet = Fleet("a", "b", balancer=PriorityBalancer(random.Random(1)), priorities=(10, 100))
        fleet.load("a", MODEL)
        self.assertEqual(fleet.order(), ["b", "a"])


class BusyAndBreakerTests(SynchronousTestCase):
    def test_busy_backend_goes_last_for_a_while(self) -> None:
        """If the warm host said it is busy for 2 s, then it goes after the cold one until
        then, and first again after."""
        fleet = Fleet("a", "b")
        fleet.load("a", MODEL)
        fleet.registry.backend_busy(fleet.by_name["a"], 2.0)
        self.assertEqual(fleet.order(), ["b", "a"])
        fleet.clock.advance(2.0)
        self.assertEqual(fleet.order(), ["a", "b"])

    def test_busy_beats_priority(self) -> None:
        """If the top-priority host said 429 with Retry-After, then the lower tier goes first
        until then: the Retry-After is honoured while another host can serve."""
        fleet = Fleet("a", "b", balancer=PriorityBalancer(random.Random(1)), priorities=(200, 100))
        self.assertEqual(fleet.order(), ["a", "b"])
        fleet.registry.backend_busy(fleet.by_name["a"], 2.0)
        self.assertEqual(fleet.order(), ["b", "a"])

    def _open(self, fleet: Fleet, name: str) -> None:
        ep = fleet.by_name[name]
        for _ in range(FAILURE_THRESHOLD):
            started = fleet.clock.seconds()
            fleet.registry.attempt_started(ep, started)
            fleet.registry.attempt_ended(ep, Outcome.FAILED, started=started)

    def test_open_circuit_leaves_the_list_while_others_remain(self) -> None:
        """If the warm host's circuit is open, then the other host serves, no error."""
        fleet = Fleet("a", "b")
        fleet.load("a", MODEL)
        self._open(fleet, "a")
        self.assertEqual(fleet.order(), ["b"])

    def test_all_open_is_503_with_retry_after(self) -> None:
        """If every candidate's circuit is open, then the answer is 503 with Retry-After."""
        fleet = Fleet("a", "b")
        self._open(fleet, "a")
        fleet.clock.advance(10)
        self._open(fleet, "b")
        plan = fleet.plan()
        assert plan.rejection is not None
        self.assertEqual(plan.rejection.status, 503)
        self.assertEqual(plan.rejection.retry_after, OPEN_FOR - 10)

    def test_passing_probe_closes_the_circuit(self) -> None:
        """If a restarted machine passes its health probe, then its circuit closes and it is
        a candidate again at once (not 30 s later)."""
        fleet = Fleet("a", "b")
        self._open(fleet, "a")
        self.assertEqual(fleet.order(), ["b"])
        fleet.registry.probe_finished(fleet.by_name["a"], EndpointStatus.HEALTHY, latency=0.01)
        self.assertEqual(sorted(fleet.order()), ["a", "b"])

    def test_half_open_trial(self) -> None:
        """If the circuit's open time passed, then one trial request may go; while it runs the
        endpoint is out of the list again."""
        fleet = Fleet("a", "b")
        self._open(fleet, "a")
        fleet.clock.advance(OPEN_FOR)
        self.assertIn("a", fleet.order())
        fleet.registry.attempt_started(fleet.by_name["a"], fleet.clock.seconds())
        self.assertEqual(fleet.order(), ["b"])


class ReadinessTests(SynchronousTestCase):
    def test_waits_for_probes_and_lists(self) -> None:
        """If olla starts, then requests wait until every endpoint is probed and every healthy
        one's model list was asked for (answered or failed), or until the timeout."""
        clock = Clock()
        endpoints = endpoints_from_config(
            [EndpointConfig(url=f"http://{n}:1", name=n, type="ollama") for n in "abc"]
        )
        registry = EndpointRegistry(endpoints, clock)
        gate = registry.when_ready(10.0)
        a, b, c = endpoints
        registry.probe_finished(a, EndpointStatus.HEALTHY, latency=0.0)
        registry.probe_finished(b, EndpointStatus.HEALTHY, latency=0.0)
        registry.probe_finished(c, EndpointStatus.OFFLINE, "timed out", latency=1.0)
        registry.models_listed(a, 2)
        self.assertNoResult(gate)
        registry.models_unlisted(b)
        self.successResultOf(gate)
        self.assertTrue(registry.ready)
        registry.set_status(c, EndpointStatus.HEALTHY)  # later arrivals do not close the gate
        self.assertTrue(registry.ready)

    def test_gate_times_out(self) -> None:
        """If an endpoint never answers its probe, then the gate opens after the timeout."""
        clock = Clock()
        endpoints = endpoints_from_config([EndpointConfig(url="http://a:1", name="a", type="x")])
        gate = EndpointRegistry(endpoints, clock).when_ready(3.0)
        clock.advance(2.9)
        self.assertNoResult(gate)
        clock.advance(0.1)
        self.successResultOf(gate)
        self.assertEqual(clock.getDelayedCalls(), [])


def test_in_flight_age_is_exact() -> None:
    """If attempts start and end in any order, then in-flight and its mean age stay exact."""
    fleet = Fleet("a")
    ep = fleet.by_name["a"]
    fleet.registry.attempt_started(ep, 990.0)
    fleet.registry.attempt_started(ep, 998.0)
    load = fleet.loads
    assert load.expected_service_time(ep, 1000.0) == 6.0
    fleet.registry.attempt_ended(ep, Outcome.CLIENT_GONE, started=990.0)
    assert load.expected_service_time(ep, 1000.0) == 2.0
    fleet.registry.attempt_ended(ep, Outcome.OK, started=998.0)
    state = load.of(ep)
    assert (state.in_flight, state.in_flight_since) == (0, 0.0)
    assert abs(state.service_time - 0.2 * 2.0) < 1e-9


def test_own_timeouts_are_no_verdict_on_the_transport() -> None:
    """If attempts end because olla's own bound ran out (a load longer than the header wait,
    a response longer than allowed), then they count as failed requests but never open the
    endpoint's circuit, however many there are."""
    fleet = Fleet("a")
    ep = fleet.by_name["a"]
    for _ in range(FAILURE_THRESHOLD + 2):
        started = fleet.clock.seconds()
        fleet.registry.attempt_started(ep, started)
        fleet.registry.attempt_ended(ep, Outcome.TIMED_OUT, started=started)
    assert fleet.registry.breakers.allows(ep)
    state = fleet.registry.state(ep)
    assert (state.requests, state.failures, fleet.registry.load.in_flight(ep)) == (7, 7, 0)


def test_a_host_already_loading_goes_before_a_second_load() -> None:
    """If one cold host is already loading the model and another is not, then the loading
    one goes first even when the wait looks the same (no second copy of the model is loaded
    while the first load can serve), whatever the balancer prefers."""
    fleet = Fleet("a", "b")
    for ep in fleet.by_name.values():
        fleet.catalogue.set_loaded(ep, [])
    fleet.catalogue.mark_loading(fleet.by_name["b"], MODEL, fleet.clock.seconds())
    fleet.registry.attempt_started(fleet.by_name["b"], fleet.clock.seconds())
    assert fleet.order() == ["b", "a"]
