# -*- test-case-name: tests.test_outcomes -*-
"""``Outcomes``: where the request path publishes its records, and who hears them.

``build_app`` subscribes the listeners (``olla.interfaces.IOutcomeListener``); the request
path only calls ``Outcomes``. A listener that raises is logged and the others still hear the
record: counting a request must never break the request.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from olla.interfaces import IOutcomeListener
from olla.telemetry.records import AttemptRecord, AttemptStart, RequestRecord


@implementer(IOutcomeListener)
class OutcomeListener:
    """A listener that ignores everything: subclass it and hear what you need."""

    def attempt_started(self, start: AttemptStart) -> None:
        pass

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        pass

    def attempt_finished(self, record: AttemptRecord) -> None:
        pass

    def request_finished(self, record: RequestRecord) -> None:
        pass


@implementer(IOutcomeListener)
class Outcomes:
    """Hands each record to every subscribed listener, in the order they subscribed."""

    _log = Logger()

    def __init__(self) -> None:
        self._listeners: tuple[IOutcomeListener, ...] = ()

    def subscribe(self, listener: IOutcomeListener) -> None:
        self._listeners = (*self._listeners, listener)

    @property
    def listeners(self) -> tuple[IOutcomeListener, ...]:
        return self._listeners

    def attempt_started(self, start: AttemptStart) -> None:
        self._tell("attempt_started", lambda listener: listener.attempt_started(start))

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        self._tell("attempt_answered", lambda listener: listener.attempt_answered(start, status))

    def attempt_finished(self, record: AttemptRecord) -> None:
        self._tell("attempt_finished", lambda listener: listener.attempt_finished(record))

    def request_finished(self, record: RequestRecord) -> None:
        self._tell("request_finished", lambda listener: listener.request_finished(record))

    def _tell(self, what: str, call: Callable[[IOutcomeListener], None]) -> None:
        """``call`` every listener, in order; one that raises is logged and skipped."""
        for listener in self._listeners:
            try:
                call(listener)
            except Exception:
                self._failed(listener, what)

    def _failed(self, listener: IOutcomeListener, what: str) -> None:
        self._log.failure(
            "outcome listener {listener} failed in {what}", listener=repr(listener), what=what
        )
