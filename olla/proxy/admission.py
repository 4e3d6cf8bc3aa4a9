# -*- test-case-name: tests.test_gate -*-
"""What the pipeline and the admission gate (``olla.proxy.gate``) hand each other: a ``Ticket``
asks for a slot, a ``Grant`` holds one until ``release``, an ``AdmissionRefused`` says no (with
the reason and a ``Retry-After``)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property

from olla.fleet.endpoints import Endpoint
from olla.proxy.slots import Lease
from olla.util.priority import Priority


class Refusal(enum.Enum):
    """Why a ticket was not let through."""

    QUEUE_FULL = "queue_full"  # ``max_size`` tickets were held already
    WAIT_TIMEOUT = "wait_timeout"  # held for ``max_wait``
    #: none of its candidates can take requests any more (all left rotation while it was held):
    #: the pipeline plans again (with ``retry``) or answers the plan's own rejection
    REPLAN = "replan"


class AdmissionRefused(Exception):
    """The gate refused a ticket; the pipeline answers 503 with ``Retry-After`` in the route's
    dialect (``REPLAN``: plans again first)."""

    def __init__(self, reason: Refusal, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: whole seconds, at least 1: when a slot for this request's model may be free
        self.retry_after = retry_after


@dataclass(frozen=True, eq=False)
class Ticket:
    """One request (or one retried attempt of it) asking to be let through."""

    #: the plan's candidates, best first (``RoutePlan.candidates``); never empty
    candidates: tuple[Endpoint, ...]
    #: the model as the client named it (None: the request names none)
    model: str | None = None
    #: per endpoint, the name it knows the model by (``RoutePlan.rewrite``: aliases)
    native: Mapping[Endpoint, str] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    #: the endpoint the request's sticky session is pinned to
    pinned: Endpoint | None = None
    #: seconds moving off ``pinned`` costs (reading the conversation again elsewhere)
    move_cost: float = 0.0
    #: a failover attempt: ahead of everything of its priority, never refused for size
    retry: bool = False
    #: when the request first arrived (a retried attempt keeps its place by it); None: now
    arrived: float | None = None
    request_id: str = "-"

    def model_on(self, endpoint: Endpoint) -> str:
        """The lower-cased name ``endpoint`` knows the model by ("" without a model)."""
        return (self.native.get(endpoint) or self.model or "").lower()

    @cached_property
    def demand_key(self) -> str:
        """The model, lower-cased, that its demand counts under (the gate asks often)."""
        return (self.model or "").lower()


@dataclass(slots=True, eq=False)
class Grant:
    """A slot on ``endpoint``: the request goes there, and gives it back with ``release``."""

    _on_release: Callable[[Grant, bool, float | None], None] = field(repr=False)
    ticket: Ticket
    endpoint: Endpoint
    lease: Lease | None
    _: KW_ONLY
    #: seconds the ticket was held (0.0: let through at once); the log's ``queued=…ms``
    waited: float
    #: the model was neither in memory there nor loading: this request loads it
    cold: bool
    #: seconds of loading expected before it starts there (0: in memory)
    load_wait: float
    granted_at: float
    released: bool = field(default=False, init=False)

    def release(self, served: bool = True, loaded: float | None = None) -> None:
        """The request is over on ``endpoint``: the slot frees and the best held ticket that
        host suits gets it. Idempotent.

        Args:
            served: it was answered in full, so its time teaches the model's service time;
                False for a failed attempt or a client that left.
            loaded: seconds the backend spent loading the model for it (Ollama's
                ``load_duration``), taken off that time; None when unknown, then the time of
                a request that may have loaded (``load_wait``) teaches nothing.
        """
        if not self.released:
            self.released = True
            self._on_release(self, served, loaded)
