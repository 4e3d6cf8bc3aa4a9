# -*- test-case-name: tests.test_failovers -*-
"""The recent failovers: a bounded ring of "this request left that endpoint for the next one".

One event each time the exchange hands a request to its next candidate (it hears the next
attempt start, with the attempt it takes over from);
``/internal/stats/failovers`` (and the dashboard) read them back, newest first. The ring holds a
fixed number of events, so a failing fleet costs the same memory as a quiet one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from zope.interface import implementer

from olla.interfaces import IOutcomeListener
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import AttemptStart

#: how many failovers the ring keeps
DEFAULT_SIZE = 50


@dataclass(frozen=True)
class Failover:
    """One hand-over: at ``at`` (POSIX seconds), request ``request_id`` for ``model`` left
    ``from_endpoint`` for ``to_endpoint`` because of ``cause``: a connection failure's kind
    ("connection refused", "timed out...") or the busy status the backend answered ("503")."""

    at: float
    request_id: str
    model: str
    from_endpoint: str
    to_endpoint: str
    cause: str

    @property
    def kind(self) -> str:
        """``"busy"`` when the backend answered a status, ``"unreachable"`` when it did not."""
        return "busy" if self.cause.isdigit() else "unreachable"


@implementer(IOutcomeListener)
class FailoverLog(OutcomeListener):
    """The last ``size`` failovers, and how many there were since start; an outcome listener
    that records one each time an attempt takes a request over from another."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"a failover log holds at least one event, not {size}")
        self._events: deque[Failover] = deque(maxlen=size)
        self.total = 0

    @property
    def size(self) -> int:
        """How many events the ring keeps."""
        maxlen = self._events.maxlen
        assert maxlen is not None
        return maxlen

    def record(
        self,
        at: float,
        request_id: str,
        model: str,
        from_endpoint: str,
        to_endpoint: str,
        cause: str,
    ) -> None:
        """Remember one hand-over; the oldest event goes once the ring is full."""
        self._events.append(Failover(at, request_id, model, from_endpoint, to_endpoint, cause))
        self.total += 1

    def attempt_started(self, start: AttemptStart) -> None:
        handed = start.after
        if handed is not None and handed.failover is not None:
            self.record(
                start.at,
                start.request_id,
                handed.start.model or "",
                handed.start.endpoint.name,
                start.endpoint.name,
                handed.cause or handed.failover,
            )

    def recent(self) -> list[Failover]:
        """The events kept, newest first."""
        return list(reversed(self._events))
