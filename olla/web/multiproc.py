# -*- test-case-name: tests.test_multiproc -*-
"""``/internal/metrics`` for the whole daemon when ``--workers`` runs several processes:
prometheus_client's multiprocess mode.

The supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers (a directory it empties at
start, and in which it marks a worker dead when it exits). Each worker writes what its
``OllaCollector`` reads into its own files there (``WorkerFigures``): counters and histograms
as this worker's totals (summed over every worker that ever ran, so a restarted worker does
not take figures back), gauges in the mode that reads right across live workers (in flight and
connections summed, states and sizes their maximum). A scrape of any worker merges every file
(``MultiProcessCollector``), so one scrape shows the daemon.

It writes after every finished request and attempt (on the next reactor turn, before that
turn sends any answer out, so a client that got its answer and scrapes any worker sees it
counted), every ``REFRESH`` seconds for the live gauges, and right before this worker renders a
scrape. prometheus_client's process, platform and GC collectors read only the process they run
in, so they are left out in this mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.values import MultiProcessValue
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from olla.interfaces import IOutcomeListener
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import AttemptRecord, RequestRecord
from olla.util.services import Repeating

#: the environment variable prometheus_client's multiprocess mode reads
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: seconds between writes of the live gauges when no request finishes
REFRESH = 1.0

#: gauges whose workers agree (or whose worst one matters): their maximum across live workers;
#: every other gauge is summed over the live workers
LIVE_MAX = frozenset(
    (
        "olla_uptime_seconds",
        "olla_endpoint_up",
        "olla_circuit_breaker_state",
        "olla_endpoint_models",
        "olla_models_tracked",
        "olla_security_blocked_ips",
        "olla_state_store_up",
        "olla_sticky_sessions_active",
    )
)
#: with a shared store every worker reads the fleet's in-flight counts: not summed either
SHARED_LIVE_MAX = frozenset(("olla_endpoint_in_flight_requests",))


def multiprocess_dir() -> str | None:
    """The directory this worker writes its figures to, when the supervisor set one."""
    return os.environ.get(ENV) or None


def _mode(metric: str, shared: bool) -> str:
    if metric in LIVE_MAX or (shared and metric in SHARED_LIVE_MAX):
        return "livemax"
    return "livesum"


@implementer(IOutcomeListener)
class WorkerFigures(OutcomeListener, MultiService):
    """Writes ``collector``'s figures into this worker's multiprocess files."""

    _log = Logger()

    def __init__(
        self,
        collector: Collector,
        clock: IReactorTime,
        *,
        shared: bool = False,
        process: Callable[[], int] = os.getpid,
    ) -> None:
        super().__init__()
        self._collector = collector
        self._clock = clock
        self._shared = shared
        self._value_class: Any = MultiProcessValue(process)
        self._values: dict[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], Any] = {}
        self._call: IDelayedCall | None = None
        # live gauges stay fresh in the merged scrape even when no request moves them
        Repeating(clock, REFRESH, self.flush, what="metrics refresh", now=True).setServiceParent(
            self
        )

    # ------------------------------------------------------------------ when

    def changed(self) -> None:
        """Figures moved: written on the next reactor turn (once, however many moved)."""
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def attempt_finished(self, record: AttemptRecord) -> None:
        self.changed()

    def request_finished(self, record: RequestRecord) -> None:
        self.changed()

    # ------------------------------------------------------------------ what

    def flush(self) -> None:
        """Write every figure the collector reads now."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        try:
            for family in self._collector.collect():
                self._write(family.name, family.type, family.documentation, family.samples)
        except Exception:
            self._log.failure("writing this worker's metrics failed")

    def _write(self, metric: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        if kind == "info":
            kind, metric = "gauge", metric + "_info"
        if kind == "histogram":
            self._histogram(metric, help_text, samples)
            return
        if kind not in ("counter", "gauge"):
            return
        mode = _mode(metric, self._shared) if kind == "gauge" else ""
        for sample in samples:
            if sample.name.endswith("_created"):
                continue
            self._set(kind, mode, metric, help_text, sample.name, sample.labels, sample.value)

    def _histogram(self, metric: str, help_text: str, samples: Iterable[Sample]) -> None:
        """Buckets as counts per bucket (the merge makes them cumulative again) and the sum;
        the merge counts ``_count`` from the buckets."""
        previous: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in samples:
            if sample.name.endswith("_bucket"):
                series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                below = previous.get(series, 0.0)
                previous[series] = sample.value
                value = sample.value - below
            elif sample.name.endswith("_sum"):
                value = sample.value
            else:
                continue
            self._set("histogram", "", metric, help_text, sample.name, sample.labels, value)

    def _set(
        self,
        kind: str,
        mode: str,
        metric: str,
        help_text: str,
        name: str,
        labels: dict[str, str],
        value: float,
    ) -> None:
        names = tuple(labels)
        values = tuple(labels[n] for n in names)
        key = (kind, metric, name, names, values)
        slot = self._values.get(key)
        if slot is None:
            slot = self._values[key] = self._value_class(
                kind, metric, name, names, values, help_text, multiprocess_mode=mode
            )
        slot.set(value)

    # ------------------------------------------------------------------ service

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        self.flush()  # the last figures, for the scrapes after this worker is gone
        return stopped


def merged_registry(path: str) -> CollectorRegistry:
    """Every worker's figures, merged from ``path`` when scraped."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return registry
