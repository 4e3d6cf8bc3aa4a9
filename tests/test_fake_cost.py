"""The fake Ollama's cost model on a Clock: slots and their FIFO queue, the busy answer, model
loads (once, reported as ``load_duration``), LRU eviction, per-token time and the counters."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from tests.fakes.ollama import BUSY_MESSAGE, WARM_LOAD_NS, FakeModel, FakeOllama
from tests.fakes.process import FakeProcess
from tests.test_fake_ollama import URL, InMemory, _lines, _post


def _chat(model: str, text: str = "hi", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


class CostTests(InMemory):
    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeOllama(self.clock, [FakeModel(n) for n in ("a:1", "b:1", "c:1")], name="A")
        self.http = StubTreq(self.fake)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def post(self, body: dict[str, Any], path: str = "/api/chat", query: str = "") -> Deferred[Any]:
        d: Deferred[Any] = self.http.post(URL + path + query, json=body, unbuffered=True)
        self.http.flush()
        return d

    def answer(self, d: Deferred[Any]) -> tuple[int, Any]:
        """The status and decoded JSON body of a request that has been answered."""
        response: IResponse = self.successResultOf(d)
        return response.code, json.loads(self.read(response))

    def state(self, *keys: str) -> dict[str, Any]:
        state = self.fake.describe_state()
        return {key: state[key] for key in keys}

    def test_defaults_are_off(self) -> None:
        """If no cost knob is set, then they all read 0 and a chat is answered at once, its
        load counted and its load_duration the usual small value."""
        self.assertEqual(
            self.state("capacity", "max_queue", "load_ms", "max_loaded", "token_ms"),
            {"capacity": 0, "max_queue": 0, "load_ms": 0.0, "max_loaded": 0, "token_ms": 0.0},
        )
        code, doc = self.answer(self.post(_chat("a:1")))
        self.assertEqual((code, doc["load_duration"]), (200, WARM_LOAD_NS))
        self.assertEqual(self.state("loads", "running", "peak_running"), {
            "loads": 1, "running": 0, "peak_running": 1
        })  # fmt: skip

    def test_capacity_queues_in_order(self) -> None:
        """If capacity is 1 and three 100 ms chats arrive together, then they run one after the
        other in arrival order, each timed from when it got the slot."""
        self.fake.apply_state({"capacity": 1})
        ds = [self.post(_chat("a:1", f"n{i}"), query="?delay_ms=100&chunks=1") for i in range(3)]
        self.assertEqual(self.state("running", "queued"), {"running": 1, "queued": 2})
        for index, d in enumerate(ds):
            self.advance(0.099)
            self.assertNoResult(d)
            self.advance(0.001)
            self.assertEqual(self.answer(d)[0], 200)
            for later in ds[index + 1 :]:
                self.assertNoResult(later)
        recorded = [json.loads(r.body)["messages"][0]["content"] for r in self.fake.requests]
        self.assertEqual(recorded, ["n0", "n1", "n2"])
        self.assertEqual(self.state("running", "queued", "peak_running", "peak_queued"), {
            "running": 0, "queued": 0, "peak_running": 1, "peak_queued": 2
        })  # fmt: skip

    def test_streams_hold_their_slot_until_done(self) -> None:
        """If capacity is 2, then a third stream starts only when one of the first two has
        written its last line, and its lines are paced from then."""
        self.fake.apply_state({"capacity": 2})
        first = [
            self.stream(self.successResultOf(self.post(_chat("a:1", stream=True), query=q)))
            for q in ("?delay_ms=100&chunks=2", "?delay_ms=300&chunks=2")
        ]
        third = self.post(_chat("a:1", stream=True), query="?delay_ms=100&chunks=2")
        self.assertNoResult(third)
        self.advance(0.2)
        self.assertTrue(_lines(first[0])[-1]["done"])
        received = self.stream(self.successResultOf(third))
        self.assertEqual(len(_lines(received)), 1)
        self.advance(0.2)
        self.assertTrue(_lines(received)[-1]["done"])
        self.advance(0.2)
        self.assertTrue(_lines(first[1])[-1]["done"])

    def test_disconnect_while_queued(self) -> None:
        """If a queued client goes away, then it leaves the queue: it gets no answer, and the
        next one takes the slot when it frees."""
        self.fake.apply_state({"capacity": 1})
        running = self.post(_chat("a:1"), query="?delay_ms=100&chunks=1")
        transport, protocol = self.raw(_post("/api/chat", _chat("a:1")))
        after = self.post(_chat("a:1"))
        self.assertEqual(self.state("queued")["queued"], 2)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.state("queued", "cancelled"), {"queued": 1, "cancelled": 1})
        self.advance(0.1)
        self.assertEqual(self.answer(running)[0], 200)
        self.assertEqual(self.answer(after)[0], 200)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.state("running", "queued", "in_flight"), {
            "running": 0, "queued": 0, "in_flight": 0
        })  # fmt: skip

    def test_max_queue_is_ollamas_busy_answer(self) -> None:
        """If max_queue requests already wait, then the next gets Ollama 0.5's 503 and its exact
        body (OpenAI's error shape on /v1), and busy_rejections counts them."""
        self.fake.apply_state({"capacity": 1, "max_queue": 1})
        running = self.post(_chat("a:1"), query="?delay_ms=100&chunks=1")
        queued = self.post(_chat("a:1"))
        response = self.successResultOf(self.post(_chat("a:1")))
        self.assertEqual(response.code, 503)
        self.assertEqual(
            self.read(response),
            b'{"error":"server busy, please try again.  maximum pending requests exceeded"}',
        )
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        code, doc = self.answer(self.post(_chat("a:1"), path="/v1/chat/completions"))
        self.assertEqual((code, doc["error"]["message"]), (503, BUSY_MESSAGE))
        self.assertEqual(self.state("busy_rejections")["busy_rejections"], 2)
        self.advance(0.1)
        self.assertEqual((self.answer(running)[0], self.answer(queued)[0]), (200, 200))

    def test_concurrent_requests_share_one_load(self) -> None:
        """If three chats for a model that is not loaded arrive during its 2 s load, then it is
        loaded once (in /api/ps only afterwards), all three answer when it is done, and each
        load_duration is the part of the load that request waited."""
        self.fake.apply_state({"load_ms": 2000})
        ds = [self.post(_chat("a:1"))]
        for _ in range(2):
            self.advance(0.5)
            ds.append(self.post(_chat("a:1")))
        self.assertEqual(self.doc("GET", "/api/ps"), {"models": []})
        self.advance(0.999)
        for d in ds:
            self.assertNoResult(d)
        self.advance(0.001)
        waits = [self.answer(d)[1]["load_duration"] for d in ds]
        self.assertEqual([round(w / 1e6) for w in waits], [2000, 1500, 1000])
        self.assertEqual([m["name"] for m in self.doc("GET", "/api/ps")["models"]], ["a:1"])
        self.assertEqual(self.state("loads", "loaded"), {"loads": 1, "loaded": ["a:1"]})

    def test_load_duration_in_the_final_line(self) -> None:
        """If a stream waits 500 ms for its model, then nothing comes before, its final NDJSON
        line says load_duration 500 ms (and a total that includes it); the next one, warm,
        reports the small warm value."""
        self.fake.apply_state({"load_ms": 500})
        d = self.post({"model": "b:1", "prompt": "x"}, path="/api/generate")
        self.advance(0.499)
        self.assertNoResult(d)
        self.advance(0.001)
        final = _lines(self.stream(self.successResultOf(d)))[-1]
        self.assertEqual(final["load_duration"], 500_000_000)
        self.assertGreater(final["total_duration"], 500_000_000)
        received = self.stream(self.successResultOf(self.post(_chat("b:1", stream=True))))
        self.assertEqual(_lines(received)[-1]["load_duration"], WARM_LOAD_NS)

    def test_lru_eviction(self) -> None:
        """If two models may be loaded and a third is asked for, then the least recently used
        one is evicted, and the counters say three loads and one eviction."""
        self.fake.apply_state({"max_loaded": 2})
        for model in ("a:1", "b:1"):
            self.answer(self.post(_chat(model)))
            self.advance(1)
        self.answer(self.post(_chat("a:1")))  # b is now the least recently used
        self.advance(1)
        self.answer(self.post(_chat("c:1")))
        self.assertEqual(self.state("loaded", "loads", "evictions"), {
            "loaded": ["a:1", "c:1"], "loads": 3, "evictions": 1
        })  # fmt: skip

    def test_a_model_in_use_is_not_evicted(self) -> None:
        """If the only loaded model is busy when another must be loaded, then the new request
        waits (its slot held) until the busy one finishes, and reports that wait as its load."""
        self.fake.apply_state({"max_loaded": 1, "load_ms": 300})
        busy = self.post(_chat("a:1"), query="?delay_ms=1000&chunks=1")
        self.advance(0.3)
        other = self.post(_chat("b:1"))
        self.assertEqual(self.state("running", "loaded")["loaded"], ["a:1"])
        self.advance(1.0)
        self.assertEqual(self.answer(busy)[0], 200)
        self.assertNoResult(other)
        self.assertEqual(self.state("loaded", "evictions"), {"loaded": [], "evictions": 1})
        self.advance(0.3)
        code, doc = self.answer(other)
        self.assertEqual((code, round(doc["load_duration"] / 1e6)), (200, 1300))
        self.assertEqual(self.state("loaded", "loads")["loads"], 2)

    def test_leaving_during_a_load(self) -> None:
        """If the client that started a load goes away, then its slot is free at once for the
        queue, and the load still completes."""
        self.fake.apply_state({"capacity": 1, "load_ms": 1000})
        _, protocol = self.raw(_post("/api/chat", _chat("a:1")))
        queued = self.post(_chat("b:1"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.state("running", "queued"), {"running": 1, "queued": 0})
        self.advance(1)
        self.assertEqual(self.answer(queued)[0], 200)
        self.assertEqual(self.state("loaded", "loads"), {"loaded": ["a:1", "b:1"], "loads": 2})

    def test_token_time(self) -> None:
        """If token_ms is 50 on top of a 10 ms chunk delay, then stream lines are 60 ms apart,
        and a non-streamed answer of 4 chunks comes after 240 ms."""
        self.fake.apply_state({"token_ms": 50})
        query = "?delay_ms=10&chunks=4"
        received = self.stream(
            self.successResultOf(self.post(_chat("a:1", stream=True), "/api/chat", query))
        )
        counts = []
        for _ in range(5):
            counts.append(len(_lines(received)))
            self.advance(0.06)
        self.assertEqual(counts, [1, 2, 3, 4, 5])
        d = self.post(_chat("a:1"), query=query)
        self.advance(0.239)
        self.assertNoResult(d)
        self.advance(0.001)
        self.assertEqual(self.answer(d)[1]["eval_duration"], 240_000_000)

    def test_embeddings_take_slots(self) -> None:
        """If capacity is 1, then an embedding request waits for a running chat too."""
        self.fake.apply_state({"capacity": 1, "models": ["a:1", "nomic-embed-text:latest"]})
        chat = self.post(_chat("a:1"), query="?delay_ms=100&chunks=1")
        embed = self.post({"model": "nomic-embed-text", "input": "x"}, path="/api/embed")
        self.assertNoResult(embed)
        self.advance(0.1)
        self.assertEqual((self.answer(chat)[0], self.answer(embed)[0]), (200, 200))

    def test_state_api_and_reset(self) -> None:
        """If the knobs are set over POST /_fake/state, then GET shows them with the counters; a
        larger capacity lets the queue in; reset zeroes the counters; a negative knob is a 400."""
        knobs = {"capacity": 1, "max_queue": 5, "load_ms": 0, "max_loaded": 2, "token_ms": 0}
        state = self.doc("POST", "/_fake/state", knobs)
        self.assertEqual({k: state[k] for k in knobs}, knobs)
        ds = [self.post(_chat("a:1"), query="?delay_ms=100&chunks=1") for _ in range(3)]
        self.doc("POST", "/_fake/state", {"capacity": 3})
        self.assertEqual(self.state("running", "queued"), {"running": 3, "queued": 0})
        self.advance(0.1)
        for d in ds:
            self.assertEqual(self.answer(d)[0], 200)
        counters = ("loads", "evictions", "busy_rejections", "peak_running", "peak_queued")
        self.assertEqual(
            {k: self.doc("GET", "/_fake/state")[k] for k in counters},
            {"loads": 1, "evictions": 0, "busy_rejections": 0, "peak_running": 3, "peak_queued": 2},
        )
        self.doc("POST", "/_fake/reset")
        self.assertEqual(
            {k: self.doc("GET", "/_fake/state")[k] for k in counters}, dict.fromkeys(counters, 0)
        )
        response, _ = self.call("POST", "/_fake/state", {"capacity": -1})
        self.assertEqual(response.code, 400)


class PromptCacheTests(InMemory):
    """The prompt cache: prompt time per token this host has not read before."""

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeOllama(self.clock, [FakeModel("a:1")], name="A")
        self.http = StubTreq(self.fake)

    def post(self, body: dict[str, Any], path: str = "/api/chat") -> Deferred[Any]:
        d: Deferred[Any] = self.http.post(URL + path, json=body, unbuffered=True)
        self.http.flush()
        return d

    def served_within(self, d: Deferred[Any], seconds: float) -> None:
        """``d`` is not answered just before ``seconds``, and is at ``seconds``."""
        if seconds > 0.01:
            self.advance(seconds - 0.01)
            self.assertNoResult(d)
            self.advance(0.01)
        else:
            self.advance(0)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.http.flush()

    def test_off_by_default(self) -> None:
        """If prompt_ms is not set, then a long prompt is answered at once and nothing is
        counted."""
        state = self.fake.describe_state()
        self.assertEqual((state["prompt_ms"], state["prompt_cache"]), (0.0, 0))
        self.served_within(self.post(_chat("a:1", " ".join(["w"] * 500))), 0)
        state = self.fake.describe_state()
        self.assertEqual((state["prompt_tokens"], state["cached_tokens"]), (0, 0))

    def test_a_conversation_pays_only_for_what_is_new(self) -> None:
        """If a conversation's first turn has 201 prompt tokens at 10 ms each, then it waits
        2.01 s; its next turn pays only the new part (and the last partial block); another
        conversation pays its whole prompt again."""
        self.fake.apply_state({"prompt_ms": 10, "prompt_cache": 4})
        words = " ".join(f"word{i}" for i in range(200))  # "user: " + 200 words: 201 tokens
        first = [{"role": "user", "content": words}]
        self.served_within(self.post({"model": "a:1", "messages": first, "stream": False}), 2.01)
        turn = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
        d = self.post({"model": "a:1", "messages": turn, "stream": False})
        self.advance(0.2)
        self.assertEqual(self.successResultOf(d).code, 200)
        state = self.fake.describe_state()
        self.assertGreater(state["cached_tokens"], 180)
        other = [{"role": "user", "content": "other " + words}]
        self.served_within(self.post({"model": "a:1", "messages": other, "stream": False}), 2.02)

    def test_cache_is_bounded(self) -> None:
        """If the host keeps one conversation, then two that alternate pay in full each time;
        with two kept, both are cached."""
        self.fake.apply_state({"prompt_ms": 10, "prompt_cache": 1})
        a = [{"role": "user", "content": " ".join(["a"] * 99)}]  # 100 tokens
        b = [{"role": "user", "content": " ".join(["b"] * 99)}]
        for messages in (a, b, a):
            self.served_within(self.post({"model": "a:1", "messages": messages}), 1.0)
        self.fake.apply_state({"prompt_cache": 2})
        self.served_within(self.post({"model": "a:1", "messages": b}), 1.0)
        for messages in (a, b):  # now both are kept: only the last partial block is read
            d = self.post({"model": "a:1", "messages": messages})
            self.advance(0.2)
            self.assertEqual(self.successResultOf(d).code, 200)


def test_cost_flags_of_the_process() -> None:
    """If the fake process is started with the cost flags, then its state shows them."""
    flags = ["--capacity", "4", "--max-queue", "8", "--load-ms", "2000", "--max-loaded", "2"]
    prompt = ["--prompt-ms", "5", "--prompt-cache", "3"]
    with FakeProcess(*flags, "--token-ms", "20", *prompt, "--models", "a:1") as fake:
        state = fake.state()
    assert (state["prompt_ms"], state["prompt_cache"]) == (5.0, 3)
    assert {
        k: state[k] for k in ("capacity", "max_queue", "load_ms", "max_loaded", "token_ms")
    } == {
        "capacity": 4,
        "max_queue": 8,
        "load_ms": 2000.0,
        "max_loaded": 2,
        "token_ms": 20.0,
    }
