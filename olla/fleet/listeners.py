# -*- test-case-name: tests.test_outcomes -*-
"""What the fleet learns from the request path's outcome records (``build_app`` registers
these): the registry counts each attempt, a refused connection sends its endpoint out of
rotation for a re-probe, and the catalogue learns where models are loaded and how long a load
takes."""

from __future__ import annotations

from zope.interface import implementer

from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import EndpointRegistry, Outcome
from olla.fleet.health import HealthService
from olla.fleet.models import ModelCatalogue
from olla.interfaces import IOutcomeListener
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import AttemptRecord, AttemptStart

#: a ``load_duration`` this long means the model was loaded for this request (a warm Ollama
#: reports a few to tens of milliseconds)
LOAD_SEEN = 0.25


@implementer(IOutcomeListener)
class RegistryTraffic(OutcomeListener):
    """Feeds the registry every attempt (in flight, counters, circuits, busy backends);
    registered first, so routing sees an attempt's end before anyone acts on it."""

    def __init__(self, registry: EndpointRegistry) -> None:
        self._registry = registry

    def attempt_started(self, start: AttemptStart) -> None:
        self._registry.attempt_started(start.endpoint, start.at)

    def attempt_finished(self, record: AttemptRecord) -> None:
        registry, start = self._registry, record.start
        registry.attempt_ended(
            start.endpoint, record.outcome, started=start.at, relayed=record.relayed
        )
        if record.busy_for is not None:
            registry.backend_busy(start.endpoint, record.busy_for)


@implementer(IOutcomeListener)
class ConnectionFailures(OutcomeListener):
    """An attempt that could not connect: its endpoint leaves rotation and is probed again at
    once (``HealthService.report_connection_failure``)."""

    def __init__(self, health: HealthService) -> None:
        self._health = health

    def attempt_finished(self, record: AttemptRecord) -> None:
        if record.unreachable:
            endpoint = record.start.endpoint
            self._health.report_connection_failure(endpoint, record.cause or "unreachable")


@implementer(IOutcomeListener)
class LoadLearning(OutcomeListener):
    """Where models are in memory, and how long loading one takes, learnt from answers.

    An attempt for a model not known to be loaded there marks it loading; a first good answer
    marks it loaded; a failed one forgets the load, except one that ran out of olla's own
    time (``Outcome.TIMED_OUT``): that load goes on at the host, which stays "loading". An
    answer on a path its endpoint's profile says runs the model (``request.parsing_rules``)
    reports its load time, and when a model was loaded for it the endpoint is asked what it
    holds now (loading one may have evicted another, whose requests must not go there as if
    warm).
    """

    def __init__(self, catalogue: ModelCatalogue, discovery: DiscoveryService) -> None:
        self._catalogue = catalogue
        self._discovery = discovery

    def attempt_started(self, start: AttemptStart) -> None:
        if start.cold and start.model is not None:
            self._catalogue.mark_loading(start.endpoint, start.model, start.at)

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        if start.model is not None and status < 400:
            # its first answer means the model is in memory there now
            self._catalogue.mark_loaded(start.endpoint, start.model)

    def attempt_finished(self, record: AttemptRecord) -> None:
        start = record.start
        model, endpoint = start.model, start.endpoint
        if model is None:
            return
        if record.outcome is not Outcome.OK:
            if start.cold and record.outcome is not Outcome.TIMED_OUT:
                self._catalogue.load_failed(endpoint, model)
            return
        profile = endpoint.profile
        if profile is None:
            return
        loaded = start.cold
        seconds = record.load_seconds
        if (
            seconds is not None
            and seconds >= LOAD_SEEN
            and profile.runs_model(start.path.decode("utf-8", "replace"))
        ):
            self._catalogue.observe_load(model, seconds)
            loaded = True
        if loaded:
            self._discovery.refresh_loaded([endpoint])  # (it asks only those that can say)
