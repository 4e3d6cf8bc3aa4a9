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
from olla.profiles import Profile, ProfileRegistry, builtin_profiles


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


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


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


def endpoints_from_config(
    configs: Sequence[EndpointConfig], profiles: ProfileRegistry | None = None
) -> list[Endpoint]:
    """Build runtime endpoints; ids are base36 FNV-1a-32 of the sanitised URL, made unique.

    Health and model URLs default to the endpoint type's profile (the built-in ones unless
    ``profiles`` is given); a ``type: auto`` endpoint gets the profiles detection may choose.
    """
    profiles = profiles or builtin_profiles()
    raw_ids = [base36(fnv1a_32(sanitise_url(c.url).encode())) for c in configs]
    out: list[Endpoint] = []
    for index, config in enumerate(configs):
        endpoint_id = raw_ids[index]
        if raw_ids.count(endpoint_id) > 1:
            same = sorted(
                (configs[i].name, i) for i, other in enumerate(raw_ids) if other == endpoint_id
            )
            endpoint_id = f"{endpoint_id}-{same.index((config.name, index))}"
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in config.headers.items()]
        if config.auth is not None:
            auth_name = config.auth.header_name.encode("latin-1").lower()
            extra = [(k, v) for k, v in extra if k.lower() != auth_name]
            extra.append(
                (config.auth.header_name.encode("latin-1"), config.auth.header_value.encode())
            )
        out.append(
            Endpoint(
                id=endpoint_id,
                name=config.name,
                url=config.url.rstrip("/"),
                priority=config.priority,
                preserve_path=config.preserve_path,
                check_interval=config.check_interval,
                check_timeout=config.check_timeout,
                extra_headers=tuple(extra),
                config=config,
                configured=platform_for(config, profiles.get(config.type)),
                candidates=profiles.detection_candidates() if config.type == "auto" else (),
            )
        )
    return out


@dataclass
class EndpointState:
    """What olla knows about one endpoint right now. Mutated only through the registry."""

    status: EndpointStatus = EndpointStatus.UNKNOWN
    status_reason: str = ""
    consecutive_failures: int = 0
    backoff_multiplier: int = 1
    last_check: float | None = None
    next_check: float | None = None
    last_probe_latency: float | None = None
    last_model_sync: float | None = None
    model_count: int = 0
    #: what the backend says its version is (Ollama's ``/api/version``), once discovery asked
    version: str | None = None
    # traffic, counted per upstream attempt (see stats in the spec, §10)
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    bytes_relayed: int = 0
    latency_total: float = 0.0
    latency_min: float | None = None
    latency_max: float | None = None

    @property
    def success_rate(self) -> float | None:
        total = self.successes + self.failures
        return None if total == 0 else self.successes / total

    @property
    def avg_latency(self) -> float | None:
        return None if self.successes == 0 else self.latency_total / self.successes


class Outcome(enum.Enum):
    """How one upstream attempt ended."""

    OK = "ok"  # the response reached the client in full, whatever its status
    FAILED = "failed"  # transport error, timeout or truncated stream
    CLIENT_GONE = "client_gone"


StatusListener = Callable[[Endpoint, EndpointStatus, EndpointStatus], None]


class EndpointRegistry:
    """The endpoints in config order, their states, and status-change announcements."""

    _log = Logger()

    def __init__(self, endpoints: Sequence[Endpoint], clock: IReactorTime) -> None:
        self._endpoints = tuple(endpoints)
        self._states = {ep: EndpointState() for ep in self._endpoints}
        self._by_name = {ep.name: ep for ep in self._endpoints}
        self._clock = clock
        self._listeners: list[StatusListener] = []
        self._first_probe_waiters: list[Deferred[None]] = []

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def state(self, endpoint: Endpoint) -> EndpointState:
        return self._states[endpoint]

    def by_name(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def routable(self, types: frozenset[str] | None = None) -> list[Endpoint]:
        """Endpoints that may receive traffic now, in config order, optionally of given types."""
        return [
            ep
            for ep in self._endpoints
            if self._states[ep].status.routable and (types is None or ep.type in types)
        ]

    # ------------------------------------------------------------------ status changes

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(endpoint, old, new)`` after every status change."""
        self._listeners.append(listener)

    def set_status(self, endpoint: Endpoint, status: EndpointStatus, reason: str = "") -> None:
        state = self._states[endpoint]
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
        if old is EndpointStatus.UNKNOWN:
            self._release_first_probe_waiters()

    def set_detected(self, endpoint: Endpoint, profile: Profile) -> None:
        """A ``type: auto`` endpoint turned out to be ``profile``'s platform: from now on it is
        checked, listed and routed exactly as an endpoint configured with that type."""
        endpoint._detected.platform = endpoint.platform_of(profile)
        self._log.info(
            "endpoint {endpoint} detected as {type}",
            endpoint=endpoint.name,
            type=profile.name,
        )

    # ------------------------------------------------------------------ startup gate

    @property
    def all_probed(self) -> bool:
        return all(s.status is not EndpointStatus.UNKNOWN for s in self._states.values())

    def when_probed(self, timeout: float) -> Deferred[None]:
        """Fires once every endpoint has a first health result, or after ``timeout`` seconds.

        Requests that arrive while olla is starting wait on this instead of failing.
        """
        if self.all_probed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._first_probe_waiters.append(waiter)
        call = self._clock.callLater(timeout, self._expire_waiter, waiter)

        def cancel_timer(result: None) -> None:
            if call.active():
                call.cancel()
            return result

        waiter.addBoth(cancel_timer)
        return waiter

    def _expire_waiter(self, waiter: Deferred[None]) -> None:
        if waiter in self._first_probe_waiters:
            self._first_probe_waiters.remove(waiter)
            waiter.callback(None)

    def _release_first_probe_waiters(self) -> None:
        if not self.all_probed:
            return
        waiters, self._first_probe_waiters = self._first_probe_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # ------------------------------------------------------------------ traffic

    def request_started(self, endpoint: Endpoint) -> None:
        self._states[endpoint].in_flight += 1

    def request_finished(
        self, endpoint: Endpoint, outcome: Outcome, *, latency: float, relayed: int = 0
    ) -> None:
        """End one upstream attempt.

        A client that left is not the endpoint's fault: it frees the slot and counts nothing.
        """
        state = self._states[endpoint]
        state.in_flight = max(0, state.in_flight - 1)
        state.bytes_relayed += relayed
        if outcome is Outcome.CLIENT_GONE:
            return
        state.requests += 1
        if outcome is Outcome.OK:
            state.successes += 1
            state.latency_total += latency
            state.latency_min = (
                latency if state.latency_min is None else min(state.latency_min, latency)
            )
            state.latency_max = (
                latency if state.latency_max is None else max(state.latency_max, latency)
            )
        else:
            state.failures += 1
