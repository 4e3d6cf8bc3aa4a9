# -*- test-case-name: tests.test_breaker -*-
"""The proxy's circuit breaker: stop sending requests to an endpoint whose requests keep
failing at the transport level, even while its health probe still passes.

Five consecutive transport failures open the circuit for 30 s; then one request at a time
may try it (half-open); a success closes it, a failure opens it again. With
``proxy.engine: sherpa`` (the Go original's simpler engine, which has none) circuits never
open. HTTP error statuses
never count: the backend answered. A passing health probe closes the circuit too (the
registry tells it), so a machine that was restarted takes traffic within one check.

The registry owns one ``CircuitBreakers`` and feeds it every attempt; routing only asks
``allows`` (and ``retry_after`` when every candidate's circuit is open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:  # circuits are keyed by endpoint; the registry owns them
    from olla.fleet.endpoints import Endpoint

FAILURE_THRESHOLD = 5
OPEN_FOR = 30.0


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float | None = None
    probing: bool = False  # a half-open trial request is in flight


class CircuitBreakers:
    """One circuit per endpoint."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, *, enabled: bool = True) -> None:
        self._clock = clock
        self._circuits: dict[Endpoint, _Circuit] = {}
        self.enabled = enabled

    def allows(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` may be tried now (closed, or a free half-open slot)."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.open_until is None:
            return True
        return self._clock.seconds() >= circuit.open_until and not circuit.probing

    def retry_after(self, endpoint: Endpoint) -> float:
        """Seconds until ``endpoint`` may be tried again (0 if it may be tried now)."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.open_until is None:
            return 0.0
        wait = circuit.open_until - self._clock.seconds()
        if wait <= 0 and circuit.probing:
            return 1.0  # a trial request is deciding right now
        return max(0.0, wait)

    def state(self, endpoint: Endpoint) -> str:
        """``closed``, ``open`` or ``half_open`` (the wait is over: one trial may go)."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.open_until is None:
            return "closed"
        return "open" if self._clock.seconds() < circuit.open_until else "half_open"

    def attempt_started(self, endpoint: Endpoint) -> None:
        circuit = self._circuits.get(endpoint)
        if circuit is not None and circuit.open_until is not None:
            circuit.probing = True

    def succeeded(self, endpoint: Endpoint) -> None:
        circuit = self._circuits.pop(endpoint, None)
        if circuit is not None and circuit.open_until is not None:
            self._log.info("circuit for {endpoint} closed", endpoint=endpoint.name)

    def failed(self, endpoint: Endpoint) -> None:
        """A transport failure. The circuit opens at the threshold, and opens again when its
        half-open trial fails; it says so once each time, not for every attempt that was
        already under way and fails while it is open."""
        if not self.enabled:
            return
        circuit = self._circuits.setdefault(endpoint, _Circuit())
        circuit.failures += 1
        trial, circuit.probing = circuit.probing, False
        was_open = circuit.open_until is not None
        if was_open or circuit.failures >= FAILURE_THRESHOLD:
            circuit.open_until = self._clock.seconds() + OPEN_FOR
            if not was_open or trial:
                self._log.warn(
                    "circuit for {endpoint} open for {seconds:g}s after {failures} failures",
                    endpoint=endpoint.name,
                    seconds=OPEN_FOR,
                    failures=circuit.failures,
                )

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` was removed from the config: its circuit goes with it."""
        self._circuits.pop(endpoint, None)

    def released(self, endpoint: Endpoint) -> None:
        """The attempt ended without a verdict (client left): free the half-open slot."""
        circuit = self._circuits.get(endpoint)
        if circuit is not None:
            circuit.probing = False
