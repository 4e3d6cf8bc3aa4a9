# -*- test-case-name: tests.test_gate -*-
"""Where a model may load: the admission gate's rule for a host that does not have it.

A host that has the model in memory, or is loading it, suits a request of it whenever a slot is
free (``olla.proxy.gate``). A cold host suits it when:

- **first home**: no candidate has the model (a host that just said it is full, 429/503, is
  nobody's home until its back-off passes): it must load somewhere, on the candidate where the
  load pushes out least (``Evicts``: nothing, then room olla only assumes, then an idle model's
  only copy, then a busy model's place), waiting for that host's slot rather than taking a worse
  host's free one (a slot frees within a service time; a lost copy costs a load);
- **second home**: the model's homes are full and loading it here pays over the coming requests
  (``demand.second_home_pays``, with the longer of the model's learnt service time and how
  long what runs on its homes has run on average: ``IFleetView.expected_service``, or the
  gate's own figure while a request there waited for a load), and it
  pushes out nothing that is needed: room, or an idle model whose other homes carry its
  traffic without this copy (``SPARE_SHARE``).

How many models a host holds at once Ollama does not say (its memory and
``OLLAMA_MAX_LOADED_MODELS`` decide); the operator may, with ``endpoints[].max_loaded_models``.
Then a host with fewer models than that has room, beside busy ones too, and a full one makes
room only by unloading an idle model (Ollama's choice among the idle ones: any may go). Unset,
olla assumes ``MODELS_PER_HOST`` and counts on that room for a second home only while an idle
model is there, so that were the host smaller, Ollama unloads an idle model, never waits for a
busy one to finish so as to unload it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime

from olla.fleet.endpoints import Endpoint
from olla.proxy.admission import Ticket
from olla.proxy.demand import Demand, second_home_pays
from olla.proxy.fleetview import IFleetView
from olla.proxy.slots import ISlotStore

#: models a host is assumed to hold at once (Ollama's default is 3 per GPU, or 3 on a CPU)
MODELS_PER_HOST = 2
#: a model's copy on a host may go for another model only while its other homes' slots are
#: busy with its traffic less than this share of the time
SPARE_SHARE = 0.5


class Evicts(enum.Enum):
    """What a load may push out of a host's memory, best first."""

    NOTHING = "nothing"  # room, or an idle model that other hosts carry
    #: no ``max_loaded_models`` and fewer models than ``MODELS_PER_HOST``, all of them busy:
    #: room, unless the host is smaller than assumed (then the load waits for a busy one to
    #: finish and unloads it)
    ROOM_ASSUMED = "room_assumed"
    IDLE = "idle"  # an idle model's only copy (or one its traffic needs)
    BUSY = "busy"  # every model there is needed: running there, or waiting in olla


_ORDER = tuple(Evicts)


class Placement:
    """Whether a cold host suits a request of a model (see the module docstring)."""

    def __init__(
        self,
        fleet: IFleetView,
        store: ISlotStore,
        demand: Demand,
        clock: IReactorTime,
        cap: Callable[[Endpoint, str], int],
        held: Mapping[str, int],
        running: Callable[[Endpoint], float] | None = None,
    ) -> None:
        self._fleet = fleet
        #: how long what runs on a host has run (default: ``IFleetView.expected_service``)
        self._running = running or fleet.expected_service
        self._store = store
        self._demand = demand
        self._clock = clock
        self._cap = cap
        #: requests held in olla per model (the gate's live count)
        self._held = held

    def load_pays(self, ticket: Ticket, endpoint: Endpoint, model: str, now: float) -> bool:
        """Whether ``ticket`` may load ``model`` on ``endpoint`` (usable, a slot free there)."""
        fleet = self._fleet
        # a home the balancer ranks below this host does not count: routing orders by tier
        # before warmth (``load_balancer: priority`` says where requests go), and so does this
        tier = fleet.tier(endpoint)
        homes = [
            ep
            for ep in ticket.candidates
            if fleet.usable(ep)
            and not fleet.busy(ep)
            and fleet.tier(ep) <= tier
            and fleet.hosting(ep, ticket.model_on(ep))
        ]
        here = self.evicts(endpoint, model)
        if not homes:
            best = min(
                (
                    self.evicts(ep, ticket.model_on(ep))
                    for ep in ticket.candidates
                    if self._fleet.usable(ep)
                ),
                key=_ORDER.index,
            )
            return here is Evicts.NOTHING or here is best
        if here is not Evicts.NOTHING:
            return False
        key = ticket.demand_key
        load = self._fleet.load_cost(endpoint, model)
        # what its homes' slots take: the model's learnt time, or longer while what runs
        # there has already run longer (a stream that has not ended yet teaches nothing)
        running = sum(self._running(ep) for ep in homes) / len(homes)
        return second_home_pays(
            load=load,
            held=self._held.get(key, 0),
            arriving=self._demand.arrivals(key, now, load),
            service=max(self._demand.service_time(key), running),
            home_slots=sum(self._cap(ep, ticket.model_on(ep)) for ep in homes),
        )

    def evicts(self, endpoint: Endpoint, model: str) -> Evicts:
        """What loading ``model`` on ``endpoint`` may push out of memory there."""
        resident = self._fleet.loaded(endpoint) - {model}
        if not resident:
            return Evicts.NOTHING
        idle = [
            name
            for name in resident
            if not self._held.get(name) and not self._store.held_by_model(endpoint.id, name)
        ]
        known = endpoint.config.max_loaded_models
        if known is not None and len(resident) < known:
            return Evicts.NOTHING  # room it has, whatever runs there
        roomy = known is None and len(resident) < MODELS_PER_HOST
        if idle and (roomy or all(self._spare(name, endpoint) for name in idle)):
            return Evicts.NOTHING  # Ollama picks which idle one goes, if one must: any may
        if roomy:
            return Evicts.ROOM_ASSUMED
        return Evicts.IDLE if idle else Evicts.BUSY

    def _spare(self, model: str, endpoint: Endpoint) -> bool:
        """Whether ``model``'s copy on ``endpoint`` could go: its other homes' slots exceed the
        slots its traffic keeps busy (arrivals times service time) with room to spare."""
        others = [ep for ep in self._fleet.homes(model) if ep.id != endpoint.id]
        if not others:
            return False
        busy = self._demand.rate(model, self._clock.seconds()) * self._demand.service_time(model)
        return busy < SPARE_SHARE * sum(self._cap(ep, model) for ep in others)
