# -*- test-case-name: tests.test_slots -*-
"""Slots: how many of olla's requests run on each endpoint, per model, and who may start one.

The admission gate (``olla.proxy.gate``) owns no counters: it asks an ``ISlotStore`` for a slot
(``acquire``, which checks the endpoint's cap and the model's cap there in one step) and gives it
back (``release``), and it hears from the store when a slot frees (``add_listener``), also one
freed by another process when the store is shared. ``MemorySlotStore`` is the one-process store.

A store keys endpoints by ``Endpoint.id`` (derived from the URL, the same in every process and
across a reload that changes an endpoint's settings: the same machine, the same slots) and models
by their lower-cased name on that endpoint ("" for a request that names none).

The contract is shaped for a network store as well (a Redis/Valkey store: an atomic
check-and-increment script per ``acquire``, leases that expire with the process holding them, a
published message per release): every call that changes state returns a Deferred, which an
in-memory store returns already fired. ``held`` and ``held_by_model`` are synchronous reads of what
the store last knew (exact in memory, a mirror kept fresh by the releases it hears otherwise);
the gate uses them only to choose which request to try, and the ``acquire`` decides.
``reusable`` lets a process pass a slot on between its own requests of one model without a
round trip.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

#: called with an endpoint id after a slot there was released (here or elsewhere)
SlotListener = Callable[[str], object]


@dataclass(frozen=True)
class Lease:
    """One slot held on ``endpoint`` for ``model``; given back exactly once with ``release``."""

    endpoint: str
    model: str
    #: tells two leases on the same endpoint and model apart (a network store: its lease id)
    serial: int


class ISlotStore(Interface):
    """Who holds which slot: per endpoint, and per model on it."""

    def acquire(
        endpoint: str, model: str, endpoint_cap: int, model_cap: int
    ) -> Deferred[Lease | None]:
        """Take one slot on ``endpoint`` for ``model`` if fewer than ``endpoint_cap`` are held
        there in all and fewer than ``model_cap`` for ``model``; None when either is reached.
        One atomic step: two callers never both get the last slot."""

    def release(lease: Lease) -> Deferred[None]:
        """Give ``lease``'s slot back and tell every listener its endpoint has one free. A lease
        given back before (or one a network store already expired) changes nothing."""

    def reusable(lease: Lease) -> bool:
        """Whether this process may hand ``lease`` straight to another of its requests for the
        same endpoint and model instead of a ``release`` and an ``acquire`` (the counts are the
        same after both). A shared store allows it only for a while after it granted the
        lease, so that held requests of other processes get their turn at the slot."""

    def held(endpoint: str) -> int:
        """Slots held on ``endpoint`` as last known."""

    def held_by_model(endpoint: str, model: str) -> int:
        """Slots held on ``endpoint`` for ``model`` as last known."""

    def add_listener(listener: SlotListener) -> None:
        """Call ``listener(endpoint)`` after a slot on ``endpoint`` was released."""


@implementer(ISlotStore)
class MemorySlotStore:
    """The slots of one process, in two dicts; every call completes at once."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._by_model: dict[tuple[str, str], int] = {}
        self._leases: set[Lease] = set()
        self._serials = itertools.count(1)
        self._listeners: list[SlotListener] = []

    def acquire(
        self, endpoint: str, model: str, endpoint_cap: int, model_cap: int
    ) -> Deferred[Lease | None]:
        key = (endpoint, model)
        if self._held.get(endpoint, 0) >= endpoint_cap or self._by_model.get(key, 0) >= model_cap:
            return succeed(None)
        self._held[endpoint] = self._held.get(endpoint, 0) + 1
        self._by_model[key] = self._by_model.get(key, 0) + 1
        lease = Lease(endpoint, model, next(self._serials))
        self._leases.add(lease)
        return succeed(lease)

    def release(self, lease: Lease) -> Deferred[None]:
        if lease not in self._leases:
            return succeed(None)
        self._leases.remove(lease)
        key = (lease.endpoint, lease.model)
        self._held[lease.endpoint] -= 1
        if not self._held[lease.endpoint]:
            del self._held[lease.endpoint]  # bounded by what is held, not by what ever was
        self._by_model[key] -= 1
        if not self._by_model[key]:
            del self._by_model[key]
        for listener in list(self._listeners):
            listener(lease.endpoint)
        return succeed(None)

    def reusable(self, lease: Lease) -> bool:
        return lease in self._leases

    def held(self, endpoint: str) -> int:
        return self._held.get(endpoint, 0)

    def held_by_model(self, endpoint: str, model: str) -> int:
        return self._by_model.get((endpoint, model), 0)

    def add_listener(self, listener: SlotListener) -> None:
        self._listeners.append(listener)
