# -*- test-case-name: tests.test_failover -*-
"""The stage between a plan and its exchange: which candidate each attempt goes to.

The exchange asks its ``IWalk`` for the candidate of every attempt, the first and each
failover. ``InOrder`` (today's dispatch) hands out the plan's candidates in the plan's order,
at once, within the retry budget, skipping any a reload removed since the plan was made. An
admission gate is another ``IDispatch``: its walk may hold a request (``next`` fires later,
when a slot frees), choose the endpoint only then, order held requests by priority, and put
a retried attempt back at the head of its queue.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from olla.fleet.endpoints import EndpointRegistry
from olla.front.context import RequestContext
from olla.proxy.plan import Candidate, Plan


class IWalk(Interface):
    """One request's way through its plan."""

    def more() -> bool:
        """Whether another attempt may be made (a candidate left, within the budget)."""

    def next() -> Candidate | Deferred[Candidate]:
        """The candidate of the next attempt (call only when ``more()``): at once, or a
        Deferred that may fire later (a gate holding the request); cancelling it (the client
        left) gives the place up."""

    def left() -> int:
        """Candidates not tried yet (for the log)."""


class IDispatch(Interface):
    """Hands each exchange the candidates of its attempts."""

    def walk(plan: Plan, context: RequestContext, attempts: int) -> IWalk:
        """The walk of one request through ``plan`` (not rejected, at least one candidate),
        at most ``attempts`` attempts in all."""


@implementer(IWalk)
class _InOrderWalk:
    def __init__(
        self, candidates: tuple[Candidate, ...], registry: EndpointRegistry, attempts: int
    ) -> None:
        self._left = list(candidates)
        self._registry = registry
        self._budget = attempts

    def more(self) -> bool:
        # a candidate a reload removed since the plan was made gets no new attempt
        self._left = [c for c in self._left if c.endpoint in self._registry]
        return bool(self._left) and self._budget > 0

    def next(self) -> Candidate:
        self._budget -= 1
        return self._left.pop(0)

    def left(self) -> int:
        return len(self._left)


@implementer(IDispatch)
class InOrder:
    """The plan's candidates, best first, each handed out at once."""

    def __init__(self, registry: EndpointRegistry) -> None:
        self._registry = registry

    def walk(self, plan: Plan, context: RequestContext, attempts: int) -> IWalk:
        # the first attempt goes to the plan's best candidate, whatever a reload did meanwhile
        return _InOrderWalk(plan.candidates, self._registry, attempts)
