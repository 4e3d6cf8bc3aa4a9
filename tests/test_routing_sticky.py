"""Stickiness as routing's last rule, and through the whole proxy on a Clock: the pinned
endpoint first while it can serve, the pin following the request, never an error from a pin."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.config import ProxyConfig, StickySessionsConfig
from olla.fleet.balancer import PriorityBalancer
from olla.fleet.breaker import FAILURE_THRESHOLD
from olla.fleet.endpoints import EndpointStatus, Outcome
from tests.proxyharness import REFUSE, Harness, http_request
from tests.test_anthropic import ScriptedBackend
from tests.test_proxy import Backend
from tests.test_routing import MODEL, Fleet

STICKY = replace(
    ProxyConfig(), read_timeout=30.0, sticky_sessions=StickySessionsConfig(enabled=True)
)


class RuleTests(SynchronousTestCase):
    """``Router.plan`` with ``RouteQuery.pinned``."""

    def test_pinned_goes_first(self) -> None:
        """If the session is pinned to c, then c is first and every other candidate follows
        in the usual order."""
        fleet = Fleet("a", "b", "c", priorities=(100, 90, 80), balancer=PriorityBalancer())
        self.assertEqual(fleet.order(), ["a", "b", "c"])
        plan = fleet.plan(pinned=fleet.by_name["c"])
        self.assertEqual([ep.name for ep in plan.candidates], ["c", "a", "b"])

    def test_pinned_first_even_when_cold_elsewhere_is_equal(self) -> None:
        """If another host has the model loaded and the pinned one does too, then the pinned
        one still goes first (its cache holds the conversation)."""
        fleet = Fleet("a", "b")
        fleet.load("a", MODEL)
        fleet.load("b", MODEL)
        for _ in range(4):
            self.assertEqual(fleet.plan(pinned=fleet.by_name["b"]).candidates[0].name, "b")

    def test_full_pinned_endpoint_keeps_its_place(self) -> None:
        """If the pinned endpoint has all its slots in use, then the usual order stands (the
        request goes where it can start now) and the pinned one is still a candidate."""
        fleet = Fleet("a", "b", slots=2)
        fleet.load("a", MODEL)
        fleet.load("b", MODEL)
        fleet.busy("b", 2)
        plan = fleet.plan(pinned=fleet.by_name["b"])
        self.assertEqual([ep.name for ep in plan.candidates], ["a", "b"])
        fleet.registry.attempt_ended(fleet.by_name["b"], Outcome.OK, started=fleet.clock.seconds())
        self.assertEqual(fleet.plan(pinned=fleet.by_name["b"]).candidates[0].name, "b")

    def test_refusing_pinned_endpoint_keeps_its_place(self) -> None:
        """If the pinned endpoint just said it is full (429/503), then it goes last as usual."""
        fleet = Fleet("a", "b")
        fleet.registry.backend_busy(fleet.by_name["a"], 5.0)
        plan = fleet.plan(pinned=fleet.by_name["a"])
        self.assertEqual([ep.name for ep in plan.candidates], ["b", "a"])

    def test_pin_never_adds_or_rejects(self) -> None:
        """If the pinned endpoint is offline, lacks the model or has an open circuit, then the
        plan is exactly the one without a pin: no error, no extra candidate; with nobody left,
        the rejection is the one without a pin."""
        fleet = Fleet("a", "b", "c", "d")
        a, b, c, d = (fleet.by_name[n] for n in "abcd")
        fleet.registry.set_status(a, EndpointStatus.OFFLINE)
        fleet.list_models("b", ["other:1b"])
        for _ in range(FAILURE_THRESHOLD):
            fleet.registry.attempt_started(c, fleet.clock.seconds())
            fleet.registry.attempt_ended(c, Outcome.FAILED, started=fleet.clock.seconds())
        for pinned in (a, b, c):
            plan = fleet.plan(pinned=pinned)
            self.assertIsNone(plan.rejection)
            self.assertEqual([ep.name for ep in plan.candidates], ["d"])
        fleet.registry.set_status(d, EndpointStatus.OFFLINE)
        self.assertEqual(fleet.plan(pinned=a).rejection, fleet.plan().rejection)


def chat(content: str = "question 0", **extra: Any) -> bytes:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}]
    return json.dumps({"model": MODEL, "messages": messages, **extra}).encode()


class WireTests(SynchronousTestCase):
    """Through olla's site, three backends, round robin (which alone would rotate)."""

    def build(self, proxy: ProxyConfig = STICKY, **backends: object) -> Harness:
        clock = Clock()
        made = {f"{n}:1": backends.get(n) or Backend(clock, name=n) for n in "abc"}
        h = Harness(made, clock=clock, proxy=proxy, models={k: [MODEL] for k in made})  # type: ignore[arg-type]
        for endpoint in h.endpoints:
            h.catalogue.set_loaded(endpoint, [MODEL])
        return h

    def post(self, h: Harness, body: bytes, **headers: str) -> Any:
        raw = http_request(
            "POST",
            "/olla/ollama/api/chat",
            body,
            {"Content-Type": "application/json", **headers},
        )
        response = h.send(raw).response()
        assert response is not None
        return response

    def stats(self, h: Harness) -> Any:
        response = h.send(http_request("GET", "/internal/stats/sticky")).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        return json.loads(response.body)

    def test_conversation_stays_on_one_endpoint(self) -> None:
        """If one conversation sends ten growing turns, then the first is a miss and the other
        nine are hits on the same endpoint, marked prefix_hash; the stats count them."""
        h = self.build()
        served = []
        history: list[dict[str, str]] = [{"role": "system", "content": "be brief"}]
        for turn in range(10):
            history.append({"role": "user", "content": f"question {turn}"})
            response = self.post(h, json.dumps({"model": MODEL, "messages": history}).encode())
            self.assertEqual(response.status, 200)
            served.append(response.header(b"x-olla-endpoint"))
            self.assertEqual(response.header(b"x-olla-sticky-key-source"), b"prefix_hash")
            self.assertIsNone(response.header(b"x-olla-session-id"))
            outcome = response.header(b"x-olla-sticky-session")
            self.assertEqual(outcome, b"miss" if turn == 0 else b"hit")
            history.append({"role": "assistant", "content": f"answer {turn}"})
        self.assertEqual(len(set(served)), 1)
        stats = self.stats(h)
        self.assertEqual((stats["hits"], stats["misses"], stats["active_sessions"]), (9, 1, 1))
        metrics = h.send(http_request("GET", "/internal/metrics")).response()
        assert metrics is not None
        samples = {
            sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(metrics.body.decode())
            for sample in family.samples
            if sample.name.startswith("olla_sticky")
        }
        self.assertEqual(
            samples,
            {
                "olla_sticky_sessions_active[]": 1.0,
                "olla_sticky_session_requests_total[('outcome', 'hit')]": 9.0,
                "olla_sticky_session_requests_total[('outcome', 'miss')]": 1.0,
                "olla_sticky_session_evictions_total[]": 0.0,
            },
        )

    def test_explicit_session_pins_across_prompts(self) -> None:
        """If requests with different prompts carry one X-Olla-Session-ID, then they all land
        on one endpoint and the id is echoed; another id is its own session."""
        h = self.build()
        served = set()
        for i in range(6):
            response = self.post(h, chat(f"unrelated prompt {i}"), **{"X-Olla-Session-ID": "s-1"})
            served.add(response.header(b"x-olla-endpoint"))
            self.assertEqual(response.header(b"x-olla-session-id"), b"s-1")
            self.assertEqual(response.header(b"x-olla-sticky-key-source"), b"session_header")
        self.assertEqual(len(served), 1)
        other = self.post(h, chat("unrelated prompt 0"), **{"X-Olla-Session-ID": "s-2"})
        self.assertEqual(other.header(b"x-olla-sticky-session"), b"miss")

    def test_dead_pinned_endpoint_fails_over_and_repins(self) -> None:
        """If the pinned endpoint stops accepting connections, then the next turn is served by
        another endpoint with no client error, marked repin, and the turns after are hits
        there."""
        h = self.build()
        first = self.post(h, chat())
        pinned = first.header(b"x-olla-endpoint").decode()
        h.agent.behaviour[f"{pinned}:1".encode()] = REFUSE
        moved = self.post(h, chat())
        self.assertEqual(moved.status, 200)
        self.assertNotEqual(moved.header(b"x-olla-endpoint").decode(), pinned)
        self.assertEqual(moved.header(b"x-olla-sticky-session"), b"repin")
        self.assertEqual([name for name, _ in h.failures], [pinned])
        again = self.post(h, chat())
        self.assertEqual(again.header(b"x-olla-endpoint"), moved.header(b"x-olla-endpoint"))
        self.assertEqual(again.header(b"x-olla-sticky-session"), b"hit")

    def test_busy_pinned_endpoint_hands_over(self) -> None:
        """If the pinned endpoint answers 503 (queue full), then the request is served by the
        next one, the pin moves there, and the client sees a 200."""
        backends = {n: Backend(Clock(), name=n) for n in "abc"}
        h = self.build(**backends)
        pinned = self.post(h, chat()).header(b"x-olla-endpoint").decode()
        backends[pinned].status = 503
        moved = self.post(h, chat())
        self.assertEqual(moved.status, 200)
        self.assertEqual(moved.header(b"x-olla-sticky-session"), b"repin")
        self.assertNotEqual(moved.header(b"x-olla-endpoint").decode(), pinned)

    def test_no_key_is_disabled(self) -> None:
        """If a request gives no key (no header, no conversation, no credentials), then it is
        served as usual, marked disabled, without a key source."""
        h = self.build()
        response = self.post(h, json.dumps({"model": MODEL}).encode())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-sticky-session"), b"disabled")
        self.assertIsNone(response.header(b"x-olla-sticky-key-source"))

    def test_hostile_bodies_are_served_as_usual(self) -> None:
        """If a body is not JSON, nested beyond reason, or has odd message shapes, then the
        request is answered as without stickiness (the prefix gives no key, or a stable one),
        never a 500."""
        h = self.build()
        odd = [
            b"not json at all",
            b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            json.dumps(
                {"model": MODEL, "messages": [1, None, {"role": 7, "content": {}}]}
            ).encode(),
            json.dumps({"model": MODEL, "messages": "text", "prompt": ["a", {"b": 1}]}).encode(),
        ]
        for body in odd:
            response = self.post(h, body)
            self.assertNotEqual(response.status, 500, body[:40])
            self.assertIsNotNone(response.header(b"x-olla-sticky-session"))

    def test_off_by_default(self) -> None:
        """If sticky sessions are not enabled, then answers carry no sticky headers and the
        stats say enabled false, as Olla's do."""
        h = self.build(proxy=replace(ProxyConfig(), read_timeout=30.0))
        response = self.post(h, chat(), **{"X-Olla-Session-ID": "s"})
        self.assertIsNone(response.header(b"x-olla-sticky-session"))
        self.assertIsNone(response.header(b"x-olla-session-id"))
        self.assertEqual(self.stats(h), {"enabled": False})

    def test_demoted_endpoint_loses_its_sessions(self) -> None:
        """If the pinned endpoint is demoted by a probe and comes back, then the session's
        next request is a repin (its cache may be gone), not a hit."""
        h = self.build()
        pinned = self.post(h, chat()).header(b"x-olla-endpoint").decode()
        endpoint = next(ep for ep in h.endpoints if ep.name == pinned)
        h.registry.set_status(endpoint, EndpointStatus.OFFLINE)
        h.registry.set_status(endpoint, EndpointStatus.HEALTHY)
        self.assertEqual(self.post(h, chat()).header(b"x-olla-sticky-session"), b"repin")


class AnthropicStickyTests(SynchronousTestCase):
    def test_translated_conversation_stays(self) -> None:
        """If an Anthropic conversation grows over five turns through the translator, then
        every turn after the first is a hit on the same endpoint."""
        clock = Clock()
        answer = {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        backends = {f"{n}:1": ScriptedBackend(clock) for n in "abc"}
        for backend in backends.values():
            backend.pieces = [(0.0, json.dumps(answer).encode())]
        h = Harness(
            backends,  # type: ignore[arg-type]
            clock=clock,
            proxy=STICKY,
            types=dict.fromkeys(backends, "openai-compatible"),
            models={k: ["m"] for k in backends},
        )
        messages: list[dict[str, Any]] = []
        served, outcomes = set(), []
        for turn in range(5):
            messages.append({"role": "user", "content": f"question {turn}"})
            body = {"model": "m", "max_tokens": 8, "system": "be brief", "messages": messages}
            raw = http_request(
                "POST",
                "/olla/anthropic/v1/messages",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            )
            response = h.send(raw).response()
            assert response is not None
            self.assertEqual(response.status, 200, response.body)
            served.add(response.header(b"x-olla-endpoint"))
            outcomes.append(response.header(b"x-olla-sticky-session"))
            messages.append({"role": "assistant", "content": "ok"})
        self.assertEqual(len(served), 1)
        self.assertEqual(outcomes, [b"miss"] + [b"hit"] * 4)
