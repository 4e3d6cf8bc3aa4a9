# -*- test-case-name: tests.test_outcomes -*-
"""``Outcomes``: where the request path publishes its records, and who hears them.

``build_app`` subscribes the listeners (``olla.interfaces.IOutcomeListener``); the request
path only calls ``Outcomes``. A listener that raises is logged and the others still hear the
record: counting a request must never break the request.
"""

from __future__ import annotations

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
        for listener in self._listeners:
            try:
                listener.attempt_started(start)
            except Exception:
                self._failed(listener, "attempt_started")

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        for listener in self._listeners:
            try:
                listener.attempt_answered(start, status)
            except Exception:
                self._failed(listener, "attempt_answered")

    def attempt_finished(self, record: AttemptRecord) -> None:
        for listener in self._listeners:
            try:
                listener.attempt_finished(record)
            except Exception:
                self._failed(listener, "attempt_finished")

    def request_finished(self, record: RequestRecord) -> None:
        for listener in self._listeners:
            try:
                listener.request_finished(record)
            except Exception:
                self._failed(listener, "request_finished")

    def _failed(self, listener: IOutcomeListener, what: str) -> None:
        self._log.failure(
            "outcome listener {listener} failed in {what}", listener=repr(listener), what=what
        )
