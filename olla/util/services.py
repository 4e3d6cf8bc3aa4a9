# -*- test-case-name: tests.test_app -*-
"""``Hooks``: a service that is two functions, for the daemon's start and stop steps."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred


class Hooks(Service):
    """Runs ``on_start`` when it starts, and ``on_stop`` when it stops (the stop waits for the
    Deferred it returns): closing a pool, draining requests, the startup log lines."""

    def __init__(
        self,
        on_start: Callable[[], object] | None = None,
        on_stop: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self._on_start = on_start
        self._on_stop = on_stop

    def startService(self) -> None:
        super().startService()
        if self._on_start is not None:
            self._on_start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self._on_stop() if self._on_stop is not None else None
