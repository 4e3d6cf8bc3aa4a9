"""Balancers: pure choices over candidates and in-flight counts."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig
from olla.fleet.balancer import (
    LeastConnectionsBalancer,
    PriorityBalancer,
    RoundRobinBalancer,
    balancer_for,
)
from olla.fleet.endpoints import Endpoint, EndpointRegistry, endpoints_from_config
from olla.interfaces import IBalancer


def _fleet(*priorities: int) -> tuple[list[Endpoint], EndpointRegistry]:
    configs = [
        EndpointConfig(url=f"http://127.0.0.1:{11000 + i}", name=f"e{i}", type="ollama", priority=p)
        for i, p in enumerate(priorities)
    ]
    endpoints = endpoints_from_config(configs)
    return endpoints, EndpointRegistry(endpoints, Clock())


@pytest.mark.parametrize("name", ["priority", "round-robin", "least-connections"])
def test_provides_interface(name: str) -> None:
    """If a balancer is built by name, then it provides IBalancer and reports that name."""
    balancer = balancer_for(name)
    assert verifyObject(IBalancer, balancer)
    assert balancer.name == name


def test_unknown_name() -> None:
    """If an unknown balancer is asked for, then ValueError names it."""
    with pytest.raises(ValueError, match="weighted"):
        balancer_for("weighted")


def test_priority_top_tier_only() -> None:
    """If priorities differ, then over 1000 picks only the top tier is chosen, evenly."""
    endpoints, registry = _fleet(100, 100, 50)
    balancer = PriorityBalancer(random.Random(7))
    picks = Counter(balancer.choose(endpoints, registry.load).name for _ in range(1000))
    assert set(picks) == {"e0", "e1"}
    assert 400 < picks["e0"] < 600


def test_round_robin_even_and_stable() -> None:
    """If three endpoints share the load round-robin, then 1000 picks rotate in config order."""
    endpoints, registry = _fleet(100, 100, 100)
    balancer = RoundRobinBalancer()
    picks = [balancer.choose(endpoints, registry.load).name for _ in range(999)]
    assert picks[:6] == ["e0", "e1", "e2", "e0", "e1", "e2"]
    assert Counter(picks) == {"e0": 333, "e1": 333, "e2": 333}


def test_least_connections_prefers_idle() -> None:
    """If one endpoint has fewer requests in flight, then least-connections picks it."""
    endpoints, registry = _fleet(100, 100, 100)
    registry.attempt_started(endpoints[0], 0.0)
    registry.attempt_started(endpoints[1], 0.0)
    balancer = LeastConnectionsBalancer()
    assert balancer.choose(endpoints, registry.load) is endpoints[2]


def test_least_connections_ties_rotate() -> None:
    """If endpoints tie on in-flight requests, then 1000 picks spread evenly over them."""
    endpoints, registry = _fleet(100, 1, 100)
    balancer = LeastConnectionsBalancer()
    picks = Counter(balancer.choose(endpoints, registry.load).name for _ in range(999))
    assert picks == {"e0": 333, "e1": 333, "e2": 333}


def test_least_connections_follows_load() -> None:
    """If each pick starts a request, then least-connections keeps in-flight counts level."""
    endpoints, registry = _fleet(100, 100, 100)
    balancer = LeastConnectionsBalancer()
    for _ in range(300):
        registry.attempt_started(balancer.choose(endpoints, registry.load), 0.0)
    assert [registry.load.in_flight(ep) for ep in endpoints] == [100, 100, 100]
