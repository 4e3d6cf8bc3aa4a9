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


#: the events a listener may hear (``IOutcomeListener``'s methods)
_EVENTS = ("attempt_started", "attempt_answered", "attempt_finished", "request_finished")


@implementer(IOutcomeListener)
class Outcomes:
    """Hands each record to every subscribed listener, in the order they subscribed.

    Each event goes only to the listeners that hear it (a method of their own, not the
    ``OutcomeListener`` no-op): most listeners care about one or two events, and every
    request publishes four.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._listeners: tuple[IOutcomeListener, ...] = ()
        self._hearing: dict[str, tuple[Callable[..., None], ...]] = dict.fromkeys(_EVENTS, ())

    def subscribe(self, listener: IOutcomeListener) -> None:
        self._listeners = (*self._listeners, listener)
        for event in _EVENTS:
            ignored = getattr(OutcomeListener, event)
            if getattr(type(listener), event, None) is not ignored:
                self._hearing[event] = (*self._hearing[event], getattr(listener, event))

    @property
    def listeners(self) -> tuple[IOutcomeListener, ...]:
        return self._listeners

    def attempt_started(self, start: AttemptStart) -> None:
        self._tell("attempt_started", start)

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        for hear in self._hearing["attempt_answered"]:
            try:
                hear(start, status)
            except Exception:
                self._failed(hear, "attempt_answered")

    def attempt_finished(self, record: AttemptRecord) -> None:
        self._tell("attempt_finished", record)

    def request_finished(self, record: RequestRecord) -> None:
        self._tell("request_finished", record)

    def _tell(self, event: str, record: object) -> None:
        for hear in self._hearing[event]:
            try:
                hear(record)
            except Exception:
                self._failed(hear, event)

    def _failed(self, hear: Callable[..., None], event: str) -> None:
        self._log.failure(
            "outcome listener {listener} failed in {event}", listener=repr(hear), event=event
        )
