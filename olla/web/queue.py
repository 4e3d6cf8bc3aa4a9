# -*- test-case-name: tests.test_gatedispatch -*-
"""The admission queue as olla shows it: the ``queue`` section of ``/internal/status`` (and the
dashboard's queue panel, which reads it) and its Prometheus families.

Both read the gate (``olla.proxy.gate.AdmissionGate``) when asked: the requests held now per
model and priority, how long the oldest has waited, what the queue did so far (let through at
once or after a wait, refused and why, cancelled, promoted, loads it started), how long
let-through requests were held, per priority, and (the status) each endpoint's slots in use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from olla.fleet.endpoints import EndpointRegistry
from olla.proxy.admission import Refusal
from olla.proxy.gate import AdmissionGate
from olla.proxy.movecost import PromptRates
from olla.util.priority import Priority
from olla.web.metrics import counter_family, gauge_family

#: the snapshot's fields that move with the clock alone (left out of the ETag)
_VOLATILE = ("oldest_wait_s", "arrivals_per_s")


def queue_status(
    gate: AdmissionGate, rates: PromptRates, registry: EndpointRegistry
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``queue`` section of ``/internal/status``, and its stable view for the ETag: the
    gate's snapshot, the slots each endpoint has in use of its cap, and the learnt prompt
    reading rates (what moving a sticky conversation costs)."""
    payload = gate.snapshot()
    payload["slots"] = {
        endpoint.name: {"in_use": gate.in_use(endpoint), "of": gate.cap(endpoint, "")}
        for endpoint in registry
    }
    payload["prompt_ms_per_token"] = rates.snapshot()
    stable = dict(payload)
    stable["models"] = {
        model: {k: v for k, v in row.items() if k not in _VOLATILE}
        for model, row in payload["models"].items()
    }
    return payload, stable


class QueueCollector(Collector):
    """The admission queue's Prometheus families, read from the gate at scrape time."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate

    def collect(self) -> Iterable[Metric]:
        gate = self._gate
        yield gauge_family(
            "olla_queue_depth",
            "Requests held in olla's admission queue now, by model and asked priority",
            ("model", "priority"),
            (((model or "-", label), held) for (model, label), held in gate.depth().items()),
        )
        waits = HistogramMetricFamily(
            "olla_queue_wait_seconds",
            "How long requests let through by the admission queue were held (0: at once), by "
            "asked priority",
            labels=["priority"],
        )
        for priority in Priority:
            histogram = gate.waits[priority]
            waits.add_metric([priority.label], histogram.cumulative(), histogram.sum)
        yield waits
        totals = gate.counters
        yield counter_family(
            "olla_queue_refusals",
            "Requests the admission queue refused: queue_full (max_size held already, 503 at "
            "once), wait_timeout (held for max_wait, 503), replan (every candidate left "
            "rotation while held: planned again)",
            ("reason",),
            (((reason.value,), totals[reason.value]) for reason in Refusal),
        )
        yield counter_family(
            "olla_queue_admissions",
            "Attempts the admission queue let through: at_once (a slot was free) or after_wait",
            ("how",),
            (((how,), totals[how]) for how in ("at_once", "after_wait")),
        )
        yield CounterMetricFamily(
            "olla_queue_cancelled",
            "Held requests whose client left: dropped, never sent to a backend",
            value=totals["cancelled"],
        )
        yield CounterMetricFamily(
            "olla_queue_promoted",
            "Low-priority requests promoted to normal after half of max_wait",
            value=totals["promoted"],
        )
        yield counter_family(
            "olla_queue_loads",
            "Attempts the queue sent to a host without the model: cold_start (its first home) "
            "or second_home (its other hosts were full and a load paid)",
            ("kind",),
            ((("cold_start",), totals["cold_starts"]), (("second_home",), totals["second_homes"])),
        )
