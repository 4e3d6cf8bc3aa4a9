# -*- test-case-name: tests.test_demand -*-
"""What the admission gate knows about each model's traffic, and when a second home pays.

Per model: how long a request holds its slot (a moving average of the requests that finished,
and until one has, a prior: the profile's for that model, else ``proxy.queue.default_service_time``)
and how many requests arrive (a count that decays with time). The numbers feed one decision,
``second_home_pays``: whether loading a model on one more host is worth its load time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: weight of the newest finished request in a model's service time
SERVICE_EWMA = 0.2
#: seconds over which the arrival count decays (the rate looks back about this far)
RATE_WINDOW = 10.0
#: the shortest window a rate is read over (so two requests in the same instant are not a
#: rate of thousands a second)
MIN_WINDOW = 1.0
#: models remembered; the least recently seen one beyond this is forgotten
MAX_MODELS = 1000


@dataclass
class _Model:
    service: float | None = None  # None until a request of the model finished
    weight: float = 0.0  # arrivals, each decayed by exp(-age / RATE_WINDOW)
    seen: float = 0.0  # when ``weight`` was last brought up to date
    first: float | None = None  # the first arrival remembered


class Demand:
    """Per-model service times and arrival rates, on the gate's clock's time."""

    def __init__(self, prior: Callable[[str], float]) -> None:
        #: a model's service time before any request of it has finished
        self.prior = prior
        self._models: dict[str, _Model] = {}

    def _entry(self, model: str) -> _Model:
        entry = self._models.pop(model, None) or _Model()
        self._models[model] = entry  # most recently used last
        if len(self._models) > MAX_MODELS:
            del self._models[next(iter(self._models))]
        return entry

    def arrived(self, model: str, now: float) -> None:
        entry = self._entry(model)
        entry.weight = self._decayed(entry, now) + 1.0
        entry.seen = now
        if entry.first is None:
            entry.first = now

    def served(self, model: str, seconds: float) -> None:
        """A request of ``model`` held its slot ``seconds`` (warm: no load in that time)."""
        entry = self._entry(model)
        known = entry.service
        entry.service = seconds if known is None else known + SERVICE_EWMA * (seconds - known)

    def service_time(self, model: str) -> float:
        """Seconds a request of ``model`` holds its slot: learnt, else the prior."""
        entry = self._models.get(model)
        if entry is not None and entry.service is not None:
            return entry.service
        return self.prior(model)

    def learnt(self, model: str) -> bool:
        entry = self._models.get(model)
        return entry is not None and entry.service is not None

    def rate(self, model: str, now: float) -> float:
        """Requests of ``model`` per second, about the last ``RATE_WINDOW`` seconds."""
        entry = self._models.get(model)
        if entry is None:
            return 0.0
        return self._decayed(entry, now) / max(self._window(entry, now), MIN_WINDOW)

    def arrivals(self, model: str, now: float, horizon: float) -> float:
        """Requests of ``model`` expected over the next ``horizon`` seconds: the rate, but never
        more than arrived over the time observed (a burst is evidence of a burst, not of a
        stream that goes on)."""
        entry = self._models.get(model)
        if entry is None:
            return 0.0
        seen = self._decayed(entry, now)
        return seen * horizon / max(self._window(entry, now), horizon, MIN_WINDOW)

    @staticmethod
    def _window(entry: _Model, now: float) -> float:
        """How much time the decayed count covers: the decay's weight over the time since the
        first arrival (so a model first seen 2 s ago is read over 2 s, not ``RATE_WINDOW``)."""
        age = max(0.0, now - (entry.first if entry.first is not None else now))
        return RATE_WINDOW * (1.0 - math.exp(-age / RATE_WINDOW))

    def service_times(self) -> dict[str, float]:
        """The learnt service times, for the status page."""
        return {m: e.service for m, e in self._models.items() if e.service is not None}

    @staticmethod
    def _decayed(entry: _Model, now: float) -> float:
        return entry.weight * math.exp(-max(0.0, now - entry.seen) / RATE_WINDOW)


def second_home_pays(
    *, load: float, held: int, arriving: float, service: float, home_slots: int
) -> bool:
    """Whether loading a model on one more host saves more waiting than the load costs.

    Args:
        load: seconds the new host needs to load the model (the catalogue's figure).
        held: requests of the model waiting in olla now.
        arriving: requests of the model expected while the new host loads
            (``Demand.arrivals`` over ``load``).
        service: seconds a request holds a slot.
        home_slots: the model's slots on the hosts that have it in memory or are loading it.

    The hosts that have the model are full (else nobody would wait). Every request that waits
    now, and every one expected to arrive while the new host loads, waits at least one turn of
    those slots (``service / home_slots``); when that waiting adds up to more than the load, a
    second home pays. It counts the coming requests, not the one in hand: a model whose homes
    stay full (arrivals as fast as its slots serve) pays as soon as one request waits, while a
    model whose one request is briefly unlucky does not. Put another way: it pays when the
    backlog takes longer to drain than the load, times the homes' idle share
    (``held * service / home_slots > load * (1 - utilisation)``). With no home it must load.
    """
    if home_slots <= 0:
        return True
    return (held + arriving) * service / home_slots > load
