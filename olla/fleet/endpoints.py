# -*- test-case-name: tests.test_endpoints -*-
"""Endpoints: what the config says about each backend, and what olla has learnt since.

``Endpoint`` is identity and addressing, fixed except for the platform a ``type: auto``
endpoint turns out to run. ``EndpointState`` is the mutable record the health service, the
proxy and the status pages share. ``EndpointRegistry`` holds both and is the one place that
changes a status or a platform, so every transition is logged and announced once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from olla.config import EndpointConfig
from olla.fleet.breaker import CircuitBreakers
from olla.fleet.load import MemoryLoadStore
from olla.fleet.values import (
    AUTO_PATHS,
    DEFAULT_MAX_CONCURRENCY,
    Endpoint,
    EndpointStatus,
    Outcome,
    Platform,
    platform_for,
    resolve_url,
    sanitise_url,
)
from olla.interfaces import ILoadStore
from olla.profiles import Profile, ProfileRegistry, builtin_profiles
from olla.util.ids import base36, fnv1a

# The value types live in ``olla.fleet.values`` (the seams name them); the fleet's modules
# know them from here, beside the registry that keeps their state.
__all__ = [
    "AUTO_PATHS",
    "Endpoint",
    "EndpointRegistry",
    "EndpointState",
    "EndpointStatus",
    "Outcome",
    "Platform",
    "endpoints_from_config",
    "platform_for",
    "resolve_url",
    "sanitise_url",
]


#: an endpoint's priority when neither its config nor its profile says
DEFAULT_PRIORITY = 100


def endpoint_priority(config: EndpointConfig, profile: Profile | None) -> int:
    """The configured ``priority``, else the profile's ``characteristics.default_priority``."""
    if config.priority is not None:
        return config.priority
    if profile is not None and profile.characteristics.default_priority is not None:
        return profile.characteristics.default_priority
    return DEFAULT_PRIORITY


def endpoint_slots(config: EndpointConfig, profile: Profile | None) -> tuple[int | None, int]:
    """The configured ``max_concurrency`` (None when not set), and the slots to assume when
    neither it nor the backend says: the profile's ``slot_configuration.default_slots``, else
    4. Neither is above the profile's ``max_slots``."""
    slots = profile.resources.slots if profile is not None else None
    ceiling = slots.max_slots if slots is not None else None
    configured = config.max_concurrency
    default = (slots.default_slots if slots is not None else None) or DEFAULT_MAX_CONCURRENCY
    if ceiling is not None:
        configured = None if configured is None else min(configured, ceiling)
        default = min(default, ceiling)
    return configured, default


def auth_header(config: EndpointConfig, profile: Profile | None) -> str:
    """The header an endpoint's credential goes in: the configured one, or for an ``api_key``
    without ``header`` the profile's ``characteristics.auth.default_header``."""
    auth = config.auth
    assert auth is not None
    if auth.type == "api_key" and not auth.header_given and profile is not None:
        return profile.characteristics.auth.default_header or auth.header_name
    return auth.header_name


def endpoints_from_config(
    configs: Sequence[EndpointConfig], profiles: ProfileRegistry | None = None
) -> list[Endpoint]:
    """Build runtime endpoints; ids are base36 FNV-1a-32 of the sanitised URL, made unique.

    Health and model URLs default to the endpoint type's profile (the built-in ones unless
    ``profiles`` is given); a ``type: auto`` endpoint gets the profiles detection may choose.
    """
    profiles = profiles or builtin_profiles()
    raw_ids = [base36(fnv1a(sanitise_url(c.url).encode())) for c in configs]
    out: list[Endpoint] = []
    for index, config in enumerate(configs):
        endpoint_id = raw_ids[index]
        if raw_ids.count(endpoint_id) > 1:
            same = sorted(
                (configs[i].name, i) for i, other in enumerate(raw_ids) if other == endpoint_id
            )
            endpoint_id = f"{endpoint_id}-{same.index((config.name, index))}"
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in config.headers.items()]
        profile = profiles.get(config.type)
        if config.auth is not None:
            header = auth_header(config, profile)
            auth_name = header.encode("latin-1").lower()
            extra = [(k, v) for k, v in extra if k.lower() != auth_name]
            extra.append((header.encode("latin-1"), config.auth.header_value.encode()))
        configured_slots, default_slots = endpoint_slots(config, profile)
        out.append(
            Endpoint(
                id=endpoint_id,
                name=config.name,
                url=config.url.rstrip("/"),
                priority=endpoint_priority(config, profile),
                preserve_path=config.preserve_path,
                check_interval=config.check_interval,
                check_timeout=config.check_timeout,
                max_concurrency=configured_slots,
                default_slots=default_slots,
                extra_headers=tuple(extra),
                config=config,
                configured=platform_for(config, profile),
                candidates=profiles.detection_candidates() if config.type == "auto" else (),
            )
        )
    return out


@dataclass
class EndpointState:
    """What olla knows about one endpoint right now. Written only by ``EndpointRegistry``."""

    status: EndpointStatus = EndpointStatus.UNKNOWN
    status_reason: str = ""
    consecutive_failures: int = 0
    backoff_multiplier: int = 1
    last_check: float | None = None
    next_check: float | None = None
    last_probe_latency: float | None = None
    last_model_sync: float | None = None
    model_count: int = 0
    #: a first model list was asked for since the endpoint came up (answered or failed)
    models_asked: bool = False
    #: what the backend says its version is (Ollama's ``/api/version``, llama.cpp's build),
    #: once discovery asked
    version: str | None = None
    #: what the backend says about its capacity (llama.cpp's ``/props``), once discovery asked
    reported_slots: int | None = None
    context_length: int | None = None
    # traffic, counted per upstream attempt (see stats in the spec, §10); the load (in flight,
    # service time, busy) is the load store's (``EndpointRegistry.load``)
    requests: int = 0
    successes: int = 0
    failures: int = 0
    bytes_relayed: int = 0
    latency_total: float = 0.0
    latency_min: float | None = None
    latency_max: float | None = None
    #: model-list requests that answered / failed (the metrics' discovery results)
    discoveries_ok: int = 0
    discoveries_failed: int = 0

    @property
    def success_rate(self) -> float | None:
        total = self.successes + self.failures
        return None if total == 0 else self.successes / total

    @property
    def avg_latency(self) -> float | None:
        return None if self.successes == 0 else self.latency_total / self.successes


StatusListener = Callable[[Endpoint, EndpointStatus, EndpointStatus], None]

#: what a changed endpoint still checked the same way keeps (its traffic stays with the old)
_HEALTH_FIELDS = (
    "status",
    "status_reason",
    "consecutive_failures",
    "backoff_multiplier",
    "last_check",
    "next_check",
    "last_probe_latency",
    "last_model_sync",
    "model_count",
    "models_asked",
    "version",
    "reported_slots",
    "context_length",
)


def effective_slots(endpoint: Endpoint, state: EndpointState) -> tuple[int, str]:
    """How many requests ``endpoint`` serves at once, and who said so: its configured
    ``max_concurrency`` (``config``), else the slots the backend reported (``backend``), else
    the profile's ``default_slots`` or 4 (``default``)."""
    if endpoint.max_concurrency is not None:
        return endpoint.max_concurrency, "config"
    if state.reported_slots is not None:
        return state.reported_slots, "backend"
    return endpoint.default_slots, "default"


class EndpointRegistry:
    """The endpoints in config order and the one writer of their states.

    Health, discovery and the proxy report what they saw through the named methods below
    (probe results, model lists, attempts); everything else only reads ``state()``. Status
    changes are logged and announced to listeners once each.
    """

    _log = Logger()

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        clock: IReactorTime,
        *,
        breakers: CircuitBreakers | None = None,
        load: Callable[[Callable[[Endpoint], int]], ILoadStore] = MemoryLoadStore,
        lists_models: bool = True,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._states = {ep: EndpointState() for ep in self._endpoints}
        self._by_name = {ep.name: ep for ep in self._endpoints}
        #: removed by a reload with attempts still in flight: their streams finish there
        self._draining: dict[Endpoint, EndpointState] = {}
        #: called once a removed endpoint has nothing left in flight (its state is dropped)
        self.on_gone: list[Callable[[Endpoint], object]] = []
        self._clock = clock
        self.breakers = breakers or CircuitBreakers(clock)
        #: attempts in flight, service times, busy backends: what routing reads (made with
        #: this registry's slots rule, which knows what the backends reported)
        self.load: ILoadStore = load(self.slots)
        #: whether model discovery runs (readiness then also waits for the first lists)
        self._lists_models = lists_models
        self._listeners: list[StatusListener] = []
        self._ready_waiters: list[Deferred[None]] = []
        self._started = False  # latched by ``ready``: the gate is for startup only

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, endpoint: object) -> bool:
        """Whether ``endpoint`` is configured now (a removed one still draining is not)."""
        return endpoint in self._states

    def state(self, endpoint: Endpoint) -> EndpointState:
        try:
            return self._states[endpoint]
        except KeyError:
            return self._draining[endpoint]

    @property
    def draining(self) -> list[Endpoint]:
        """Endpoints a reload removed whose last attempts are still running."""
        return list(self._draining)

    def by_name(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def by_id(self, endpoint_id: str) -> Endpoint | None:
        """The configured endpoint with ``endpoint_id`` (as other processes name it)."""
        return next((ep for ep in self._endpoints if ep.id == endpoint_id), None)

    def slots(self, endpoint: Endpoint) -> int:
        """The requests ``endpoint`` serves at once before it counts as full (see
        ``effective_slots``): what every free-slot check and concurrency cap reads, and
        what the load store answers (``ILoadView.slots``)."""
        state = self._states.get(endpoint) or self._draining.get(endpoint) or EndpointState()
        return effective_slots(endpoint, state)[0]

    def routable(self, types: frozenset[str] | None = None) -> list[Endpoint]:
        """Endpoints that may receive traffic now, in config order, optionally of given types."""
        return [
            ep
            for ep in self._endpoints
            if self._states[ep].status.routable and (types is None or ep.type in types)
        ]

    # ------------------------------------------------------------------ membership (reload)

    def add(self, endpoint: Endpoint) -> None:
        """A new endpoint, unknown until its first probe (``arrange`` puts it in order)."""
        if endpoint in self._states:
            return
        self._states[endpoint] = EndpointState()
        self._arranged((*self._endpoints, endpoint))
        self._log.info(
            "endpoint {endpoint} added ({url})", endpoint=endpoint.name, url=endpoint.display_url
        )

    def remove(self, endpoint: Endpoint) -> None:
        """``endpoint`` gets no new attempts; the ones in flight finish and are counted on its
        state until the last one ends, then it is gone (``on_gone``)."""
        state = self._states.pop(endpoint, None)
        if state is None:
            return
        self._arranged(tuple(ep for ep in self._endpoints if ep is not endpoint))
        self.breakers.forget(endpoint)
        # this process's attempts: a shared store also counts other processes', which drain
        # (or keep the endpoint) on their own
        in_flight = self.load.own_in_flight(endpoint)
        self._log.info(
            "endpoint {endpoint} removed ({in_flight} request(s) in flight finish there)",
            endpoint=endpoint.name,
            in_flight=in_flight,
        )
        if in_flight > 0:
            self._draining[endpoint] = state
        else:
            self._gone(endpoint)
        self._release_ready_waiters()

    def replace(self, old: Endpoint, new: Endpoint, *, keep_health: bool) -> None:
        """``new`` takes ``old``'s place (its config changed); ``old`` drains as if removed.

        With ``keep_health`` (it is still checked at the same address the same way) ``new``
        starts with what is known about ``old``'s health, models and platform instead of
        unknown: changing a priority must not take a machine out of rotation.
        """
        if old not in self._states or new in self._states:
            return
        fresh = EndpointState()
        if keep_health:
            known = self._states[old]
            for name in _HEALTH_FIELDS:
                setattr(fresh, name, getattr(known, name))
            new._detected.platform = old._detected.platform
        self._states[new] = fresh
        self._arranged(tuple(new if ep is old else ep for ep in self._endpoints))
        self._log.info(
            "endpoint {endpoint} changed{kept}",
            endpoint=new.name,
            kept=" (health kept)" if keep_health else "",
        )
        self.remove(old)

    def arrange(self, order: Sequence[Endpoint]) -> None:
        """Put the endpoints in ``order`` (the new config's); unknown ones are ignored."""
        ranked = [ep for ep in order if ep in self._states]
        placed = set(ranked)
        self._arranged((*ranked, *(ep for ep in self._endpoints if ep not in placed)))

    def _arranged(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._endpoints = endpoints
        self._by_name = {ep.name: ep for ep in endpoints}

    def _gone(self, endpoint: Endpoint) -> None:
        self._draining.pop(endpoint, None)
        self.load.forget(endpoint)
        for listener in list(self.on_gone):
            listener(endpoint)

    # ------------------------------------------------------------------ status changes

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(endpoint, old, new)`` after every status change."""
        self._listeners.append(listener)

    def set_status(self, endpoint: Endpoint, status: EndpointStatus, reason: str = "") -> None:
        state = self._states.get(endpoint)
        if state is None:
            return  # removed by a reload: a late probe or failure report changes nothing
        old = state.status
        state.status = status
        state.status_reason = reason
        if old is status:
            return
        self._log.info(
            "endpoint {endpoint} is now {status} (was {old}){why}",
            endpoint=endpoint.name,
            status=status.value,
            old=old.value,
            why=f": {reason}" if reason else "",
            reason=reason,
        )
        for listener in list(self._listeners):
            listener(endpoint, old, status)
        self._release_ready_waiters()

    def set_detected(self, endpoint: Endpoint, profile: Profile) -> None:
        """A ``type: auto`` endpoint turned out to be ``profile``'s platform: from now on it is
        checked, listed and routed exactly as an endpoint configured with that type."""
        if endpoint not in self._states:
            return
        endpoint._detected.platform = endpoint.platform_of(profile)
        self._log.info(
            "endpoint {endpoint} detected as {type}",
            endpoint=endpoint.name,
            type=profile.name,
        )

    # ------------------------------------------------------------------ health (probes)

    def probe_finished(
        self,
        endpoint: Endpoint,
        status: EndpointStatus,
        reason: str = "",
        *,
        latency: float,
        backoff_multiplier: int | None = None,
    ) -> None:
        """One health probe's verdict. A passing probe also closes the proxy's circuit: the
        machine answers again, so a restarted one takes traffic at once."""
        state = self._states.get(endpoint)
        if state is None:
            return
        state.last_check = self._clock.seconds()
        state.last_probe_latency = latency
        if status.up:
            state.consecutive_failures = 0
            self.breakers.succeeded(endpoint)
        elif status in (EndpointStatus.OFFLINE, EndpointStatus.UNHEALTHY):
            state.consecutive_failures += 1
        if backoff_multiplier is not None:
            state.backoff_multiplier = backoff_multiplier
        self.set_status(endpoint, status, reason)

    def probe_scheduled(self, endpoint: Endpoint, at: float) -> None:
        state = self._states.get(endpoint)
        if state is not None:
            state.next_check = at

    def unreachable(self, endpoint: Endpoint, reason: str) -> None:
        """A proxied request could not connect: out of rotation until a probe passes."""
        state = self._states.get(endpoint)
        if state is None:
            return
        state.consecutive_failures += 1
        self.set_status(endpoint, EndpointStatus.OFFLINE, reason)

    # ------------------------------------------------------------------ discovery (models)

    def models_listed(self, endpoint: Endpoint, count: int) -> None:
        state = self._states.get(endpoint)
        if state is None:
            return
        state.model_count = count
        state.last_model_sync = self._clock.seconds()
        state.discoveries_ok += 1
        self._models_asked(endpoint)

    def models_unlisted(self, endpoint: Endpoint) -> None:
        """Asking for the model list failed; whatever was known stays known."""
        self._states[endpoint].discoveries_failed += 1
        self._models_asked(endpoint)

    def models_forgotten(self, endpoint: Endpoint) -> None:
        state = self._states.get(endpoint)
        if state is not None:
            state.model_count = 0

    def version_read(self, endpoint: Endpoint, version: str) -> None:
        state = self._states.get(endpoint)
        if state is not None:
            state.version = version

    def capacity_read(
        self, endpoint: Endpoint, slots: int | None, context_length: int | None
    ) -> None:
        """What the backend said about its parallel slots and context (None: nothing)."""
        state = self._states.get(endpoint)
        if state is None:
            return
        if slots != state.reported_slots:
            self._log.info(
                "endpoint {endpoint} reports {slots} parallel slot(s){note}",
                endpoint=endpoint.name,
                slots=slots if slots is not None else "no",
                note=""
                if endpoint.max_concurrency is None
                else f" (max_concurrency {endpoint.max_concurrency} is configured)",
            )
        state.reported_slots = slots
        state.context_length = context_length

    def _models_asked(self, endpoint: Endpoint) -> None:
        state = self._states.get(endpoint)
        if state is not None and not state.models_asked:
            state.models_asked = True
            self._release_ready_waiters()

    # ------------------------------------------------------------------ startup gate

    @property
    def ready(self) -> bool:
        """Startup is over: every endpoint has a first health result, and every routable one a
        first answer to its model list (or an error), so routing decisions can be trusted.

        Latched: a machine that comes back later is routed on what is known (routing sends a
        model nobody lists to endpoints whose lists are still unknown).
        """
        if not self._started:
            self._started = all(
                s.status is not EndpointStatus.UNKNOWN
                and (s.models_asked or not self._lists_models or not s.status.routable)
                for s in self._states.values()
            )
        return self._started

    def when_ready(self, timeout: float) -> Deferred[None]:
        """Fires once ``ready`` holds, or after ``timeout`` seconds.

        Requests that arrive while olla is starting wait on this instead of failing.
        """
        if self.ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)
        call = self._clock.callLater(timeout, self._expire_waiter, waiter)

        def cancel_timer(result: None) -> None:
            if call.active():
                call.cancel()
            return result

        waiter.addBoth(cancel_timer)
        return waiter

    def _expire_waiter(self, waiter: Deferred[None]) -> None:
        if waiter in self._ready_waiters:
            self._ready_waiters.remove(waiter)
            waiter.callback(None)

    def _release_ready_waiters(self) -> None:
        if not self._ready_waiters or not self.ready:
            return
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # ------------------------------------------------------------------ traffic (proxy)

    def attempt_started(self, endpoint: Endpoint, started: float) -> None:
        """One upstream attempt begins; ``attempt_ended`` with the same ``started`` ends it."""
        self.load.started(endpoint, started)
        if endpoint in self._states:
            self.breakers.attempt_started(endpoint)

    def attempt_ended(
        self, endpoint: Endpoint, outcome: Outcome, *, started: float, relayed: int = 0
    ) -> None:
        """End one upstream attempt: counters, service time and the circuit learn its fate.

        A client that left is not the endpoint's fault: it frees the slot and counts nothing.
        An endpoint a reload removed is counted until its last attempt ends, then dropped.
        """
        state = self.state(endpoint)
        latency = max(0.0, self._clock.seconds() - started)
        self.load.ended(endpoint, started, latency if outcome is Outcome.OK else None)
        state.bytes_relayed += relayed
        if endpoint not in self._states:
            if not self.load.own_in_flight(endpoint):
                self._gone(endpoint)
            return
        if outcome is Outcome.CLIENT_GONE:
            self.breakers.released(endpoint)
            return
        state.requests += 1
        if outcome is Outcome.TIMED_OUT:
            state.failures += 1
            self.breakers.released(endpoint)
            return
        if outcome is Outcome.FAILED:
            state.failures += 1
            self.breakers.failed(endpoint)
            return
        self.breakers.succeeded(endpoint)  # it answered: the transport works
        if outcome is Outcome.REFUSED:
            state.failures += 1
            return
        state.successes += 1
        state.latency_total += latency
        state.latency_min = (
            latency if state.latency_min is None else min(state.latency_min, latency)
        )
        state.latency_max = (
            latency if state.latency_max is None else max(state.latency_max, latency)
        )

    def backend_busy(self, endpoint: Endpoint, seconds: float) -> None:
        """The backend answered that it is full: others go first for ``seconds``."""
        self.load.busy(endpoint, self._clock.seconds() + seconds)
