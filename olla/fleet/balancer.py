# -*- test-case-name: tests.test_balancer -*-
"""Load balancers: pure orderings of the candidates by their load (``ILoadView``), no I/O.

Each balancer puts every candidate in the order it would try them; routing
(``olla.proxy.routing``) uses that order among endpoints it finds equal, and ``tier`` to keep
the priority balancer's tiers apart.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from zope.interface import implementer

from olla.fleet.values import Endpoint
from olla.interfaces import IBalancer, ILoadView


class _Ordering(ABC):
    """What every balancer shares: turns among equals, no tiers, ``choose`` from ``order``."""

    _turn = 0

    def _rotated(self, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        """The candidates starting one further along each call: turns among equals."""
        start = self._turn % len(candidates)
        self._turn += 1
        return [*candidates[start:], *candidates[:start]]

    def tier(self, endpoint: Endpoint) -> int:
        return 0

    @abstractmethod
    def order(self, candidates: Sequence[Endpoint], load: ILoadView) -> list[Endpoint]:
        """Every candidate, best first (``IBalancer.order``)."""

    def choose(self, candidates: Sequence[Endpoint], load: ILoadView) -> Endpoint:
        return self.order(candidates, load)[0]


@implementer(IBalancer)
class PriorityBalancer(_Ordering):
    """Highest priority tier first, uniformly random within a tier; lower tiers after."""

    name = "priority"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def tier(self, endpoint: Endpoint) -> int:
        return -endpoint.priority

    def order(self, candidates: Sequence[Endpoint], load: ILoadView) -> list[Endpoint]:
        shuffled = list(candidates)
        if len(shuffled) > 1:
            self._rng.shuffle(shuffled)
        return sorted(shuffled, key=self.tier)


@implementer(IBalancer)
class RoundRobinBalancer(_Ordering):
    """Each candidate in turn, in the stable order the candidates are given (config order)."""

    name = "round-robin"

    def order(self, candidates: Sequence[Endpoint], load: ILoadView) -> list[Endpoint]:
        return self._rotated(candidates)


@implementer(IBalancer)
class LeastConnectionsBalancer(_Ordering):
    """Fewest requests in flight first; ties take turns."""

    name = "least-connections"

    def order(self, candidates: Sequence[Endpoint], load: ILoadView) -> list[Endpoint]:
        return sorted(self._rotated(candidates), key=load.in_flight)


def balancer_for(name: str, rng: random.Random | None = None) -> IBalancer:
    """The balancer a ``proxy.load_balancer`` value names (validated by the config)."""
    if name == "priority":
        return PriorityBalancer(rng)
    if name == "round-robin":
        return RoundRobinBalancer()
    if name == "least-connections":
        return LeastConnectionsBalancer()
    raise ValueError(f"unknown load balancer {name!r}")
