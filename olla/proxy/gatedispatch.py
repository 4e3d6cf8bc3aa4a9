# -*- test-case-name: tests.test_gatedispatch -*-
"""The admission gate as the pipeline's dispatch stage (``IDispatch``).

Every attempt of a request that runs a model asks the gate (``olla.proxy.gate``) for a slot on
one of the plan's candidates not tried yet: the first attempt as a new request, with its
priority (``RequestContext.priority``) and its sticky pin (waited for while that is cheaper
than moving: ``olla.proxy.movecost``); a failover, or a request planned again after its
candidates left rotation while it was held, as a retried attempt (ahead of its priority, never
refused for size, keeping its place by the request's arrival). The walk holds the attempt's
grant until the exchange says the attempt is over (``ended``: one grant per attempt, given back
on every path, a header wait that ran out while the host loaded included) or the request is
(``close``). The time held goes into the context (``RequestContext.queued``: the record's and
the log line's ``queued=…ms``). A refusal becomes ``Refused``: ``503`` with ``Retry-After`` in
the route's dialect, or plan again (``Refusal.REPLAN``).

A request that names no model, or asks a path that names one without running it (``NO_SLOT``:
Ollama's model card, the tokenizers), takes no slot: it goes to its candidates in the plan's
order at once, as ``InOrder`` would send it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from olla.config import OllaConfig
from olla.fleet.endpoints import EndpointRegistry
from olla.front.context import RequestContext
from olla.interfaces import IReconfigurable
from olla.proxy.admission import AdmissionRefused, Grant, Refusal, Ticket
from olla.proxy.dispatch import IDispatch, IWalk, Refused
from olla.proxy.gate import AdmissionGate
from olla.proxy.movecost import PromptRates
from olla.proxy.plan import Candidate, Plan

#: paths that name a model without running it: they take no slot
NO_SLOT = (b"/api/show", b"/tokenize", b"/detokenize")


@implementer(IDispatch, IReconfigurable)
@dataclass(eq=False)
class GateDispatch:
    """Hands each attempt the slot the admission gate grants it."""

    reconfigures = ("proxy.queue.", "proxy.response_timeout")

    gate: AdmissionGate
    registry: EndpointRegistry
    #: seconds per prompt token, per model: what moving off a pinned host costs
    rates: PromptRates
    clock: IReactorTime

    def reconfigure(self, config: OllaConfig) -> None:
        """``proxy.queue.*`` (and the response timeout, ``max_wait``'s default); then the
        held requests are looked at again (a reload may have added or changed endpoints)."""
        self.gate.reconfigure(config.proxy)
        self.gate.poke()

    def walk(self, plan: Plan, context: RequestContext, attempts: int) -> IWalk:
        model = plan.model
        gated = model is not None and not context.path.rstrip(b"/").endswith(NO_SLOT)
        return _GateWalk(self, plan, context, attempts, model if gated else None)


@implementer(IWalk)
class _GateWalk:
    def __init__(
        self,
        dispatch: GateDispatch,
        plan: Plan,
        context: RequestContext,
        attempts: int,
        model: str | None,
    ) -> None:
        self._dispatch = dispatch
        self._left = list(plan.candidates)
        self._rewrite = plan.rewrite
        self._context = context
        self._budget = attempts
        #: None: the request takes no slot
        self._model = model
        self._pinned = plan.pinned
        self._grant: Grant | None = None
        self._holding: Deferred[Any] | None = None
        self._asked = 0.0  # when the attempt being held asked the gate

    def more(self) -> bool:
        # a candidate a reload removed since the plan was made gets no new attempt
        registry = self._dispatch.registry
        self._left = [c for c in self._left if c.endpoint in registry]
        return bool(self._left) and self._budget > 0

    def next(self) -> Candidate | Deferred[Candidate]:
        self._budget -= 1
        if self._model is None:
            return self._left.pop(0)
        dispatch, context = self._dispatch, self._context
        retry = context.queued is not None  # it passed the gate before: failover or replan
        pinned = None if retry else self._pinned
        move_cost = 0.0
        if pinned is not None:
            move_cost = dispatch.rates.move_cost(self._model, context.body_size)
        ticket = Ticket(
            tuple(c.endpoint for c in self._left),
            self._model,
            native=self._rewrite,
            priority=context.priority,
            pinned=pinned,
            move_cost=move_cost,
            retry=retry,
            arrived=context.started if retry else None,
            request_id=context.request_id,
        )
        if context.queued is None:
            context.queued = 0.0
        self._asked = dispatch.clock.seconds()
        held = self._holding = dispatch.gate.admit(ticket)
        return held.addCallbacks(self._granted, self._refused)

    def _granted(self, grant: Grant) -> Candidate:
        self._holding = None
        self._grant = grant
        self._context.queued = (self._context.queued or 0.0) + grant.waited
        chosen = next(c for c in self._left if c.endpoint is grant.endpoint)
        self._left.remove(chosen)
        return chosen

    def _refused(self, failure: Failure) -> Failure:
        self._holding = None
        # refused, or given up because the client left: held until now all the same
        waited = self._dispatch.clock.seconds() - self._asked
        self._context.queued = (self._context.queued or 0.0) + waited
        refusal = failure.value
        if not isinstance(refusal, AdmissionRefused):
            return failure  # cancelled: the client left
        return Failure(
            Refused(
                503,
                refusal.message,
                code=refusal.reason.value,
                retry_after=refusal.retry_after,
                replan=refusal.reason is Refusal.REPLAN,
            )
        )

    def ended(self, served: bool, loaded: float | None) -> None:
        grant, self._grant = self._grant, None
        if grant is not None:
            grant.release(served, loaded)

    def close(self) -> None:
        holding, self._holding = self._holding, None
        if holding is not None:
            holding.cancel()
        self.ended(False, None)

    def left(self) -> int:
        return len(self._left)
