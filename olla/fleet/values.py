# -*- test-case-name: tests.test_health -*-
"""The value types that cross olla's seams (the ones ``olla.interfaces`` names): an endpoint and
its status, how an attempt ended, a model list entry, a health probe, a platform detection.

Plain data and what can be read off it, nothing that changes state elsewhere: this module sits
in the bottom layer beside the interfaces, so a seam never names an implementation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from olla.config import EndpointConfig

if TYPE_CHECKING:  # a profile is a value too; the registry of them is not named here
    from olla.profiles import Profile


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
    return urlunsplit((parts.scheme, _authority(parts), parts.path, "", ""))


def _authority(parts: SplitResult, *, default_port: bool = True) -> str:
    """``host[:port]`` of a URL, without its userinfo (an IPv6 address in brackets); with
    ``default_port=False`` a port that is its scheme's default is left out."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (not default_port and (parts.scheme, port) in _DEFAULT_PORTS):
        return host
    return f"{host}:{port}"


_DEFAULT_PORTS = (("http", 80), ("https", 443))


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
    """The platform a ``type: auto`` endpoint turned out to run (set once, by the registry)."""

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
        """The platform's profile: what it is known to do (None while ``auto`` detects).
        Read without ``platform``: several times a request (routing, the gate, the catalogue)."""
        return (self._detected.platform or self.configured).profile

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

    @cached_property
    def credential_headers(self) -> frozenset[bytes]:
        """Lower-cased names of headers that carry this endpoint's secrets."""
        return frozenset(name.lower() for name, _ in self.extra_headers)

    @cached_property
    def host_header(self) -> tuple[bytes, list[bytes]] | None:
        """The ``Host`` header a proxied request to this endpoint carries, as Agent would write
        it (the URL's host, and its port unless the scheme's default); None when the
        endpoint's configured headers set one. Agent copies every header of a request that
        has no ``Host`` just to add it, so olla sets it."""
        if any(name.lower() == b"host" for name, _ in self.extra_headers):
            return None
        return (b"Host", [_authority(urlsplit(self.url), default_port=False).encode()])

    def upstream_url(self, path_and_query: bytes) -> bytes:
        """The backend URL for a client path (already stripped of the route prefix).

        By default the endpoint URL's path is replaced; with ``preserve_path`` it is prefixed.
        """
        return self._upstream_base + path_and_query

    @cached_property
    def _upstream_base(self) -> bytes:
        """What ``upstream_url`` puts before a path: the URL's origin, and with
        ``preserve_path`` its path (worked out once: every proxied request asks)."""
        parts = urlsplit(self.url)
        base = parts.path.rstrip("/") if self.preserve_path else ""
        return urlunsplit((parts.scheme, parts.netloc, "", "", "")).encode() + base.encode()


class Outcome(enum.Enum):
    """How one upstream attempt ended."""

    OK = "ok"  # the response reached the client in full, whatever its status
    FAILED = "failed"  # transport error, timeout or truncated stream
    REFUSED = "refused"  # the backend answered that it is busy (429/503...): tried elsewhere
    CLIENT_GONE = "client_gone"
    #: olla's own bound ran out (the host was still loading the model, or the whole response
    #: took longer than allowed): a failed request, but no verdict on the transport
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class ModelInfo:
    """One model as one endpoint reported it."""

    name: str
    size: int | None = None
    digest: str | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    format: str | None = None
    modified_at: str | None = None
    #: the context window the list itself states (vLLM's and SGLang's ``max_model_len``)
    context_length: int | None = None
    #: the entry exactly as an Ollama backend listed it, replayed by ``/api/tags`` so that the
    #: merged list reads like the backend's own (``Q4_1``, ``parent_model`` and all)
    native: Mapping[str, object] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class ProbeResult:
    status: EndpointStatus
    latency: float
    reason: str = ""
    retry_after: float | None = None
    #: a refused/unreachable socket: cheap to re-check, says nothing about server load
    unreachable: bool = False
    #: ``type: auto``: the platform this probe found (it then probed that platform's health)
    detected: Profile | None = None

    @property
    def ok(self) -> bool:
        return self.status in (EndpointStatus.HEALTHY, EndpointStatus.BUSY)


@dataclass(frozen=True)
class Detection:
    """One detection run: the platform found, or why none was."""

    profile: Profile | None
    latency: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SessionPin:
    """A known sticky session: where it was last served (None once that endpoint left
    rotation: the session is still known, so its next request is a repin, not a miss)."""

    endpoint: str | None
