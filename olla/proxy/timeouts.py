# -*- test-case-name: tests.test_timeouts -*-
"""How long one proxied request may take, and how long each attempt waits for headers.

Pure arithmetic over the config, the endpoint's profile and what the catalogue expects; the
exchange schedules the timers on its clock.

- **The whole response** is bounded by the smallest of ``proxy.response_timeout``,
  ``server.write_timeout`` and the endpoint platform's ``characteristics.timeout`` (each 0:
  no bound), counted from the request's arrival. Before the first byte the client then gets
  a 504 in its dialect; after it, a cut stream.
- **The header wait** of an attempt is ``proxy.response_header_timeout`` at a host that has
  the model in memory. At a host that does not, it is at least
  ``resources.timeout_scaling.base_timeout_seconds`` plus the model's expected load time
  (``load_time_buffer``): the learnt ``load_duration``, else its size class's
  ``estimated_load_time_ms``, else the platform's ``defaults``. ``per_token_timeout_ms``
  adds time per prompt token (estimated from the body's size). Always within what is left of
  the whole response's bound.
- A header wait at a host that is loading the model that runs out is **not** a transport
  failure (``AttemptDeadline.loading``): the exchange neither marks the host down nor counts
  it against its circuit, and does not send the request to a second host to start a second
  load of the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from olla.config import OllaConfig, ProxyConfig
from olla.config._base import format_duration
from olla.interfaces import IReconfigurable
from olla.profiles import Profile
from olla.proxy.forward import gather_size
from olla.util.deadline import OneShot, nothing

#: a prompt token is about this many bytes of a JSON body (``per_token_timeout_ms``)
BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class ResponseBound:
    """The bound on a whole response, and which setting set it."""

    seconds: float | None  # None: no bound
    setting: str = ""  # "proxy.response_timeout", "ollama profile characteristics.timeout"...

    def describe(self) -> str:
        if self.seconds is None:
            return "no bound"
        return f"{self.setting} ({format_duration(self.seconds)})"


def response_bound(
    config: ProxyConfig, profile: Profile | None, write_timeout: float = 0.0
) -> ResponseBound:
    """The smallest of the settings that bound a whole response (0s: that one does not)."""
    candidates = [
        (config.response_timeout, "proxy.response_timeout"),
        (write_timeout, "server.write_timeout"),
    ]
    if profile is not None:
        candidates.append(
            (profile.characteristics.timeout, f"{profile.name} profile characteristics.timeout")
        )
    bounded = [(seconds, setting) for seconds, setting in candidates if seconds > 0]
    if not bounded:
        return ResponseBound(None)
    seconds, setting = min(bounded, key=lambda item: item[0])
    return ResponseBound(seconds, setting)


@dataclass(frozen=True)
class AttemptDeadline:
    """What one attempt may wait."""

    #: seconds to wait for the response's headers (never more than ``remaining``)
    header_wait: float
    #: the host has to load the model first: running out is not a transport failure
    loading: bool
    #: seconds left of the whole response's bound when the attempt starts (None: no bound)
    remaining: float | None
    bound: ResponseBound
    #: why the header wait is what it is, for the log line when it runs out
    explain: str

    @property
    def expired(self) -> bool:
        """The whole response's bound has run out before this attempt could start."""
        return self.remaining is not None and self.remaining <= 0


@implementer(IReconfigurable)
class TimeoutPolicy:
    """The settings the exchange's timers and relays read, kept current by a reload
    (``reconfigure``): ``proxy.*`` timeouts, ``server.write_timeout``, and how answers are
    gathered (``proxy.profile``, ``proxy.engine``, ``proxy.stream_buffer_size``)."""

    reconfigures = (
        "proxy.response_header_timeout",
        "proxy.response_timeout",
        "server.write_timeout",
        "proxy.profile",
        "proxy.stream_buffer_size",
    )

    def __init__(self, config: OllaConfig) -> None:
        self.proxy = config.proxy
        self.write_timeout = config.server.write_timeout

    def reconfigure(self, config: OllaConfig) -> None:
        self.proxy = config.proxy
        self.write_timeout = config.server.write_timeout

    def attempt(
        self,
        profile: Profile | None,
        *,
        started: float,
        now: float,
        cold: bool,
        expected_load: float,
        body_size: int = 0,
    ) -> AttemptDeadline:
        """The deadlines of an attempt at an endpoint of ``profile`` that starts at ``now``,
        for a request that arrived at ``started``.

        Args:
            cold: the host does not have the request's model in memory (it will load it).
            expected_load: seconds the model is expected to take to load there.
            body_size: the request body's size (``per_token_timeout_ms`` counts its tokens).
        """
        config = self.proxy
        bound = response_bound(config, profile, self.write_timeout)
        remaining = None if bound.seconds is None else bound.seconds - (now - started)
        wait = config.response_header_timeout
        explain = _header_timeout_text(wait)
        scaling = profile.resources.timeout_scaling if profile is not None else None
        if cold and scaling is not None:
            load = expected_load if scaling.load_time_buffer else 0.0
            loading_wait = scaling.base_timeout_seconds + load
            if loading_wait > wait:
                wait = loading_wait
                base = format_duration(scaling.base_timeout_seconds)
                explain = (
                    f"timeout_scaling.base_timeout_seconds {base}"
                    f" + expected load {format_duration(round(load, 3))}"
                )
        if scaling is not None and scaling.per_token_timeout_ms > 0 and body_size > 0:
            extra = scaling.per_token_timeout_ms / 1000 * (body_size / BYTES_PER_TOKEN)
            wait += extra
            explain += f" + {format_duration(round(extra, 3))} for the prompt"
        if remaining is not None and remaining < wait:
            wait = max(0.0, remaining)
            explain = f"what was left of {bound.describe()}"
        return AttemptDeadline(
            header_wait=wait, loading=cold, remaining=remaining, bound=bound, explain=explain
        )

    def gather(self, content_type: bytes) -> int:
        """Bytes of an answer of ``content_type`` to gather before writing to the client."""
        proxy = self.proxy
        return gather_size(proxy.profile, proxy.engine, proxy.stream_buffer_size, content_type)


@lru_cache(maxsize=8)
def _header_timeout_text(wait: float) -> str:
    """Why an attempt waits ``wait`` for its headers, in the common case (one text per
    setting: worked out once, not at every attempt)."""
    return f"proxy.response_header_timeout {format_duration(wait)}"


class ResponseTimer(OneShot):
    """The one timer of a request: each attempt's header wait, then what is left of the whole
    response's bound. Armed at each attempt (a failover to another platform may bound it
    differently), moved on to the bound when the attempt's headers come (``answered``),
    stopped when the request ends. One timer, not one per deadline: this runs per request."""

    __slots__ = ("_bound_at", "_bound_expired", "_header_expired", "_heading")

    def __init__(
        self,
        clock: IReactorTime,
        expired: Callable[[], None],
        header_expired: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(clock, self._due)
        self._bound_expired = expired
        self._header_expired = header_expired
        #: when the whole response's bound runs out (None: never)
        self._bound_at: float | None = None
        #: the timer is set for the attempt's header wait, before the bound
        self._heading = False

    def close(self) -> None:
        super().close()
        self._bound_expired = self._header_expired = nothing

    def arm(self, deadline: AttemptDeadline) -> None:
        """Fire ``header_expired`` when the attempt's header wait runs out before its headers
        come (only when that wait ends before the bound does), and ``expired`` when what is
        left of ``deadline``'s bound runs out (never, without one)."""
        remaining = deadline.remaining
        self._bound_at = None if remaining is None else self._clock.seconds() + max(0.0, remaining)
        self._heading = remaining is None or deadline.header_wait < remaining
        if self._heading:
            self.start(deadline.header_wait)
        else:
            assert remaining is not None
            self.start(max(0.0, remaining))

    def answered(self) -> None:
        """The attempt's headers came: only the bound is left to time."""
        if not self._heading:
            return
        self._heading = False
        if self._bound_at is None:
            self.stop()
        else:
            self.start(max(0.0, self._bound_at - self._clock.seconds()))

    def _due(self) -> None:
        if self._heading:
            self._heading = False
            self._header_expired()
        else:
            self._bound_expired()


class LoadTimeout(Exception):
    """A host was still loading the model when the header wait ran out."""

    def __init__(self, endpoint: str, model: str, deadline: AttemptDeadline) -> None:
        super().__init__(
            f"endpoint {endpoint} was still loading model {model!r} after "
            f"{format_duration(round(deadline.header_wait, 3))} ({deadline.explain})"
        )


class ResponseTimeout(Exception):
    """The whole response's bound ran out."""

    def __init__(self, bound: ResponseBound, relayed: int) -> None:
        where = "before the first byte" if relayed == 0 else f"after {relayed} bytes"
        super().__init__(f"the response took longer than {bound.describe()}: cut {where}")
