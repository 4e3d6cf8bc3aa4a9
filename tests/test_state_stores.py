"""The shared stores over an in-process Redis (fakeredis with Lua): two processes see the same
pins, buckets, counts, slots and poll leases; a dead process's counts and slots stop counting;
and every store answers from this process's memory when the store does not."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig, StickySessionsConfig
from olla.fleet.endpoints import EndpointRegistry, endpoints_from_config
from olla.fleet.sticky import MemorySessionStore
from olla.fleet.values import Endpoint, Outcome, SessionPin
from olla.guard.ratelimit import MemoryRateStore
from olla.interfaces import ILoadStore, IPollShare, IRateStore, ISessionStore
from olla.profiles import builtin_profiles
from olla.proxy.slots import ISlotStore
from olla.state.load import RedisLoadStore
from olla.state.polls import SharedPolls
from olla.state.rates import RedisRateStore
from olla.state.sessions import RedisSessionStore
from olla.state.shared import SharedState
from olla.state.slots import REUSE_WINDOW, RedisSlotStore
from olla.state.stores import stores_for
from tests.fakes.redis import FakeStore
from tests.test_gate import Harness

STICKY = StickySessionsConfig(enabled=True)


def _endpoint(name: str = "a") -> Endpoint:
    config = EndpointConfig(name=name, url=f"http://{name}:11434", type="ollama")
    return endpoints_from_config([config], builtin_profiles())[0]


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.a = self.store.process("a", self.clock)
        self.b = self.store.process("b", self.clock)


class SessionTests(Base):
    def sessions(self, shared: SharedState) -> RedisSessionStore:
        return RedisSessionStore(shared, MemorySessionStore(STICKY, self.clock), 600)

    def test_provides(self) -> None:
        """The Redis session store implements ISessionStore."""
        verifyObject(ISessionStore, self.sessions(self.a))

    def test_shared_pin(self) -> None:
        """If process a pins a session, then process b finds it pinned there."""
        a, b = self.sessions(self.a), self.sessions(self.b)
        self.assertIsNone(self.successResultOf(b.lookup("k")))
        a.pin("k", "fake-a")
        self.assertEqual(self.successResultOf(b.lookup("k")), SessionPin("fake-a"))

    def test_unpin_everywhere(self) -> None:
        """If process b unpins an endpoint, then a session pinned there by a is known and
        unpinned; a new pin there counts again."""
        a, b = self.sessions(self.a), self.sessions(self.b)
        a.pin("k", "fake-a")
        b.unpin("fake-a")
        self.assertEqual(self.successResultOf(a.lookup("k")), SessionPin(None))
        a.pin("k", "fake-a")
        self.assertEqual(self.successResultOf(b.lookup("k")), SessionPin("fake-a"))

    def test_model_removed_everywhere(self) -> None:
        """If process b hears a model was deleted from an endpoint, then process a finds the
        sessions of that model pinned there unknown (forgotten), and every other session as
        it was; a new pin there counts again."""
        a, b = self.sessions(self.a), self.sessions(self.b)
        a.pin("k", "fake-a", "llama3")
        a.pin("other-model", "fake-a", "qwen")
        a.pin("other-endpoint", "fake-b", "llama3")
        self.assertEqual(b.model_removed({"llama3", "llama3:latest"}, {"fake-a"}), 0)
        self.assertIsNone(self.successResultOf(a.lookup("k")))
        self.assertEqual(self.store.redis.execute_command("EXISTS", "test:session:k"), 0)
        self.assertEqual(self.successResultOf(a.lookup("other-model")), SessionPin("fake-a"))
        self.assertEqual(self.successResultOf(b.lookup("other-endpoint")), SessionPin("fake-b"))
        a.pin("k", "fake-a", "llama3")
        self.assertEqual(self.successResultOf(b.lookup("k")), SessionPin("fake-a"))

    def test_model_removed_counts_and_drops_locally(self) -> None:
        """If a model is deleted, then this process's own pins of it there go too (its
        fallback), and the count is of those."""
        a = self.sessions(self.a)
        a.pin("k", "fake-a", "llama3")
        self.assertEqual(a.model_removed({"llama3"}, {"fake-a"}), 1)
        self.store.down = True
        self.assertIsNone(self.successResultOf(a.lookup("k")))

    def test_model_removed_after_unpin(self) -> None:
        """If an endpoint was unpinned before its model was deleted, then the session stays
        known without a pin (as in memory: only sessions pinned there are forgotten)."""
        a = self.sessions(self.a)
        a.pin("k", "fake-a", "llama3")
        a.unpin("fake-a")
        a.model_removed({"llama3"}, {"fake-a"})
        self.assertEqual(self.successResultOf(a.lookup("k")), SessionPin(None))

    def test_removal_names_do_not_collide(self) -> None:
        """If a model is deleted from endpoint "a" with name "b:c", then a session of model
        "c" on an endpoint named "a:b" is kept (the two never share a generation)."""
        a = self.sessions(self.a)
        a.pin("k", "a:b", "c")
        a.model_removed({"b:c"}, {"a"})
        self.assertEqual(self.successResultOf(a.lookup("k")), SessionPin("a:b"))

    def test_idle_ttl_in_the_store(self) -> None:
        """If a session is pinned, then its key carries the idle TTL."""
        self.sessions(self.a).pin("k", "fake-a")
        ttl = self.store.redis.execute_command("PTTL", "test:session:k")
        self.assertTrue(590_000 < ttl <= 600_000, ttl)

    def test_fails_open(self) -> None:
        """If the store is down, then a lookup answers from this process's own pins at once,
        counted as a fallback, and it is said once."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        a = self.sessions(self.a)
        a.pin("k", "fake-a")
        self.store.down = True
        self.assertEqual(self.successResultOf(a.lookup("k")), SessionPin("fake-a"))
        self.assertIsNone(self.successResultOf(a.lookup("other")))
        self.assertEqual(self.a.fallbacks, 2)
        self.assertFalse(self.a.ok)
        said = [e for e in observer if "not answering" in e.get("log_format", "")]
        self.assertEqual(len(said), 1)
        self.store.down = False
        self.assertEqual(self.successResultOf(a.lookup("k")), SessionPin("fake-a"))
        self.assertTrue(self.a.ok)


class RateTests(Base):
    def rates(self, shared: SharedState) -> RedisRateStore:
        return RedisRateStore(shared, MemoryRateStore(self.clock, 0))

    def test_provides(self) -> None:
        """The Redis rate store implements IRateStore."""
        verifyObject(IRateStore, self.rates(self.a))

    def test_limit_across_processes(self) -> None:
        """If two processes take from a bucket of 12 in turn, then 12 of 36 are taken."""
        stores = [self.rates(self.a), self.rates(self.b)]
        bucket = [("ip:12:12:1.2.3.4", 12 / 60, 12.0)]
        taken = [self.successResultOf(stores[i % 2].take(bucket, 0.0))[0] for i in range(36)]
        self.assertEqual(taken.count(True), 12)
        self.assertEqual(taken[:12], [True] * 12)

    def test_all_or_none(self) -> None:
        """If one of two buckets is empty, then neither loses a token."""
        rates = self.rates(self.a)
        # refills too slow to matter between two calls (the script runs on the server clock)
        full, empty = ("ip:x", 1e-6, 5.0), ("global:", 1e-6, 1.0)
        self.assertTrue(self.successResultOf(rates.take([full, empty], 0.0))[0])
        taken, levels = self.successResultOf(rates.take([full, empty], 0.0))
        self.assertFalse(taken)
        self.assertAlmostEqual(levels[0], 4.0, places=3)

    def test_fails_open(self) -> None:
        """If the store is down, then this process's own buckets decide."""
        rates = self.rates(self.a)
        self.store.down = True
        bucket = [("ip:12:2:1.2.3.4", 12 / 60, 2.0)]
        taken = [self.successResultOf(rates.take(bucket, 0.0))[0] for _ in range(3)]
        self.assertEqual(taken, [True, True, False])
        self.assertEqual(self.a.fallbacks, 3)


class LoadTests(Base):
    def test_provides(self) -> None:
        """The Redis load store implements ILoadStore."""
        verifyObject(ILoadStore, RedisLoadStore(self.a, self.clock))

    def test_in_flight_across_processes(self) -> None:
        """If process a runs three attempts, then b counts them with its own once both synced;
        and when a's lease is gone (a died), b stops counting them."""
        endpoint = _endpoint()
        a, b = RedisLoadStore(self.a, self.clock), RedisLoadStore(self.b, self.clock)
        for _ in range(3):
            a.started(endpoint, 0.0)
        b.started(endpoint, 0.0)
        self.clock.advance(0.1)  # the coalesced syncs
        b.sync()
        self.assertEqual(b.in_flight(endpoint), 4)
        self.assertEqual(b.own_in_flight(endpoint), 1)
        a.ended(endpoint, 0.0, 1.0)
        self.clock.advance(0.1)
        b.sync()
        self.assertEqual(b.in_flight(endpoint), 3)
        self.store.kill_process(self.a)
        b.sync()
        self.assertEqual(b.in_flight(endpoint), 1)

    def test_fails_open(self) -> None:
        """If the store does not answer a sync, then only this process's attempts count."""
        endpoint = _endpoint()
        a, b = RedisLoadStore(self.a, self.clock), RedisLoadStore(self.b, self.clock)
        a.started(endpoint, 0.0)
        b.started(endpoint, 0.0)
        self.clock.advance(0.1)
        b.sync()
        self.assertEqual(b.in_flight(endpoint), 2)
        self.store.down = True
        b.sync()
        self.assertEqual(b.in_flight(endpoint), 1)


class SharedRegistryTests(Base):
    """The endpoint registry over the shared load store (what ``build_app`` wires)."""

    def setUp(self) -> None:
        super().setUp()
        self.endpoint = _endpoint()

    def registry(self, shared: SharedState) -> EndpointRegistry:
        """One process's registry (the endpoint is the same one: both read one config)."""
        return EndpointRegistry(
            [self.endpoint],
            self.clock,
            load=lambda slots: RedisLoadStore(shared, self.clock, slots),
        )

    def test_removed_endpoint_drains_on_own_attempts(self) -> None:
        """If a reload removes an endpoint here while another process has attempts there,
        then it is gone here once this process's own last attempt ends (the others' do not
        hold it), and at once when this process has none."""
        a, b = self.registry(self.a), self.registry(self.b)
        endpoint = self.endpoint
        gone_a: list[Endpoint] = []
        gone_b: list[Endpoint] = []
        a.on_gone.append(gone_a.append)
        b.on_gone.append(gone_b.append)
        for _ in range(2):
            a.attempt_started(endpoint, 0.0)
        b.attempt_started(endpoint, 0.0)
        self.clock.advance(0.1)
        assert isinstance(b.load, RedisLoadStore)
        b.load.sync()
        self.assertEqual(b.load.in_flight(endpoint), 3)
        b.remove(endpoint)
        self.assertEqual(b.draining, [endpoint])
        b.attempt_ended(endpoint, Outcome.OK, started=0.0)
        self.assertEqual(gone_b, [endpoint])
        self.assertEqual(b.draining, [])
        a.remove(endpoint)
        self.assertEqual(a.draining, [endpoint])
        a.attempt_ended(endpoint, Outcome.OK, started=0.0)
        self.assertEqual(gone_a, [])
        a.attempt_ended(endpoint, Outcome.OK, started=0.0)
        self.assertEqual(gone_a, [endpoint])

    def test_removed_endpoint_without_own_attempts_goes_at_once(self) -> None:
        """If this process has no attempt on a removed endpoint, then it is gone at once,
        however many the other processes have there."""
        a, b = self.registry(self.a), self.registry(self.b)
        endpoint = self.endpoint
        gone: list[Endpoint] = []
        b.on_gone.append(gone.append)
        a.attempt_started(endpoint, 0.0)
        self.clock.advance(0.1)
        assert isinstance(b.load, RedisLoadStore)
        self.assertEqual(b.load.in_flight(endpoint), 0)  # asked: synced from now on
        b.load.sync()
        self.assertEqual(b.load.in_flight(endpoint), 1)
        b.remove(endpoint)
        self.assertEqual((gone, b.draining), ([endpoint], []))

    def test_slots_are_the_registry_rule(self) -> None:
        """If a backend reports its slots (llama.cpp's /props), then the shared load view
        routing reads answers them, as the in-memory one does."""
        registry = self.registry(self.a)
        endpoint = next(iter(registry))
        self.assertEqual(registry.load.slots(endpoint), endpoint.default_slots)
        registry.capacity_read(endpoint, 8, None)
        self.assertEqual(registry.load.slots(endpoint), 8)


class SlotTests(Base):
    def test_provides(self) -> None:
        """The Redis slot store implements ISlotStore."""
        verifyObject(ISlotStore, RedisSlotStore(self.a, self.clock))

    def test_cap_across_processes(self) -> None:
        """If a holds an endpoint's cap of 2, then b gets no slot; a release there reaches b's
        listener, and b then gets the slot."""
        a, b = RedisSlotStore(self.a, self.clock), RedisSlotStore(self.b, self.clock)
        freed: list[str] = []
        b.add_listener(freed.append)
        first = self.successResultOf(a.acquire("e1", "m", 2, 2))
        self.assertIsNotNone(self.successResultOf(a.acquire("e1", "n", 2, 2)))
        self.assertIsNone(self.successResultOf(b.acquire("e1", "m", 2, 2)))
        self.assertEqual(b.held("e1"), 2)
        assert first is not None
        a.release(first)
        self.assertEqual(freed, ["e1"])
        self.assertEqual(b.held("e1"), 1)
        self.assertIsNotNone(self.successResultOf(b.acquire("e1", "m", 2, 2)))

    def test_model_cap(self) -> None:
        """If a model holds its cap on an endpoint, then another model still gets a slot."""
        a, b = RedisSlotStore(self.a, self.clock), RedisSlotStore(self.b, self.clock)
        self.assertIsNotNone(self.successResultOf(a.acquire("e1", "m", 4, 1)))
        self.assertIsNone(self.successResultOf(b.acquire("e1", "m", 4, 1)))
        self.assertIsNotNone(self.successResultOf(b.acquire("e1", "n", 4, 1)))
        self.assertEqual(b.held_by_model("e1", "n"), 1)

    def test_lease_reusable_for_a_window(self) -> None:
        """If the store granted a lease, then it may be passed on within REUSE_WINDOW and not
        after, nor once released; a lease taken from memory (the store down) always may."""
        a = RedisSlotStore(self.a, self.clock)
        lease = self.successResultOf(a.acquire("e1", "m", 2, 2))
        assert lease is not None
        self.assertTrue(a.reusable(lease))
        self.clock.advance(REUSE_WINDOW)
        self.assertFalse(a.reusable(lease))
        a.release(lease)
        self.assertFalse(a.reusable(lease))
        self.store.down = True
        local = self.successResultOf(a.acquire("e1", "m", 2, 2))
        assert local is not None
        self.clock.advance(REUSE_WINDOW)
        self.assertTrue(a.reusable(local))

    def test_dead_process_frees_its_slots(self) -> None:
        """If the process holding every slot dies, then its slots free: the next acquire gets
        one, and a refresh tells the listeners."""
        a, b = RedisSlotStore(self.a, self.clock), RedisSlotStore(self.b, self.clock)
        freed: list[str] = []
        b.add_listener(freed.append)
        self.successResultOf(a.acquire("e1", "m", 1, 1))
        self.assertIsNone(self.successResultOf(b.acquire("e1", "m", 1, 1)))
        self.store.kill_process(self.a)
        b.refresh()
        self.assertEqual((b.held("e1"), freed), (0, ["e1"]))
        self.assertIsNotNone(self.successResultOf(b.acquire("e1", "m", 1, 1)))

    def test_store_down_counts_own_slots_only(self) -> None:
        """If the store stops answering, then the other processes' slots stop counting here
        (the gate is told the endpoint may have room), and acquires come from memory."""
        a, b = RedisSlotStore(self.a, self.clock), RedisSlotStore(self.b, self.clock)
        freed: list[str] = []
        b.add_listener(freed.append)
        self.successResultOf(a.acquire("e1", "m", 1, 1))
        self.assertIsNone(self.successResultOf(b.acquire("e1", "m", 1, 1)))
        self.store.down = True
        self.assertIsNotNone(self.successResultOf(b.acquire("e1", "m", 1, 1)))
        self.assertEqual((freed, b.held("e1")), (["e1"], 1))

    def test_fails_open_and_owes(self) -> None:
        """If the store is down, then slots come from this process's memory (and go back
        there); a shared slot released meanwhile is owed and sent once it answers."""
        a = RedisSlotStore(self.a, self.clock)
        shared_lease = self.successResultOf(a.acquire("e1", "m", 1, 1))
        assert shared_lease is not None
        self.store.down = True
        local = self.successResultOf(a.acquire("e2", "m", 1, 1))
        assert local is not None
        self.assertIsNone(self.successResultOf(a.acquire("e2", "m", 1, 1)))
        a.release(local)
        self.assertEqual(a.local.held("e2"), 0)
        a.release(shared_lease)
        self.assertEqual(a.owed, [shared_lease])
        self.store.down = False
        a.refresh()
        self.assertEqual(a.owed, [])
        self.assertEqual(self.store.redis.execute_command("HLEN", "test:slots:e1"), 0)


class PollTests(Base):
    def test_provides(self) -> None:
        """The shared poll leases implement IPollShare."""
        verifyObject(IPollShare, SharedPolls(self.a))

    def test_one_poller(self) -> None:
        """If a claims an endpoint's lease, then b does not get it and a keeps it; a's result
        reaches b's listener."""
        endpoint = _endpoint()
        a, b = SharedPolls(self.a), SharedPolls(self.b)
        heard: list[tuple[str, dict[str, object]]] = []
        b.subscribe("health", lambda endpoint_id, result: heard.append((endpoint_id, result)))
        self.assertTrue(self.successResultOf(a.claim("health", endpoint, 1.0)))
        self.assertFalse(self.successResultOf(b.claim("health", endpoint, 1.0)))
        self.assertTrue(self.successResultOf(a.claim("health", endpoint, 1.0)))
        a.publish("health", endpoint, {"status": "healthy"})
        self.assertEqual(heard, [(endpoint.id, {"status": "healthy"})])

    def test_fails_open(self) -> None:
        """If the store is down, then every process polls for itself."""
        endpoint = _endpoint()
        a, b = SharedPolls(self.a), SharedPolls(self.b)
        self.store.down = True
        self.assertTrue(self.successResultOf(a.claim("health", endpoint, 1.0)))
        self.assertTrue(self.successResultOf(b.claim("health", endpoint, 1.0)))


class StoresTests(SynchronousTestCase):
    def test_memory(self) -> None:
        """Without a shared store, every store is this process's memory and there is no
        poll share."""
        stores = stores_for(None, Clock())
        self.assertIsNone(stores.polls)
        self.assertIsInstance(stores.sessions(STICKY), MemorySessionStore)
        self.assertEqual(stores.status(), {"backend": "memory", "ok": True, "fallbacks": 0})

    def test_shared(self) -> None:
        """With a shared store, the stores go through it and its status says so."""
        clock = Clock()
        shared = FakeStore().process("a", clock)
        stores = stores_for(shared, clock)
        self.assertIsInstance(stores.sessions(STICKY), RedisSessionStore)
        self.assertIsInstance(stores.load(), RedisLoadStore)
        self.assertEqual(list(stores.services), [shared, stores.made_load, stores.slots])
        status = stores.status()
        self.assertEqual((status["backend"], status["ok"], status["fallbacks"]), ("redis", True, 0))


class GateOverSharedSlotsTests(Base):
    def test_lease_passed_on_then_shared(self) -> None:
        """If a process has held requests of the model when one ends, then it passes the lease
        on with no store command while the window lasts; after it, the slot goes back to the
        store and a request held in the other process gets it."""
        a = Harness(1, store=RedisSlotStore(self.a, self.clock))
        b = Harness(1, store=RedisSlotStore(self.b, self.clock))
        self.successResultOf(a.admit("a1"))
        a.admit("a2")
        held_in_b = b.admit("b1")
        sent = self.store.commands
        a.grant("a1").release()
        self.assertEqual((a.order(), self.store.commands), (["a1", "a2"], sent))
        self.assertNoResult(held_in_b)
        a.admit("a3")
        self.clock.advance(REUSE_WINDOW)
        a.grant("a2").release()
        self.assertIs(self.successResultOf(held_in_b).endpoint, b.eps[0])
        self.assertEqual(a.order(), ["a1", "a2"])

    def test_two_gates_one_cap(self) -> None:
        """If two processes' admission gates share an endpoint of 2 slots through the store,
        then together they never hold more than 2: a third request (in b) is held, and a
        release in a lets it through in b."""
        a = Harness(2, store=RedisSlotStore(self.a, self.clock))
        b = Harness(2, store=RedisSlotStore(self.b, self.clock))
        self.successResultOf(a.admit("a1"))
        self.successResultOf(a.admit("a2"))
        held = b.admit("b1")
        self.assertNoResult(held)
        self.assertEqual((b.gate.held, b.store.held(b.eps[0].id)), (1, 2))
        a.grant("a1").release()
        self.assertIs(self.successResultOf(held).endpoint, b.eps[0])
        key = f"test:slots:{a.eps[0].id}"
        self.assertEqual((b.gate.held, self.store.redis.execute_command("HLEN", key)), (0, 2))
        b.grant("b1").release()
        a.grant("a2").release()
        self.assertEqual(self.store.redis.execute_command("HLEN", key), 0)
