# -*- test-case-name: tests.test_balancer -*-
"""Load balancers: pure choices over the candidates and the registry's counters, no I/O."""

from __future__ import annotations

import random
from collections.abc import Sequence

from zope.interface import implementer

from olla.endpoints import Endpoint, EndpointRegistry
from olla.interfaces import IBalancer


@implementer(IBalancer)
class PriorityBalancer:
    """Only the highest priority tier; uniformly random within it."""

    name = "priority"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Endpoint], registry: EndpointRegistry) -> Endpoint:
        top = max(ep.priority for ep in candidates)
        tier = [ep for ep in candidates if ep.priority == top]
        return tier[0] if len(tier) == 1 else self._rng.choice(tier)


@implementer(IBalancer)
class RoundRobinBalancer:
    """Each candidate in turn, in the stable order the candidates are given (config order)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Endpoint], registry: EndpointRegistry) -> Endpoint:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


@implementer(IBalancer)
class LeastConnectionsBalancer:
    """The candidate with the fewest requests in flight; ties take turns."""

    name = "least-connections"

    def __init__(self) -> None:
        self._tie_cursor = 0

    def choose(self, candidates: Sequence[Endpoint], registry: EndpointRegistry) -> Endpoint:
        fewest = min(registry.state(ep).in_flight for ep in candidates)
        tied = [ep for ep in candidates if registry.state(ep).in_flight == fewest]
        chosen = tied[self._tie_cursor % len(tied)]
        self._tie_cursor += 1
        return chosen


def balancer_for(name: str, rng: random.Random | None = None) -> IBalancer:
    """The balancer a ``proxy.load_balancer`` value names (validated by the config)."""
    if name == "priority":
        return PriorityBalancer(rng)
    if name == "round-robin":
        return RoundRobinBalancer()
    if name == "least-connections":
        return LeastConnectionsBalancer()
    raise ValueError(f"unknown load balancer {name!r}")
