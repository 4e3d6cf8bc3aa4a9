# -*- test-case-name: tests.test_state_stores -*-
"""``RedisRateStore``: token buckets every process and instance shares (``IRateStore``).

One script per check (``RATE_TAKE``) reads, refills and takes from every bucket of the request
at once on the server's clock, so a limit of 12 a minute serves 12 however many workers and
instances the requests reach. A bucket is a hash that expires once it would be full again.
While the store does not answer, this process's ``MemoryRateStore`` decides: each process then
allows the whole limit on its own (failing open, as the interface asks).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from zope.interface import implementer

from olla.guard.ratelimit import MemoryRateStore
from olla.interfaces import IRateStore
from olla.state.resp import Arg, Reply
from olla.state.scripts import RATE_TAKE
from olla.state.shared import SharedState


def _levels(reply: Reply) -> tuple[bool, list[float]]:
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise TypeError(f"a rate check answered {reply!r}")
    levels = []
    for level in reply[1:]:
        if not isinstance(level, bytes):
            raise TypeError(f"a rate check answered {reply!r}")
        levels.append(float(level))
    return reply[0] == 1, levels


@implementer(IRateStore)
class RedisRateStore:
    """Buckets in the shared store; this process's memory while it does not answer."""

    def __init__(self, shared: SharedState, local: MemoryRateStore) -> None:
        self._shared = shared
        self.local = local

    @property
    def service(self) -> IService:
        """The fallback's idle-bucket sweeper, for the app to run."""
        return self.local

    def take(
        self, buckets: Sequence[tuple[str, float, float]], now: float
    ) -> Deferred[tuple[bool, list[float]]]:
        key = self._shared.key
        keys: list[Arg] = [key("rate", name) for name, _, _ in buckets]
        args: list[Arg] = []
        for _, rate, capacity in buckets:
            args += [repr(rate), repr(capacity)]
        return self._shared.ask(
            lambda c: c.evalsha(RATE_TAKE, keys, args),
            _levels,
            lambda: self.local.take(buckets, now),
        )
