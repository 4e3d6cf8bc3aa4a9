# -*- test-case-name: tests.test_health -*-
"""Deadlines: for a Deferred (``with_deadline``), and a one-shot timer (``OneShot``).

``with_deadline`` always fails with ``TimeoutError`` when it expires: ``Deferred.addTimeout``
only converts a ``CancelledError``; an Agent request cancelled midway fails with
``ResponseNeverReceived`` or similar instead, which would read as a dropped connection.
Callers need to know it was *their* timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def with_deadline(d: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """Cancel ``d`` after ``seconds``; if it then fails, fail with ``TimeoutError``."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        d.cancel()

    call = clock.callLater(seconds, expire)

    def settle(result: T | Failure) -> T | Failure:
        if call.active():
            call.cancel()
        if expired and isinstance(result, Failure):
            return Failure(DeferredTimeout(f"no answer within {seconds:g}s"))
        return result

    return d.addBoth(settle)


def follow(d: Deferred[T]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` does, leaving ``d``'s result alone."""
    follower: Deferred[None] = Deferred()

    def relay(result: T | Failure) -> T | Failure:
        if not follower.called:
            follower.callback(None)
        return result

    d.addBoth(relay)
    return follower


class OneShot:
    """Calls ``expired`` once, ``seconds`` after it was last started, unless stopped first (a
    stream's idle bound, a request's whole-response bound). Started again while it runs, its
    one delayed call is moved, not replaced: the idle bound is started at every chunk."""

    __slots__ = ("_call", "_clock", "_expired")

    def __init__(self, clock: IReactorTime, expired: Callable[[], object]) -> None:
        self._clock = clock
        self._expired = expired
        self._call: IDelayedCall | None = None

    def start(self, seconds: float) -> None:
        call = self._call
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._call = self._clock.callLater(seconds, self._fire)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def close(self) -> None:
        """Stop for good and let go of what it would call: that is usually its owner's method,
        and the owner keeps the timer, a cycle only the garbage collector would free (every
        request's objects with it)."""
        self.stop()
        self._expired = nothing

    def _fire(self) -> None:
        self._call = None
        self._expired()


def nothing() -> None:
    """Does nothing: what a closed timer calls."""
    pass


class IdleBound(OneShot):
    """A one-shot timer for a stream's idle bound: it calls ``expired`` once nothing happened
    for the ``seconds`` it was started with. What happens is marked by setting ``active_at`` to
    the clock's time (a stream does it at every chunk: an attribute, not a timer moved each
    time); when due, the one delayed call looks at it and waits again for what is left."""

    __slots__ = ("_seconds", "active_at")

    def __init__(self, clock: IReactorTime, expired: Callable[[], object]) -> None:
        super().__init__(clock, expired)
        self._seconds = 0.0
        #: when something last happened
        self.active_at = 0.0

    def start(self, seconds: float) -> None:
        self._seconds = seconds
        self.active_at = self._clock.seconds()
        super().start(seconds)

    def _fire(self) -> None:
        left = self.active_at + self._seconds - self._clock.seconds()
        if left > SLACK:
            self._call = self._clock.callLater(left, self._fire)
        else:
            super()._fire()


#: seconds a due time may be short of the clock's when its call runs (the delay was added to
#: the time it was armed, in floating point)
SLACK = 1e-9
