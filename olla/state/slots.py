# -*- test-case-name: tests.test_state_stores -*-
"""``RedisSlotStore``: the admission gate's slots, counted once for the whole fleet of olla
processes (``olla.proxy.slots.ISlotStore``).

An endpoint's slots are one hash, ``<prefix>slots:<endpoint id>``: lease id
(``<process>#<n>``) -> model. ``acquire`` is one script (``SLOT_ACQUIRE``): it drops the leases
of processes whose lease expired, counts the rest against the endpoint's cap and the model's,
and takes a slot only below both, so two processes never both get the last slot. ``release``
is one script too (``SLOT_RELEASE``): it gives the slot back and publishes the endpoint's new
counts, and every process that hears it tells its gate a slot freed there (a held request
anywhere gets it). For ``REUSE_WINDOW`` after the store granted a lease, the gate may instead
pass it on to this process's next held request of the same model, with no round trip
(``reusable``); after that it is released, and every process's held requests compete again.
``held`` and ``held_by_model`` read a mirror kept by the answers and those messages, and
refreshed every ``REFRESH`` seconds and on every (re)subscription (``SLOT_VIEW``; a slot a dead
process held frees that way, and the gate is told).

While the store does not answer, slots are taken from this process's ``MemorySlotStore`` (each
process then holds its own caps: fail open) and given back there; a shared lease whose release
could not be sent is owed, and sent once the store answers again.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from olla.proxy.slots import ISlotStore, Lease, MemorySlotStore, SlotListener
from olla.state.resp import Arg, Reply
from olla.state.scripts import SLOT_ACQUIRE, SLOT_RELEASE, SLOT_VIEW
from olla.state.shared import SharedState
from olla.util.services import Repeating

#: seconds between reads of every endpoint's counts (slots a dead process held free so)
REFRESH = 1.0
#: seconds after the store granted a lease during which this process may pass it on to its
#: own next request of the same model (no round trip); then it goes back to the store, where
#: every process's held requests have their turn at it
REUSE_WINDOW = 0.5


@implementer(ISlotStore)
class RedisSlotStore(MultiService):
    """Slots in the shared store; this process's memory while it does not answer."""

    _log = Logger()

    def __init__(self, shared: SharedState, clock: IReactorTime) -> None:
        super().__init__()
        self._shared = shared
        self._clock = clock
        self.local = MemorySlotStore()
        #: when the store granted each shared lease this process holds
        self._granted: dict[Lease, float] = {}
        self._serials = itertools.count(1)
        #: leases taken from ``local`` (the store did not answer): given back there
        self._local_leases: set[Lease] = set()
        #: shared leases whose release did not reach the store: sent when it answers
        self.owed: list[Lease] = []
        self._held: dict[str, int] = {}
        self._by_model: dict[tuple[str, str], int] = {}
        self._listeners: list[SlotListener] = []
        Repeating(clock, REFRESH, self.refresh, what="state store slot refresh").setServiceParent(
            self
        )
        shared.subscribe("slot", self._heard)
        shared.on_resync.append(self.refresh)
        shared.on_down.append(self._alone)
        self.local.add_listener(self._tell)

    def _key(self, endpoint: str) -> str:
        return self._shared.key("slots", endpoint)

    def _lease_id(self, lease: Lease) -> str:
        return f"{self._shared.process}#{lease.serial}"

    # ------------------------------------------------------------------ ISlotStore

    def acquire(
        self, endpoint: str, model: str, endpoint_cap: int, model_cap: int
    ) -> Deferred[Lease | None]:
        lease = Lease(endpoint, model, next(self._serials))

        def read(reply: Reply) -> Lease | None:
            taken, held, of_model = _three(reply)
            self._mirror(endpoint, model, held, of_model)
            if not taken:
                return None
            self._granted[lease] = self._clock.seconds()
            return lease

        def fallback() -> Deferred[Lease | None]:
            def kept(local: Lease | None) -> Lease | None:
                if local is not None:
                    self._local_leases.add(local)
                return local

            return self.local.acquire(endpoint, model, endpoint_cap, model_cap).addCallback(kept)

        args: list[Arg] = [self._lease_id(lease), model, endpoint_cap, model_cap]
        args.append(self._shared.procs)
        return self._shared.ask(
            lambda c: c.evalsha(SLOT_ACQUIRE, [self._key(endpoint)], args), read, fallback
        )

    def release(self, lease: Lease) -> Deferred[None]:
        if lease in self._local_leases:
            self._local_leases.discard(lease)
            return self.local.release(lease)
        self._granted.pop(lease, None)
        self._send_release(lease)
        return succeed(None)

    def reusable(self, lease: Lease) -> bool:
        if lease in self._local_leases:
            return self.local.reusable(lease)
        granted = self._granted.get(lease)
        return granted is not None and self._clock.seconds() - granted < REUSE_WINDOW

    def _send_release(self, lease: Lease) -> None:
        start = self._shared.message_start("slot", lease.endpoint, lease.model)
        args: list[Arg] = [self._lease_id(lease), lease.model, self._shared.channel, start]

        def released(reply: Reply) -> None:
            removed, held, of_model = _three(reply)
            if removed:
                self._mirror(lease.endpoint, lease.model, held, of_model)
                self._tell(lease.endpoint)

        def owe() -> Deferred[None]:
            self.owed.append(lease)
            return succeed(None)

        self._shared.ask(
            lambda c: c.evalsha(SLOT_RELEASE, [self._key(lease.endpoint)], args), released, owe
        )

    def held(self, endpoint: str) -> int:
        return self._held.get(endpoint, 0) + self.local.held(endpoint)

    def held_by_model(self, endpoint: str, model: str) -> int:
        return self._by_model.get((endpoint, model), 0) + self.local.held_by_model(endpoint, model)

    def add_listener(self, listener: SlotListener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ the mirror

    def _tell(self, endpoint: str) -> None:
        for listener in list(self._listeners):
            listener(endpoint)

    def _mirror(self, endpoint: str, model: str, held: int, of_model: int) -> None:
        self._held[endpoint] = held
        self._by_model[(endpoint, model)] = of_model

    def _alone(self) -> None:
        """The store stopped answering: only this process's own slots count now (read again
        from the store once it answers), so its held requests may go where it has room."""
        endpoints = [endpoint for endpoint, held in self._held.items() if held]
        self._by_model = dict.fromkeys(self._by_model, 0)
        self._held = dict.fromkeys(self._held, 0)
        for endpoint in endpoints:
            self._tell(endpoint)

    def _heard(self, message: dict[str, Any]) -> None:
        """Another process released a slot: the counts it published, and the gate told."""
        endpoint, model, held, of_model = message["values"]
        self._mirror(str(endpoint), str(model), int(held), int(of_model))
        self._tell(str(endpoint))

    def refresh(self) -> None:
        """Read every known endpoint's counts again (and send what is owed); an endpoint
        whose count fell (a dead process's slots, a release not heard) is told."""
        owed, self.owed = self.owed, []
        for lease in owed:
            self._send_release(lease)
        endpoints = sorted(self._held)
        if not endpoints:
            return

        def read(reply: Reply) -> None:
            if not isinstance(reply, list) or len(reply) != len(endpoints):
                raise TypeError(f"a slot view answered {reply!r}")
            for endpoint, row in zip(endpoints, reply, strict=True):
                if not isinstance(row, list) or not row or not isinstance(row[0], int):
                    raise TypeError(f"a slot view answered {reply!r}")
                before = self._held.get(endpoint, 0)
                self._held[endpoint] = row[0]
                for key in [k for k in self._by_model if k[0] == endpoint]:
                    self._by_model[key] = 0
                for index in range(1, len(row) - 1, 2):
                    model, count = row[index], row[index + 1]
                    if isinstance(model, bytes) and isinstance(count, int):
                        self._by_model[(endpoint, model.decode())] = count
                if row[0] < before:
                    self._tell(endpoint)

        keys: list[Arg] = [self._key(endpoint) for endpoint in endpoints]
        self._shared.ask(
            lambda c: c.evalsha(SLOT_VIEW, keys, [self._shared.procs]), read, lambda: succeed(None)
        )


def _three(reply: Reply) -> tuple[bool, int, int]:
    if (
        not isinstance(reply, list)
        or len(reply) != 3
        or not all(isinstance(value, int) for value in reply)
    ):
        raise TypeError(f"a slot script answered {reply!r}")
    first, second, third = reply
    assert isinstance(first, int) and isinstance(second, int) and isinstance(third, int)
    return first == 1, second, third
