"""The admission gate on a Clock: caps, held tickets, late binding, priorities, bounds,
cancellation, second homes, stickiness, and the slot store's contract as the gate uses it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig, ProxyConfig, QueueConfig
from olla.fleet.endpoints import Endpoint, EndpointStatus, endpoints_from_config
from olla.proxy.admission import AdmissionRefused, Grant, Refusal, Ticket
from olla.proxy.fleetview import IFleetView, RouterView
from olla.proxy.gate import AdmissionGate
from olla.proxy.slots import ISlotStore, Lease, MemorySlotStore, SlotListener
from olla.util.priority import Priority
from tests.test_routing import MODEL, Fleet

HOT = "hot"
COLD = "other"


@implementer(IFleetView)
class FakeFleet:
    """Every endpoint usable and hosting every model unless told otherwise."""

    def __init__(self) -> None:
        self.down: set[Endpoint] = set()
        self.full: set[Endpoint] = set()  # said busy (429/503)
        self.running: dict[Endpoint, float] = {}  # expected service time seen there
        self.cold: set[tuple[Endpoint, str]] = set()  # (endpoint, model) not hosted there
        self.in_memory: dict[Endpoint, frozenset[str]] = {}
        self.load = 2.0
        self.endpoints: list[Endpoint] = []  # what ``homes`` counts over
        self.tiers: dict[Endpoint, int] = {}  # the balancer's tier (default 0)

    def usable(self, endpoint: Endpoint) -> bool:
        return endpoint not in self.down

    def slots(self, endpoint: Endpoint) -> int:
        return endpoint.max_concurrency or endpoint.default_slots

    def load_cost(self, endpoint: Endpoint, model: str) -> float:
        return self.load if (endpoint, model) in self.cold else 0.0

    def hosting(self, endpoint: Endpoint, model: str) -> bool:
        return (endpoint, model) not in self.cold

    def busy(self, endpoint: Endpoint) -> bool:
        return endpoint in self.full

    def expected_service(self, endpoint: Endpoint) -> float:
        return self.running.get(endpoint, 0.0)

    def loaded(self, endpoint: Endpoint) -> frozenset[str]:
        return self.in_memory.get(endpoint, frozenset())

    def tier(self, endpoint: Endpoint) -> int:
        return self.tiers.get(endpoint, 0)

    def homes(self, model: str) -> list[Endpoint]:
        return [
            ep
            for ep in self.endpoints
            if ep not in self.down | self.full and (ep, model) not in self.cold
        ]


def endpoints(*slots: int) -> list[Endpoint]:
    """Endpoints a, b, c... with these many slots each."""
    return endpoints_from_config(
        [
            EndpointConfig(
                url=f"http://{chr(97 + i)}:1", name=chr(97 + i), type="ollama", max_concurrency=n
            )
            for i, n in enumerate(slots)
        ]
    )


class Harness:
    """A gate on a Clock over a FakeFleet and a MemorySlotStore; grants are recorded, and a
    cold grant makes its host a home of the model (as the exchange's ``mark_loading`` does)."""

    def __init__(
        self,
        *slots: int,
        config: QueueConfig | None = None,
        cap_for: Callable[[Endpoint, str], int | None] | None = None,
        prior: float | None = 1.0,
        store: ISlotStore | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.eps = endpoints(*slots)
        self.fleet = FakeFleet()
        self.fleet.endpoints = self.eps
        self.store = store or MemorySlotStore()
        self.gate = AdmissionGate(
            self.store,
            self.fleet,
            self.clock,
            ProxyConfig(queue=config or QueueConfig(max_wait=60.0)),
            cap_for=cap_for,
            service_prior=lambda model: prior,
        )
        self.granted: list[tuple[str, Grant]] = []  # (ticket's request id, grant)

    def admit(
        self,
        name: str,
        model: str = HOT,
        candidates: Sequence[Endpoint] | None = None,
        **options: object,
    ) -> Deferred[Grant]:
        ticket = Ticket(
            tuple(candidates if candidates is not None else self.eps),
            model,
            request_id=name,
            **options,  # type: ignore[arg-type]
        )
        d = self.gate.admit(ticket)
        d.addCallback(self._granted, name)
        return d

    def _granted(self, grant: Grant, name: str) -> Grant:
        self.granted.append((name, grant))
        if grant.cold:
            self.fleet.cold.discard((grant.endpoint, grant.ticket.model_on(grant.endpoint)))
        return grant

    def order(self) -> list[str]:
        return [name for name, _ in self.granted]

    def grant(self, name: str) -> Grant:
        return next(g for n, g in self.granted if n == name)

    def on(self, endpoint: Endpoint) -> list[str]:
        """Requests granted on ``endpoint`` and not released."""
        return [n for n, g in self.granted if g.endpoint is endpoint and not g.released]


class CapTests(SynchronousTestCase):
    def test_free_slot_at_once(self) -> None:
        """If the first candidate has a free slot, then the ticket goes there at once, waiting
        nothing, and nothing is left scheduled."""
        h = Harness(2, 2)
        grant = self.successResultOf(h.admit("r1"))
        self.assertIs(grant.endpoint, h.eps[0])
        self.assertEqual(grant.waited, 0.0)
        self.assertEqual(h.gate.counters["at_once"], 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_never_more_than_the_slots(self) -> None:
        """If 12 tickets arrive for 2 hosts of 2 slots, then 4 run, 8 are held, and each
        release lets exactly one more through on the host that freed."""
        h = Harness(2, 2)
        pending = [h.admit(f"r{i}") for i in range(12)]
        self.assertEqual((len(h.on(h.eps[0])), len(h.on(h.eps[1]))), (2, 2))
        self.assertEqual(h.gate.held, 8)
        for step in range(8):
            h.clock.advance(1)
            name, grant = next((n, g) for n, g in h.granted if not g.released)
            grant.release()
            self.assertEqual(len(h.on(grant.endpoint)), 2, f"step {step}")
            self.assertLessEqual(len(h.on(h.eps[0])), 2)
            self.assertLessEqual(len(h.on(h.eps[1])), 2)
        self.assertEqual(h.gate.held, 0)
        for d in pending:
            self.successResultOf(d)
        self.assertEqual(h.gate.counters["after_wait"], 8)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_model_cap_lowers_the_endpoint_cap(self) -> None:
        """If a model's cap on a 4-slot host is 1, then a second request of it is held while
        a request of another model still gets a slot there."""
        h = Harness(4, cap_for=lambda ep, model: 1 if model == "big:70b" else None)
        self.successResultOf(h.admit("big1", "big:70b"))
        held = h.admit("big2", "big:70b")
        self.assertNoResult(held)
        self.successResultOf(h.admit("small", "small:1b"))
        self.assertEqual(h.gate.cap(h.eps[0], "big:70b"), 1)
        self.assertEqual(h.gate.cap(h.eps[0], "small:1b"), 4)
        h.grant("big1").release()
        self.assertIs(self.successResultOf(held).endpoint, h.eps[0])

    def test_model_cap_never_above_the_endpoint(self) -> None:
        """If a profile's cap is above the endpoint's slots, then the slots win."""
        h = Harness(2, cap_for=lambda ep, model: 8)
        self.assertEqual(h.gate.cap(h.eps[0], HOT), 2)

    def test_release_is_idempotent(self) -> None:
        """If a grant is released twice, then the slot is given back once."""
        h = Harness(1)
        grant = self.successResultOf(h.admit("r1"))
        held = h.admit("r2")
        grant.release()
        grant.release()
        self.successResultOf(held)
        self.assertEqual(h.store.held(h.eps[0].id), 1)

    def test_request_without_model(self) -> None:
        """If a request names no model, then only the endpoint's slots count."""
        h = Harness(1, cap_for=lambda ep, model: 1)
        grant = self.successResultOf(h.gate.admit(Ticket(tuple(h.eps), None)))
        self.assertEqual(h.store.held_by_model(h.eps[0].id, ""), 1)
        self.assertNoResult(h.gate.admit(Ticket(tuple(h.eps), None)))
        grant.release()

    def test_alias_counts_the_native_name(self) -> None:
        """If an alias names the model differently per endpoint, then caps and counts use the
        name that endpoint knows it by."""
        asked: list[str] = []

        def cap_for(endpoint: Endpoint, model: str) -> int:
            asked.append(model)
            return 1

        h = Harness(2, cap_for=cap_for)
        a = h.eps[0]
        ticket = Ticket((a,), "fast", native={a: "Qwen:7B"})
        self.successResultOf(h.gate.admit(ticket))
        self.assertIn("qwen:7b", asked)
        self.assertEqual(h.store.held_by_model(a.id, "qwen:7b"), 1)
        self.assertNoResult(h.gate.admit(ticket))

    def test_ticket_needs_candidates(self) -> None:
        """If a ticket names no candidate, then admit refuses it as a bug."""
        h = Harness(1)
        self.assertRaises(ValueError, h.gate.admit, Ticket((), HOT))


class LateBindingTests(SynchronousTestCase):
    def test_freed_slot_goes_to_the_longest_waiting(self) -> None:
        """If one host runs a long request and the other frees repeatedly, then the held
        short requests all go to the one that frees, oldest first."""
        h = Harness(1, 1)
        long = self.successResultOf(h.admit("long"))
        self.assertIs(long.endpoint, h.eps[0])
        self.successResultOf(h.admit("s0"))
        for i in range(1, 5):
            h.admit(f"s{i}")
        for _ in range(4):
            h.clock.advance(0.5)
            h.grant(h.on(h.eps[1])[0]).release()
        self.assertEqual(h.order(), ["long", "s0", "s1", "s2", "s3", "s4"])
        self.assertEqual([h.grant(f"s{i}").endpoint.name for i in range(1, 5)], ["b"] * 4)
        self.assertEqual(h.grant("s4").waited, 2.0)

    def test_choice_made_when_the_slot_frees(self) -> None:
        """If a held ticket listed host A first, then it still takes B when B frees first."""
        h = Harness(1, 1)
        first = self.successResultOf(h.admit("first"))
        second = self.successResultOf(h.admit("second"))
        held = h.admit("held")
        self.assertEqual((first.endpoint.name, second.endpoint.name), ("a", "b"))
        second.release()
        self.assertEqual(self.successResultOf(held).endpoint.name, "b")

    def test_slot_goes_to_a_ticket_the_host_suits(self) -> None:
        """If the oldest held ticket cannot use the host that frees, then the next that can
        gets it (the host serves only some models)."""
        h = Harness(1, 1)
        a, b = h.eps
        self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        only_a = h.admit("only-a", candidates=[a])
        any_host = h.admit("any")
        h.grant("on-b").release()
        self.assertNoResult(only_a)
        self.assertEqual(self.successResultOf(any_host).endpoint.name, "b")

    def test_new_arrival_does_not_jump_the_queue(self) -> None:
        """If tickets are held and a slot frees, then the slot goes to a held ticket before a
        new arrival."""
        h = Harness(1)
        self.successResultOf(h.admit("r1"))
        h.admit("r2")
        h.grant("r1").release()
        h.admit("r3")
        self.assertEqual(h.order(), ["r1", "r2"])

    def test_release_inside_grant_callback(self) -> None:
        """If a granted request ends at once (its callback releases), then the next held one
        gets the slot, in order, without recursion trouble."""
        h = Harness(1)
        first = self.successResultOf(h.admit("r0"))
        for i in range(1, 50):
            h.admit(f"r{i}").addCallback(lambda g: g.release())
        first.release()
        self.assertEqual(h.order(), [f"r{i}" for i in range(50)])
        self.assertEqual(h.store.held(h.eps[0].id), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_slot_freed_by_another_process(self) -> None:
        """If the store announces a slot freed elsewhere (a shared store), then a held ticket
        takes it."""
        h = Harness(1)
        elsewhere = self.successResultOf(h.store.acquire(h.eps[0].id, HOT, 1, 1))
        assert elsewhere is not None
        held = h.admit("r1")
        self.assertNoResult(held)
        h.store.release(elsewhere)
        self.assertIs(self.successResultOf(held).endpoint, h.eps[0])

    def test_unusable_host_gets_nothing(self) -> None:
        """If a host left rotation, then its free slot goes to nobody."""
        h = Harness(1, 1)
        a, b = h.eps
        h.fleet.down.add(a)
        self.assertIs(self.successResultOf(h.admit("r1")).endpoint, b)
        held = h.admit("r2")
        self.assertNoResult(held)


class CountingStore(MemorySlotStore):
    """A ``MemorySlotStore`` that counts the calls a network store would make a round trip of
    (``reusable=False``: one whose window for passing a lease on is over)."""

    def __init__(self, reusable: bool = True) -> None:
        super().__init__()
        self.calls: list[str] = []
        self._reusable = reusable

    def reusable(self, lease: Lease) -> bool:
        return self._reusable and super().reusable(lease)

    def acquire(
        self, endpoint: str, model: str, endpoint_cap: int, model_cap: int
    ) -> Deferred[Lease | None]:
        self.calls.append(f"acquire {model}")
        return super().acquire(endpoint, model, endpoint_cap, model_cap)

    def release(self, lease: Lease) -> Deferred[None]:
        self.calls.append(f"release {lease.model}")
        return super().release(lease)


class HandOnTests(SynchronousTestCase):
    def one_ends_one_held(self, store: CountingStore) -> tuple[Harness, Grant, Deferred[Grant]]:
        """One slot: r1 granted, r2 of the same model held; r1 ends, counted from there."""
        h = Harness(1, store=store)
        first = self.successResultOf(h.admit("r1"))
        held = h.admit("r2")
        store.calls.clear()
        first.release()
        return h, first, held

    def test_same_model_takes_the_lease_over(self) -> None:
        """If a request ends while one of its model is held for that host, then the held one
        takes its lease over: no release and no acquire (a network store: no round trip)."""
        store = CountingStore()
        h, first, held = self.one_ends_one_held(store)
        self.assertIs(self.successResultOf(held).lease, first.lease)
        self.assertEqual((store.calls, store.held(h.eps[0].id)), ([], 1))
        h.grant("r2").release()  # nothing held: the slot goes back to the store
        self.assertEqual((store.calls, store.held(h.eps[0].id)), (["release hot"], 0))

    def test_best_held_ticket_first_whatever_its_model(self) -> None:
        """If the best held ticket is of another model, then it gets the freed slot (the lease
        goes back to the store and that model asks for its own), not a later one of the
        finished request's model."""
        store = CountingStore()
        h = Harness(1, store=store)
        first = self.successResultOf(h.admit("r1"))
        other = h.admit("other", model=COLD, priority=Priority.HIGH)
        same = h.admit("same")
        store.calls.clear()
        first.release()
        self.assertEqual(self.successResultOf(other).ticket.model, COLD)
        self.assertNoResult(same)
        self.assertEqual(store.calls, ["release hot", "acquire other"])
        self.assertEqual(store.held_by_model(h.eps[0].id, HOT), 0)

    def test_unused_lease_goes_back(self) -> None:
        """If the held tickets cannot use the host that frees, then its lease goes back to the
        store when the hand-out ends, and the counts fall."""
        h = Harness(1, 1)
        a, b = h.eps
        on_a = self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        h.admit("only-b", candidates=[b])
        on_a.release()
        self.assertEqual((h.store.held(a.id), h.store.held(b.id)), (0, 1))
        self.assertEqual(h.gate.held, 1)

    def test_lease_goes_back_when_the_hand_out_fails(self) -> None:
        """If the hand-out stops on an error (a bug), then the spare lease still goes back to
        the store: no slot is lost."""
        h = Harness(1)
        first = self.successResultOf(h.admit("r1"))
        h.admit("r2")

        def broken(endpoint: Endpoint) -> bool:
            raise RuntimeError("a bug")

        h.fleet.usable = broken  # type: ignore[method-assign]
        self.assertRaises(RuntimeError, first.release)
        self.assertEqual(h.store.held(h.eps[0].id), 0)

    def test_not_reusable_is_released(self) -> None:
        """If the store says a lease may not be passed on (a shared store, its window over),
        then it is released and the held request asks for its own."""
        store = CountingStore(reusable=False)
        _, first, held = self.one_ends_one_held(store)
        self.assertIsNot(self.successResultOf(held).lease, first.lease)
        self.assertEqual(store.calls, ["release hot", "acquire hot"])


class OrderTests(SynchronousTestCase):
    def test_high_before_earlier_low(self) -> None:
        """If low requests wait and a high one arrives, then the high one is served first,
        then the low ones in arrival order."""
        h = Harness(1)
        self.successResultOf(h.admit("busy"))
        h.admit("low1", priority=Priority.LOW)
        h.admit("low2", priority=Priority.LOW)
        h.admit("normal", priority=Priority.NORMAL)
        h.admit("high", priority=Priority.HIGH)
        for _ in range(4):
            h.grant(h.on(h.eps[0])[0]).release()
        self.assertEqual(h.order(), ["busy", "high", "normal", "low1", "low2"])

    def test_retried_attempt_at_the_head(self) -> None:
        """If a failover attempt re-enters, then it goes ahead of everything of its priority
        that waits, but not ahead of a higher priority."""
        h = Harness(1)
        self.successResultOf(h.admit("busy"))
        h.admit("n1")
        h.admit("n2")
        h.admit("high", priority=Priority.HIGH)
        h.clock.advance(1)
        h.admit("retry", retry=True, arrived=990.0)
        for _ in range(4):
            h.grant(h.on(h.eps[0])[0]).release()
        self.assertEqual(h.order(), ["busy", "high", "retry", "n1", "n2"])

    def test_low_promoted_after_half_of_max_wait(self) -> None:
        """If a low request waits past half of max_wait, then it is promoted: it goes before
        normal requests that arrived after it (not before earlier ones)."""
        h = Harness(1, config=QueueConfig(max_wait=20.0))
        self.successResultOf(h.admit("busy"))
        h.admit("normal-early")
        h.admit("low", priority=Priority.LOW)
        h.clock.advance(5)
        h.admit("normal-late")
        h.clock.advance(5)  # the low one has waited 10 s: half of max_wait
        self.assertEqual(h.gate.counters["promoted"], 1)
        for _ in range(3):
            h.grant(h.on(h.eps[0])[0]).release()
        self.assertEqual(h.order(), ["busy", "normal-early", "low", "normal-late"])

    def test_low_not_promoted_before_half(self) -> None:
        """If a low request has waited less than half of max_wait, then later normal requests
        still go first."""
        h = Harness(1, config=QueueConfig(max_wait=20.0))
        self.successResultOf(h.admit("busy"))
        h.admit("low", priority=Priority.LOW)
        h.clock.advance(9)
        h.admit("normal")
        h.grant("busy").release()
        self.assertEqual(h.order(), ["busy", "normal"])
        self.assertEqual(h.gate.counters["promoted"], 0)


class BoundsTests(SynchronousTestCase):
    def test_queue_full_refused_at_once(self) -> None:
        """If max_size is 2 and both hosts are full, then of 5 more requests 2 are held (and
        served later) and 3 refused at once with a Retry-After."""
        h = Harness(1, 1, config=QueueConfig(max_size=2, max_wait=60.0))
        for i in range(2):
            self.successResultOf(h.admit(f"busy{i}"))
        more = [h.admit(f"r{i}") for i in range(5)]
        refused = [self.failureResultOf(d, AdmissionRefused) for d in more[2:]]
        for failure in refused:
            error = failure.value
            assert isinstance(error, AdmissionRefused)
            self.assertIs(error.reason, Refusal.QUEUE_FULL)
            self.assertGreaterEqual(error.retry_after, 1.0)
            self.assertEqual(error.retry_after, int(error.retry_after))
        self.assertEqual(h.gate.counters["queue_full"], 3)
        h.grant("busy0").release()
        h.grant("busy1").release()
        self.assertEqual(h.order(), ["busy0", "busy1", "r0", "r1"])

    def test_retry_not_refused_for_size(self) -> None:
        """If the queue is full, then a retried attempt is still held."""
        h = Harness(1, config=QueueConfig(max_size=0, max_wait=60.0))
        self.successResultOf(h.admit("busy"))
        self.failureResultOf(h.admit("new"), AdmissionRefused)
        retry = h.admit("retry", retry=True)
        self.assertNoResult(retry)
        h.grant("busy").release()
        self.successResultOf(retry)

    def test_held_past_max_wait_refused(self) -> None:
        """If a request is held for max_wait, then it is refused (wait_timeout, Retry-After)
        and its timers are gone; just before, it still waits."""
        h = Harness(1, config=QueueConfig(max_wait=10.0), prior=4.0)
        self.successResultOf(h.admit("busy"))
        held = h.admit("r1")
        h.clock.advance(9.9)
        self.assertNoResult(held)
        h.clock.advance(0.1)
        error = self.failureResultOf(held, AdmissionRefused).value
        assert isinstance(error, AdmissionRefused)
        self.assertIs(error.reason, Refusal.WAIT_TIMEOUT)
        self.assertEqual(error.retry_after, 4.0)  # one request's service time on one slot
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.grant("busy").release()
        self.assertEqual(h.order(), ["busy"])

    def test_one_timer_for_every_held_request(self) -> None:
        """If many requests are held, then the gate keeps one timer for all of them, each is
        still refused at its own max_wait, and a low one promoted on the way expires on time."""
        h = Harness(1, config=QueueConfig(max_wait=10.0))
        self.successResultOf(h.admit("busy"))
        early = [h.admit(f"early{i}") for i in range(20)]
        low = h.admit("low", priority=Priority.LOW)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.clock.advance(4)
        late = [h.admit(f"late{i}") for i in range(20)]
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.clock.advance(1)  # the low one is promoted at half of max_wait
        self.assertEqual(h.gate.counters["promoted"], 1)
        h.clock.advance(5)  # the early ones and the low one are due; the late ones are not
        for d in [*early, low]:
            self.failureResultOf(d, AdmissionRefused)
        for d in late:
            self.assertNoResult(d)
        h.clock.advance(4)
        for d in late:
            self.failureResultOf(d, AdmissionRefused)
        self.assertEqual(h.gate.counters["wait_timeout"], 41)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_a_shorter_max_wait_after_a_reload_is_kept(self) -> None:
        """If a reload lowers max_wait, then a request held after it is refused at its own
        deadline, before one held earlier with the longer wait."""
        h = Harness(1, config=QueueConfig(max_wait=60.0))
        self.successResultOf(h.admit("busy"))
        before = h.admit("before")
        h.gate.reconfigure(ProxyConfig(queue=QueueConfig(max_wait=5.0)))
        after = h.admit("after")
        h.clock.advance(5)
        self.failureResultOf(after, AdmissionRefused)
        self.assertNoResult(before)
        h.clock.advance(55)
        self.failureResultOf(before, AdmissionRefused)

    def test_max_wait_defaults_to_the_response_timeout(self) -> None:
        """If proxy.queue.max_wait is not set, then a request is held for as long as the
        response timeout."""
        clock = Clock()
        gate = AdmissionGate(
            MemorySlotStore(), FakeFleet(), clock, ProxyConfig(response_timeout=30.0)
        )
        candidates = tuple(endpoints(1))
        self.successResultOf(gate.admit(Ticket(candidates, HOT)))
        held = gate.admit(Ticket(candidates, HOT))
        clock.advance(29.9)
        self.assertNoResult(held)
        clock.advance(0.1)
        self.failureResultOf(held, AdmissionRefused)

    def test_retry_after_reflects_the_backlog(self) -> None:
        """If more requests of the model wait, then the Retry-After grows with them (their
        service time over the model's slots)."""
        h = Harness(2, config=QueueConfig(max_size=3, max_wait=600.0), prior=10.0)
        for i in range(2):
            self.successResultOf(h.admit(f"busy{i}"))
        for i in range(3):
            h.admit(f"r{i}")
        error = self.failureResultOf(h.admit("over"), AdmissionRefused).value
        assert isinstance(error, AdmissionRefused)
        self.assertEqual(error.retry_after, 20.0)  # (3 held + itself) * 10 s / 2 slots


class CancelTests(SynchronousTestCase):
    def test_client_leaves_while_held(self) -> None:
        """If a held request's Deferred is cancelled (its client left), then it fails with
        CancelledError, is never granted, its timers are gone, and the slot goes to the next."""
        h = Harness(1)
        self.successResultOf(h.admit("busy"))
        leaving = h.admit("leaving")
        staying = h.admit("staying")
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertEqual(h.gate.held, 1)
        h.grant("busy").release()
        self.successResultOf(staying)
        self.assertEqual(h.order(), ["busy", "staying"])
        self.assertEqual(h.gate.counters["cancelled"], 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_cancel_after_grant_changes_nothing(self) -> None:
        """If the Deferred is cancelled after the grant, then the grant stands (the pipeline
        releases it)."""
        h = Harness(1)
        d = h.admit("r1")
        grant = self.successResultOf(d)
        d.cancel()
        self.assertFalse(grant.released)
        self.assertEqual(h.gate.counters["cancelled"], 0)


class SecondHomeTests(SynchronousTestCase):
    def test_burst_before_any_service_time(self) -> None:
        """If 24 requests of a model warm on one host of three arrive before any has finished,
        then no host gets more than its cap and the cold hosts become homes (the prior says
        the backlog outlasts a load), and all are served."""
        h = Harness(4, 4, 4, prior=3.0)
        a, b, c = h.eps
        h.fleet.load = 5.0
        h.fleet.cold |= {(b, HOT), (c, HOT)}
        pending = [h.admit(f"r{i}") for i in range(24)]
        self.assertEqual([len(h.on(ep)) for ep in h.eps], [4, 4, 4])
        self.assertEqual(h.gate.counters["second_homes"], 2)
        while h.gate.held:
            h.clock.advance(1)
            for ep in h.eps:
                running = h.on(ep)
                if running:
                    h.grant(running[0]).release()
                self.assertLessEqual(len(h.on(ep)), 4)
        for ep in h.eps:
            for name in h.on(ep):
                h.grant(name).release()
        self.assertEqual(len([self.successResultOf(d) for d in pending]), 24)

    def test_time_spent_loading_is_not_service(self) -> None:
        """If the one request on a model's only home has run long because it waited for the
        model to load there, then that time does not make a second home pay: the next
        request waits for the home instead of loading the model on the free cold host."""
        h = Harness(1, 2, prior=1.0)
        a, b = h.eps
        h.fleet.load = 20.0
        h.fleet.cold |= {(a, HOT), (b, HOT)}
        self.assertGreater(self.successResultOf(h.admit("loads")).load_wait, 0)
        held = h.admit("next", candidates=(a, b))
        h.clock.advance(40)  # the load is done, its request has run 40 s (mostly loading)
        h.fleet.running[a] = 40.0
        h.gate.poke()
        self.assertNoResult(held)
        h.grant("loads").release()
        self.assertIs(self.successResultOf(held).endpoint, a)
        self.assertEqual(h.gate.counters["second_homes"], 0)

    def test_brief_wait_does_not_load(self) -> None:
        """If a rarely used model's one warm host is briefly full, then its request waits
        there instead of loading the model on an idle cold host."""
        h = Harness(1, 1, prior=0.4)
        a, b = h.eps
        h.fleet.cold.add((b, COLD))
        self.successResultOf(h.admit("first", COLD))
        held = h.admit("second", COLD)
        self.assertNoResult(held)
        h.grant("first").release()
        self.assertIs(self.successResultOf(held).endpoint, a)
        self.assertEqual(h.gate.counters["second_homes"], 0)

    def test_higher_tier_cold_host_goes_first(self) -> None:
        """If the operator ranks a cold host above the model's warm one (``load_balancer:
        priority``), then the request goes to the cold host, as routing's order says; in one
        tier the warm host with a free slot still wins."""
        h = Harness(2, 2)
        a, b = h.eps
        h.fleet.cold.add((a, HOT))
        self.assertIs(self.successResultOf(h.admit("same tier")).endpoint, b)
        h.fleet.tiers[a] = -200
        h.fleet.tiers[b] = -100
        grant = self.successResultOf(h.admit("a first"))
        self.assertIs(grant.endpoint, a)
        self.assertTrue(grant.cold)

    def test_hot_model_gets_a_second_home(self) -> None:
        """If a model's only home stays full (requests arrive as fast as it serves them),
        then the next free cold host becomes its second home, weighed over the coming
        requests although one request's own wait is shorter than the load."""
        h = Harness(2, 2, prior=0.4)
        a, b = h.eps
        h.fleet.cold.add((b, HOT))
        for i in range(2):
            self.successResultOf(h.admit(f"warm{i}"))
        for step in range(20):  # 5 per second arrive, 2 slots of 0.4 s serve 5 per second
            h.clock.advance(0.2)
            h.admit(f"x{step}")
            running = h.on(a)
            if running:
                h.grant(running[0]).release()
            if h.gate.counters["second_homes"]:
                break
        self.assertEqual(h.gate.counters["second_homes"], 1)
        self.assertTrue(h.on(b))

    def test_long_running_home_makes_a_second_home_pay(self) -> None:
        """If a model's learnt service time is short but what runs on its full home has
        already run long (streams not finished yet), then a waiting request loads it on an
        idle cold host instead of waiting: the load is shorter than the wait."""
        h = Harness(1, 1, prior=0.01)
        a, b = h.eps
        h.fleet.cold.add((b, HOT))
        h.fleet.load = 0.2
        self.successResultOf(h.admit("stream"))
        held = h.admit("next")
        self.assertNoResult(held)  # 0.01 s learnt: waiting is cheaper than a 0.2 s load
        h.clock.advance(1.0)
        h.fleet.running[a] = 1.0  # the stream has run a second
        h.admit("another")
        self.assertIs(self.successResultOf(held).endpoint, b)
        self.assertEqual(h.gate.counters["second_homes"], 1)

    def test_second_home_never_evicts_a_busy_model(self) -> None:
        """If every model in memory on the cold host is busy there, then the hot model waits
        for its home instead of loading there; once that model is idle there (and has another
        home), the hot model may load there."""
        h = Harness(1, 2, prior=5.0)
        a, b = h.eps
        h.fleet.cold.add((b, HOT))
        h.fleet.in_memory[b] = frozenset({COLD})
        self.successResultOf(h.admit("other", COLD, candidates=[b]))
        self.successResultOf(h.admit("hot0"))
        held = [h.admit(f"hot{i}") for i in range(1, 6)]
        self.assertEqual(h.on(b), ["other"])
        self.assertEqual(h.gate.counters["second_homes"], 0)
        h.grant("other").release()  # now the other model is idle there: loading may evict it
        self.assertEqual(h.gate.counters["second_homes"], 1)
        self.successResultOf(held[0])

    def test_second_home_keeps_another_models_only_copy(self) -> None:
        """If the cold host is full of idle models that have no other home, then the hot
        model does not push one out for a second home; once they have another home, it may."""
        h = Harness(1, 2, prior=5.0)
        a, b = h.eps
        h.fleet.cold |= {(b, HOT), (a, COLD), (a, "x")}  # COLD and x live on b alone
        h.fleet.in_memory[b] = frozenset({COLD, "x"})
        h.clock.advance(1)
        self.successResultOf(h.admit("hot0"))
        held = [h.admit(f"hot{i}") for i in range(1, 6)]
        self.assertEqual(h.gate.counters["second_homes"], 0)
        self.assertNoResult(held[0])
        h.fleet.cold -= {(a, COLD), (a, "x")}  # now both have another home
        h.gate.poke()
        self.assertEqual(h.gate.counters["second_homes"], 1)
        self.assertIs(self.successResultOf(held[0]).endpoint, b)

    def test_first_home_where_it_pushes_out_nothing(self) -> None:
        """If no candidate has the model, then it loads where that pushes out nothing (here:
        the host with nothing in memory), not on the first candidate, whose model is busy."""
        h = Harness(2, 2)
        a, b = h.eps
        h.fleet.cold |= {(a, COLD), (b, COLD)}
        h.fleet.in_memory[a] = frozenset({HOT})
        h.fleet.in_memory[b] = frozenset({"x", "y"})  # idle, and each has another home
        h.fleet.endpoints = [a, b, *endpoints(1, 1)]
        self.successResultOf(h.admit("hot", HOT, candidates=[a]))
        grant = self.successResultOf(h.admit("cold", COLD))
        self.assertIs(grant.endpoint, b)
        self.assertTrue(grant.cold)
        self.assertEqual(grant.load_wait, 2.0)
        self.assertEqual(h.gate.counters["cold_starts"], 1)

    def test_first_home_loads_even_where_all_is_busy(self) -> None:
        """If no candidate has the model and every host's models are busy, then it still loads
        (on the first free one): it must load somewhere."""
        h = Harness(2, 2)
        a, b = h.eps
        h.fleet.cold |= {(a, COLD), (b, COLD)}
        h.fleet.in_memory = {a: frozenset({HOT}), b: frozenset({"x", "y"})}
        self.successResultOf(h.admit("hot", HOT, candidates=[a]))
        for model in ("x", "y"):
            self.successResultOf(h.admit(model, model, candidates=[b]))
        grant = self.successResultOf(h.admit("cold", COLD))
        self.assertIs(grant.endpoint, a)  # one model there, two on b: room is likelier on a

    def test_first_home_waits_for_the_better_host(self) -> None:
        """If the host where a load pushes out nothing is full, then the request waits for it
        rather than push out the only copy of an idle model elsewhere."""
        h = Harness(1, 1)
        a, b = h.eps
        h.fleet.cold |= {(a, COLD), (b, COLD), (a, "x"), (a, "y")}
        h.fleet.in_memory = {b: frozenset({"x", "y"})}  # two idle models, their only copies
        self.successResultOf(h.admit("busy", "z", candidates=[a]))
        held = h.admit("cold", COLD)
        self.assertNoResult(held)
        h.grant("busy").release()
        self.assertIs(self.successResultOf(held).endpoint, a)


class SpareCopyTests(SynchronousTestCase):
    def second_homes(self, x_requests: int) -> int:
        """HOT lives on a (1 slot) and waits; b and c both hold x and y, idle now; x has had
        ``x_requests`` requests, 4 a second, each 1 s (the prior)."""
        h = Harness(1, 2, 2, prior=1.0)
        a, b, c = h.eps
        h.fleet.cold |= {(b, HOT), (c, HOT), (a, "x"), (a, "y")}
        h.fleet.in_memory = {b: frozenset({"x", "y"}), c: frozenset({"x", "y"})}
        for i in range(x_requests):
            h.clock.advance(0.25)
            self.successResultOf(h.admit(f"x{i}", "x", candidates=[c, b])).release()
        h.clock.advance(1)
        self.successResultOf(h.admit("hot0"))
        for i in range(1, 6):
            h.admit(f"hot{i}")
        return h.gate.counters["second_homes"]

    def test_busy_model_copy_is_not_spare(self) -> None:
        """If the cold host's idle model has another home but its traffic needs both, then it
        is not pushed out for another model's second home."""
        self.assertEqual(self.second_homes(40), 0)

    def test_quiet_model_copy_is_spare(self) -> None:
        """If that model's other home carries its traffic easily, then its copy may go (here
        on both hosts: five held requests on one slot pay for two more homes)."""
        self.assertEqual(self.second_homes(0), 2)


class StickyTests(SynchronousTestCase):
    def test_waits_for_full_pin_while_cheaper_than_moving(self) -> None:
        """If the pinned host is full and its expected wait is below the cost of moving, then
        the request waits for it even when another host frees."""
        h = Harness(1, 1, prior=2.0)
        a, b = h.eps
        self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        pinned = h.admit("pinned", pinned=a, move_cost=10.0)
        h.clock.advance(1)
        h.grant("on-b").release()
        self.assertNoResult(pinned)
        h.clock.advance(1)
        h.grant("on-a").release()
        self.assertIs(self.successResultOf(pinned).endpoint, a)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_moves_once_waiting_costs_more_than_moving(self) -> None:
        """If the pinned host stays full for longer than the cost of moving, then the request
        takes a free host."""
        h = Harness(1, 1, prior=2.0)
        a, b = h.eps
        self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        pinned = h.admit("pinned", pinned=a, move_cost=3.0)
        h.grant("on-b").release()
        h.clock.advance(2.9)
        self.assertNoResult(pinned)
        h.clock.advance(0.1)
        self.assertIs(self.successResultOf(pinned).endpoint, b)

    def test_expected_wait_above_moving_cost_moves_at_once(self) -> None:
        """If the pinned host's expected wait is above the cost of moving, then the request
        does not wait for it."""
        h = Harness(1, 1, prior=20.0)
        a, b = h.eps
        self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        pinned = h.admit("pinned", pinned=a, move_cost=3.0)
        h.grant("on-b").release()
        self.assertIs(self.successResultOf(pinned).endpoint, b)

    def test_pin_gone_moves_at_once(self) -> None:
        """If the pinned host leaves rotation while a request waits for it, then the request
        takes the next free host without waiting out the cost of moving."""
        h = Harness(1, 1, prior=2.0)
        a, b = h.eps
        self.successResultOf(h.admit("on-a", candidates=[a]))
        self.successResultOf(h.admit("on-b", candidates=[b]))
        pinned = h.admit("pinned", pinned=a, move_cost=10.0)
        h.fleet.down.add(a)
        h.grant("on-b").release()
        self.assertIs(self.successResultOf(pinned).endpoint, b)

    def test_free_pin_taken_at_once(self) -> None:
        """If the pinned host has a free slot, then the request goes there (routing put it
        first)."""
        h = Harness(1, 1)
        a, b = h.eps
        grant = self.successResultOf(h.admit("r", candidates=[b, a], pinned=b, move_cost=5.0))
        self.assertIs(grant.endpoint, b)


class OffTests(SynchronousTestCase):
    def test_queue_off_sends_at_once_however_full(self) -> None:
        """If the queue is off, then every request goes at once to its first usable
        candidate, above the cap, and nothing is held or timed."""
        h = Harness(1, 1, config=QueueConfig(enabled=False))
        grants = [self.successResultOf(h.admit(f"r{i}")) for i in range(5)]
        self.assertEqual({g.endpoint.name for g in grants}, {"a"})
        self.assertEqual(h.store.held(h.eps[0].id), 5)
        self.assertEqual(h.gate.held, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_turning_the_queue_off_lets_held_through(self) -> None:
        """If the queue is turned off by a reload, then every held request goes at once."""
        h = Harness(1)
        self.successResultOf(h.admit("busy"))
        held = h.admit("held")
        h.gate.reconfigure(ProxyConfig(queue=QueueConfig(enabled=False)))
        self.assertIs(self.successResultOf(held).endpoint, h.eps[0])
        self.assertEqual(h.clock.getDelayedCalls(), [])


class LearningTests(SynchronousTestCase):
    def test_prior_until_a_request_finished(self) -> None:
        """If no request of a model has finished, then its service time is the prior; a
        served warm request teaches it, a failed one or a load does not."""
        h = Harness(2, prior=3.0)
        self.assertEqual(h.gate.service_time(HOT), 3.0)
        grant = self.successResultOf(h.admit("r1"))
        h.clock.advance(0.5)
        grant.release(served=False)
        self.assertEqual(h.gate.service_time(HOT), 3.0)
        grant = self.successResultOf(h.admit("r2"))
        h.clock.advance(0.5)
        grant.release()
        self.assertEqual(h.gate.service_time(HOT), 0.5)

    def test_load_taken_off(self) -> None:
        """If a request that loaded its model says how long the load took, then the rest of
        its time teaches the service time; without that, a request that may have loaded
        teaches nothing."""
        h = Harness(2, prior=3.0)
        h.fleet.cold.add((h.eps[0], HOT))
        grant = self.successResultOf(h.admit("r1"))
        self.assertTrue(grant.load_wait > 0)
        h.fleet.cold.add((h.eps[0], HOT))  # still loading, as far as the next one knows
        other = self.successResultOf(h.admit("r2"))
        h.clock.advance(2.5)
        other.release()
        self.assertEqual(h.gate.service_time(HOT), 3.0)
        grant.release(loaded=2.0)
        self.assertEqual(h.gate.service_time(HOT), 0.5)

    def test_configured_default_without_profile_prior(self) -> None:
        """If the profile gives no service time, then the configured default is the prior."""
        h = Harness(1, config=QueueConfig(default_service_time=7.0), prior=None)
        self.assertEqual(h.gate.service_time(HOT), 7.0)


class FleetChangeTests(SynchronousTestCase):
    def test_candidates_gone_replan(self) -> None:
        """If every candidate of a held request leaves rotation, then a poke refuses it with
        REPLAN (the pipeline plans again)."""
        h = Harness(1, 1)
        a, b = h.eps
        self.successResultOf(h.admit("busy", candidates=[a]))
        held = h.admit("held", candidates=[a])
        other = h.admit("other", candidates=[a, b])
        h.fleet.down.add(a)
        h.gate.poke()
        error = self.failureResultOf(held, AdmissionRefused).value
        assert isinstance(error, AdmissionRefused)
        self.assertIs(error.reason, Refusal.REPLAN)
        self.assertIs(self.successResultOf(other).endpoint, b)

    def test_poke_hands_out_slots_that_now_suit(self) -> None:
        """If a host comes back into rotation, then a poke gives its free slot to a held
        request."""
        h = Harness(1, 1)
        a, b = h.eps
        h.fleet.down.add(b)
        self.successResultOf(h.admit("busy"))
        held = h.admit("held")
        h.fleet.down.discard(b)
        h.gate.poke()
        self.assertIs(self.successResultOf(held).endpoint, b)


class LaterStore:
    """An ``ISlotStore`` whose calls complete when the test says (a network store)."""

    def __init__(self) -> None:
        self.inner = MemorySlotStore()
        self.asked: list[tuple[Deferred[Lease | None], tuple[str, str, int, int]]] = []
        self.answer: Callable[[tuple[str, str, int, int]], Deferred[Lease | None]] | None = None

    def acquire(
        self, endpoint: str, model: str, endpoint_cap: int, model_cap: int
    ) -> Deferred[Lease | None]:
        args = (endpoint, model, endpoint_cap, model_cap)
        if self.answer is not None:
            return self.answer(args)
        d: Deferred[Lease | None] = Deferred()
        self.asked.append((d, args))
        return d

    def answer_all(self) -> None:
        asked, self.asked = self.asked, []
        for d, args in asked:
            d.callback(self.successResultOf_inner(args))

    def successResultOf_inner(self, args: tuple[str, str, int, int]) -> Lease | None:
        results: list[Lease | None] = []
        self.inner.acquire(*args).addCallback(results.append)
        return results[0]

    def release(self, lease: Lease) -> Deferred[None]:
        return self.inner.release(lease)

    def held(self, endpoint: str) -> int:
        return self.inner.held(endpoint)

    def held_by_model(self, endpoint: str, model: str) -> int:
        return self.inner.held_by_model(endpoint, model)

    def reusable(self, lease: Lease) -> bool:
        return self.inner.reusable(lease)

    def add_listener(self, listener: SlotListener) -> None:
        self.inner.add_listener(listener)


class StoreContractTests(SynchronousTestCase):
    def test_answer_later_counts_the_slot_meanwhile(self) -> None:
        """If the store answers later, then the slot is reserved meanwhile (a second request
        is held, not sent to the same last slot) and the grant comes with the answer."""
        store = LaterStore()
        h = Harness(1, store=store)  # type: ignore[arg-type]
        first = h.admit("r1")
        second = h.admit("r2")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(store.asked), 1)
        store.answer_all()
        self.assertIs(self.successResultOf(first).endpoint, h.eps[0])
        self.assertNoResult(second)

    def test_cancelled_while_the_store_answers(self) -> None:
        """If the client leaves while the store is asked, then the slot it gets is given
        back at once and the request is never granted."""
        store = LaterStore()
        h = Harness(1, store=store)  # type: ignore[arg-type]
        d = h.admit("r1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        store.answer_all()
        self.assertEqual(store.held(h.eps[0].id), 0)
        self.assertEqual(h.order(), [])

    def test_store_full_after_all(self) -> None:
        """If a shared store says full (another process took the slot), then the request is
        held again and goes when a slot frees."""
        store = LaterStore()
        h = Harness(1, store=store)  # type: ignore[arg-type]
        store.answer = lambda args: succeed(None)
        held = h.admit("r1")
        self.assertNoResult(held)
        self.assertEqual(h.gate.held, 1)
        store.answer = None
        elsewhere = store.successResultOf_inner((h.eps[0].id, HOT, 1, 1))
        assert elsewhere is not None
        store.release(elsewhere)
        store.answer_all()
        self.assertIs(self.successResultOf(held).endpoint, h.eps[0])

    def test_store_full_at_once_still_bounded_by_max_wait(self) -> None:
        """If a shared store says full for a request that found a free slot as far as this
        process knew, then it is held like any other: refused after max_wait, counted as a
        wait, nothing left scheduled."""
        store = LaterStore()
        h = Harness(1, store=store, config=QueueConfig(max_wait=10.0))  # type: ignore[arg-type]
        store.answer = lambda args: succeed(None)
        held = h.admit("r1")
        self.assertEqual(h.gate.held, 1)
        h.clock.advance(10)
        self.assertEqual(self.failureResultOf(held, AdmissionRefused).value.reason,
                         Refusal.WAIT_TIMEOUT)  # fmt: skip
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_slow_answer_is_no_wait(self) -> None:
        """If the store takes time to answer a request that was never held, then it counts as
        let through at once, having waited nothing."""
        store = LaterStore()
        h = Harness(1, store=store)  # type: ignore[arg-type]
        d = h.admit("r1")
        h.clock.advance(0.002)
        store.answer_all()
        self.assertEqual(self.successResultOf(d).waited, 0.0)
        self.assertEqual((h.gate.counters["at_once"], h.gate.counters["after_wait"]), (1, 0))

    def test_store_failure_fails_open(self) -> None:
        """If the store fails, then the request goes through uncounted (logged), and its
        release frees nothing in the store."""
        store = LaterStore()
        h = Harness(1, store=store)  # type: ignore[arg-type]
        store.answer = lambda args: fail(Failure(ConnectionError("store down")))
        grant = self.successResultOf(h.admit("r1"))
        self.assertIsNone(grant.lease)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        grant.release()
        self.assertEqual(store.held(h.eps[0].id), 0)


class StatsTests(SynchronousTestCase):
    def test_snapshot_and_depth(self) -> None:
        """If requests are held, then the snapshot and the depth gauge show them per model and
        priority with the oldest wait, and the wait histogram counts each grant."""
        h = Harness(1)
        self.successResultOf(h.admit("busy"))
        h.admit("low", priority=Priority.LOW)
        h.clock.advance(2)
        h.admit("high", COLD, priority=Priority.HIGH)
        snap = h.gate.snapshot()
        self.assertEqual(snap["held"], 2)
        self.assertEqual(snap["models"][HOT]["held"], {"high": 0, "normal": 0, "low": 1})
        self.assertEqual(snap["models"][HOT]["oldest_wait_s"], 2.0)
        self.assertEqual(snap["models"][COLD]["held"]["high"], 1)
        self.assertEqual(h.gate.depth(), {(HOT, "low"): 1, (COLD, "high"): 1})
        self.assertEqual(snap["totals"]["admitted"], 3)
        h.grant("busy").release()
        self.assertEqual(h.gate.waits[Priority.HIGH].count, 1)
        self.assertEqual(h.gate.waits[Priority.HIGH].sum, 0.0)
        self.assertEqual(h.gate.waits[Priority.NORMAL].count, 1)


class RouterViewTests(SynchronousTestCase):
    def test_reads_the_router(self) -> None:
        """If a model is loaded on one host, loading on a second and cold on a third, then
        the view says so with routing's load figures; a host out of rotation is not usable."""
        fleet = Fleet("a", "b", "c")
        a, b, c = (fleet.by_name[n] for n in "abc")
        view = RouterView(fleet.router)
        verifyObject(IFleetView, view)
        fleet.catalogue.set_loaded(a, [MODEL])
        fleet.catalogue.mark_loading(b, MODEL, fleet.clock.seconds() - 1.0)
        self.assertEqual(view.load_cost(a, MODEL), 0.0)
        self.assertEqual(view.load_cost(b, MODEL), 4.0)  # the 5 s default, 1 s under way
        self.assertEqual(view.load_cost(c, MODEL), 5.0)
        self.assertEqual([view.hosting(ep, MODEL) for ep in (a, b, c)], [True, True, False])
        self.assertEqual(view.loaded(a), frozenset({MODEL}))
        self.assertEqual(view.loaded(b), frozenset({MODEL}))  # loading takes memory too
        self.assertEqual(view.homes(MODEL), [a, b])
        self.assertTrue(view.usable(c))
        fleet.registry.set_status(c, EndpointStatus.OFFLINE)
        self.assertFalse(view.usable(c))

    def test_verify_implementations(self) -> None:
        """The fake fleet and the memory store implement their interfaces."""
        verifyObject(IFleetView, FakeFleet())
        verifyObject(ISlotStore, MemorySlotStore())
