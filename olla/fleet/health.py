# -*- test-case-name: tests.test_health -*-
"""Health checking: one poller per endpoint, at that endpoint's own ``check_interval``.

A probe is ``GET health_url``. Its result sets the endpoint's status in the registry, and the
next probe is scheduled from it: the plain interval (with a little jitter) while healthy, a
growing backoff while a server answers badly or slowly, and a circuit breaker that stops
probing a server that keeps failing that way. A refused connection costs the backend nothing,
so it is re-checked at the plain interval: a machine that comes back is routable within one
``check_interval``. A ``type: auto`` endpoint is first probed for its platform (``detect.py``),
at the plain interval too, and shows ``detecting`` until one is found.

With a shared store (an ``IPollShare``), a scheduled probe first claims the endpoint's lease:
one process probes per interval and publishes what it found; the others apply that result as
their own (status, backoff, next check) instead of probing. Probes asked for now (a failed
request, startup) are always made here.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import replace

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from olla.fleet.detect import PlatformDetector
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus
from olla.fleet.values import ProbeResult
from olla.interfaces import IHealthChecker, IPlatformDetector, IPollShare
from olla.profiles import Profile
from olla.util.bodies import BoundedBody
from olla.util.deadline import follow, with_deadline
from olla.util.failures import TIMEOUTS, UNREACHABLE, describe

#: A 2xx slower than this means the server is up but struggling.
BUSY_THRESHOLD = 10.0
RATE_LIMIT_DEFAULT = 30.0
BACKOFF_CAP = 60.0
MULTIPLIER_CAP = 12
BREAKER_THRESHOLD = 3
BREAKER_OPEN = 30.0
_BODY_LIMIT = 64 * 1024
_RETRY_DELAYS = (0.1, 0.2)


def classify(code: int | None, latency: float, error: Failure | None) -> ProbeResult:
    """Turn one probe's outcome into a status (the rules of Olla's health checker)."""
    if error is not None:
        if error.check(*TIMEOUTS):
            return ProbeResult(EndpointStatus.OFFLINE, latency, "health check timed out")
        if error.check(*UNREACHABLE):
            return ProbeResult(EndpointStatus.OFFLINE, latency, describe(error), unreachable=True)
        return ProbeResult(EndpointStatus.UNHEALTHY, latency, describe(error))
    assert code is not None
    if 200 <= code < 300:
        if latency > BUSY_THRESHOLD:
            return ProbeResult(EndpointStatus.BUSY, latency, f"slow answer ({latency:.1f}s)")
        return ProbeResult(EndpointStatus.HEALTHY, latency)
    if code in (401, 403):
        return ProbeResult(EndpointStatus.CONFIG_ERROR, latency, f"HTTP {code}: check auth")
    if code == 429:
        return ProbeResult(EndpointStatus.RATE_LIMITED, latency, "HTTP 429")
    if latency > BUSY_THRESHOLD:
        return ProbeResult(EndpointStatus.BUSY, latency, f"HTTP {code}, slow")
    return ProbeResult(EndpointStatus.UNHEALTHY, latency, f"HTTP {code}")


def parse_retry_after(value: bytes | None, now: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP-date)."""
    if not value:
        return RATE_LIMIT_DEFAULT
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return RATE_LIMIT_DEFAULT
    return max(0.0, when - now)


@implementer(IHealthChecker)
class HTTPHealthChecker:
    """Probes ``GET endpoint.health_url`` with the endpoint's own headers and auth.

    A ``type: auto`` endpoint has no health URL of its own yet: its platform is detected
    first (with the same agent and clock), so detection is retried on the health schedule.
    """

    def __init__(
        self,
        agent: IAgent,
        clock: IReactorTime,
        version: str,
        rng: random.Random | None = None,
        detector: IPlatformDetector | None = None,
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._rng = rng or random.Random()
        self._detector = detector or PlatformDetector(agent, clock, version)
        headers = Headers(
            {
                b"User-Agent": [f"olla-HealthChecker/{version}".encode()],
                b"Accept": [b"application/json, text/plain, */*"],
                b"Cache-Control": [b"no-cache"],
            }
        )
        self._base_headers = headers

    def probe(self, endpoint: Endpoint) -> Deferred[ProbeResult]:
        return Deferred.fromCoroutine(self._probe(endpoint))

    async def _probe(self, endpoint: Endpoint) -> ProbeResult:
        detected: Profile | None = None
        url = endpoint.health_url
        if endpoint.detecting:
            detection = await self._detector.detect(endpoint)
            if detection.profile is None:
                return ProbeResult(EndpointStatus.DETECTING, detection.latency, detection.reason)
            detected = detection.profile
            url = endpoint.platform_of(detected).health_url
        for attempt in range(len(_RETRY_DELAYS) + 1):
            result = await self._attempt(endpoint, url)
            if not result.unreachable or attempt == len(_RETRY_DELAYS):
                return result if detected is None else replace(result, detected=detected)
            # a refused connection may be a backend restarting: look again, briefly
            delay = _RETRY_DELAYS[attempt] * self._rng.uniform(0.75, 1.25)
            await deferLater(self._clock, delay, lambda: None)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, endpoint: Endpoint, url: str) -> ProbeResult:
        headers = self._base_headers.copy()
        for name, value in endpoint.extra_headers:
            headers.setRawHeaders(name, [value])
        started = self._clock.seconds()
        request = with_deadline(
            self._agent.request(b"GET", url.encode(), headers),
            endpoint.check_timeout,
            self._clock,
        )
        try:
            response: IResponse = await request
        except CancelledError:
            raise
        except Exception:
            return classify(None, self._clock.seconds() - started, Failure())
        latency = self._clock.seconds() - started
        response.deliverBody(BoundedBody(_BODY_LIMIT, keep=False))  # drained: reusable
        result = classify(response.code, latency, None)
        if result.status is EndpointStatus.RATE_LIMITED:
            retry_after = parse_retry_after(
                response.headers.getRawHeaders(b"retry-after", [b""])[0], self._clock.seconds()
            )
            result = ProbeResult(result.status, latency, result.reason, retry_after)
        return result


class _Poller:
    """Scheduling state for one endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.call: IDelayedCall | None = None
        self.running: Deferred[None] | None = None
        self.breaker_failures = 0
        self.breaker_open_until: float | None = None
        self.backoff_multiplier = 1


class HealthService(Service):
    """Keeps every endpoint's status true, one poller each; never stops probing."""

    _log = Logger()

    def __init__(
        self,
        registry: EndpointRegistry,
        checker: IHealthChecker,
        clock: IReactorTime,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._checker = checker
        self._clock = clock
        self._rng = rng or random.Random()
        #: who probes each endpoint this interval (``share_with``; None: this process)
        self._share: IPollShare | None = None
        self._pollers = {ep: _Poller(ep) for ep in registry}
        self.on_recovered: list[Callable[[Endpoint], object]] = []
        #: told every probe's result (the stats count them)
        self.on_probe: list[Callable[[Endpoint, ProbeResult], object]] = []
        #: ``discovery.health_check.initial_delay``: the first probes wait this long
        self.initial_delay = 0.0

    # ------------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        for poller in self._pollers.values():
            # every endpoint at once: the startup gate waits on these
            if self.initial_delay > 0:
                poller.call = self._clock.callLater(self.initial_delay, self._run, poller)
            else:
                self._run(poller)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for poller in self._pollers.values():
            self._halt(poller)
        return succeed(None)

    def _halt(self, poller: _Poller) -> None:
        if poller.call is not None and poller.call.active():
            poller.call.cancel()
        poller.call = None
        if poller.running is not None:
            poller.running.cancel()

    def follow_registry(self) -> None:
        """After a reload: a poller for each endpoint the registry gained (probing at once),
        none for the ones it lost (a probe of theirs still running is cancelled). Endpoints
        kept keep their poller, schedule and backoff."""
        for endpoint in [ep for ep in self._pollers if ep not in self._registry]:
            self._halt(self._pollers.pop(endpoint))
        for endpoint in self._registry:
            if endpoint not in self._pollers:
                poller = self._pollers[endpoint] = _Poller(endpoint)
                if self.running:
                    self._run(poller)

    def _current(self, poller: _Poller) -> bool:
        """Whether ``poller`` still belongs to a configured endpoint (a reload may drop it)."""
        return self._pollers.get(poller.endpoint) is poller

    # ------------------------------------------------------------------ triggers

    def check_now(self, endpoint: Endpoint) -> Deferred[None]:
        """Probe ``endpoint`` now (or join the probe already running)."""
        poller = self._pollers.get(endpoint)
        if poller is None:
            return succeed(None)  # removed by a reload
        if poller.running is not None:
            return follow(poller.running)
        if not self.running:
            return succeed(None)
        return follow(self._run(poller))

    def report_connection_failure(self, endpoint: Endpoint, reason: str) -> None:
        """A proxied request could not reach ``endpoint``: out of rotation now, recheck now."""
        self._registry.unreachable(endpoint, reason)
        self.check_now(endpoint)

    # ------------------------------------------------------------------ one probe

    def _run(self, poller: _Poller, publish: bool = False) -> Deferred[None]:
        if poller.call is not None and poller.call.active():
            poller.call.cancel()
        poller.call = None
        endpoint = poller.endpoint
        now = self._clock.seconds()
        if poller.breaker_open_until is not None and now < poller.breaker_open_until:
            self._registry.set_status(endpoint, EndpointStatus.OFFLINE, "circuit breaker open")
            self._schedule(poller, poller.breaker_open_until - now)
            return succeed(None)
        probe = self._checker.probe(endpoint)
        # the checker has its own timeouts; this guard only stops a broken checker hanging us
        budget = endpoint.check_timeout * (5 if endpoint.detecting else 3) + 1
        with_deadline(probe, budget, self._clock)
        if publish:
            probe.addCallback(self._publish, endpoint)
        running: Deferred[None] = probe.addCallbacks(
            lambda result: self._apply(poller, result),
            lambda failure: self._checker_failed(poller, failure),
        )
        if not running.called:
            poller.running = running
            running.addBoth(self._clear_running, poller)
        return running

    def _clear_running(self, result: object, poller: _Poller) -> object:
        poller.running = None
        return result

    def _checker_failed(self, poller: _Poller, failure: Failure) -> None:
        if failure.check(CancelledError) and not (self.running and self._current(poller)):
            return  # stopping, or the endpoint was removed
        if failure.check(DeferredTimeout):
            hung = EndpointStatus.DETECTING if poller.endpoint.detecting else EndpointStatus.OFFLINE
            result = ProbeResult(hung, 0.0, "health check hung")
        else:
            self._log.failure(
                "health check of {endpoint} crashed", failure=failure, endpoint=poller.endpoint.name
            )
            result = ProbeResult(EndpointStatus.UNHEALTHY, 0.0, "health check error")
        self._apply(poller, result)

    def _apply(self, poller: _Poller, result: ProbeResult, heard: bool = False) -> None:
        """Act on one probe's ``result`` (``heard``: another process probed)."""
        if not self.running or not self._current(poller):
            return
        endpoint = poller.endpoint
        if not heard:  # the statistics count the probes this process made
            for told in self.on_probe:
                told(endpoint, result)
        if result.detected is not None:
            self._registry.set_detected(endpoint, result.detected)
        now = self._clock.seconds()
        interval = endpoint.check_interval
        previous = self._registry.state(endpoint).status
        if result.ok:
            poller.backoff_multiplier = 1
            poller.breaker_failures = 0
            poller.breaker_open_until = None
            delay = self._jittered(interval)
        elif result.status is EndpointStatus.RATE_LIMITED:
            delay = max(result.retry_after or RATE_LIMIT_DEFAULT, interval)
        elif result.status in (EndpointStatus.CONFIG_ERROR, EndpointStatus.DETECTING):
            # not the server failing: nothing to back off from, keep looking at the interval
            delay = self._jittered(interval)
        else:
            delay = self._backoff(poller, interval)
            if result.unreachable:
                delay = self._jittered(interval)  # refused is cheap: keep looking
            else:
                poller.breaker_failures += 1
                if poller.breaker_failures >= BREAKER_THRESHOLD:
                    poller.breaker_open_until = now + BREAKER_OPEN
                    delay = BREAKER_OPEN
                    self._log.warn(
                        "endpoint {endpoint}: {failures} failed checks, circuit open for "
                        "{seconds:g}s",
                        endpoint=endpoint.name,
                        failures=poller.breaker_failures,
                        seconds=BREAKER_OPEN,
                    )
        self._registry.probe_finished(
            endpoint,
            result.status,
            result.reason,
            latency=result.latency,
            backoff_multiplier=poller.backoff_multiplier,
        )
        failures = self._registry.state(endpoint).consecutive_failures
        if not result.ok and failures and failures % 5 == 0:
            self._log.warn(
                "endpoint {endpoint} still failing ({failures} in a row): {reason}",
                endpoint=endpoint.name,
                failures=failures,
                reason=result.reason,
            )
        if result.ok and previous not in (EndpointStatus.UNKNOWN, EndpointStatus.HEALTHY):
            for listener in self.on_recovered:
                listener(endpoint)
        self._schedule(poller, delay)

    def _backoff(self, poller: _Poller, interval: float) -> float:
        if poller.backoff_multiplier <= 1:
            poller.backoff_multiplier = 2
            return float(interval)
        delay = min(interval * poller.backoff_multiplier, BACKOFF_CAP)
        poller.backoff_multiplier = min(poller.backoff_multiplier * 2, MULTIPLIER_CAP)
        return float(delay)

    def _jittered(self, interval: float) -> float:
        return interval * self._rng.uniform(0.9, 1.0)

    def _schedule(self, poller: _Poller, delay: float) -> None:
        if not self.running or not self._current(poller):
            return
        if poller.call is not None and poller.call.active():
            poller.call.cancel()
        self._registry.probe_scheduled(poller.endpoint, self._clock.seconds() + delay)
        poller.call = self._clock.callLater(delay, self._tick, poller)

    # ------------------------------------------------------------------ shared probes

    def share_with(self, share: IPollShare) -> None:
        """Probe together with the other processes behind ``share`` (a shared store): from
        now on a scheduled probe is made by the process holding the endpoint's lease."""
        self._share = share
        share.subscribe("health", self._heard)

    def _publish(self, result: ProbeResult, endpoint: Endpoint) -> ProbeResult:
        """Tell the other processes what this scheduled probe found (not a detection: a
        detected platform stays with the process that probed)."""
        if self._share is not None and result.detected is None:
            self._share.publish(
                "health",
                endpoint,
                {
                    "status": result.status.value,
                    "latency": result.latency,
                    "reason": result.reason,
                    "retry_after": result.retry_after,
                    "unreachable": result.unreachable,
                },
            )
        return result

    def _heard(self, endpoint_id: str, found: dict[str, object]) -> None:
        """Another process probed ``endpoint_id``: its result is this process's too (unless
        a probe of its own is running)."""
        poller = next((p for p in self._pollers.values() if p.endpoint.id == endpoint_id), None)
        if poller is None or poller.running is not None or poller.endpoint.detecting:
            return
        try:
            retry_after = found.get("retry_after")
            latency = found["latency"]
            assert isinstance(latency, int | float)
            result = ProbeResult(
                EndpointStatus(found["status"]),
                float(latency),
                str(found.get("reason") or ""),
                float(retry_after) if isinstance(retry_after, int | float) else None,
                bool(found.get("unreachable")),
            )
        except (KeyError, ValueError, AssertionError):
            self._log.warn("a shared probe result olla cannot read: {found!r}", found=found)
            return
        self._apply(poller, result, heard=True)

    def _claimed(self, won: bool, poller: _Poller) -> None:
        if not self.running or not self._current(poller) or poller.running is not None:
            return
        if won:
            self._run(poller, publish=True)
        else:  # another process probes: its result reschedules this one
            self._schedule(poller, poller.endpoint.check_interval)

    def _tick(self, poller: _Poller) -> None:
        poller.call = None
        try:
            if self._share is not None and not poller.endpoint.detecting:
                claimed = self._share.claim(
                    "health", poller.endpoint, poller.endpoint.check_interval
                )
                claimed.addCallback(self._claimed, poller).addErrback(
                    lambda f: self._log.failure(
                        "health lease of {e} failed", f, e=poller.endpoint.name
                    )
                )
                return
            self._run(poller)
        except Exception:
            self._log.failure("health poller for {endpoint} crashed", endpoint=poller.endpoint.name)
            self._schedule(poller, poller.endpoint.check_interval)
