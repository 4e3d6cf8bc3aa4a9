# -*- test-case-name: tests.test_outcomes -*-
"""What the fleet learns from the request path's outcome records (``build_app`` registers
these): the registry counts each attempt, a refused connection sends its endpoint out of
rotation for a re-probe, and the catalogue learns where models are loaded and how long a load
takes (with a shared store, every process learns what one saw)."""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import Endpoint, EndpointRegistry, Outcome
from olla.fleet.health import HealthService
from olla.fleet.models import ModelCatalogue
from olla.interfaces import IOutcomeListener, IPollShare
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

    With a shared store (``share``), the loads this process starts, sees done or sees fail,
    and the load times it learns, are told to the other processes (``endpoints`` finds an
    endpoint by id), which learn them as their own: a model one worker is loading on a host is
    "loading" there for every worker, so none starts a second load elsewhere.
    """

    def __init__(
        self,
        catalogue: ModelCatalogue,
        discovery: DiscoveryService,
        share: IPollShare | None = None,
        endpoints: Callable[[str], Endpoint | None] = lambda _: None,
    ) -> None:
        self._catalogue = catalogue
        self._discovery = discovery
        self._share = share
        self._endpoints = endpoints
        if share is not None:
            share.subscribe("loads", self._heard)

    def attempt_started(self, start: AttemptStart) -> None:
        if start.cold and start.model is not None:
            self._catalogue.mark_loading(start.endpoint, start.model, start.at)
            self._tell(start.endpoint, start.model, loading=start.at)

    def attempt_answered(self, start: AttemptStart, status: int) -> None:
        if start.model is not None and status < 400:
            # its first answer means the model is in memory there now
            self._catalogue.mark_loaded(start.endpoint, start.model)
            if start.cold:
                self._tell(start.endpoint, start.model, loaded=True)

    def attempt_finished(self, record: AttemptRecord) -> None:
        start = record.start
        model, endpoint = start.model, start.endpoint
        if model is None:
            return
        if record.outcome is not Outcome.OK:
            if start.cold and record.outcome is not Outcome.TIMED_OUT:
                self._catalogue.load_failed(endpoint, model)
                self._tell(endpoint, model, failed=True)
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
            self._tell(endpoint, model, load_seconds=seconds)
            loaded = True
        if loaded:
            self._discovery.refresh_loaded([endpoint])  # (it asks only those that can say)

    # ------------------------------------------------------------------ shared

    def _tell(self, endpoint: Endpoint, model: str, **event: object) -> None:
        if self._share is not None:
            self._share.publish("loads", endpoint, {"model": model, **event})

    def _heard(self, endpoint_id: str, event: dict[str, object]) -> None:
        """Another process saw a load of ``event["model"]`` at ``endpoint_id``."""
        endpoint = self._endpoints(endpoint_id)
        model = event.get("model")
        if endpoint is None or not isinstance(model, str):
            return
        since, seconds = event.get("loading"), event.get("load_seconds")
        if isinstance(since, int | float):
            if not self._catalogue.warm(endpoint, model):  # warm here: nothing to wait for
                self._catalogue.mark_loading(endpoint, model, float(since))
        elif event.get("loaded") is True:
            self._catalogue.mark_loaded(endpoint, model)
        elif event.get("failed") is True:
            self._catalogue.load_failed(endpoint, model)
        elif isinstance(seconds, int | float):
            self._catalogue.observe_load(model, float(seconds))
