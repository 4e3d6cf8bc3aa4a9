# -*- test-case-name: tests.test_discovery -*-
"""Model discovery: ask each healthy endpoint which models it has (and, for Ollama, which are
loaded), and keep the catalogue true.

Runs at startup once the first health results are in, every ``model_discovery.interval``,
whenever an endpoint recovers, and on demand (routing's refresh-on-miss). A failed discovery
keeps the endpoint's last good list and is simply tried again next time.

With a shared store (an ``IPollShare``), each interval's run claims every endpoint's lease
first: one process asks an endpoint, and publishes the documents it read (the model list,
``/api/ps``, the version); the others run the same discovery over those documents instead of
asking the endpoint again. Runs asked for now (startup, a recovery, refresh-on-miss) are
always made here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from olla.config import ModelDiscoveryConfig, OllaConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus
from olla.fleet.models import ModelCatalogue, matches_filter
from olla.fleet.modelsources import (
    BODY_LIMIT,
    DiscoveryError,
    parse_loaded_from_list,
    parse_ollama_ps,
    source_for,
)
from olla.interfaces import IPollShare, IReconfigurable
from olla.util.bodies import BodyTooLarge, BoundedBody
from olla.util.deadline import follow, with_deadline


@implementer(IReconfigurable)
class DiscoveryService(Service):
    """Keeps ``catalogue`` in step with what the endpoints serve."""

    _log = Logger()
    reconfigures = (
        "discovery.model_discovery.interval",
        "discovery.model_discovery.timeout",
        "discovery.model_discovery.concurrent_workers",
        "model_registry.unification.stale_threshold",
    )

    def __init__(
        self,
        registry: EndpointRegistry,
        catalogue: ModelCatalogue,
        agent: IAgent,
        clock: IReactorTime,
        config: ModelDiscoveryConfig,
        version: str,
        share: IPollShare | None = None,
    ) -> None:
        self._registry = registry
        self._share = share
        #: documents read by a claimed run (published when it ends), or heard from the
        #: process that ran it (read instead of asking), by endpoint then URL
        self._recording: dict[Endpoint, dict[str, Any]] = {}
        self._replaying: dict[Endpoint, dict[str, Any]] = {}
        if share is not None:
            share.subscribe("models", self._heard)
        self._catalogue = catalogue
        self._agent = agent
        self._clock = clock
        self._config = config
        self._limit = DeferredSemaphore(max(1, config.concurrent_workers))
        self._headers = Headers(
            {
                b"User-Agent": [f"olla-Discovery/{version}".encode()],
                b"Accept": [b"application/json"],
            }
        )
        self._call: IDelayedCall | None = None
        #: forget an endpoint's models when its last successful discovery is this old
        self.stale_threshold = 0.0
        self._discovering = _Coalesced()
        self._asking_loaded = _Coalesced()

    def startService(self) -> None:
        super().startService()
        if not self._config.enabled:
            return
        # each endpoint is asked as soon as it comes up (the startup gate waits for it), and
        # again whenever it recovers: a machine back up may serve other models now
        self._registry.add_listener(self._status_changed)
        for endpoint in self._registry.routable():
            self.refresh(endpoint)
        self._call = self._clock.callLater(self._config.interval, self._tick)

    def _status_changed(self, endpoint: Endpoint, old: EndpointStatus, new: EndpointStatus) -> None:
        if self.running and new.routable and not old.routable:
            self.refresh(endpoint)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._discovering.cancel_all()
        self._asking_loaded.cancel_all()
        return succeed(None)

    def reconfigure(self, whole: OllaConfig) -> None:
        """After a reload: the new interval, timeout and worker count (``enabled`` needs a
        restart), and when a silent endpoint's models are forgotten. Runs already going
        finish as they started."""
        self.stale_threshold = whole.model_registry.unification.stale_threshold
        config = whole.discovery.model_discovery
        old, self._config = self._config, config
        if config.concurrent_workers != old.concurrent_workers:
            self._limit = DeferredSemaphore(max(1, config.concurrent_workers))
        if config.interval != old.interval and self._call is not None and self._call.active():
            self._call.cancel()
            self._call = self._clock.callLater(config.interval, self._tick)

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` was removed by a reload: stop asking it anything."""
        self._discovering.cancel(endpoint)
        self._asking_loaded.cancel(endpoint)

    def _tick(self) -> None:
        if not self.running:
            return
        if self.stale_threshold > 0:
            for endpoint in self._catalogue.drop_stale(
                self._clock.seconds() - self.stale_threshold
            ):
                self._registry.models_forgotten(endpoint)
                self._log.info(
                    "forgot the models of {endpoint}: not seen for {hours:g}h",
                    endpoint=endpoint.name,
                    hours=self.stale_threshold / 3600,
                )
        if self._share is None:
            self.refresh_all()
        else:
            for endpoint in self._registry.routable():
                claimed = self._share.claim("models", endpoint, self._config.interval)
                claimed.addCallback(self._claimed, endpoint)
        self._call = self._clock.callLater(self._config.interval, self._tick)

    # ------------------------------------------------------------------ shared runs

    def _claimed(self, won: bool, endpoint: Endpoint) -> None:
        if not won or not self.running or endpoint not in self._registry:
            return
        self._recording[endpoint] = {}
        self.refresh(endpoint).addBoth(self._publish, endpoint)

    def _publish(self, _: object, endpoint: Endpoint) -> None:
        documents = self._recording.pop(endpoint, None)
        if documents and self._share is not None and endpoint in self._registry:
            self._share.publish("models", endpoint, {"documents": documents})

    def _heard(self, endpoint_id: str, found: dict[str, object]) -> None:
        """Another process asked ``endpoint_id``: discover from what it read."""
        documents = found.get("documents")
        endpoint = next((e for e in self._registry if e.id == endpoint_id), None)
        if endpoint is None or not isinstance(documents, dict) or not self.running:
            return
        self._replaying[endpoint] = documents
        self.refresh(endpoint).addBoth(lambda _: self._replaying.pop(endpoint, None))

    def refresh_all(self) -> Deferred[None]:
        """Discover every healthy endpoint now (coalesced with runs already going)."""
        return _all(self.refresh(ep) for ep in self._registry.routable())

    def refresh(self, endpoint: Endpoint) -> Deferred[None]:
        """Discover one endpoint; never fails (errors are logged, the old list stays)."""

        def start() -> Deferred[None]:
            d = self._limit.run(lambda: Deferred.fromCoroutine(self._discover(endpoint)))
            return d.addErrback(self._failed, endpoint)

        return self._discovering.run(endpoint, start)

    def _failed(self, failure: Failure, endpoint: Endpoint) -> None:
        if failure.check(CancelledError) and not (self.running and endpoint in self._registry):
            return  # stopping, or the endpoint was removed
        self._registry.models_unlisted(endpoint)
        self._log.warn(
            "model discovery for {endpoint} failed, keeping {count} known model(s): {cause}",
            endpoint=endpoint.name,
            count=len(self._catalogue.models_of(endpoint)),
            cause=failure.getErrorMessage() or repr(failure.value),
        )

    async def _get_json(self, endpoint: Endpoint, url: str) -> Any:
        replay = self._replaying.get(endpoint)
        if replay is not None and url in replay:
            return replay[url]
        document = await self._fetch_json(endpoint, url)
        recording = self._recording.get(endpoint)
        if recording is not None:
            recording[url] = document
        return document

    async def _fetch_json(self, endpoint: Endpoint, url: str) -> Any:
        headers = self._headers.copy()
        for name, value in endpoint.extra_headers:
            headers.setRawHeaders(name, [value])
        request = self._agent.request(b"GET", url.encode(), headers)
        response: IResponse = await with_deadline(request, self._config.timeout, self._clock)
        reader = BoundedBody(BODY_LIMIT, keep=True)
        response.deliverBody(reader)
        try:
            body = await with_deadline(reader.done, self._config.timeout, self._clock)
        except BodyTooLarge as e:
            raise DiscoveryError(f"model list {e}") from None
        if response.code != 200:
            raise DiscoveryError(f"{url} answered HTTP {response.code}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise DiscoveryError(f"{url} sent invalid JSON: {e}") from None

    async def _discover(self, endpoint: Endpoint) -> None:
        document = await self._get_json(endpoint, endpoint.model_url)
        if endpoint not in self._registry:
            return  # removed by a reload while it was asked
        models = [
            m
            for m in source_for(endpoint).parse(document)
            if matches_filter(m.name, endpoint.config.model_filter)
        ]
        before = {m.name for m in self._catalogue.models_of(endpoint)}
        self._catalogue.set_models(endpoint, models, self._clock.seconds())
        added = sorted({m.name for m in models} - before)
        if added:
            self._log.info(
                "endpoint {endpoint} serves {count} model(s); new: {added}",
                endpoint=endpoint.name,
                count=len(models),
                added=", ".join(added),
            )
        if endpoint.response_format == "lmstudio":
            self._catalogue.set_loaded(endpoint, parse_loaded_from_list(document))
        if endpoint.type == "ollama":
            await self._read_loaded(endpoint)
            await self._read_version(endpoint)
        # announced last: what is loaded decides the first requests' order too
        self._registry.models_listed(endpoint, len(models))

    async def _read_version(self, endpoint: Endpoint) -> None:
        """Ollama's version decides whether it speaks the Anthropic API (0.14.0 and later)."""
        url = endpoint.upstream_url(b"/api/version").decode()
        try:
            document = await self._get_json(endpoint, url)
        except Exception as e:
            self._log.debug("no /api/version from {endpoint}: {e}", endpoint=endpoint.name, e=e)
            return
        version = document.get("version") if isinstance(document, dict) else None
        if isinstance(version, str):
            self._registry.version_read(endpoint, version)

    async def _read_loaded(self, endpoint: Endpoint) -> None:
        ps_url = endpoint.upstream_url(b"/api/ps").decode()
        try:
            rows = parse_ollama_ps(await self._get_json(endpoint, ps_url))
        except Exception as e:  # an old Ollama without /api/ps still routes fine
            self._log.debug("no /api/ps from {endpoint}: {e}", endpoint=endpoint.name, e=e)
        else:
            if endpoint in self._registry:  # not removed by a reload meanwhile
                self._catalogue.set_loaded(endpoint, [row["name"] for row in rows], rows)

    def refresh_loaded(self, endpoints: Iterable[Endpoint]) -> Deferred[None]:
        """Ask each Ollama endpoint what it has in memory now (``/api/ps`` is live state: a
        model loads on first use and unloads on a timer, so a cached answer would be stale).
        One request per endpoint at a time, shared by everyone who asks while it runs."""
        return _all(
            self._ask_loaded(ep) for ep in endpoints if ep.type == "ollama" and ep in self._registry
        )

    def _ask_loaded(self, endpoint: Endpoint) -> Deferred[None]:
        def start() -> Deferred[None]:
            return Deferred.fromCoroutine(self._read_loaded(endpoint))

        return self._asking_loaded.run(endpoint, start)


class _Coalesced:
    """At most one run per endpoint at a time; whoever asks while it runs shares it."""

    def __init__(self) -> None:
        self._running: dict[Endpoint, Deferred[None]] = {}

    def run(self, endpoint: Endpoint, start: Callable[[], Deferred[None]]) -> Deferred[None]:
        running = self._running.get(endpoint)
        if running is not None:
            return follow(running)
        d = start()
        self._running[endpoint] = d
        d.addBoth(self._settled, endpoint)
        return follow(d)

    def _settled(self, result: object, endpoint: Endpoint) -> object:
        self._running.pop(endpoint, None)
        return result

    def cancel(self, endpoint: Endpoint) -> None:
        pending = self._running.get(endpoint)
        if pending is not None:
            pending.cancel()

    def cancel_all(self) -> None:
        for pending in list(self._running.values()):
            pending.cancel()


def _all(runs: Iterable[Deferred[None]]) -> Deferred[None]:
    """Fires when every run has (they never fail: each logs its own errors)."""
    done: Deferred[None] = DeferredList(list(runs), consumeErrors=True).addCallback(lambda _: None)
    return done
