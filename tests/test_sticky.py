"""Sticky sessions (``olla.fleet.sticky``): session keys, the LRU with its sliding TTL on a Clock,
the outcome of each request, the purge when an endpoint is demoted, and the stats."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig, StickySessionsConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus, endpoints_from_config
from olla.fleet.sticky import (
    REPIN_SHARE,
    Affinity,
    MemorySessionStore,
    SessionKey,
    StickyOutcome,
    StickySessions,
    conversation_prefix,
    parse_body,
    session_key,
)
from olla.telemetry.records import RequestRecord

SYSTEM = "You are a careful assistant."


def key(config: StickySessionsConfig | None = None, **kw: Any) -> SessionKey | None:
    document = kw.pop("document", None)
    args: dict[str, Any] = {
        "model": "llama3.2:latest",
        "session_id": None,
        "authorization": None,
        "client_ip": None,
        **kw,
    }
    return session_key(config or StickySessionsConfig(), document=lambda: document, **args)


def openai_turns(turns: int) -> dict[str, Any]:
    """An OpenAI conversation after ``turns`` user turns (answers in between)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": f"question {i}"})
    return {"model": "llama3.2:latest", "messages": messages}


class KeyTests(SynchronousTestCase):
    def test_cascade_in_configured_order(self) -> None:
        """If a request has a session header, a conversation, credentials and an address, then
        the first configured source names the key; with the header gone, the next one."""
        doc = openai_turns(1)
        full = {"session_id": b"s-1", "authorization": b"Bearer t", "client_ip": "10.0.0.9"}
        first = key(document=doc, **full)
        assert first is not None
        self.assertEqual((first.source, first.session_id), ("session_header", b"s-1"))
        second = key(document=doc, **{**full, "session_id": None})
        assert second is not None
        self.assertEqual(second.source, "prefix_hash")
        third = key(document=None, **{**full, "session_id": None})
        assert third is not None
        self.assertEqual(third.source, "auth_header")
        self.assertIsNone(key(document=None, client_ip="10.0.0.9"))  # ip is not in the default
        config = StickySessionsConfig(key_sources=("ip", "session_header"))
        by_ip = key(config, document=doc, **full)
        assert by_ip is not None
        self.assertEqual(by_ip.source, "ip")

    def test_keys_are_scoped_by_model(self) -> None:
        """If one session id is used with two models (any case), then the keys differ between
        models and match across letter case."""
        a = key(session_id=b"s", model="Llama3.2:latest")
        b = key(session_id=b"s", model="llama3.2:latest")
        c = key(session_id=b"s", model="qwen:7b")
        assert a is not None and b is not None and c is not None
        self.assertEqual(a.key, b.key)
        self.assertNotEqual(a.key, c.key)

    def test_secrets_are_not_kept(self) -> None:
        """If the key comes from a session id or credentials, then neither appears in it."""
        by_id = key(session_id=b"my-secret-session")
        by_auth = key(authorization=b"Bearer sk-secret")
        assert by_id is not None and by_auth is not None
        self.assertNotIn("secret", by_id.key)
        self.assertNotIn("secret", by_auth.key)

    def test_growing_conversation_keeps_its_key_in_every_shape(self) -> None:
        """If a conversation grows by ten turns in the Ollama/OpenAI and Anthropic shapes, then
        each shape's key stays the same turn after turn, and another conversation's differs."""
        openai = {key(document=openai_turns(n)) for n in range(1, 11)}
        self.assertEqual(len(openai), 1)

        def anthropic(turns: int, first: str = "question 0") -> dict[str, Any]:
            messages: list[dict[str, Any]] = []
            for i in range(turns):
                if i:
                    answer = [{"type": "text", "text": "a"}]
                    messages.append({"role": "assistant", "content": answer})
                text = first if i == 0 else f"question {i}"
                block: dict[str, Any] = {"type": "text", "text": text}
                if i == turns - 1:  # clients move the cache mark to the newest turn
                    block["cache_control"] = {"type": "ephemeral"}
                messages.append({"role": "user", "content": [block]})
            system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
            return {"model": "claude", "system": system, "messages": messages}

        keys = {key(document=anthropic(n)) for n in range(1, 11)}
        self.assertEqual(len(keys), 1)
        self.assertNotEqual(key(document=anthropic(3, first="other")), keys.pop())

    def test_prefix_reads_system_and_first_user_message(self) -> None:
        """If two bodies share the system prompt and first user message but differ later, then
        their prefixes are equal; a different system prompt makes them differ; the limit cuts
        each part."""
        a = conversation_prefix(openai_turns(2), 512)
        b = conversation_prefix(openai_turns(5), 512)
        self.assertEqual(a, b)
        other = openai_turns(2)
        other["messages"][0]["content"] = "You are terse."
        self.assertNotEqual(conversation_prefix(other, 512), a)
        self.assertEqual(conversation_prefix(openai_turns(1), 4), b"You \x00ques")
        generate = {"model": "m", "system": "sys", "prompt": "Why is the sky blue?"}
        self.assertEqual(conversation_prefix(generate, 512), b"sys\x00Why is the sky blue?")

    def test_no_prefix_without_a_conversation(self) -> None:
        """If a body has no messages and no prompt (or is not a JSON object), then prefix_hash
        gives no key."""
        for document in (None, [], "x", {"model": "m"}, {"model": "m", "messages": []}):
            self.assertIsNone(conversation_prefix(document, 512), document)
        self.assertIsNone(parse_body(b"not json"))
        self.assertIsNone(parse_body(None))
        self.assertEqual(parse_body(b'{"a": 1}'), {"a": 1})


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        configs = [EndpointConfig(url=f"http://{n}:1", name=n, type="ollama") for n in "abc"]
        self.endpoints = endpoints_from_config(configs)
        self.a, self.b, self.c = self.endpoints

    def store(self, **kw: Any) -> StickySessions:
        config = replace(StickySessionsConfig(enabled=True), **kw)
        by_name = {ep.name: ep for ep in self.endpoints}
        return StickySessions(config, MemorySessionStore(config, self.clock), by_name.get)

    def lookup(self, sessions: StickySessions, key: SessionKey | None) -> Affinity:
        """The in-memory store answers at once."""
        return self.successResultOf(sessions.lookup(key))

    def serve(
        self,
        sessions: StickySessions,
        affinity: Affinity,
        endpoint: Endpoint,
        duration: float = 0.0,
    ) -> Any:
        """The request of ``affinity`` is answered by ``endpoint`` and ends: its outcome is
        decided, and the sessions hear its record (the pin moves, the outcome is counted)."""
        outcome = affinity.served(endpoint)
        key = affinity.key
        sessions.request_finished(
            RequestRecord(
                endpoint=endpoint.name,
                model=None,
                route="ollama",
                status=200,
                outcome="ok",
                attempts=1,
                bytes=0,
                duration=duration,
                session=key.key if key is not None else None,
                session_source=key.source if key is not None else None,
                session_model=key.model if key is not None else None,
                sticky=outcome.value,
            )
        )
        return outcome

    def test_miss_then_hit_then_repin(self) -> None:
        """If a new session is served on a, then its next request is pinned to a and a hit;
        served on b instead, it is a repin and the pin moves to b."""
        sessions = self.store()
        first = self.lookup(sessions, SessionKey("k", "session_header"))
        self.assertIsNone(first.pinned)
        self.assertEqual(self.serve(sessions, first, self.a), StickyOutcome.MISS)
        second = self.lookup(sessions, SessionKey("k", "session_header"))
        self.assertIs(second.pinned, self.a)
        self.assertEqual(self.serve(sessions, second, self.a), StickyOutcome.HIT)
        third = self.lookup(sessions, SessionKey("k", "session_header"))
        self.assertEqual(self.serve(sessions, third, self.b), StickyOutcome.REPIN)
        self.assertIs(self.lookup(sessions, SessionKey("k", "session_header")).pinned, self.b)
        stats = sessions.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["insertions"]), (1, 2, 1))

    def test_short_hit_writes_no_pin(self) -> None:
        """If a hit ends within REPIN_SHARE of the idle TTL, then its pin is not written again
        (its lookup restarted the idle time); a longer hit, a miss and a repin are."""
        sessions = self.store(idle_ttl_seconds=600)
        pins: list[tuple[str, str]] = []
        pin = sessions.store.pin

        def recorded(key: str, endpoint: str, model: str = "") -> None:
            pins.append((key, endpoint))
            pin(key, endpoint, model)

        sessions.store.pin = recorded  # type: ignore[method-assign]
        key = SessionKey("k", "session_header")
        self.serve(sessions, self.lookup(sessions, key), self.a)
        self.serve(sessions, self.lookup(sessions, key), self.a, duration=600 * REPIN_SHARE / 2)
        self.assertEqual(pins, [("k", "a")])
        self.serve(sessions, self.lookup(sessions, key), self.a, duration=600 * REPIN_SHARE)
        self.serve(sessions, self.lookup(sessions, key), self.b)
        self.assertEqual(pins, [("k", "a"), ("k", "a"), ("k", "b")])
        self.assertEqual(sessions.stats()["hits"], 2)

    def test_model_removed_forgets_its_pins_there(self) -> None:
        """If a model is deleted from a, then the sessions of that model pinned to a are
        forgotten; its sessions elsewhere and other models' sessions on a stay."""
        sessions = self.store()
        for name, model, endpoint in [
            ("k1", "m:1", self.a),
            ("k2", "m:1", self.b),
            ("k3", "other:1", self.a),
        ]:
            affinity = self.lookup(sessions, SessionKey(name, "session_header", model=model))
            self.serve(sessions, affinity, endpoint)
        self.assertEqual(sessions.model_removed({"m:1", "m"}, [self.a]), 1)
        self.assertIsNone(self.lookup(sessions, SessionKey("k1", "session_header")).pinned)
        self.assertIs(self.lookup(sessions, SessionKey("k2", "session_header")).pinned, self.b)
        self.assertIs(self.lookup(sessions, SessionKey("k3", "session_header")).pinned, self.a)

    def test_keys_carry_their_model(self) -> None:
        """If a key is made for a model, then it carries the model (lower-cased) it is scoped
        by, from any source."""
        made = key(
            model="M:1", client_ip="10.0.0.1", config=StickySessionsConfig(key_sources=("ip",))
        )
        assert made is not None
        self.assertEqual(made.model, "m:1")

    def test_served_counts_once(self) -> None:
        """If an answer's headers are written twice, then the outcome is decided once, and
        the request's one record counts it once and pins where it was first served."""
        sessions = self.store()
        affinity = self.lookup(sessions, SessionKey("k", "prefix_hash"))
        affinity.served(self.a)
        self.assertEqual(affinity.served(self.b), StickyOutcome.MISS)
        self.assertEqual(sessions.stats()["misses"], 0)  # nothing counted before the record
        self.serve(sessions, affinity, self.a)
        self.assertEqual(sessions.stats()["misses"], 1)
        self.assertIs(self.lookup(sessions, SessionKey("k", "prefix_hash")).pinned, self.a)

    def test_no_key_is_disabled(self) -> None:
        """If no source gave a key, then the outcome is disabled, nothing is stored or counted,
        and only the outcome header is sent."""
        sessions = self.store()
        affinity = self.lookup(sessions, None)
        self.assertEqual(self.serve(sessions, affinity, self.a), StickyOutcome.DISABLED)
        self.assertEqual(affinity.headers(), [(b"X-Olla-Sticky-Session", b"disabled")])
        stats = sessions.stats()
        self.assertEqual((stats["active_sessions"], stats["hits"], stats["misses"]), (0, 0, 0))

    def test_headers_echo_an_explicit_session(self) -> None:
        """If the key came from X-Olla-Session-ID, then the answer echoes it with the outcome
        and the source; a prefix key sends no session id."""
        sessions = self.store()
        explicit = self.lookup(sessions, SessionKey("k", "session_header", b"conv-7"))
        self.serve(sessions, explicit, self.a)
        self.assertEqual(
            explicit.headers(),
            [
                (b"X-Olla-Sticky-Session", b"miss"),
                (b"X-Olla-Sticky-Key-Source", b"session_header"),
                (b"X-Olla-Session-ID", b"conv-7"),
            ],
        )
        prefix = self.lookup(sessions, SessionKey("p", "prefix_hash"))
        self.serve(sessions, prefix, self.a)
        self.assertEqual(len(prefix.headers()), 2)

    def test_idle_ttl_slides(self) -> None:
        """If a session is used every 400 s with a 600 s TTL, then it stays; left idle for
        600 s it expires (counted as an eviction) and comes back as a miss."""
        sessions = self.store(idle_ttl_seconds=600)
        k = SessionKey("k", "prefix_hash")
        self.serve(sessions, self.lookup(sessions, k), self.a)
        for _ in range(5):
            self.clock.advance(400)
            self.assertIs(self.lookup(sessions, k).pinned, self.a)
        self.clock.advance(600)
        self.assertEqual(sessions.stats()["active_sessions"], 0)
        again = self.lookup(sessions, k)
        self.assertFalse(again.known)
        self.assertEqual(self.serve(sessions, again, self.b), StickyOutcome.MISS)
        self.assertEqual(sessions.stats()["evictions"], 1)

    def test_zero_ttl_never_expires(self) -> None:
        """If idle_ttl_seconds is 0, then a warning says so at startup and a session outlives
        any idle time."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sessions = self.store(idle_ttl_seconds=0)
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("never expire", formatEvent(warnings[0]))
        self.serve(sessions, self.lookup(sessions, SessionKey("k", "ip")), self.a)
        self.clock.advance(10**9)
        self.assertIs(self.lookup(sessions, SessionKey("k", "ip")).pinned, self.a)

    def test_lru_bounds_memory(self) -> None:
        """If max_sessions is 2 and three sessions arrive, then the least recently used one is
        evicted (a lookup counts as use)."""
        sessions = self.store(max_sessions=2)
        for name in ("x", "y"):
            self.serve(sessions, self.lookup(sessions, SessionKey(name, "ip")), self.a)
        self.lookup(sessions, SessionKey("x", "ip"))  # x is used again: y is now the oldest
        self.serve(sessions, self.lookup(sessions, SessionKey("z", "ip")), self.b)
        self.assertEqual(sessions.stats()["active_sessions"], 2)
        self.assertIsNone(self.lookup(sessions, SessionKey("y", "ip")).pinned)
        self.assertIs(self.lookup(sessions, SessionKey("x", "ip")).pinned, self.a)
        self.assertEqual(sessions.stats()["evictions"], 1)

    def test_demotion_unpins_and_the_next_request_repins(self) -> None:
        """If the endpoint a session is pinned to goes offline, then the registry's listener
        unpins it at once (even when a comes back), the next request is a repin, and sessions
        pinned elsewhere keep their pin."""
        registry = EndpointRegistry(self.endpoints, self.clock)
        sessions = self.store()
        registry.add_listener(sessions.status_changed)
        for ep in self.endpoints:
            registry.set_status(ep, EndpointStatus.HEALTHY)
        self.serve(sessions, self.lookup(sessions, SessionKey("on-a", "ip")), self.a)
        self.serve(sessions, self.lookup(sessions, SessionKey("on-b", "ip")), self.b)
        registry.set_status(self.a, EndpointStatus.OFFLINE)
        registry.set_status(self.a, EndpointStatus.HEALTHY)
        moved = self.lookup(sessions, SessionKey("on-a", "ip"))
        self.assertIsNone(moved.pinned)
        self.assertEqual(self.serve(sessions, moved, self.c), StickyOutcome.REPIN)
        self.assertIs(self.lookup(sessions, SessionKey("on-b", "ip")).pinned, self.b)

    def test_stats_have_olla_fields(self) -> None:
        """If stats are asked for, then they carry exactly Olla's fields and the config's
        bounds."""
        sessions = self.store(max_sessions=7, idle_ttl_seconds=30)
        self.assertEqual(
            sessions.stats(),
            {
                "enabled": True,
                "active_sessions": 0,
                "insertions": 0,
                "hits": 0,
                "misses": 0,
                "evictions": 0,
                "max_sessions": 7,
                "idle_ttl_seconds": 30,
            },
        )
