"""The admission gate in the request path, on a Clock: olla's whole graph (``build_app``) in
front of in-memory fake Ollamas. Caps, holding, late binding, priorities, bounds, cancellation,
failover and refused loads through the exchange; streaming, Anthropic and sticky sessions
through the same gate; what the status page, the metrics and the log line show."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.config import (
    ClientAuthConfig,
    ClientKey,
    OllaConfig,
    ProxyConfig,
    QueueConfig,
    StickySessionsConfig,
)
from olla.fleet.endpoints import EndpointStatus
from olla.fleet.models import ModelInfo
from olla.interfaces import IOutcomeListener, IReconfigurable
from olla.proxy.dispatch import IDispatch
from olla.proxy.gatedispatch import GateDispatch
from olla.proxy.movecost import PromptRates
from olla.telemetry.records import RequestRecord
from olla.util.priority import Priority
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import HANG, REFUSE, ClientConnection, Harness, Response, http_request

MODEL = "llama3.2:latest"
BIG = "big:70b"


def chat(model: str = MODEL, text: str = "hi", stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    return json.dumps(body).encode()


def fleet(
    *names: str,
    slots: int = 2,
    queue: QueueConfig | None = None,
    models: Sequence[str] = (MODEL,),
    adjust: Callable[[OllaConfig], OllaConfig] | None = None,
    sticky: bool = False,
    version: str = "0.5.4",
) -> tuple[Harness, dict[str, FakeOllama]]:
    """Fake Ollamas ``names`` (each with ``models`` in memory, no cap of their own) behind olla
    with ``max_concurrency: slots`` each, on one Clock."""
    clock = Clock()
    fakes = {
        n: FakeOllama(clock, [FakeModel(m) for m in models], name=n, version=version) for n in names
    }

    def configure(config: OllaConfig) -> OllaConfig:
        endpoints = tuple(replace(ep, max_concurrency=slots) for ep in config.discovery.endpoints)
        proxy = replace(
            config.proxy,
            queue=queue or QueueConfig(max_wait=60.0),
            sticky_sessions=StickySessionsConfig(enabled=sticky),
        )
        config = replace(
            config, proxy=proxy, discovery=replace(config.discovery, endpoints=endpoints)
        )
        return adjust(config) if adjust is not None else config

    h = Harness(
        {f"{n}:1": fake for n, fake in fakes.items()},
        clock=clock,
        models={f"{n}:1": list(models) for n in names},
        proxy=replace(ProxyConfig(), read_timeout=600.0),
        adjust=configure,
    )
    for endpoint in h.endpoints:
        h.catalogue.set_loaded(endpoint, list(models))
        h.registry.version_read(endpoint, version)
    return h, fakes


def post(
    h: Harness, body: bytes, path: str = "/olla/ollama/api/chat", **headers: str
) -> ClientConnection:
    """Send one request; the fake answers after ``ttft_ms`` (a query knob)."""
    return h.send(http_request("POST", path, body, headers))


def answered(client: ClientConnection) -> Response:
    response = client.response()
    assert response is not None, "no answer yet"
    return response


def served_by(client: ClientConnection) -> str:
    return (answered(client).header(b"x-olla-endpoint") or b"").decode()


def burst(
    h: Harness, count: int, ttft_ms: int, text: str = "r", path: str = "/olla/ollama/api/chat"
) -> list[ClientConnection]:
    """``count`` chats sent at once, each answered ``ttft_ms`` after it reaches a host."""
    return [post(h, chat(text=f"{text}{i}"), f"{path}?ttft_ms={ttft_ms}") for i in range(count)]


class Peak:
    """The most requests each fake ran at once, sampled after every step."""

    def __init__(self, fakes: dict[str, FakeOllama]) -> None:
        self.fakes = fakes
        self.peak = dict.fromkeys(fakes, 0)

    def sample(self) -> None:
        for name, fake in self.fakes.items():
            self.peak[name] = max(self.peak[name], fake.scheduler.running)


def run(h: Harness, seconds: float, peak: Peak | None = None, step: float = 0.1) -> None:
    for _ in range(round(seconds / step)):
        h.advance(step)
        if peak is not None:
            peak.sample()


class CapTests(SynchronousTestCase):
    def test_caps_hold(self) -> None:
        """If 12 one-second requests arrive at once for 2 hosts of 2 slots, then no host ever
        runs more than 2, every one is answered 200, and 8 of them were held in olla."""
        h, fakes = fleet("a", "b")
        peak = Peak(fakes)
        clients = burst(h, 12, 1000)
        peak.sample()
        self.assertEqual(h.app.dispatch.gate.held, 8)
        run(h, 7.0, peak)
        self.assertEqual([answered(c).status for c in clients], [200] * 12)
        self.assertEqual(peak.peak, {"a": 2, "b": 2})
        queued = sorted(r.queued or 0.0 for r in h.outcomes.requests)
        self.assertEqual(queued[:4], [0.0] * 4)
        self.assertEqual([round(q) for q in queued[4:]], [1, 1, 1, 1, 2, 2, 2, 2])
        self.assertEqual(h.app.dispatch.gate.held, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_model_cap_lowers_the_host(self) -> None:
        """If a 70b model's profile cap is 1 on hosts of 4 slots, then a host runs one request
        of it at a time, while a small model still gets the other slots."""
        h, fakes = fleet("a", slots=4, models=(BIG, MODEL))
        for endpoint in h.endpoints:
            info = ModelInfo(BIG, parameter_size="70.6B", quantization="f16")
            h.catalogue.set_models(endpoint, [info, ModelInfo(MODEL)], 0.0)
        self.assertEqual(h.catalogue.cap_for(h.endpoints[0], BIG), 1)
        peak = Peak(fakes)
        big = [post(h, chat(BIG, f"b{i}"), "/olla/ollama/api/chat?ttft_ms=1000") for i in range(3)]
        small = [post(h, chat(MODEL), "/olla/ollama/api/chat?ttft_ms=1000") for _ in range(3)]
        peak.sample()
        self.assertEqual(fakes["a"].scheduler.running, 4)  # one big, three small
        run(h, 4.0, peak)
        self.assertEqual([answered(c).status for c in big + small], [200] * 6)
        self.assertLessEqual(peak.peak["a"], 4)
        waits = {r.model: [] for r in h.outcomes.requests}  # type: dict[str | None, list[float]]
        for r in h.outcomes.requests:
            waits[r.model].append(round(r.queued or 0.0))
        self.assertEqual(sorted(waits[BIG]), [0, 1, 2])
        self.assertEqual(waits[MODEL], [0, 0, 0])

    def test_streams_hold_their_slot_to_the_end(self) -> None:
        """If a host of 1 slot streams an answer, then the next request starts only once the
        last chunk is out."""
        h, fakes = fleet("a", slots=1)
        first = post(h, chat(stream=True), "/olla/ollama/api/chat?chunks=5&delay_ms=400")
        second = post(h, chat(), "/olla/ollama/api/chat")
        run(h, 1.9)
        self.assertEqual(len(fakes["a"].requests), 1)
        self.assertIsNone(second.response())
        run(h, 0.3)
        self.assertTrue(answered(first).complete)
        self.assertEqual(answered(second).status, 200)

    def test_no_model_takes_no_slot(self) -> None:
        """If a host's slot is taken, then a request naming no model and a model card
        (/api/show) still go through at once."""
        h, fakes = fleet("a", slots=1)
        post(h, chat(), "/olla/ollama/api/chat?ttft_ms=5000")
        version = h.send(http_request("GET", "/olla/ollama/api/version"))
        show = post(h, json.dumps({"model": MODEL}).encode(), "/olla/ollama/api/show")
        self.assertEqual(answered(version).status, 200)
        self.assertEqual(answered(show).status, 200)
        self.assertEqual(h.app.dispatch.gate.held, 0)


class ReleaseTests(SynchronousTestCase):
    def test_every_path_gives_the_slot_back(self) -> None:
        """If requests end every way one can (an answer, an error answer, a busy answer that
        fails over, a stream the backend cuts, a client that leaves mid-answer, a header wait
        that runs out on each host), then after each no slot is left taken and none held."""
        h, fakes = fleet(
            "a",
            "b",
            slots=1,
            adjust=lambda c: replace(c, proxy=replace(c.proxy, response_header_timeout=2.0)),
        )
        gate = h.app.dispatch.gate

        def settled(what: str) -> None:
            run(h, 0.5)
            taken = {ep.name: gate.in_use(ep) for ep in h.endpoints}
            self.assertEqual((taken, gate.held), ({"a": 0, "b": 0}, 0), what)

        def ask(query: str, stream: bool = False) -> ClientConnection:
            return post(h, chat(stream=stream), f"/olla/ollama/api/chat?{query}")

        ok = ask("ttft_ms=10")
        run(h, 0.1)
        self.assertEqual(answered(ok).status, 200)
        settled("an answer")
        error = ask("status=500")
        run(h, 0.1)
        self.assertEqual(answered(error).status, 500)
        settled("an error answer")
        busy = ask("status=503")  # both answer 503: a failover, then the last one relayed
        run(h, 0.1)
        self.assertEqual(answered(busy).status, 503)
        self.assertEqual(len(fakes["a"].requests) + len(fakes["b"].requests), 4)
        settled("a busy answer and its failover")
        cut = ask("chunks=10&delay_ms=100&drop_after=3", stream=True)
        run(h, 2.0)
        self.assertFalse(answered(cut).complete)
        settled("a stream the backend cut")
        leaving = ask("ttft_ms=3000")
        run(h, 0.5)
        leaving.disconnect()
        h.pump()
        settled("a client that left mid-answer")
        hanging = ask("hang=1")  # each host's header wait runs out: a failover, then a 502
        run(h, 2.5)
        self.assertEqual((gate.in_use(h.endpoints[0]) + gate.in_use(h.endpoints[1])), 1)
        run(h, 2.5)
        self.assertEqual(answered(hanging).status, 502)
        settled("header waits that ran out")


class LateBindingTests(SynchronousTestCase):
    def test_short_requests_go_to_the_host_that_frees(self) -> None:
        """If host a (1 slot) runs a 6 s request and b (1 slot) is free, then 4 half-second
        requests that arrive meanwhile all go to b, one after the other as it frees, none to
        a (where they would have waited behind the long one)."""
        h, fakes = fleet("a", "b", slots=1)
        long = post(h, chat(text="long"), "/olla/ollama/api/chat?ttft_ms=6000")
        self.assertEqual(h.outcomes.started[-1].endpoint.name, "a")
        shorts = burst(h, 4, 500, "short")
        run(h, 2.5)
        self.assertEqual([served_by(c) for c in shorts], ["b"] * 4)
        self.assertIsNone(long.response())
        run(h, 4.0)
        self.assertEqual(served_by(long), "a")


class CancelTests(SynchronousTestCase):
    def test_client_leaves_while_held(self) -> None:
        """If a held request's client leaves, then it never reaches a backend: its record is
        a 499 that waited, and the slot that frees goes to the next one."""
        h, fakes = fleet("a", slots=1)
        post(h, chat(text="first"), "/olla/ollama/api/chat?ttft_ms=1000")
        leaving = post(h, chat(text="leaving"), "/olla/ollama/api/chat")
        staying = post(h, chat(text="staying"), "/olla/ollama/api/chat")
        run(h, 0.5)
        leaving.disconnect()
        h.pump()
        run(h, 1.0)
        self.assertEqual(answered(staying).status, 200)
        sent = [json.loads(r.body)["messages"][0]["content"] for r in fakes["a"].requests]
        self.assertEqual(sent, ["first", "staying"])
        gone = next(r for r in h.outcomes.requests if r.outcome == "client_gone")
        self.assertEqual((gone.status, gone.endpoint, gone.attempts), (499, None, 0))
        self.assertAlmostEqual(gone.queued or 0.0, 0.5)
        self.assertEqual(h.app.dispatch.gate.counters["cancelled"], 1)


class BoundTests(SynchronousTestCase):
    def test_max_size(self) -> None:
        """If both hosts are full and max_size is 2, then of 5 more requests 2 are held (and
        answered 200) and 3 are refused at once with 503, Retry-After and a JSON error in the
        route's dialect."""
        h, fakes = fleet("a", "b", slots=1, queue=QueueConfig(max_size=2, max_wait=60.0))
        busy = [post(h, chat(), "/olla/ollama/api/chat?ttft_ms=1000") for _ in range(2)]
        more = burst(h, 4, 1000, "m")
        openai = post(h, chat(), "/olla/openai/v1/chat/completions")
        refused = [c.response() for c in (*more, openai)]
        self.assertEqual([r.status if r else None for r in refused], [None, None, 503, 503, 503])
        ollama, last = refused[2], refused[4]
        assert ollama is not None and last is not None
        # the model's backlog over its slots: 3 x the 5 s prior over 2 slots
        self.assertEqual(ollama.header(b"retry-after"), b"8")
        self.assertIn("waiting already", json.loads(ollama.body)["error"])
        error = json.loads(last.body)["error"]  # OpenAI's shape on the OpenAI route
        self.assertEqual((error["type"], error["code"]), ("api_error", "queue_full"))
        self.assertIsNotNone(last.header(b"retry-after"))
        run(h, 3.0)
        self.assertEqual([answered(c).status for c in (*busy, *more[:2])], [200] * 4)
        rejected = [r for r in h.outcomes.requests if r.outcome == "rejected"]
        self.assertEqual([r.status for r in rejected], [503] * 3)

    def test_max_wait(self) -> None:
        """If a request is held for max_wait, then it gets the same 503 then, and never
        reaches the host."""
        h, fakes = fleet("a", slots=1, queue=QueueConfig(max_wait=2.0))
        post(h, chat(text="long"), "/olla/ollama/api/chat?ttft_ms=5000")
        late = post(h, chat(text="late"), "/olla/ollama/api/chat")
        run(h, 1.9)
        self.assertIsNone(late.response())
        run(h, 0.2)
        response = answered(late)
        self.assertEqual(response.status, 503)
        self.assertIn("within 2s", json.loads(response.body)["error"])
        self.assertEqual(len(fakes["a"].requests), 1)
        run(h, 3.0)

    def test_max_wait_defaults_to_the_response_timeout(self) -> None:
        """If max_wait is not set, then a held request waits as long as the response timeout."""
        h, _ = fleet(
            "a",
            slots=1,
            queue=QueueConfig(),
            adjust=lambda c: replace(c, proxy=replace(c.proxy, response_timeout=30.0)),
        )
        self.assertEqual(h.app.dispatch.gate.snapshot()["max_wait_s"], 30.0)


class PriorityTests(SynchronousTestCase):
    def test_high_before_earlier_low(self) -> None:
        """If low requests wait and a high one arrives after them, then the high one gets the
        next free slot."""
        h, fakes = fleet("a", slots=1)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        for i in range(2):
            post(h, chat(text=f"low{i}"), "/olla/ollama/api/chat?ttft_ms=100", **LOW)
        post(h, chat(text="high"), "/olla/ollama/api/chat?ttft_ms=100", **HIGH)
        run(h, 2.0)
        sent = [json.loads(r.body)["messages"][0]["content"] for r in fakes["a"].requests]
        self.assertEqual(sent, ["busy", "high", "low0", "low1"])
        priorities = sorted(r.priority or "-" for r in h.outcomes.requests)
        self.assertEqual(priorities, ["high", "low", "low", "normal"])

    def test_key_ceiling(self) -> None:
        """If a client key's priority is low, then its request asking for high waits behind a
        normal one; without keys the header is honoured (the test above)."""
        keys = ClientAuthConfig(
            api_keys=(
                ClientKey("sk-batch-0001", name="batch", priority=Priority.LOW),
                ClientKey("sk-users-0001", name="users"),
            )
        )
        h, fakes = fleet(
            "a",
            slots=1,
            adjust=lambda c: replace(c, server=replace(c.server, auth=keys)),
        )
        users = {"Authorization": "Bearer sk-users-0001"}
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000", **users)
        batch = {"Authorization": "Bearer sk-batch-0001", **HIGH}
        post(h, chat(text="batch"), "/olla/ollama/api/chat?ttft_ms=100", **batch)
        post(h, chat(text="users"), "/olla/ollama/api/chat?ttft_ms=100", **users)
        run(h, 2.0)
        sent = [json.loads(r.body)["messages"][0]["content"] for r in fakes["a"].requests]
        self.assertEqual(sent, ["busy", "users", "batch"])

    def test_bad_priority_is_400(self) -> None:
        """If X-Olla-Priority names no priority, then the request is refused with 400 in the
        route's dialect and reaches no host."""
        h, fakes = fleet("a")
        response = answered(post(h, chat(), **{"X-Olla-Priority": "urgent"}))
        self.assertEqual(response.status, 400)
        self.assertIn("must be high, normal or low", json.loads(response.body)["error"])
        openai = answered(
            post(h, chat(), "/olla/openai/v1/chat/completions", **{"X-Olla-Priority": "x"})
        )
        self.assertEqual(json.loads(openai.body)["error"]["type"], "invalid_request_error")
        self.assertEqual(fakes["a"].requests, [])

    def test_low_promoted_after_half_of_max_wait(self) -> None:
        """If a low request has waited half of max_wait, then it is promoted: a normal one that
        arrives later no longer goes first."""
        h, fakes = fleet("a", slots=1, queue=QueueConfig(max_wait=10.0))
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=6000")
        post(h, chat(text="low"), "/olla/ollama/api/chat?ttft_ms=100", **LOW)
        run(h, 5.5)
        post(h, chat(text="normal"), "/olla/ollama/api/chat?ttft_ms=100")
        run(h, 1.0)
        sent = [json.loads(r.body)["messages"][0]["content"] for r in fakes["a"].requests]
        self.assertEqual(sent, ["busy", "low", "normal"])
        self.assertEqual(h.app.dispatch.gate.counters["promoted"], 1)


HIGH = {"X-Olla-Priority": "high"}
LOW = {"X-Olla-Priority": "low"}


class FailoverTests(SynchronousTestCase):
    def test_retried_attempt_goes_first(self) -> None:
        """If a request's host refuses its connection while others wait for the other host,
        then its retry is let through there before them (the head of the queue)."""
        clock = Clock()
        good = FakeOllama(clock, [FakeModel(MODEL)], name="b")

        def one_slot(config: OllaConfig) -> OllaConfig:
            endpoints = tuple(replace(ep, max_concurrency=1) for ep in config.discovery.endpoints)
            return replace(config, discovery=replace(config.discovery, endpoints=endpoints))

        h = Harness(
            {"a:1": HANG, "b:1": good},
            clock=clock,
            models={"a:1": [MODEL], "b:1": [MODEL]},
            adjust=one_slot,
        )
        for endpoint in h.endpoints:
            h.catalogue.set_loaded(endpoint, [MODEL])
        first = [burst(h, 1, 1000, f"first{i}-")[0] for i in range(2)]  # one on each host
        waiting = burst(h, 2, 100, "waiting")
        self.assertEqual(h.app.dispatch.gate.held, 2)
        (hanging,) = h.agent.hanging
        hanging.errback(ConnectionRefusedError("Connection refused"))  # a refuses
        h.pump()
        # a is out of rotation; the refused request waits for b at the head, ahead of the two
        # that were held before it
        self.assertEqual(h.app.dispatch.gate.held, 3)
        self.assertEqual(h.app.dispatch.gate.snapshot()["totals"]["replan"], 0)
        run(h, 3.0)
        sent = [json.loads(r.body)["messages"][0]["content"] for r in good.requests]
        on_b, on_a = (1, 0) if sent[0] == "first1-0" else (0, 1)
        self.assertEqual(sent, [f"first{on_b}-0", f"first{on_a}-0", "waiting0", "waiting1"])
        self.assertEqual([answered(c).status for c in (*first, *waiting)], [200] * 4)
        retried = next(r for r in h.outcomes.requests if r.attempts == 2)
        self.assertEqual(retried.failovers, ("a:connection refused",))
        self.assertAlmostEqual(retried.queued or 0.0, 1.0)

    def test_timed_out_load_gives_its_slot_back(self) -> None:
        """If a request's header wait runs out while its host loads the model (504), then its
        slot frees at once: the next request held for that host goes."""
        clock = Clock()
        fake = FakeOllama(clock, [FakeModel(BIG)], name="a")
        fake.apply_state({"load_ms": 10_000})

        def configure(config: OllaConfig) -> OllaConfig:
            endpoints = tuple(replace(ep, max_concurrency=1) for ep in config.discovery.endpoints)
            proxy = replace(config.proxy, response_header_timeout=1.0)
            return replace(
                config, proxy=proxy, discovery=replace(config.discovery, endpoints=endpoints)
            )

        h = Harness({"a:1": fake}, clock=clock, models={"a:1": [BIG]}, adjust=configure)
        h.catalogue.set_loaded(h.endpoints[0], [])
        profile = h.endpoints[0].profile
        assert profile is not None
        h.catalogue.observe_load(BIG, 1.0)
        scaling = replace(profile.resources.timeout_scaling, base_timeout_seconds=2.0)
        _set_scaling(h, scaling)
        first = post(h, chat(BIG, "first"))
        post(h, chat(BIG, "second"))
        run(h, 2.9)
        self.assertEqual(h.app.dispatch.gate.held, 1)
        run(h, 0.2)
        self.assertEqual(answered(first).status, 504)
        # the second went at once, to wait for what is left of the load
        self.assertEqual(h.app.dispatch.gate.held, 0)
        self.assertEqual(len(fake.requests), 2)
        run(h, 10.0)


def _set_scaling(h: Harness, scaling: Any) -> None:
    from tests.test_loads import _set_scaling as set_scaling

    set_scaling(h, scaling)


class AnthropicTests(SynchronousTestCase):
    def test_passthrough_and_translation_pass_the_gate(self) -> None:
        """If the only host speaks Messages natively and is full, then an Anthropic request
        is held like any other, and a translated one (to an older host) too."""
        h, fakes = fleet("a", slots=1, version="0.14.0")
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        held = post(h, json.dumps(message).encode(), "/olla/anthropic/v1/messages")
        self.assertEqual(h.app.dispatch.gate.held, 1)
        run(h, 1.5)
        response = answered(held)
        self.assertEqual((response.status, response.header(b"x-olla-mode")), (200, b"passthrough"))
        self.assertEqual(fakes["a"].requests[-1].path, "/v1/messages")

    def test_translation_passes_the_gate(self) -> None:
        """If the host cannot take Messages (an older Ollama) and is full, then the translated
        request is held and sent once the slot frees."""
        h, fakes = fleet("a", slots=1)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        held = post(h, json.dumps(message).encode(), "/olla/anthropic/v1/messages")
        run(h, 0.5)
        self.assertIsNone(held.response())
        run(h, 1.0)
        response = answered(held)
        self.assertEqual((response.status, response.header(b"x-olla-mode")), (200, b"translation"))
        self.assertEqual(fakes["a"].requests[-1].path, "/v1/chat/completions")

    def test_refused_in_anthropics_dialect(self) -> None:
        """If the queue is full, then an Anthropic request gets the 503 in Anthropic's error
        shape, with Retry-After, and never reaches the host."""
        h, fakes = fleet("a", slots=1, queue=QueueConfig(max_size=0, max_wait=60.0))
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        refused = answered(post(h, json.dumps(message).encode(), "/olla/anthropic/v1/messages"))
        self.assertEqual(refused.status, 503)
        self.assertIsNotNone(refused.header(b"retry-after"))
        body = json.loads(refused.body)
        self.assertEqual((body["type"], body["error"]["type"]), ("error", "api_error"))
        self.assertIn("waiting already", body["error"]["message"])
        run(h, 1.5)
        self.assertEqual(len(fakes["a"].requests), 1)


class StickyTests(SynchronousTestCase):
    def _turns(self, rate_ms: float | None) -> tuple[str, str]:
        """A conversation's first turn, then a short turn of it that keeps its host busy for
        a second, then its next turn with a long prompt: the host the first turn and the
        last one went to."""
        h, fakes = fleet("a", "b", slots=1, sticky=True)
        session = {"X-Olla-Session-ID": "conv-1"}
        first = post(h, chat(text="hello"), "/olla/ollama/api/chat?ttft_ms=200", **session)
        run(h, 0.5)
        if rate_ms is not None:  # answers said a prompt token takes this long
            h.app.dispatch.rates.request_finished(_figures(MODEL, 1000, rate_ms * 1000))
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000", **session)
        prompt = "x" * 40_000  # about 10,000 tokens
        turn = post(h, chat(text=prompt), "/olla/ollama/api/chat?ttft_ms=100", **session)
        run(h, 2.0)
        return served_by(first), served_by(turn)

    def test_full_pin_waited_for_while_cheaper_than_moving(self) -> None:
        """If reading the conversation's 10,000-token prompt elsewhere costs 10 s (1 ms a
        token) and its host frees in about a second, then its next turn waits for its host,
        although the other host is free."""
        home, turn = self._turns(rate_ms=1.0)
        self.assertEqual(turn, home)

    def test_moves_at_once_without_evidence(self) -> None:
        """If no answer has said how long a prompt token takes, then moving is taken to cost
        nothing: the turn goes to the free host at once."""
        home, turn = self._turns(rate_ms=None)
        self.assertNotEqual(turn, home)


def _figures(model: str, tokens: int, ms: float) -> RequestRecord:
    """A finished request whose backend said it read ``tokens`` prompt tokens in ``ms``."""
    return RequestRecord(
        endpoint="a",
        model=model,
        route="ollama",
        status=200,
        outcome="ok",
        attempts=1,
        bytes=10,
        duration=1.0,
        backend_metrics={"input_tokens": tokens, "ttft_ms": ms},
    )


class MoveCostTests(SynchronousTestCase):
    def test_learnt_from_the_figures(self) -> None:
        """If answers said 1000 prompt tokens took 500 ms, then a 4 KB prompt (1000 tokens)
        costs 0.5 s to read again elsewhere; an unseen model borrows the mean; nothing seen
        costs nothing."""
        rates = PromptRates()
        verifyObject(IOutcomeListener, rates)
        self.assertEqual(rates.move_cost(MODEL, 4000), 0.0)
        rates.request_finished(_figures(MODEL, 1000, 500.0))
        self.assertAlmostEqual(rates.move_cost(MODEL, 4000), 0.5)
        self.assertAlmostEqual(rates.move_cost("other", 4000), 0.5)
        rates.request_finished(_figures(MODEL, 10, 500.0))  # too few tokens to teach
        self.assertAlmostEqual(rates.rate(MODEL), 0.0005)
        self.assertEqual(rates.snapshot(), {MODEL: 0.5})


class VisibleTests(SynchronousTestCase):
    def test_status_metrics_and_log_line(self) -> None:
        """If requests are held, then /internal/status's queue section and the metrics show
        them per model and priority; the log line of a held request says queued=...ms."""
        h, fakes = fleet("a", slots=1)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        post(h, chat(text="low"), "/olla/ollama/api/chat?ttft_ms=100", **LOW)
        run(h, 0.5)
        status = json.loads(answered(h.send(http_request("GET", "/internal/status"))).body)
        queue = status["queue"]
        self.assertEqual(queue["held"], 1)
        self.assertEqual(queue["models"][MODEL]["held"], {"high": 0, "normal": 0, "low": 1})
        self.assertEqual(queue["models"][MODEL]["oldest_wait_s"], 0.5)
        metrics = answered(h.send(http_request("GET", "/internal/metrics"))).body.decode()
        self.assertIn(f'olla_queue_depth{{model="{MODEL}",priority="low"}} 1.0', metrics)
        self.assertIn('olla_queue_refusals_total{reason="queue_full"} 0.0', metrics)
        run(h, 1.0)
        metrics = answered(h.send(http_request("GET", "/internal/metrics"))).body.decode()
        self.assertIn('olla_queue_wait_seconds_count{priority="low"} 1.0', metrics)
        self.assertIn('olla_queue_admissions_total{how="after_wait"} 1.0', metrics)
        lines = [e for e in logged if e.get("request_line")]
        texts = [formatEvent(e) for e in lines]
        self.assertTrue(any(" queued=0ms tokens=" in text for text in texts), texts)
        self.assertTrue(any(" queued=1000ms priority=low tokens=" in text for text in texts))


class OffTests(SynchronousTestCase):
    def test_queue_off_sends_at_once(self) -> None:
        """If proxy.queue.enabled is false, then every request goes to its best host at once,
        however full (olla before the gate), and nothing is held."""
        h, fakes = fleet("a", slots=1, queue=QueueConfig(enabled=False))
        clients = burst(h, 3, 500)
        self.assertEqual(fakes["a"].scheduler.running, 3)
        run(h, 1.0)
        self.assertEqual([answered(c).status for c in clients], [200] * 3)


class WiringTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The gate's dispatch provides IDispatch and IReconfigurable, its walks IWalk."""
        h, _ = fleet("a")
        dispatch = h.app.dispatch
        verifyObject(IDispatch, dispatch)
        verifyObject(IReconfigurable, dispatch)
        self.assertIsInstance(dispatch, GateDispatch)
        self.assertIs(h.deps.dispatch, dispatch)
        self.assertIn(dispatch, h.app.reconfigurables)

    def test_held_request_planned_again_when_its_hosts_go(self) -> None:
        """If every host a held request could go to leaves rotation, then it is planned again
        (keeping its place): to a host that came up meanwhile, else a 503 as routing says."""
        h, fakes = fleet("a", "b", slots=1)
        a, b = h.endpoints
        h.registry.set_status(b, EndpointStatus.OFFLINE)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=5000")
        held = post(h, chat(text="held"), "/olla/ollama/api/chat?ttft_ms=100")
        alone = post(h, chat(text="alone"), "/olla/ollama/api/chat?ttft_ms=100")
        run(h, 0.5)
        self.assertEqual(h.app.dispatch.gate.held, 2)  # b was out when they were planned
        h.registry.set_status(b, EndpointStatus.HEALTHY)
        h.pump()
        self.assertEqual(h.app.dispatch.gate.held, 2)  # their plans do not have b
        h.registry.set_status(a, EndpointStatus.OFFLINE)
        h.pump()
        run(h, 0.5)
        self.assertEqual([served_by(held), served_by(alone)], ["b", "b"])
        self.assertEqual(h.app.dispatch.gate.snapshot()["totals"]["replan"], 2)
        h.registry.set_status(b, EndpointStatus.OFFLINE)
        last = post(h, chat(text="last"), "/olla/ollama/api/chat")
        self.assertEqual(answered(last).status, 503)
        run(h, 5.0)

    def test_held_plan_exhausted_by_refused_connections_is_planned_again(self) -> None:
        """If a held request's plan was made while a host was out of rotation and every host
        of that plan refuses its connection once it goes, then it is planned again and served
        by the host that came back (not a 502 while a healthy host can serve it)."""
        h, fakes = fleet("a", "b", slots=1)
        a, b = h.endpoints
        h.registry.set_status(b, EndpointStatus.OFFLINE)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        held = post(h, chat(text="held"), "/olla/ollama/api/chat?ttft_ms=100")
        run(h, 0.5)
        self.assertEqual(h.app.dispatch.gate.held, 1)
        h.registry.set_status(b, EndpointStatus.HEALTHY)  # not in the held request's plan
        h.agent.behaviour[b"a:1"] = REFUSE  # a dies while its request runs
        run(h, 1.0)
        self.assertEqual((answered(held).status, served_by(held)), (200, "b"))
        record = next(r for r in h.outcomes.requests if r.attempts == 2)
        self.assertEqual(record.failovers, ("a:connection refused",))
        self.assertEqual(h.app.dispatch.gate.in_use(a), 0)
        self.assertEqual(h.app.dispatch.gate.in_use(b), 0)

    def test_reload_reconfigures_the_queue(self) -> None:
        """If a reload turns the queue off, then held requests go at once."""
        h, fakes = fleet("a", slots=1)
        post(h, chat(text="busy"), "/olla/ollama/api/chat?ttft_ms=1000")
        held = post(h, chat(text="held"), "/olla/ollama/api/chat?ttft_ms=100")
        config = h.app.config
        config = replace(config, proxy=replace(config.proxy, queue=QueueConfig(enabled=False)))
        h.app.dispatch.reconfigure(config)
        h.pump()
        run(h, 0.2)
        self.assertEqual(answered(held).status, 200)
