"""Health checking on a Clock: statuses, backoff, breaker, scheduling, and the HTTP prober."""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from olla.config import EndpointConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus, endpoints_from_config
from olla.fleet.health import (
    BREAKER_OPEN,
    HealthService,
    HTTPHealthChecker,
    ProbeResult,
    classify,
    parse_retry_after,
)
from olla.interfaces import IHealthChecker
from olla.state.polls import SharedPolls
from tests.fakes.redis import FakeStore
from tests.proxyharness import REFUSE, HostAgent

HEALTHY = ProbeResult(EndpointStatus.HEALTHY, 0.01)
REFUSED = ProbeResult(EndpointStatus.OFFLINE, 0.0, "connection refused", unreachable=True)
BROKEN = ProbeResult(EndpointStatus.UNHEALTHY, 0.01, "HTTP 500")


@implementer(IHealthChecker)
class ScriptedChecker:
    """Answers each probe from a script per endpoint (the last entry repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[ProbeResult | Callable[[], Deferred[ProbeResult]]]] = {}
        self.probes: list[tuple[str, float]] = []
        self.clock: Clock | None = None

    def probe(self, endpoint: Endpoint) -> Deferred[ProbeResult]:
        assert self.clock is not None
        self.probes.append((endpoint.name, self.clock.seconds()))
        steps = self.script.setdefault(endpoint.name, [HEALTHY])
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, ProbeResult):
            return succeed(step)
        return step()


def _service(
    *names: str, interval: float = 5.0, timeout: float = 1.0
) -> tuple[HealthService, EndpointRegistry, ScriptedChecker, Clock, list[Endpoint]]:
    clock = Clock()
    endpoints = endpoints_from_config(
        [
            EndpointConfig(
                url=f"http://{n}:1",
                name=n,
                type="ollama",
                check_interval=interval,
                check_timeout=timeout,
            )
            for n in names
        ]
    )
    registry = EndpointRegistry(endpoints, clock)
    checker = ScriptedChecker()
    checker.clock = clock
    service = HealthService(registry, checker, clock, random.Random(3))
    return service, registry, checker, clock, endpoints


class ClassifyTests(SynchronousTestCase):
    def test_table(self) -> None:
        """If a probe ends with a given code, latency or error, then the status follows §5."""
        cases: list[tuple[int | None, float, Failure | None, EndpointStatus]] = [
            (200, 0.1, None, EndpointStatus.HEALTHY),
            (204, 9.9, None, EndpointStatus.HEALTHY),
            (200, 10.5, None, EndpointStatus.BUSY),
            (401, 0.1, None, EndpointStatus.CONFIG_ERROR),
            (403, 0.1, None, EndpointStatus.CONFIG_ERROR),
            (429, 0.1, None, EndpointStatus.RATE_LIMITED),
            (500, 0.1, None, EndpointStatus.UNHEALTHY),
            (503, 11.0, None, EndpointStatus.BUSY),
            (None, 0.0, Failure(ConnectionRefusedError()), EndpointStatus.OFFLINE),
            (None, 0.0, Failure(ValueError("odd")), EndpointStatus.UNHEALTHY),
        ]
        for code, latency, error, status in cases:
            self.assertEqual(classify(code, latency, error).status, status, (code, latency))

    def test_retry_after(self) -> None:
        """If Retry-After is seconds, an HTTP-date or missing, then the wait is right."""
        self.assertEqual(parse_retry_after(b"12", 0.0), 12.0)
        self.assertEqual(parse_retry_after(None, 0.0), 30.0)
        self.assertEqual(parse_retry_after(b"garbage", 0.0), 30.0)
        date = b"Thu, 01 Jan 1970 00:01:40 GMT"
        self.assertEqual(parse_retry_after(date, 40.0), 60.0)


class ServiceTests(SynchronousTestCase):
    def test_startup_probes_all_and_opens_gate(self) -> None:
        """If the service starts, then every endpoint is probed at once, and the startup gate
        opens once each healthy one has had its model list asked for too."""
        service, registry, checker, clock, endpoints = _service("a", "b")
        gate = registry.when_ready(5.0)
        service.startService()
        self.assertEqual(checker.probes, [("a", 0.0), ("b", 0.0)])
        self.assertNoResult(gate)
        registry.models_listed(endpoints[0], 3)
        self.assertNoResult(gate)
        registry.models_unlisted(endpoints[1])  # a failed list counts: nothing to wait for
        self.successResultOf(gate)
        self.assertEqual(registry.routable(), endpoints)
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_every_probe_reported(self) -> None:
        """If probes run, then each one's result is told to ``on_probe`` exactly once (the
        stats count probes there), and a discovery's result counts on the endpoint."""
        service, registry, checker, clock, endpoints = _service("a", "b", interval=5.0)
        told: list[tuple[str, str]] = []
        service.on_probe.append(lambda ep, result: told.append((ep.name, result.status.value)))
        service.startService()
        clock.advance(5.0)
        self.assertEqual(len(told), len(checker.probes))
        self.assertEqual(sorted(set(told)), [("a", "healthy"), ("b", "healthy")])
        registry.models_listed(endpoints[0], 3)
        registry.models_unlisted(endpoints[0])
        state = registry.state(endpoints[0])
        self.assertEqual((state.discoveries_ok, state.discoveries_failed), (1, 1))
        service.stopService()

    def test_own_interval_with_jitter(self) -> None:
        """If an endpoint is healthy, then it is probed at its own interval, never later."""
        service, registry, checker, clock, _ = _service("a", interval=5.0)
        service.startService()
        for _ in range(20):
            clock.advance(5.0)
        times = [t for _, t in checker.probes]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertTrue(all(4.5 <= g <= 5.0 for g in gaps), gaps)
        self.assertGreaterEqual(len(times), 21)
        service.stopService()

    def test_backoff_steps(self) -> None:
        """If a server keeps answering badly, then probes back off x2 up to 60 s (before the
        breaker opens, it stays x1 then x2 and x4)."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        state = registry.state(endpoints[0])
        checker.script["a"] = [BROKEN]
        service.startService()
        self.assertEqual((state.consecutive_failures, state.backoff_multiplier), (1, 2))
        self.assertEqual(state.next_check, 5.0)
        clock.advance(5.0)
        self.assertEqual((state.consecutive_failures, state.backoff_multiplier), (2, 4))
        self.assertEqual(state.next_check, 15.0)  # 5 s x 2
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.UNHEALTHY)
        service.stopService()

    def test_backoff_cap(self) -> None:
        """If the multiplier grows, then delays cap at 60 s and the multiplier at 12."""
        service, registry, _, _, endpoints = _service("a", interval=20.0)
        state = registry.state(endpoints[0])
        delays = [service._backoff(state, 20.0) for _ in range(6)]
        self.assertEqual(delays, [20.0, 40.0, 60.0, 60.0, 60.0, 60.0])
        self.assertEqual(state.backoff_multiplier, 12)

    def test_breaker_opens_and_half_opens(self) -> None:
        """If a server fails three checks, then probing stops for 30 s (reported offline), one
        half-open probe follows, and success closes the breaker."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        checker.script["a"] = [BROKEN, BROKEN, BROKEN, HEALTHY]
        service.startService()
        clock.advance(5.0)
        clock.advance(10.0)
        self.assertEqual(len(checker.probes), 3)
        self.assertEqual(registry.state(endpoints[0]).next_check, 15.0 + BREAKER_OPEN)
        clock.advance(BREAKER_OPEN - 1)
        self.assertEqual(len(checker.probes), 3)
        clock.advance(1)
        self.assertEqual(len(checker.probes), 4)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        self.assertEqual(registry.state(endpoints[0]).consecutive_failures, 0)
        service.stopService()

    def test_breaker_reopens(self) -> None:
        """If the half-open probe fails, then the breaker opens for another 30 s."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        checker.script["a"] = [BROKEN]
        service.startService()
        clock.advance(5.0)
        clock.advance(10.0)
        clock.advance(BREAKER_OPEN)
        self.assertEqual(len(checker.probes), 4)
        self.assertEqual(registry.state(endpoints[0]).next_check, 45.0 + BREAKER_OPEN)
        service.stopService()

    def test_refused_rechecked_at_interval(self) -> None:
        """If a machine refuses connections, then it is re-checked every interval (no breaker)
        and is healthy within one interval of coming back."""
        service, registry, checker, clock, endpoints = _service("a", interval=2.0)
        checker.script["a"] = [REFUSED] * 10 + [HEALTHY]
        service.startService()
        for _ in range(9):
            clock.advance(2.0)
        self.assertEqual(len(checker.probes), 10)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.OFFLINE)
        clock.advance(2.0)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        service.stopService()

    def test_rate_limited_waits(self) -> None:
        """If a server answers 429 with Retry-After 40, then it is not probed for 40 s."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        checker.script["a"] = [
            ProbeResult(EndpointStatus.RATE_LIMITED, 0.1, "HTTP 429", 40.0),
            HEALTHY,
        ]
        service.startService()
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.RATE_LIMITED)
        clock.advance(39.0)
        self.assertEqual(len(checker.probes), 1)
        clock.advance(1.0)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        service.stopService()

    def test_hanging_probe_times_out(self) -> None:
        """If a probe never answers, then the endpoint goes offline and probing continues."""
        service, registry, checker, clock, endpoints = _service("a", "b", timeout=1.0)
        checker.script["a"] = [lambda: Deferred(), HEALTHY]
        service.startService()
        self.assertEqual(registry.state(endpoints[1]).status, EndpointStatus.HEALTHY)
        clock.advance(4.0)  # the guard: 3 x check_timeout + 1
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.OFFLINE)
        clock.advance(5.0)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_crashing_checker_keeps_polling(self) -> None:
        """If the checker raises, then the error is logged and the next probe still runs."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        checker.script["a"] = [lambda: fail(RuntimeError("bug")), HEALTHY]
        service.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.UNHEALTHY)
        clock.advance(5.0)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        service.stopService()

    def test_check_now_coalesces(self) -> None:
        """If check_now is called while a probe runs, then no second probe starts."""
        service, registry, checker, clock, endpoints = _service("a")
        pending: Deferred[ProbeResult] = Deferred()
        checker.script["a"] = [lambda: pending, HEALTHY]
        service.startService()
        first = service.check_now(endpoints[0])
        second = service.check_now(endpoints[0])
        self.assertEqual(len(checker.probes), 1)
        pending.callback(HEALTHY)
        self.successResultOf(first)
        self.successResultOf(second)
        service.check_now(endpoints[0])
        self.assertEqual(len(checker.probes), 2)
        service.stopService()

    def test_connection_failure_report(self) -> None:
        """If the proxy reports a connection failure, then the endpoint is offline at once and
        re-probed immediately; it is healthy again as soon as a probe succeeds."""
        service, registry, checker, clock, endpoints = _service("a", interval=5.0)
        service.startService()
        recovered: list[str] = []
        service.on_recovered.append(lambda ep: recovered.append(ep.name))
        checker.script["a"] = [REFUSED, HEALTHY]
        service.report_connection_failure(endpoints[0], "connection refused")
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.OFFLINE)
        self.assertEqual(len(checker.probes), 2)
        clock.advance(5.0)
        self.assertEqual(registry.state(endpoints[0]).status, EndpointStatus.HEALTHY)
        self.assertEqual(recovered, ["a"])
        service.stopService()


class Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.hang = False
        self.headers: list[dict[bytes, list[bytes]]] = []

    def render(self, request: Request) -> bytes | int:
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        if self.code == 429:
            request.setHeader(b"Retry-After", b"7")
        return b"Ollama is running"


class HTTPCheckerTests(SynchronousTestCase):
    def _checker(self, backend: Resource | str) -> tuple[HTTPHealthChecker, Clock, Endpoint]:
        clock = Clock()
        agent = HostAgent({b"h:1": backend})
        self.agent = agent
        (endpoint,) = endpoints_from_config(
            [
                EndpointConfig(
                    url="http://h:1",
                    name="h",
                    type="ollama",
                    headers={"X-Tenant": "t"},
                    check_timeout=2.0,
                )
            ]
        )
        return HTTPHealthChecker(agent, clock, "9.9", random.Random(1)), clock, endpoint

    def test_provides_interface(self) -> None:
        """If an HTTPHealthChecker is built, then it provides IHealthChecker."""
        checker, _, _ = self._checker(Health())
        self.assertTrue(verifyObject(IHealthChecker, checker))

    def test_healthy_probe_with_headers(self) -> None:
        """If the health URL answers 200, then the probe is healthy and sent olla's headers
        plus the endpoint's own."""
        backend = Health()
        checker, clock, endpoint = self._checker(backend)
        d = checker.probe(endpoint)
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).status, EndpointStatus.HEALTHY)
        headers = backend.headers[0]
        self.assertEqual(headers[b"User-Agent"], [b"olla-HealthChecker/9.9"])
        self.assertEqual(headers[b"X-Tenant"], [b"t"])

    def test_status_codes(self) -> None:
        """If the health URL answers 401 or 429, then config_error / rate_limited (with its
        Retry-After) follow."""
        backend = Health()
        checker, clock, endpoint = self._checker(backend)
        backend.code = 401
        d = checker.probe(endpoint)
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).status, EndpointStatus.CONFIG_ERROR)
        backend.code = 429
        d = checker.probe(endpoint)
        self.agent.flush()
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.retry_after), (EndpointStatus.RATE_LIMITED, 7.0))

    def test_refused_retried_then_offline(self) -> None:
        """If the connection is refused, then the probe retries twice (~100, ~200 ms) before
        reporting offline."""
        checker, clock, endpoint = self._checker(REFUSE)
        d = checker.probe(endpoint)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertNoResult(d)
        clock.advance(0.3)
        result = self.successResultOf(d)
        self.assertEqual(result.status, EndpointStatus.OFFLINE)
        self.assertTrue(result.unreachable)
        self.assertEqual(len(self.agent.sent), 3)

    def test_timeout(self) -> None:
        """If the health URL hangs, then the probe is offline after check_timeout."""
        backend = Health()
        backend.hang = True
        checker, clock, endpoint = self._checker(backend)
        d = checker.probe(endpoint)
        self.agent.flush()
        clock.advance(2.0)
        result = self.successResultOf(d)
        self.assertEqual(result.status, EndpointStatus.OFFLINE)
        self.assertIn("timed out", result.reason)


class SharedHealthTests(SynchronousTestCase):
    """Two processes sharing a store (fakeredis behind ``SharedPolls``), each with its own
    registry, prober and checker, on one clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.processes = [self._process(name, seed) for seed, name in enumerate(("a", "b"))]

    def _process(
        self, name: str, seed: int
    ) -> tuple[HealthService, EndpointRegistry, ScriptedChecker]:
        endpoints = endpoints_from_config(
            [EndpointConfig(url="http://e:1", name="e", type="ollama", check_interval=5.0)]
        )
        registry = EndpointRegistry(endpoints, self.clock)
        checker = ScriptedChecker()
        checker.clock = self.clock
        share = SharedPolls(self.store.process(name, self.clock))
        service = HealthService(registry, checker, self.clock, random.Random(seed))
        service.share_with(share)
        service.startService()
        self.addCleanup(service.stopService)
        return service, registry, checker

    def _probes(self) -> int:
        return sum(len(checker.probes) for _, _, checker in self.processes)

    def test_one_probe_per_interval(self) -> None:
        """If two processes share the store, then after each probing at startup, the endpoint
        is probed about once per interval, not once per process."""
        self.assertEqual(self._probes(), 2)
        for _ in range(12):
            self.clock.advance(5.0)
        self.assertTrue(12 <= self._probes() - 2 <= 14, self._probes())

    def test_result_applied_everywhere(self) -> None:
        """If the process holding the lease finds the endpoint broken, then the other one
        takes it out of rotation too, without probing it; the statistics count only the
        probes a process made."""
        for _, _, checker in self.processes:
            checker.script["e"] = [BROKEN]
        told: list[str] = []
        self.processes[1][0].on_probe.append(lambda ep, result: told.append(result.status.value))
        self.clock.advance(5.0)
        probed = [len(checker.probes) - 1 for _, _, checker in self.processes]
        self.assertEqual(sorted(probed), [0, 1])
        for _, registry, _ in self.processes:
            self.assertEqual(registry.routable(), [])
        self.assertEqual(len(told), probed[1])

    def test_store_down_every_process_probes(self) -> None:
        """If the store does not answer, then each process probes for itself."""
        self.store.down = True
        self.clock.advance(5.0)
        self.assertEqual([len(c.probes) for _, _, c in self.processes], [2, 2])
