# -*- test-case-name: tests.test_state_stores -*-
"""``RedisLoadStore``: every endpoint's attempts in flight as the whole fleet of olla processes
has them (``ILoadStore``).

Each process counts its own attempts in its ``MemoryLoadStore`` (at once, as routing needs)
and keeps its count per endpoint in the store, under its process id (``<prefix>load:<endpoint
id>``: process -> count). One script (``LOAD_SYNC``) writes this process's counts and reads the
other live processes' sums in one round trip; it runs soon after a count changes (at most
every ``SYNC_GAP`` seconds, one at a time) and every ``REFRESH`` seconds regardless, so
routing's view of the others is at most that old. A process that dies stops counting when
its lease expires (``olla.state.shared.PROCESS_LEASE``). The service time and busy marks stay
per process: each learns them from its own attempts.

While the store does not answer, the others' counts are forgotten (each process routes on its
own attempts, as without a store) and picked up again from the next sync that answers.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from olla.fleet.load import MemoryLoadStore, configured_slots
from olla.fleet.values import Endpoint
from olla.interfaces import ILoadStore
from olla.state.resp import Arg, Reply
from olla.state.scripts import LOAD_SYNC
from olla.state.shared import SharedState
from olla.util.services import Repeating

#: seconds between a change and its sync, at least (changes in between share one round trip)
SYNC_GAP = 0.02
#: seconds between syncs when nothing changes here (the others' counts, refreshed)
REFRESH = 0.5


@implementer(ILoadStore)
class RedisLoadStore(MultiService):
    """In-flight counts shared through the store; everything else this process's own."""

    _log = Logger()

    def __init__(
        self,
        shared: SharedState,
        clock: IReactorTime,
        slots: Callable[[Endpoint], int] = configured_slots,
    ) -> None:
        super().__init__()
        self._shared = shared
        self._clock = clock
        #: this process's own load; ``slots`` answers ``ILoadView.slots`` (the registry's rule)
        self.local = MemoryLoadStore(slots)
        #: endpoint id -> the other live processes' attempts in flight there
        self.others: dict[str, int] = {}
        #: the endpoints this process counts or was asked about (synced every time)
        self._known: dict[str, Endpoint] = {}
        #: endpoints a reload removed: synced once more, then dropped
        self._dropping: set[str] = set()
        self._syncing = False
        self._again = False
        self._last = 0.0
        self._call: IDelayedCall | None = None
        refresh = Repeating(clock, REFRESH, self.sync, what="state store load refresh")
        refresh.setServiceParent(self)
        shared.on_down.append(self.others.clear)

    # ------------------------------------------------------------------ ILoadView

    def in_flight(self, endpoint: Endpoint) -> int:
        if endpoint.id not in self._known:  # asked about: the others' count there is synced
            self._known[endpoint.id] = endpoint
        return self.local.in_flight(endpoint) + self.others.get(endpoint.id, 0)

    def own_in_flight(self, endpoint: Endpoint) -> int:
        """This process's attempts alone."""
        return self.local.in_flight(endpoint)

    def slots(self, endpoint: Endpoint) -> int:
        return self.local.slots(endpoint)

    def expected_service_time(self, endpoint: Endpoint, now: float) -> float:
        return self.local.expected_service_time(endpoint, now)

    def busy_until(self, endpoint: Endpoint) -> float:
        return self.local.busy_until(endpoint)

    def service_time(self, endpoint: Endpoint) -> float:
        return self.local.service_time(endpoint)

    # ------------------------------------------------------------------ writes

    def started(self, endpoint: Endpoint, at: float) -> None:
        self.local.started(endpoint, at)
        self._changed(endpoint)

    def ended(self, endpoint: Endpoint, started: float, served: float | None) -> None:
        self.local.ended(endpoint, started, served)
        self._changed(endpoint)

    def busy(self, endpoint: Endpoint, until: float) -> None:
        self.local.busy(endpoint, until)

    def forget(self, endpoint: Endpoint) -> None:
        self.local.forget(endpoint)
        self.others.pop(endpoint.id, None)
        self._dropping.add(endpoint.id)
        self._changed(endpoint)  # synced once more, with 0 (its field goes), then no more

    # ------------------------------------------------------------------ syncing

    def _changed(self, endpoint: Endpoint) -> None:
        self._known[endpoint.id] = endpoint
        if self._syncing:
            self._again = True
            return
        if self._call is not None:
            return
        delay = max(0.0, self._last + SYNC_GAP - self._clock.seconds())
        self._call = self._clock.callLater(delay, self.sync)

    def sync(self) -> None:
        """Write this process's counts and read the others' (one round trip)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._syncing or not self._known:
            return
        self._syncing = True
        self._last = self._clock.seconds()
        endpoints = list(self._known.values())
        keys: list[Arg] = [self._shared.key("load", e.id) for e in endpoints]
        args: list[Arg] = [self._shared.process, self._shared.procs]
        args += [self.local.in_flight(e) for e in endpoints]

        def read(reply: Reply) -> None:
            if not isinstance(reply, list) or len(reply) != len(endpoints):
                raise TypeError(f"a load sync answered {reply!r}")
            for endpoint, others in zip(endpoints, reply, strict=True):
                if not isinstance(others, int):
                    raise TypeError(f"a load sync answered {reply!r}")
                self.others[endpoint.id] = others

        def alone() -> Deferred[None]:  # the store did not answer: only our own count
            self.others.clear()
            return succeed(None)

        self._shared.ask(lambda c: c.evalsha(LOAD_SYNC, keys, args), read, alone).addBoth(
            self._synced, set(self._dropping)
        )

    def _synced(self, _: object, dropping: set[str]) -> None:
        for endpoint_id in dropping:
            self._known.pop(endpoint_id, None)
            self.others.pop(endpoint_id, None)
        self._dropping -= dropping
        self._syncing = False
        if self._again:
            self._again = False
            self._call = self._clock.callLater(SYNC_GAP, self.sync)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return stopped
