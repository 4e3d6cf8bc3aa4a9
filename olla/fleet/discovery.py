# -*- test-case-name: tests.test_discovery -*-
"""Model discovery: ask each healthy endpoint which models it has (and, for Ollama, which are
loaded; for llama.cpp, its slots and context: ``olla.fleet.capacity``), and keep the catalogue
true.

Runs at startup once the first health results are in, every ``model_discovery.interval``,
whenever an endpoint recovers, and on demand (routing's refresh-on-miss). A failed discovery
keeps the endpoint's last good list and is simply tried again next time.

Besides the full discovery, every ``discovery.refresh_interval`` olla asks each Ollama what it
has in memory (``/api/ps``: a model unloads after its keep-alive, and routing must know), and
every ``model_registry.unification.cleanup_interval`` it forgets the lists of endpoints not
heard from for ``stale_threshold``. A model list that fails to come (refused, reset, an error
status, bad JSON; not a timeout, which already waited) is asked again up to
``model_discovery.retry_attempts`` times, ``retry_backoff`` apart and doubling.

Ollama also describes each model itself (``/api/show``: capabilities, context window). That
is asked once per model and digest, a few at a time, after the list is in and without holding
anything up; a failed ask is tried again at the next discovery.

With a shared store (an ``IPollShare``), each interval's discovery, and each
``refresh_interval``'s ``/api/ps``, claims the endpoint's lease first: one process asks the
endpoint and publishes the documents it read (the model list, ``/api/ps``, the version,
llama.cpp's capacity, and the ``/api/show`` answers of models it had not described yet); the
others run the same discovery over those documents instead of asking the endpoint again (what
they lack, they ask themselves). Runs asked for now (startup, a recovery, refresh-on-miss, after
a load) are always made here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from olla.config import ModelDiscoveryConfig, OllaConfig
from olla.fleet.capacity import read_capacity
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus
from olla.fleet.models import ModelCatalogue, matches_filter
from olla.fleet.modelsources import (
    BODY_LIMIT,
    DiscoveryError,
    parse_loaded_from_list,
    parse_ollama_ps,
    parse_ollama_show,
    source_for,
)
from olla.fleet.values import ModelInfo
from olla.interfaces import IPollShare, IReconfigurable
from olla.util.bodies import BodyTooLarge, BoundedBody, BytesProducer
from olla.util.deadline import follow, with_deadline


@implementer(IReconfigurable)
class DiscoveryService(Service):
    """Keeps ``catalogue`` in step with what the endpoints serve."""

    _log = Logger()
    reconfigures = (
        "discovery.model_discovery.interval",
        "discovery.model_discovery.timeout",
        "discovery.model_discovery.concurrent_workers",
        "discovery.model_discovery.retry_attempts",
        "discovery.model_discovery.retry_backoff",
        "discovery.refresh_interval",
        "model_registry.unification.stale_threshold",
        "model_registry.unification.cleanup_interval",
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
        #: what the runs that won a lease read (published when they end), and the documents
        #: heard from the process that ran one (read instead of asking), by endpoint
        self._recording: _Open[_Recording] = _Open()
        self._replaying: _Open[dict[str, Any]] = _Open()
        if share is not None:
            share.subscribe("models", lambda found, what: self._heard(found, what, self.refresh))
            share.subscribe(
                "loaded", lambda found, what: self._heard(found, what, self._ask_loaded)
            )
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
        self._every_interval = _Every(clock, self._tick)
        #: forget an endpoint's models when its last successful discovery is this old
        self.stale_threshold = 0.0
        #: how often stale lists are looked for (``unification.cleanup_interval``)
        self.cleanup_interval = 600.0
        self._every_cleanup = _Every(clock, self._cleanup)
        #: how often Ollamas are asked what they have loaded (``discovery.refresh_interval``;
        #: 0: only with each discovery and after a load)
        self.loaded_interval = 0.0
        self._every_loaded = _Every(clock, self._refresh_all_loaded)
        self._discovering = _Coalesced()
        self._asking_loaded = _Coalesced()
        #: /api/show asks: a few at a time, one per model and digest
        self._show_limit = DeferredSemaphore(SHOW_CONCURRENCY)
        self._showing: dict[tuple[str, str], Deferred[None]] = {}
        #: told the endpoint whose loaded models were just read (the admission gate looks at
        #: what its held requests may go to again)
        self.on_loaded: list[Callable[[Endpoint], object]] = []

    def startService(self) -> None:
        super().startService()
        if not self._config.enabled:
            return
        # each endpoint is asked as soon as it comes up (the startup gate waits for it), and
        # again whenever it recovers: a machine back up may serve other models now
        self._registry.add_listener(self._status_changed)
        for endpoint in self._registry.routable():
            self.refresh(endpoint)
        self._every_interval.start(self._config.interval)
        self._every_cleanup.start(self.cleanup_interval)
        self._every_loaded.start(self.loaded_interval)

    def _status_changed(self, endpoint: Endpoint, old: EndpointStatus, new: EndpointStatus) -> None:
        if self.running and new.routable and not old.routable:
            self.refresh(endpoint)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for timer in (self._every_interval, self._every_cleanup, self._every_loaded):
            timer.stop()
        self._discovering.cancel_all()
        self._asking_loaded.cancel_all()
        for pending in list(self._showing.values()):
            pending.cancel()
        return succeed(None)

    def reconfigure(self, whole: OllaConfig) -> None:
        """At startup and after a reload: the new interval, timeout, retries and worker count
        (``enabled`` needs a restart), when a silent endpoint's models are forgotten and how
        often that is looked for, how often Ollamas are asked what they have loaded. Runs
        already going finish as they started."""
        unification = whole.model_registry.unification
        self.stale_threshold = unification.stale_threshold
        self.set_intervals(
            cleanup=unification.cleanup_interval, loaded=whole.discovery.refresh_interval
        )
        config = whole.discovery.model_discovery
        old, self._config = self._config, config
        if config.concurrent_workers != old.concurrent_workers:
            self._limit = DeferredSemaphore(max(1, config.concurrent_workers))
        if config.interval != old.interval:
            self._every_interval.change(config.interval)

    def set_intervals(self, cleanup: float, loaded: float) -> None:
        """``unification.cleanup_interval`` and ``discovery.refresh_interval`` (at startup,
        and after a reload)."""
        self.cleanup_interval, self.loaded_interval = cleanup, loaded
        self._every_cleanup.change(cleanup)
        self._every_loaded.change(loaded)

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` was removed by a reload: stop asking it anything."""
        self._discovering.cancel(endpoint)
        self._asking_loaded.cancel(endpoint)

    def _tick(self) -> None:
        if self.running:
            self._each("models", self._config.interval, self.refresh, self._registry.routable())

    def _refresh_all_loaded(self) -> None:
        if self.running:
            ollamas = [ep for ep in self._registry.routable() if ep.type == "ollama"]
            self._each("loaded", self.loaded_interval, self._ask_loaded, ollamas)

    def _cleanup(self) -> None:
        if self.running and self.stale_threshold > 0:
            for endpoint in self._catalogue.drop_stale(
                self._clock.seconds() - self.stale_threshold
            ):
                self._registry.models_forgotten(endpoint)
                self._log.info(
                    "forgot the models of {endpoint}: not seen for {hours:g}h",
                    endpoint=endpoint.name,
                    hours=self.stale_threshold / 3600,
                )

    # ------------------------------------------------------------------ shared runs

    def _each(self, kind: str, interval: float, run: _Run, endpoints: Iterable[Endpoint]) -> None:
        """``run`` each endpoint: here without a shared store; else in the process that wins
        the endpoint's ``kind`` lease for this interval (the others hear what it read)."""
        for endpoint in endpoints:
            if self._share is None:
                run(endpoint)
            else:
                claimed = self._share.claim(kind, endpoint, interval)
                claimed.addCallback(self._claimed, kind, endpoint, run)

    def _claimed(self, won: bool, kind: str, endpoint: Endpoint, run: _Run) -> None:
        if won and self.running and endpoint in self._registry:
            self._recorded(kind, endpoint, run)

    def _recorded(self, kind: str, endpoint: Endpoint, run: _Run) -> Deferred[None]:
        """``run(endpoint)``; with a shared store, what it read is published for the others
        once it, and the descriptions it started, are done (they need not ask them either)."""
        if self._share is None:
            return run(endpoint)
        recording = _Recording()
        self._recording.add(endpoint, recording)
        ran = run(endpoint)
        published = follow(ran)
        published.addCallback(lambda _: _all(follow(d) for d in recording.describing))
        published.addBoth(self._publish, kind, endpoint, recording)
        return ran

    def _publish(self, _: object, kind: str, endpoint: Endpoint, recording: _Recording) -> None:
        self._recording.remove(endpoint, recording)
        if recording.documents and self._share is not None and endpoint in self._registry:
            self._share.publish(kind, endpoint, {"documents": recording.documents})

    def _heard(self, endpoint_id: str, found: dict[str, object], run: _Run) -> None:
        """Another process asked ``endpoint_id``: ``run`` it here over what that one read."""
        documents = found.get("documents")
        endpoint = self._registry.by_id(endpoint_id)
        if endpoint is None or not isinstance(documents, dict):
            return
        if not (self.running and self._config.enabled):
            return
        self._replaying.add(endpoint, documents)
        run(endpoint).addBoth(lambda _: self._replaying.remove(endpoint, documents))

    def refresh_all(self) -> Deferred[None]:
        """Discover every healthy endpoint now (coalesced with runs already going)."""
        return _all(self.refresh(ep) for ep in self._registry.routable())

    def refresh(self, endpoint: Endpoint) -> Deferred[None]:
        """Discover one endpoint; never fails (errors are logged, the old list stays)."""

        def start() -> Deferred[None]:
            d = self._limit.run(lambda: Deferred.fromCoroutine(self._discover(endpoint)))
            return d.addErrback(self._failed, endpoint)

        return self._discovering.run(endpoint, start)

    def rediscover(self, endpoint: Endpoint) -> Deferred[None]:
        """Discover ``endpoint`` with a run that starts now: one already going may have read
        the list before a change (model management), so it is followed by a new one. With a
        shared store the others hear what it read: a model pulled or deleted through this
        process is known to all of them at once."""
        running = self._discovering.pending(endpoint)
        if running is None:
            return self._recorded("models", endpoint, self.refresh)
        after = follow(running)
        after.addCallback(lambda _: self._recorded("models", endpoint, self.refresh))
        return after

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

    async def _get_json(self, endpoint: Endpoint, url: str, payload: object = None) -> Any:
        """GET ``url`` (POST ``payload`` as JSON when given) and decode the JSON answer; while
        another process's run is replayed here, what that one read."""
        # one URL answers for every model (/api/show): the payload tells the answers apart
        key = url if payload is None else f"{url} {json.dumps(payload, sort_keys=True)}"
        for documents in reversed(self._replaying.of(endpoint)):
            if key in documents:
                return documents[key]
        document = await self._fetch_json(endpoint, url, payload)
        for recording in self._recording.of(endpoint):
            recording.documents[key] = document
        return document

    async def _fetch_json(self, endpoint: Endpoint, url: str, payload: object) -> Any:
        headers = self._headers.copy()
        for name, value in endpoint.extra_headers:
            headers.setRawHeaders(name, [value])
        if payload is None:
            request = self._agent.request(b"GET", url.encode(), headers)
        else:
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
            producer = BytesProducer(json.dumps(payload).encode())
            request = self._agent.request(b"POST", url.encode(), headers, producer)
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

    async def _get_list(self, endpoint: Endpoint) -> Any:
        """The model list, asked again after a failed answer (``retry_attempts``)."""
        attempt = 0
        while True:
            try:
                return await self._get_json(endpoint, endpoint.model_url)
            except (CancelledError, DeferredTimeout):
                raise  # stopping, or the whole timeout was waited already
            except Exception as e:
                if attempt >= self._config.retry_attempts or not self.running:
                    raise
                delay = self._config.retry_backoff * 2**attempt
                attempt += 1
                self._log.debug(
                    "model list of {endpoint} failed ({cause}); asking again in {delay:g}s",
                    endpoint=endpoint.name,
                    cause=e,
                    delay=delay,
                )
                await deferLater(self._clock, delay)

    async def _discover(self, endpoint: Endpoint) -> None:
        document = await self._get_list(endpoint)
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
        await self._read_capacity(endpoint, document)
        # announced last: what is loaded decides the first requests' order too
        self._registry.models_listed(endpoint, len(models))
        if self._describes_models(endpoint):
            for info in models:
                self._describe(endpoint, info)

    @staticmethod
    def _describes_models(endpoint: Endpoint) -> bool:
        """Ollama (and a platform laid over its profile) describes a model at ``/api/show``."""
        profile = endpoint.profile
        return (
            profile is not None
            and endpoint.response_format == "ollama"
            and profile.serves("/api/show")
        )

    def _describe(self, endpoint: Endpoint, info: ModelInfo) -> None:
        """Ask ``endpoint`` about ``info`` unless that model and digest are known or asked."""
        key = (info.name.lower(), info.digest or "")
        if key in self._showing or self._catalogue.shown(info) is not None:
            return

        def ask() -> Deferred[None]:
            return Deferred.fromCoroutine(self._read_show(endpoint, info))

        pending = self._show_limit.run(ask)
        self._showing[key] = pending
        for recording in self._recording.of(endpoint):
            recording.describing.append(pending)

        def settled(result: object) -> None:
            self._showing.pop(key, None)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self._log.debug(
                    "no /api/show for {model} from {endpoint}: {cause}",
                    model=info.name,
                    endpoint=endpoint.name,
                    cause=result.getErrorMessage(),
                )

        pending.addBoth(settled)

    async def _read_show(self, endpoint: Endpoint, info: ModelInfo) -> None:
        if not self.running or endpoint not in self._registry:
            return
        url = endpoint.upstream_url(b"/api/show").decode()
        facts = parse_ollama_show(await self._get_json(endpoint, url, {"model": info.name}))
        self._catalogue.set_shown(info, facts)

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

    async def _read_capacity(self, endpoint: Endpoint, models: Any) -> None:
        """Slots, context and build, where the platform reports them (llama.cpp)."""
        capacity = await read_capacity(endpoint, models, self._get_json)
        if capacity is None or endpoint not in self._registry:
            return
        self._registry.capacity_read(endpoint, capacity.slots, capacity.context_length)
        if capacity.build is not None:
            self._registry.version_read(endpoint, capacity.build)

    async def _read_loaded(self, endpoint: Endpoint) -> None:
        ps_url = endpoint.upstream_url(b"/api/ps").decode()
        try:
            rows = parse_ollama_ps(await self._get_json(endpoint, ps_url))
        except Exception as e:  # an old Ollama without /api/ps still routes fine
            self._log.debug("no /api/ps from {endpoint}: {e}", endpoint=endpoint.name, e=e)
        else:
            if endpoint in self._registry:  # not removed by a reload meanwhile
                self._catalogue.set_loaded(endpoint, [row["name"] for row in rows], rows)
                for hear in self.on_loaded:
                    hear(endpoint)

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


#: how many ``/api/show`` asks run at once, across the fleet
SHOW_CONCURRENCY = 2

#: one endpoint's discovery, or its ``/api/ps`` ask
_Run = Callable[[Endpoint], Deferred[None]]

_T = TypeVar("_T")


@dataclass(eq=False)
class _Recording:
    """What one run that won a lease read: the documents by ask, and the descriptions
    (``/api/show``) it started, which it waits for before publishing."""

    documents: dict[str, Any] = field(default_factory=dict)
    describing: list[Deferred[None]] = field(default_factory=list)


class _Open(Generic[_T]):
    """Per endpoint, what the shared runs going there hold (several may overlap)."""

    def __init__(self) -> None:
        self._by_endpoint: dict[Endpoint, list[_T]] = {}

    def add(self, endpoint: Endpoint, item: _T) -> None:
        self._by_endpoint.setdefault(endpoint, []).append(item)

    def remove(self, endpoint: Endpoint, item: _T) -> None:
        left = [i for i in self._by_endpoint.get(endpoint, ()) if i is not item]
        if left:
            self._by_endpoint[endpoint] = left
        else:
            self._by_endpoint.pop(endpoint, None)

    def of(self, endpoint: Endpoint) -> list[_T]:
        return self._by_endpoint.get(endpoint, [])


class _Every:
    """Runs ``job`` every ``interval`` seconds on ``clock`` once started (0: never)."""

    def __init__(self, clock: IReactorTime, job: Callable[[], None]) -> None:
        self._clock = clock
        self._job = job
        self._interval = 0.0
        self._call: IDelayedCall | None = None
        self._running = False

    def start(self, interval: float) -> None:
        self._running = True
        self.change(interval)

    def change(self, interval: float) -> None:
        if self._call is not None and self._call.active():
            if interval == self._interval:
                return
            self._call.cancel()
        self._interval = interval
        self._call = None
        if self._running and interval > 0:
            self._call = self._clock.callLater(interval, self._fire)

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = self._clock.callLater(self._interval, self._fire)
        self._job()


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

    def pending(self, endpoint: Endpoint) -> Deferred[None] | None:
        """The run going for ``endpoint``, if one is."""
        return self._running.get(endpoint)

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
