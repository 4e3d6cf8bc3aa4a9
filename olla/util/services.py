# -*- test-case-name: tests.test_app -*-
"""``Hooks``: a service that is two functions, for the daemon's start and stop steps;
``Repeating``: a service that calls a function every few seconds while it runs."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


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


class Repeating(Service):
    """Calls ``job`` every ``interval`` seconds on ``clock`` while it runs (``now``: at the
    start too). A job that raises is logged and called again at the next interval: a bare
    ``LoopingCall`` would stop for good and say nothing more."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        job: Callable[[], object],
        *,
        what: str,
        now: bool = False,
    ) -> None:
        self._job = job
        self.interval = interval
        self._now = now
        self.what = what
        self._loop = LoopingCall(self._step)
        self._loop.clock = clock

    def _step(self) -> None:
        try:
            self._job()
        except Exception:
            self._log.failure(
                "{what} failed (tried again in {interval}s)",
                what=self.what,
                interval=self.interval,
            )

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=self._now)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
