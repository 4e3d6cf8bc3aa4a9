"""Capacity from the backend: llama.cpp's slots and context, learnt by discovery on a Clock
against the fake in its llama.cpp flavour, and used wherever olla counts an endpoint's slots."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.anthropic.passthrough import speaks_anthropic
from olla.config import EndpointConfig, ModelDiscoveryConfig
from olla.fleet.balancer import RoundRobinBalancer
from olla.fleet.capacity import Capacity, from_props, slot_count, trained_context
from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import (
    DEFAULT_MAX_CONCURRENCY,
    EndpointRegistry,
    EndpointStatus,
    endpoints_from_config,
)
from olla.fleet.load import MemoryLoadStore
from olla.fleet.models import ModelCatalogue
from olla.profiles import builtin_profiles
from olla.proxy.routing import ProviderRoute, RouteQuery, Router
from olla.web.status import endpoints_payload
from tests.fakes.ollama import FakeModel, FakeOllama, LlamaCpp
from tests.proxyharness import HostAgent

#: trimmed from the real llama-server of bigdl-core-cpp 2.6.0 started with -c 4096 -np 2
REAL_PROPS: dict[str, Any] = {
    "default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": 2048, "params": {}},
    "total_slots": 2,
    "model_path": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "build_info": "b1-6ecf5e8",
}
REAL_MODELS: dict[str, Any] = {
    "object": "list",
    "data": [
        {
            "id": "smollm2:135m",
            "object": "model",
            "owned_by": "llamacpp",
            "meta": {"n_ctx_train": 8192, "n_params": 134515008, "size": 96576768},
        }
    ],
}
MODEL = "smollm2:135m"


def test_props_parsed() -> None:
    """If llama.cpp's /props is read, then its slots, one slot's context and build come out."""
    assert from_props(REAL_PROPS) == Capacity(2, 2048, "b1-6ecf5e8")


def test_props_without_usable_fields() -> None:
    """If /props lacks a field or holds nonsense there, then that field is unknown."""
    assert from_props({}) == Capacity()
    assert from_props([]) == Capacity()
    bad = {"total_slots": 0, "default_generation_settings": {"n_ctx": True}, "build_info": ""}
    assert from_props(bad) == Capacity()
    assert from_props({"total_slots": "2"}).slots is None


def test_slots_and_trained_context_parsed() -> None:
    """If /slots lists slots, then they are counted; /v1/models gives the training context."""
    assert slot_count([{"id": 0}, {"id": 1}, {"id": 2}]) == 3
    assert slot_count({"error": {"code": 501}}) is None
    assert slot_count([]) is None
    assert trained_context(REAL_MODELS) == 8192
    assert trained_context({"data": [{"id": "x"}]}) is None
    assert trained_context({"data": None}) is None


def test_llamacpp_build_decides_passthrough() -> None:
    """If llama.cpp reports a build older than the profile's min_version (or none), then olla
    translates Anthropic requests for it; from that build on it passes them through."""
    profile = builtin_profiles().get("llamacpp")
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    assert not speaks_anthropic(profile, "b1-6ecf5e8", body)
    assert not speaks_anthropic(profile, None, body)
    assert speaks_anthropic(profile, "b4847-1a2b3c4", body)
    assert speaks_anthropic(profile, "b7200-0f0f0f0", body)


class _Fleet(SynchronousTestCase):
    """A llama.cpp (the fake, -np 2 by its cost model's capacity) and an Ollama, discovered."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.llama = FakeOllama(self.clock, [FakeModel(MODEL)], llamacpp=LlamaCpp(n_ctx=4096))
        self.llama.apply_state({"capacity": 2})
        self.ollama = FakeOllama(self.clock, [FakeModel(MODEL)])
        self.agent = HostAgent({b"l:1": self.llama, b"o:1": self.ollama})

    def start(self, **llama: Any) -> None:
        self.endpoints = endpoints_from_config(
            [
                EndpointConfig(url="http://l:1", name="llama", type="llamacpp", **llama),
                EndpointConfig(url="http://o:1", name="ollama", type="ollama"),
            ]
        )
        self.llama_ep, self.ollama_ep = self.endpoints
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
        for endpoint in self.endpoints:
            self.registry.set_status(endpoint, EndpointStatus.HEALTHY)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.pump()

    def pump(self) -> None:
        for _ in range(8):
            self.agent.flush()
            self.clock.advance(0)

    def paths(self, netloc: bytes) -> list[bytes]:
        return [uri.split(netloc, 1)[1] for _, uri, _ in self.agent.sent if netloc in uri]


class DiscoveryCapacityTests(_Fleet):
    def test_slots_context_and_build_learnt(self) -> None:
        """If a llama.cpp endpoint is discovered, then its slots come from /props total_slots,
        its context from one slot's n_ctx and its version from build_info; Ollama keeps the
        default and is never asked for /props."""
        self.start()
        state = self.registry.state(self.llama_ep)
        self.assertEqual(self.registry.slots(self.llama_ep), 2)
        self.assertEqual((state.reported_slots, state.context_length), (2, 2048))
        self.assertEqual(state.version, "b1-6ecf5e8")
        self.assertEqual(self.registry.slots(self.ollama_ep), DEFAULT_MAX_CONCURRENCY)
        self.assertNotIn(b"/props", self.paths(b"o:1"))
        self.assertEqual(self.paths(b"l:1"), [b"/v1/models", b"/props"])  # no /slots needed

    def test_configured_max_concurrency_wins(self) -> None:
        """If max_concurrency is configured, then it is the endpoint's slot count whatever the
        backend reports (the report is still kept, for the status page)."""
        self.start(max_concurrency=6)
        self.assertEqual(self.registry.slots(self.llama_ep), 6)
        self.assertEqual(self.registry.state(self.llama_ep).reported_slots, 2)

    def test_slots_endpoint_when_props_has_none(self) -> None:
        """If /props has no total_slots (older servers) but /slots is enabled, then the slots
        it lists are counted; without --slots (501) the default stays."""
        assert self.llama.llama is not None
        self.llama.llama.props_slots = False
        self.llama.llama.slots_endpoint = True
        self.llama.apply_state({"capacity": 3})
        self.start()
        self.assertEqual(self.registry.slots(self.llama_ep), 3)
        self.assertEqual(self.paths(b"l:1"), [b"/v1/models", b"/props", b"/slots"])
        self.llama.llama.slots_endpoint = False
        self.clock.advance(60)
        self.pump()
        self.assertEqual(self.registry.slots(self.llama_ep), DEFAULT_MAX_CONCURRENCY)

    def test_context_falls_back_to_training_context(self) -> None:
        """If /props cannot be read, then the models stay listed, the slots are the default and
        the context is the model's training context from /v1/models meta."""
        self.llama.apply_state({"models": [{"name": MODEL, "context_length": 8192}]})
        self.llama._routes.pop("/props")
        self.start()
        state = self.registry.state(self.llama_ep)
        self.assertEqual(state.model_count, 1)
        self.assertEqual(self.registry.slots(self.llama_ep), DEFAULT_MAX_CONCURRENCY)
        self.assertEqual(state.context_length, 8192)
        self.assertIsNone(state.version)

    def test_restarted_server_is_reread(self) -> None:
        """If the server comes back with another -np, then the next discovery reads it."""
        self.start()
        self.llama.apply_state({"capacity": 4})
        self.clock.advance(59)
        self.pump()
        self.assertEqual(self.registry.slots(self.llama_ep), 2)
        self.clock.advance(1)
        self.pump()
        self.assertEqual(self.registry.slots(self.llama_ep), 4)

    def test_status_page_shows_capacity(self) -> None:
        """If capacity is known, then /internal/status/endpoints shows each endpoint's slots,
        where that number came from, and the context length when known."""
        self.start()
        payload, stable = endpoints_payload(self.registry, now=self.clock.seconds())
        rows = {row["name"]: row for row in payload["endpoints"]}
        self.assertEqual(rows["llama"]["max_concurrency"], 2)
        self.assertEqual(rows["llama"]["max_concurrency_source"], "backend")
        self.assertEqual(rows["llama"]["context_length"], 2048)
        self.assertEqual(rows["ollama"]["max_concurrency"], DEFAULT_MAX_CONCURRENCY)
        self.assertEqual(rows["ollama"]["max_concurrency_source"], "default")
        self.assertNotIn("context_length", rows["ollama"])
        stable_rows = {row["name"]: row for row in stable["endpoints"]}
        self.assertEqual(stable_rows["llama"]["max_concurrency"], 2)  # part of the ETag

    def test_replace_keeps_capacity(self) -> None:
        """If a reload changes only the endpoint's priority, then its learnt capacity stays."""
        self.start()
        [changed] = endpoints_from_config(
            [EndpointConfig(url="http://l:1", name="llama", type="llamacpp", priority=5)]
        )
        self.registry.replace(self.llama_ep, changed, keep_health=True)
        self.assertEqual(self.registry.slots(changed), 2)


class RoutingCapacityTests(_Fleet):
    """Warm routing's and sticky's free-slot checks read the backend's slot count."""

    def router(self) -> Router:
        return Router(self.registry, self.catalogue, RoundRobinBalancer(), self.clock)

    def busy(self, count: int) -> None:
        for _ in range(count):
            self.registry.attempt_started(self.llama_ep, self.clock.seconds())
        load = self.registry.load
        assert isinstance(load, MemoryLoadStore)
        load.of(self.llama_ep).service_time = 10.0

    def test_expected_wait_uses_reported_slots(self) -> None:
        """If llama.cpp reports 2 slots and 2 requests are in flight there, then a third waits
        (half a service time); with the default of 4 it would not wait at all."""
        self.start()
        self.busy(2)
        self.assertEqual(self.router().expected_wait(self.llama_ep, MODEL), 5.0)
        self.busy(1)
        self.assertEqual(self.router().expected_wait(self.llama_ep, MODEL), 10.0)

    def test_sticky_pin_respects_reported_slots(self) -> None:
        """If the session's endpoint is llama.cpp with both reported slots in flight, then the
        pin does not jump the queue (the default of 4 would let it); with a slot free it goes
        first."""
        self.ollama.state.loaded = {MODEL}  # warm there: no load time to wait for
        self.start()
        route = ProviderRoute("proxy", frozenset({"llamacpp", "ollama"}), "")
        plan = self.router().plan(RouteQuery(route, "/v1/chat/completions", MODEL))
        other = next(ep for ep in plan.candidates if ep is not self.llama_ep)
        query = RouteQuery(route, "/v1/chat/completions", MODEL, pinned=self.llama_ep)
        self.busy(1)
        self.assertIs(self.router().plan(query).candidates[0], self.llama_ep)
        self.busy(1)
        self.assertIs(self.router().plan(query).candidates[0], other)
