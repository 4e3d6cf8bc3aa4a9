# -*- test-case-name: tests.test_routing -*-
"""``MemoryLoadStore``: each endpoint's load in this process (``olla.interfaces.ILoadStore``).

Per endpoint: the attempts in flight and the sum of their start times (so their mean age is
O(1) to read), a moving average of how long an answered attempt takes, and until when the
backend said it is full. Routing reads it through ``ILoadView``; the endpoint registry writes
it as attempts start and end, and says how many slots each endpoint has (its configured
``max_concurrency``, else what the backend reports, else the profile's ``default_slots``:
``EndpointRegistry.slots``).
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from olla.fleet.values import Endpoint
from olla.interfaces import ILoadStore

#: weight of the newest attempt in the service time
SERVICE_EWMA = 0.2


class EndpointLoad:
    """One endpoint's load, as this store keeps it."""

    __slots__ = ("in_flight", "in_flight_since", "service_time", "busy_until")

    def __init__(self) -> None:
        self.in_flight = 0
        #: the sum of the start times of the attempts in flight (their mean age is O(1))
        self.in_flight_since = 0.0
        #: a moving average of how long an answered attempt here takes, start to last byte
        self.service_time = 0.0
        #: the backend said it is full (429/503): tried after the others until then
        self.busy_until = 0.0


def configured_slots(endpoint: Endpoint) -> int:
    """The slots an endpoint's config (else its profile) gives it, nothing reported."""
    return endpoint.max_concurrency or endpoint.default_slots


@implementer(ILoadStore)
class MemoryLoadStore:
    """The load of every endpoint, in memory (one process's view).

    ``slots`` answers ``ILoadView.slots`` (the registry passes its own rule, which also knows
    what the backends reported)."""

    def __init__(self, slots: Callable[[Endpoint], int] = configured_slots) -> None:
        self._loads: dict[Endpoint, EndpointLoad] = {}
        self._slots = slots

    def of(self, endpoint: Endpoint) -> EndpointLoad:
        """``endpoint``'s record (made empty if new)."""
        load = self._loads.get(endpoint)
        if load is None:
            load = self._loads[endpoint] = EndpointLoad()
        return load

    # ------------------------------------------------------------------ ILoadView

    def in_flight(self, endpoint: Endpoint) -> int:
        load = self._loads.get(endpoint)
        return load.in_flight if load is not None else 0

    own_in_flight = in_flight  # one process: its attempts are all there are

    def slots(self, endpoint: Endpoint) -> int:
        return self._slots(endpoint)

    def expected_service_time(self, endpoint: Endpoint, now: float) -> float:
        load = self._loads.get(endpoint)
        if load is None:
            return 0.0
        if load.in_flight <= 0:
            return load.service_time
        return max(load.service_time, now - load.in_flight_since / load.in_flight)

    def busy_until(self, endpoint: Endpoint) -> float:
        load = self._loads.get(endpoint)
        return load.busy_until if load is not None else 0.0

    def service_time(self, endpoint: Endpoint) -> float:
        """The moving average alone (status pages)."""
        load = self._loads.get(endpoint)
        return load.service_time if load is not None else 0.0

    # ------------------------------------------------------------------ writes

    def started(self, endpoint: Endpoint, at: float) -> None:
        load = self.of(endpoint)
        load.in_flight += 1
        load.in_flight_since += at

    def ended(self, endpoint: Endpoint, started: float, served: float | None) -> None:
        load = self.of(endpoint)
        load.in_flight = max(0, load.in_flight - 1)
        load.in_flight_since = load.in_flight_since - started if load.in_flight else 0.0
        if served is not None:
            load.service_time += SERVICE_EWMA * (served - load.service_time)

    def busy(self, endpoint: Endpoint, until: float) -> None:
        load = self.of(endpoint)
        load.busy_until = max(load.busy_until, until)

    def forget(self, endpoint: Endpoint) -> None:
        self._loads.pop(endpoint, None)
