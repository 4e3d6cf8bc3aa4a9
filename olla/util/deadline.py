# -*- test-case-name: tests.test_health -*-
"""A deadline for a Deferred that always fails with ``TimeoutError`` when it expires.

``Deferred.addTimeout`` only converts a ``CancelledError``; an Agent request cancelled midway
fails with ``ResponseNeverReceived`` or similar instead, which would read as a dropped
connection. Callers need to know it was *their* timeout.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
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
