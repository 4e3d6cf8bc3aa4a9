# -*- test-case-name: tests.test_endpoints -*-
"""Endpoints: what the config says about each backend, and what olla has learnt since.

``Endpoint`` is identity and addressing, fixed except for the platform a ``type: auto``
endpoint turns out to run. ``EndpointState`` is the mutable record the health service, the
proxy and the status pages share. ``EndpointRegistry`` holds both and is the one place that
changes a status or a platform, so every transition is logged and announced once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from olla.config import EndpointConfig
from olla.fleet.breaker import CircuitBreakers
from olla.profiles import Profile, ProfileRegistry, builtin_profiles
from olla.util.ids import base36, fnv1a


class EndpointStatus(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    BUSY = "busy"
    OFFLINE = "offline"
    UNHEALTHY = "unhealthy"
    CONFIG_ERROR = "config_error"
    RATE_LIMITED = "rate_limited"
    #: ``type: auto`` whose platform is not known yet: never routable, probed until it is
    DETECTING = "detecting"

    @property
    def routable(self) -> bool:
        """Only a healthy endpoint receives traffic."""
        return self is EndpointStatus.HEALTHY

    @property
    def up(self) -> bool:
        """Counted as up on the status pages (answering, if slowly)."""
        return self in (EndpointStatus.HEALTHY, EndpointStatus.BUSY)


#: For ``type: auto`` (no profile yet): where to look.
AUTO_PATHS = ("/", "/v1/models")

#: requests an endpoint is taken to serve at once when neither its config nor the backend
#: says (Ollama decides its own parallelism and does not tell)
DEFAULT_MAX_CONCURRENCY = 4


def sanitise_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe for status pages and logs."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_url(base: str, ref: str | None, default_path: str) -> str:
    """Join a health or model URL onto the endpoint URL, keeping the base path.

    An absolute ``ref`` is used as it is; a relative one (or the profile default) is appended to
    the endpoint's own path, so ``http://h/ollama`` + ``/api/tags`` is ``http://h/ollama/api/tags``.
    """
    ref = ref or default_path
    if urlsplit(ref).scheme:
        return ref
    return urljoin(base.rstrip("/") + "/", ref.lstrip("/"))


@dataclass(frozen=True)
class Platform:
    """What an endpoint's type decides: which profile, and where it is checked and listed."""

    type: str
    health_url: str
    model_url: str
    #: which IModelSource reads its model list (the profile's ``response_format``)
    response_format: str
    #: the platform's profile (None: ``type: auto`` not detected yet)
    profile: Profile | None = None


def platform_for(config: EndpointConfig, profile: Profile | None) -> Platform:
    """The platform of ``config`` as ``profile`` (None: no profile, e.g. ``auto`` undetected).

    Configured ``health_check_url``/``model_url`` win over the profile's defaults.
    """
    health_default, models_default = (
        (profile.health_check_path, profile.model_discovery_path) if profile else AUTO_PATHS
    )
    return Platform(
        type=profile.name if profile else config.type,
        health_url=resolve_url(config.url, config.health_check_url, health_default),
        model_url=resolve_url(config.url, config.model_url, models_default),
        response_format=profile.response_format if profile else "openai",
        profile=profile,
    )


@dataclass
class _Detected:
    platform: Platform | None = None


@dataclass(frozen=True, eq=False)
class Endpoint:
    """One configured backend. Compared by identity: two configs never share an object.

    Everything but the platform of a ``type: auto`` endpoint is fixed at startup. That one is
    learnt once (``EndpointRegistry.set_detected``), and ``type``, ``health_url``,
    ``model_url`` and ``response_format`` read it, so every module sees the detected type.
    """

    id: str
    name: str
    url: str  # without trailing slash
    priority: int
    preserve_path: bool
    check_interval: float
    check_timeout: float
    #: requests it serves in parallel before olla counts it as full, as configured (None: as
    #: the backend reports; read ``EndpointRegistry.slots``, which knows both)
    max_concurrency: int | None
    #: the slots assumed while neither the config nor the backend says (the profile's
    #: ``default_slots``, else 4)
    default_slots: int
    #: endpoint headers then its auth header, applied to every upstream call
    extra_headers: tuple[tuple[bytes, bytes], ...]
    config: EndpointConfig = field(repr=False)
    #: the configured type's platform (for ``auto``: where to look until detected)
    configured: Platform = field(repr=False)
    #: ``type: auto``: the profiles detection tries, in order
    candidates: tuple[Profile, ...] = field(default=(), repr=False)
    _detected: _Detected = field(default_factory=_Detected, init=False, repr=False)

    @property
    def platform(self) -> Platform:
        return self._detected.platform or self.configured

    @property
    def type(self) -> str:
        return self.platform.type

    @property
    def health_url(self) -> str:
        return self.platform.health_url

    @property
    def model_url(self) -> str:
        return self.platform.model_url

    @property
    def response_format(self) -> str:
        return self.platform.response_format

    @property
    def profile(self) -> Profile | None:
        """The platform's profile: what it is known to do (None while ``auto`` detects)."""
        return self.platform.profile

    @property
    def detecting(self) -> bool:
        """``type: auto`` and its platform not known yet."""
        return self.config.type == "auto" and self._detected.platform is None

    def platform_of(self, profile: Profile) -> Platform:
        """What this endpoint would be as ``profile``'s type."""
        return platform_for(self.config, profile)

    @property
    def display_url(self) -> str:
        return sanitise_url(self.url)

    @property
    def credential_headers(self) -> frozenset[bytes]:
        """Lower-cased names of headers that carry this endpoint's secrets."""
        return frozenset(name.lower() for name, _ in self.extra_headers)

    def upstream_url(self, path_and_query: bytes) -> bytes:
        """The backend URL for a client path (already stripped of the route prefix).

        By default the endpoint URL's path is replaced; with ``preserve_path`` it is prefixed.
        """
        parts = urlsplit(self.url)
        base = parts.path.rstrip("/") if self.preserve_path else ""
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", "")).encode()
        return origin + base.encode() + path_and_query


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
    # traffic, counted per upstream attempt (see stats in the spec, §10)
    in_flight: int = 0
    #: the sum of the start times of the attempts in flight (their mean age is O(1) from it)
    in_flight_since: float = 0.0
    #: a moving average of how long an attempt here takes, start to last byte
    service_time: float = 0.0
    #: the backend said it is full (429/503): tried after the others until then
    busy_until: float = 0.0
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

    def expected_service_time(self, now: float) -> float:
        """How long a request here takes: the moving average, or longer while the requests in
        flight have already been running longer than that."""
        if self.in_flight <= 0:
            return self.service_time
        return max(self.service_time, now - self.in_flight_since / self.in_flight)


class Outcome(enum.Enum):
    """How one upstream attempt ended."""

    OK = "ok"  # the response reached the client in full, whatever its status
    FAILED = "failed"  # transport error, timeout or truncated stream
    REFUSED = "refused"  # the backend answered that it is busy (429/503...): tried elsewhere
    CLIENT_GONE = "client_gone"
    #: olla's own bound ran out (the host was still loading the model, or the whole response
    #: took longer than allowed): a failed request, but no verdict on the transport
    TIMED_OUT = "timed_out"


#: weight of the newest attempt in ``EndpointState.service_time``
_SERVICE_EWMA = 0.2

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

    def slots(self, endpoint: Endpoint) -> int:
        """The requests ``endpoint`` serves at once before it counts as full (see
        ``effective_slots``): what every free-slot check and concurrency cap reads."""
        return effective_slots(endpoint, self.state(endpoint))[0]

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
        self._log.info(
            "endpoint {endpoint} removed ({in_flight} request(s) in flight finish there)",
            endpoint=endpoint.name,
            in_flight=state.in_flight,
        )
        if state.in_flight > 0:
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
        state = self.state(endpoint)
        state.in_flight += 1
        state.in_flight_since += started
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
        state.in_flight = max(0, state.in_flight - 1)
        state.in_flight_since = state.in_flight_since - started if state.in_flight else 0.0
        state.bytes_relayed += relayed
        if endpoint not in self._states:
            if not state.in_flight:
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
        state.service_time += _SERVICE_EWMA * (latency - state.service_time)
        state.latency_total += latency
        state.latency_min = (
            latency if state.latency_min is None else min(state.latency_min, latency)
        )
        state.latency_max = (
            latency if state.latency_max is None else max(state.latency_max, latency)
        )

    def backend_busy(self, endpoint: Endpoint, seconds: float) -> None:
        """The backend answered that it is full: others go first for ``seconds``."""
        state = self.state(endpoint)
        state.busy_until = max(state.busy_until, self._clock.seconds() + seconds)
