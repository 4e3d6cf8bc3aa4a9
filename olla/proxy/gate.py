# -*- test-case-name: tests.test_gate -*-
"""The admission gate: never more of olla's requests on an endpoint than it has slots, and the
rest held in olla until the first slot that suits them frees.

The pipeline plans a request (``Router.plan``: its candidates, best first) and asks the gate to
let it through::

    d = gate.admit(Ticket(plan.candidates, model, native=plan.rewrite, priority=...))
    d.addCallback(lambda grant: ...)   # send it to grant.endpoint; grant.release() when done
    d.addErrback(...)                  # AdmissionRefused: 503 with Retry-After in its dialect
    request.notifyFinish().addErrback(lambda _: d.cancel())   # the client left while held

Rules, each enforced here and nowhere else:

- **Caps.** An endpoint never holds more grants than its slots (``IFleetView.slots``: its
  configured ``max_concurrency``, else what the backend reports, else the profile's
  ``default_slots``), nor more for one model than that model's cap there (``cap_for``: the
  profile's ``concurrency_limits`` / ``model_sizes[].max_concurrent`` for its size class).
  Slots are counted by an ``ISlotStore``.
- **At once or held.** A ticket goes at once to the first of its candidates, in the plan's
  order, that has a free slot and suits it; otherwise it is held.
- **Late binding.** When a slot frees, the gate walks the held tickets best first (priority, a
  retried attempt ahead of the rest of its priority, then arrival) and gives the slot to the first
  one that endpoint suits: the choice is made then, among every host of each model, not when the
  request arrived.
- **What suits.** A host that has the model in memory, or is loading it, suits it. A cold one
  suits it as its first home (no candidate has it: where the load pushes out least) or as a
  second home (it pays over the coming requests and pushes out nothing needed):
  ``olla.proxy.placement``. The plan's order (``Router.plan``: warm before cold, by expected
  wait) is kept, never re-ranked: the gate only skips what is full or does not suit.
- **Bounds.** Over ``max_size`` held, a new ticket is refused at once; one held past
  ``max_wait`` is refused then. Both are ``AdmissionRefused`` with a ``Retry-After`` estimate
  (the model's backlog over its slots). A retried attempt is never refused for size.
- **Priorities.** ``high`` before ``normal`` before ``low``, FIFO within each; a ``low`` ticket
  held past half of ``max_wait`` is promoted to ``normal`` (in arrival order), so nothing starves.
- **Stickiness.** A ticket pinned to a full host waits for that host alone while its expected wait
  there (the tickets waiting for it and its service time over its slots) is below the ticket's
  ``move_cost``, and at most ``move_cost``; then any candidate suits it.
- **Handing a slot on.** A finished request's slot goes to the best held ticket as any freed
  slot does; when that ticket is of the same model, it takes the lease over without a round trip
  to the store (``ISlotStore.reusable``: a shared store allows it for a while after it granted
  the lease, so that other processes' held tickets get their turn at it). A slot that no held
  ticket takes is given back when the hand-out ends.
- **Cancellation.** Cancelling the ``admit`` Deferred drops a held ticket: it is never sent.
- **Off** (``proxy.queue.enabled: false``): every ticket goes at once to its first usable
  candidate, however full: olla as it was before the gate, counted but never held or refused.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import operator
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from olla.config import ProxyConfig
from olla.fleet.endpoints import Endpoint
from olla.proxy.admission import AdmissionRefused, Grant, Refusal, Ticket
from olla.proxy.demand import Demand
from olla.proxy.fleetview import IFleetView
from olla.proxy.placement import Placement
from olla.proxy.slots import ISlotStore, Lease
from olla.telemetry.stats import Histogram
from olla.util.deadline import SLACK
from olla.util.priority import Priority

#: seconds; a held request's wait, from none to the default ``max_wait``
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
K = TypeVar("K")
#: a per-model cap: ``(endpoint, model name there)`` -> slots, None for the endpoint's own
CapFunction = Callable[[Endpoint, str], "int | None"]


class _Fit(enum.Enum):
    YES = "yes"
    #: not for this ticket (it waits for its pinned host), maybe for others of its model
    NOT_THIS = "not_this"
    #: not for any ticket of this model with these candidates (its cap there is reached, or
    #: a load does not pay)
    NOT_MODEL = "not_model"


@dataclass(slots=True)
class _Binding:
    """A ticket on its way to a slot on ``endpoint``, for ``model`` there."""

    entry: _Entry
    endpoint: Endpoint
    model: str
    cold: bool  # neither in memory there nor loading: this request loads it
    second: bool  # ... while another candidate has it (a second home)


class _State(enum.Enum):
    HELD = "held"
    BINDING = "binding"  # a slot was asked of the store, the answer is not in yet
    DONE = "done"  # granted, refused or cancelled


@dataclass(eq=False)
class _Entry:
    """The gate's record of one ticket."""

    ticket: Ticket
    deferred: Deferred[Grant]
    entered: float  # when the gate took it (``max_wait`` and promotion count from here)
    seq: int
    priority: Priority  # the ticket's, or NORMAL once a LOW one is promoted
    by_id: dict[str, Endpoint]  # the candidates by ``Endpoint.id``
    state: _State = _State.HELD
    #: waits for ``ticket.pinned`` alone until then (None: any candidate suits)
    exclusive_until: float | None = None
    cancelled: bool = False
    #: it waited in the queue (for the counters: a store's answer taking real time is no wait)
    was_held: bool = False
    #: refused when still held then (``max_wait`` after it was first held)
    expires_at: float = math.inf
    #: a low one is promoted when still held then (half of ``max_wait``)
    promote_at: float = math.inf
    #: its pin's timer (see ``_wait_for_pin``); the gate's one wake-up times the rest
    timers: list[IDelayedCall] = field(default_factory=list)

    #: its place in the queue: priority, retries first, arrival, then the gate's order (set
    #: once, and again when it is promoted: ``insort`` reads it at every comparison)
    key: tuple[int, int, float, int] = field(init=False)

    def __post_init__(self) -> None:
        self.placed()

    def placed(self) -> None:
        """Work out ``key`` again (its priority changed)."""
        arrived = self.ticket.arrived if self.ticket.arrived is not None else self.entered
        self.key = (self.priority.value, 0 if self.ticket.retry else 1, arrived, self.seq)


_QUEUE_ORDER = operator.attrgetter("key")

#: the counters ``snapshot()`` reports, all zero at start
COUNTERS = (
    "admitted",  # tickets asked for
    "at_once",  # let through without being held
    "after_wait",  # held, then let through
    "queue_full",  # refused at once: max_size held
    "wait_timeout",  # refused after max_wait
    "replan",  # refused: no candidate left in rotation
    "cancelled",  # dropped while held (the client left)
    "promoted",  # low tickets promoted to normal after half of max_wait
    "cold_starts",  # let through to a host that loads the model (its first home)
    "second_homes",  # ... while other hosts had it (a second home paid)
)


class AdmissionGate:
    """Caps, held tickets, late binding and priorities (see the module docstring)."""

    _log = Logger()

    def __init__(
        self,
        store: ISlotStore,
        fleet: IFleetView,
        clock: IReactorTime,
        config: ProxyConfig | None = None,
        *,
        cap_for: CapFunction | None = None,
        service_prior: Callable[[str], float | None] | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._clock = clock
        self._config = (config or ProxyConfig()).queue
        self._max_wait = (config or ProxyConfig()).queue_max_wait
        self._cap_for = cap_for
        #: the profile's service time for a model (None: the configured default)
        self._service_prior = service_prior
        self._demand = Demand(self._prior)
        self._queue: list[_Entry] = []  # held, best first (sorted by ``_Entry.key``)
        self._seq = itertools.count()
        #: slots asked of the store and not answered yet: counted as held meanwhile
        self._reserved: Counter[str] = Counter()
        self._reserved_model: Counter[tuple[str, str]] = Counter()
        self._held_by: Counter[tuple[str, Priority]] = Counter()  # (model, asked priority)
        self._held_models: Counter[str] = Counter()  # the same per model
        #: this process's grants not released yet, per endpoint id
        self._live: dict[str, set[Grant]] = {}
        self._placement = Placement(
            fleet, store, self._demand, clock, self.cap, self._held_models, self._running
        )
        self._pending: list[str] = []  # endpoint ids whose free slots are still to hand out
        #: leases of finished requests, per endpoint id, for the hand-out running now: a held
        #: ticket of the same model takes one over; the rest go back to the store after it
        self._spare: dict[str, list[Lease]] = {}
        self._dispatching = False
        #: the next time a held ticket is due to expire or be promoted (see ``_wake``)
        self._wakeup: IDelayedCall | None = None
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        #: per asked priority: how long let-through tickets were held (0 for at once)
        self.waits = {p: Histogram(WAIT_BUCKETS) for p in Priority}
        store.add_listener(self._slot_freed)

    # ------------------------------------------------------------------ settings

    def reconfigure(self, config: ProxyConfig) -> None:
        """``proxy.queue`` (and the response timeout, ``max_wait``'s default) after a reload:
        new bounds apply to tickets admitted from now on; turning the queue off lets every held
        ticket through at once."""
        self._config = config.queue
        self._max_wait = config.queue_max_wait
        if not self._config.enabled:
            for entry in list(self._queue):
                self._dequeue(entry)
                self._let_through(entry)

    def _prior(self, model: str) -> float:
        prior = self._service_prior(model) if self._service_prior is not None else None
        return prior if prior is not None and prior > 0 else self._config.default_service_time

    def cap(self, endpoint: Endpoint, model: str) -> int:
        """Slots ``model`` may use on ``endpoint``: its cap there, within the endpoint's."""
        own = self._cap_for(endpoint, model) if self._cap_for is not None and model else None
        slots = self._fleet.slots(endpoint)
        return slots if own is None else max(1, min(own, slots))

    # ------------------------------------------------------------------ the pipeline's calls

    def admit(self, ticket: Ticket) -> Deferred[Grant]:
        """A Deferred that fires with a ``Grant`` when the ticket may go (at once, or when a
        slot frees), or fails with ``AdmissionRefused``; cancel it to drop a held ticket."""
        if not ticket.candidates:
            raise ValueError("a ticket needs at least one candidate")
        now = self._clock.seconds()
        self.counters["admitted"] += 1
        if not ticket.retry:  # a failover attempt is the same request again, not more demand
            self._demand.arrived(ticket.demand_key, now)
        entry = _Entry(
            ticket,
            Deferred(lambda _: self._cancel(entry)),
            now,
            next(self._seq),
            ticket.priority,
            {ep.id: ep for ep in reversed(ticket.candidates)},  # the first of an id wins
        )
        if not self._config.enabled:
            self._let_through(entry)
            return entry.deferred
        self._wait_for_pin(entry, now)
        self._enqueue(entry)
        self._dispatch(ep.id for ep in ticket.candidates)
        if entry.state is _State.HELD:
            self._held(entry, now)
        return entry.deferred

    def poke(self) -> None:
        """The fleet changed (health, circuits, loads, a reload): refuse the tickets none of
        whose candidates can take requests any more (``REPLAN``), then hand out free slots."""
        for entry in list(self._queue):
            if not any(self._fleet.usable(ep) for ep in entry.ticket.candidates):
                self._dequeue(entry)
                self._refuse(entry, Refusal.REPLAN, "no endpoint of this request is available")
        self._dispatch({ep_id for entry in self._queue for ep_id in entry.by_id})

    # ------------------------------------------------------------------ holding

    def _enqueue(self, entry: _Entry) -> None:
        bisect.insort(self._queue, entry, key=_QUEUE_ORDER)
        self._held_by[(entry.ticket.demand_key, entry.ticket.priority)] += 1
        self._held_models[entry.ticket.demand_key] += 1

    def _dequeue(self, entry: _Entry) -> None:
        self._queue.remove(entry)
        _less(self._held_by, (entry.ticket.demand_key, entry.ticket.priority))
        _less(self._held_models, entry.ticket.demand_key)
        if not self._queue and self._wakeup is not None:  # nothing left to time
            self._wakeup.cancel()
            self._wakeup = None

    def _held(self, entry: _Entry, now: float) -> None:
        """``entry`` could not go at once: refuse it if the queue is over its size, else time
        its wait (and its promotion, for a low one)."""
        config = self._config
        if not entry.ticket.retry and len(self._queue) > config.max_size:
            self._dequeue(entry)
            self._refuse(
                entry,
                Refusal.QUEUE_FULL,
                f"all endpoints are busy and {config.max_size} requests are waiting already",
            )
            return
        self._time_wait(entry)

    def _time_wait(self, entry: _Entry) -> None:
        """``entry`` is held from now: time its ``max_wait`` (and its promotion, a low one)."""
        entry.was_held = True
        now = self._clock.seconds()
        entry.expires_at = due = now + self._max_wait
        if entry.priority is Priority.LOW:
            entry.promote_at = due = now + self._max_wait / 2
        self._wake(due, now)

    def _wake(self, due: float, now: float) -> None:
        """Sweep the held tickets at ``due`` (or sooner, as armed already). One timer for the
        queue, not one per held ticket: most are let through long before theirs, and a timer
        costs more than the rest of holding. A ticket that leaves early leaves its time
        behind; the sweep then finds nothing due and waits for the next."""
        wakeup = self._wakeup
        if wakeup is None:
            self._wakeup = self._clock.callLater(max(0.0, due - now), self._sweep)
        elif due < wakeup.getTime():
            wakeup.reset(max(0.0, due - now))

    def _sweep(self) -> None:
        """Refuse the held tickets past ``max_wait``, promote the low ones past half of it, and
        wake again for the next one due."""
        self._wakeup = None
        now = self._clock.seconds()
        due = now + SLACK
        later = math.inf
        for entry in list(self._queue):
            if entry.state is not _State.HELD:
                continue
            if entry.expires_at <= due:
                self._expire(entry)
                continue
            if entry.promote_at <= due:
                self._promote(entry)
            later = min(later, entry.expires_at, entry.promote_at)
        if later < math.inf:
            self._wake(later, now)

    def _wait_for_pin(self, entry: _Entry, now: float) -> None:
        """A ticket pinned to a full host waits for it alone while that is cheaper than moving."""
        ticket = entry.ticket
        pinned = ticket.pinned
        if pinned is None or ticket.move_cost <= 0 or pinned not in ticket.candidates:
            return
        if not self._fleet.usable(pinned) or self._has_room(pinned, ticket.model_on(pinned)):
            return
        model = ticket.model_on(pinned)
        ahead = sum(1 for e in self._queue if e.ticket.pinned is pinned and e.exclusive_until)
        expected = (ahead + 1) * self._demand.service_time(ticket.demand_key)
        expected /= self.cap(pinned, model)
        if expected < ticket.move_cost:
            entry.exclusive_until = now + ticket.move_cost
            entry.timers.append(self._clock.callLater(ticket.move_cost, self._unpin, entry))

    def _unpin(self, entry: _Entry) -> None:
        """Waited as long as moving costs: any candidate suits it now."""
        entry.exclusive_until = None
        if entry.state is _State.HELD:
            self._dispatch(entry.by_id)

    def _promote(self, entry: _Entry) -> None:
        entry.promote_at = math.inf
        self._queue.remove(entry)
        entry.priority = Priority.NORMAL
        entry.placed()
        bisect.insort(self._queue, entry, key=_QUEUE_ORDER)
        self.counters["promoted"] += 1

    def _expire(self, entry: _Entry) -> None:
        self._dequeue(entry)
        waited = self._clock.seconds() - entry.entered
        self._refuse(
            entry,
            Refusal.WAIT_TIMEOUT,
            f"no endpoint had a free slot for this request within {waited:.0f}s",
        )

    def _cancel(self, entry: _Entry) -> None:
        """The ``admit`` Deferred was cancelled (the client left): never send it. Deferred
        itself fails it with ``CancelledError``."""
        if entry.state is _State.DONE:
            return
        self.counters["cancelled"] += 1
        entry.cancelled = True
        if entry.state is _State.HELD:
            self._dequeue(entry)
            self._finish(entry)
        # BINDING: the store's answer comes back to a cancelled entry and is given back

    def _refuse(self, entry: _Entry, reason: Refusal, message: str) -> None:
        self.counters[reason.value] += 1
        self._finish(entry)
        retry_after = self._retry_after(entry.ticket)
        self._log.debug(
            "request {request_id} refused by the admission queue ({reason}): {message}",
            request_id=entry.ticket.request_id,
            reason=reason.value,
            message=message,
            model=entry.ticket.model,
            retry_after=retry_after,
        )
        entry.deferred.errback(AdmissionRefused(reason, message, retry_after))

    def _finish(self, entry: _Entry) -> None:
        entry.state = _State.DONE
        for timer in entry.timers:
            if timer.active():
                timer.cancel()
        entry.timers.clear()

    def _retry_after(self, ticket: Ticket) -> float:
        """When this ticket's model may have a free slot: its backlog over its slots."""
        key = ticket.demand_key
        held = self._held_models[key]
        slots = sum(
            self.cap(ep, ticket.model_on(ep)) for ep in ticket.candidates if self._fleet.usable(ep)
        )
        wait = (held + 1) * self._demand.service_time(key) / max(1, slots)
        return float(max(1, math.ceil(min(wait, self._max_wait))))

    # ------------------------------------------------------------------ handing out slots

    def _slot_freed(self, endpoint_id: str) -> None:
        self._dispatch((endpoint_id,))

    def _dispatch(self, endpoint_ids: Iterable[str]) -> None:
        """Hand the free slots of these endpoints to the held tickets, best first. Re-entrant
        calls (a grant's callback that releases at once) queue their endpoints for the loop
        already running."""
        for endpoint_id in endpoint_ids:
            if endpoint_id not in self._pending:
                self._pending.append(endpoint_id)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                self._fill(self._pending.pop(0))
        finally:
            self._dispatching = False
            while self._spare:  # no held ticket took these (or a bug stopped the hand-out)
                for lease in self._spare.popitem()[1]:
                    self._store.release(lease).addErrback(self._release_failed)

    def _fill(self, endpoint_id: str) -> None:
        """Give ``endpoint_id``'s free slots to the best held tickets it suits."""
        #: (model, candidates) no ticket of which this endpoint suits now
        refused: set[tuple[str, tuple[Endpoint, ...]]] = set()
        now = self._clock.seconds()
        for entry in list(self._queue):
            endpoint = entry.by_id.get(endpoint_id)
            if endpoint is None or entry.state is not _State.HELD:
                continue
            if not self._has_room(endpoint, ""):
                return
            model = entry.ticket.model_on(endpoint)
            alike = (model, entry.ticket.candidates)
            if alike in refused:
                continue
            fit = self._fits(entry, endpoint, model, now)
            if fit is _Fit.NOT_MODEL:
                refused.add(alike)
            elif fit is _Fit.YES:
                self._bind(entry, endpoint, model)
                if entry.state is _State.HELD:  # the store said full after all
                    return

    def _has_room(self, endpoint: Endpoint, model: str) -> bool:
        """A free slot on ``endpoint`` (for ``model``, when one is named), counting the slots
        asked for and not answered yet."""
        store, eid = self._store, endpoint.id
        spare = self._spare.get(eid)  # given back in this hand-out: free
        held = store.held(eid) + self._reserved.get(eid, 0) - (len(spare) if spare else 0)
        if held >= self._fleet.slots(endpoint):
            return False
        if not model:
            return True
        taken = store.held_by_model(eid, model) + self._reserved_model.get((eid, model), 0)
        if spare:
            taken -= sum(1 for lease in spare if lease.model == model)
        return taken < self.cap(endpoint, model)

    def _fits(self, entry: _Entry, endpoint: Endpoint, model: str, now: float) -> _Fit:
        """Whether ``endpoint`` (with a free slot) suits ``entry`` now."""
        ticket = entry.ticket
        if not self._fleet.usable(endpoint):
            return _Fit.NOT_MODEL
        pinned = ticket.pinned
        if entry.exclusive_until is not None and now < entry.exclusive_until:
            if endpoint is not pinned and pinned is not None and self._fleet.usable(pinned):
                return _Fit.NOT_THIS
        if not self._has_room(endpoint, model):
            return _Fit.NOT_MODEL
        if self._fleet.hosting(endpoint, model):
            return _Fit.YES
        if self._placement.load_pays(ticket, endpoint, model, now):
            return _Fit.YES
        return _Fit.NOT_MODEL

    def _bind(self, entry: _Entry, endpoint: Endpoint, model: str) -> None:
        """Give ``entry`` a spare lease of its model there, else ask the store for the slot (the
        entry is out of the queue until it answers)."""
        self._dequeue(entry)
        entry.state = _State.BINDING
        cold = not self._fleet.hosting(endpoint, model)
        second = cold and any(
            self._fleet.hosting(ep, entry.ticket.model_on(ep)) for ep in entry.ticket.candidates
        )
        binding = _Binding(entry, endpoint, model, cold, second)
        lease = self._take_spare(endpoint.id, model)
        if lease is not None:
            self._grant(binding, lease)
        else:
            self._ask(binding, self._fleet.slots(endpoint), self.cap(endpoint, model))

    def _take_spare(self, eid: str, model: str) -> Lease | None:
        """A spare lease of ``model`` on ``eid``, taken over. Without one, a spare of another
        model there goes back to the store, so that the slot it held is free to ask for."""
        spare = self._spare.get(eid)
        if not spare:
            return None
        lease = next((lease for lease in spare if lease.model == model), None)
        if lease is None:
            self._store.release(spare.pop()).addErrback(self._release_failed)
        else:
            spare.remove(lease)
        if not spare:
            del self._spare[eid]
        return lease

    def _ask(self, binding: _Binding, slots: int, cap: int) -> None:
        """Ask the store for a slot for ``binding`` (counted as reserved until it answers)."""
        eid, model = binding.endpoint.id, binding.model
        self._reserved[eid] += 1
        self._reserved_model[(eid, model)] += 1
        asked = self._store.acquire(eid, model, slots, cap)
        asked.addCallbacks(
            self._acquired, self._store_failed, callbackArgs=(binding,), errbackArgs=(binding,)
        )

    def _acquired(self, lease: Lease | None, binding: _Binding) -> None:
        entry = binding.entry
        _less(self._reserved, binding.endpoint.id)
        _less(self._reserved_model, (binding.endpoint.id, binding.model))
        if entry.cancelled:
            if lease is not None:  # the client left while the store answered: give it back
                self._store.release(lease).addErrback(self._release_failed)
            return
        if lease is None:  # a shared store: another process took that slot first
            entry.state = _State.HELD
            self._enqueue(entry)
            if not entry.was_held:
                self._time_wait(entry)
            return
        self._grant(binding, lease)

    def _store_failed(self, failure: Failure, binding: _Binding) -> None:
        """The store could not answer: let the request through uncounted rather than fail it
        (a network store that is down must not take the fleet with it)."""
        self._log.failure(
            "slot store failed; request {request_id} goes to {endpoint} uncounted",
            failure=failure,
            request_id=binding.entry.ticket.request_id,
            endpoint=binding.endpoint.name,
        )
        self._acquired(None if binding.entry.cancelled else _UNCOUNTED, binding)

    def _let_through(self, entry: _Entry) -> None:
        """The queue is off: the first usable candidate (else the first), however full."""
        ticket = entry.ticket
        endpoint = next(
            (ep for ep in ticket.candidates if self._fleet.usable(ep)), ticket.candidates[0]
        )
        model = ticket.model_on(endpoint)
        entry.state = _State.BINDING
        cold = not self._fleet.hosting(endpoint, model)
        self._ask(_Binding(entry, endpoint, model, cold, False), sys.maxsize, sys.maxsize)

    def _grant(self, binding: _Binding, lease: Lease) -> None:
        entry, endpoint = binding.entry, binding.endpoint
        now = self._clock.seconds()
        # held in the queue (a store's answer taking real time is no wait: at once is 0)
        waited = now - entry.entered if entry.was_held else 0.0
        self._finish(entry)
        self.counters["after_wait" if entry.was_held else "at_once"] += 1
        if binding.cold:
            self.counters["second_homes" if binding.second else "cold_starts"] += 1
        self.waits[entry.ticket.priority].observe(waited)
        grant = Grant(
            self._released,
            entry.ticket,
            endpoint,
            None if lease is _UNCOUNTED else lease,
            waited=waited,
            cold=binding.cold,
            load_wait=self._fleet.load_cost(endpoint, binding.model),
            granted_at=now,
        )
        self._live.setdefault(endpoint.id, set()).add(grant)
        entry.deferred.callback(grant)

    def _running(self, endpoint: Endpoint) -> float:
        """How long what runs on ``endpoint`` has run: the load view's figure, unless one of
        this process's requests there waited for a load (its time so far is mostly the load,
        which says nothing of how soon the host frees): then the longest any other has run
        there (none: 0, and the model's service time decides)."""
        live = self._live.get(endpoint.id, ())
        if not any(grant.load_wait > 0 for grant in live):
            return self._fleet.expected_service(endpoint)
        now = self._clock.seconds()
        return max((now - g.granted_at for g in live if g.load_wait <= 0), default=0.0)

    def _released(self, grant: Grant, served: bool, loaded: float | None) -> None:
        live = self._live.get(grant.endpoint.id)
        if live is not None:
            live.discard(grant)
            if not live:
                del self._live[grant.endpoint.id]
        if served and (loaded is not None or grant.load_wait <= 0):  # a load is not service
            seconds = self._clock.seconds() - grant.granted_at - (loaded or 0.0)
            if seconds > 0:
                self._demand.served(grant.ticket.demand_key, seconds)
        lease = grant.lease
        if lease is None:  # uncounted: nothing for the store to announce
            self._dispatch((grant.endpoint.id,))
        elif self._queue and self._store.reusable(lease):
            self._spare.setdefault(lease.endpoint, []).append(lease)
            self._dispatch((lease.endpoint,))
        else:
            self._store.release(lease).addErrback(self._release_failed)

    def _release_failed(self, failure: Failure) -> None:
        self._log.failure("slot store could not take a slot back", failure=failure)

    # ------------------------------------------------------------------ what it shows

    def in_use(self, endpoint: Endpoint) -> int:
        """Slots held on ``endpoint`` now (as the store last knew)."""
        return self._store.held(endpoint.id)

    @property
    def held(self) -> int:
        """Tickets held now."""
        return len(self._queue)

    def depth(self) -> dict[tuple[str, str], int]:
        """Held tickets per (model, asked priority): the metrics' depth gauge."""
        return {(model, prio.label): n for (model, prio), n in sorted(self._held_by.items())}

    def service_time(self, model: str) -> float:
        """Seconds a request of ``model`` holds its slot (learnt, else the prior)."""
        return self._demand.service_time(model.lower())

    def snapshot(self) -> dict[str, Any]:
        """For ``/internal/status`` and the dashboard."""
        now = self._clock.seconds()
        models: dict[str, dict[str, Any]] = {}
        for entry in self._queue:
            key = entry.ticket.demand_key
            row = models.setdefault(
                key,
                {
                    "held": dict.fromkeys((p.label for p in Priority), 0),
                    "oldest_wait_s": 0.0,
                    "service_time_s": round(self._demand.service_time(key), 3),
                    "service_time_learnt": self._demand.learnt(key),
                    "arrivals_per_s": round(self._demand.rate(key, now), 3),
                },
            )
            row["held"][entry.ticket.priority.label] += 1
            row["oldest_wait_s"] = max(row["oldest_wait_s"], round(now - entry.entered, 3))
        waits = {
            p.label: {
                "count": h.count,
                "mean_s": round(h.sum / h.count, 3) if h.count else None,
            }
            for p, h in self.waits.items()
        }
        return {
            "enabled": self._config.enabled,
            "max_size": self._config.max_size,
            "max_wait_s": self._max_wait,
            "held": len(self._queue),
            "models": dict(sorted(models.items())),
            "totals": dict(self.counters),
            "waits": waits,
        }


def _less(counter: Counter[K], key: K) -> None:
    """One fewer of ``key``; a count that reaches zero leaves (counters stay as small as
    what they count now)."""
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


#: the lease of a grant the store could not count (it failed); never given to the store
_UNCOUNTED = Lease("", "", 0)
