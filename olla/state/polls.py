# -*- test-case-name: tests.test_state_stores -*-
"""``SharedPolls``: one health prober and one model discovery per endpoint per interval across
every process sharing the store (``olla.interfaces.IPollShare``).

A poll's lease is a key, ``<prefix>lease:<kind>:<endpoint id>``, holding the process that
polls and expiring after the poll's interval; the holder renews it at its next poll
(``LEASE_CLAIM``), so one process keeps polling an endpoint while it lives and another takes
over within an interval of its death. The poller publishes what it found on the events
channel; every other process applies that as if it had polled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from olla.fleet.values import Endpoint
from olla.interfaces import IPollShare
from olla.state.resp import Arg, Reply
from olla.state.scripts import LEASE_CLAIM
from olla.state.shared import SharedState


@implementer(IPollShare)
class SharedPolls:
    """Poll leases and results through the shared store."""

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    def claim(self, kind: str, endpoint: Endpoint, ttl: float) -> Deferred[bool]:
        key = self._shared.key("lease", kind, endpoint.id)
        args: list[Arg] = [self._shared.process, max(1, int(ttl * 1000))]
        return self._shared.ask(
            lambda c: c.evalsha(LEASE_CLAIM, [key], args), _won, lambda: succeed(True)
        )

    def publish(self, kind: str, endpoint: Endpoint, result: dict[str, object]) -> None:
        self._shared.publish("poll:" + kind, endpoint=endpoint.id, result=result)

    def subscribe(self, kind: str, listener: Callable[[str, dict[str, object]], object]) -> None:
        def heard(message: dict[str, Any]) -> None:
            endpoint, result = message.get("endpoint"), message.get("result")
            if isinstance(endpoint, str) and isinstance(result, dict):
                listener(endpoint, result)

        self._shared.subscribe("poll:" + kind, heard)


def _won(reply: Reply) -> bool:
    if not isinstance(reply, int):
        raise TypeError(f"a lease claim answered {reply!r}")
    return reply == 1
