"""The composition root: the whole app, built by ``build_app`` on a Clock, serves a request
after its own health checks and model discovery have run; ``twistd``'s wiring wraps it."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig, OllaConfig
from olla.daemon.app import build_app
from olla.daemon.logging import StreamSink
from olla.daemon.tap import build_service
from olla.fleet.endpoints import EndpointStatus
from olla.profiles import builtin_profiles
from olla.util.services import Repeating
from tests.fakes.ollama import FakeOllama
from tests.proxyharness import ClientConnection, HostAgent, http_request, parse_response


def _config(*netlocs: str) -> OllaConfig:
    defaults = OllaConfig()
    endpoints = tuple(
        EndpointConfig(url=f"http://{n}", name=n.split(":")[0], type="ollama") for n in netlocs
    )
    return replace(defaults, discovery=replace(defaults.discovery, endpoints=endpoints))


class BuildAppTests(SynchronousTestCase):
    def test_whole_app_on_a_clock(self) -> None:
        """If the app is built over two fake Ollamas and its services start, then its own
        probes make both healthy, discovery lists their models, and a chat is served."""
        clock = Clock()
        agent = HostAgent({b"a:1": FakeOllama(clock), b"b:1": FakeOllama(clock)})
        cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
        app = build_app(
            _config("a:1", "b:1"),
            builtin_profiles(),
            clock=clock,
            agent=agent,
            cooperator=cooperator,
        )
        for service in app.services:
            service.startService()
        for _ in range(5):
            clock.advance(0.1)
            agent.flush()
        self.assertTrue(app.registry.ready)
        self.assertEqual(
            {app.registry.state(ep).status for ep in app.registry}, {EndpointStatus.HEALTHY}
        )
        self.assertIn(
            "llama3.2:latest", {m.name for m in app.catalogue.models_of(app.registry.by_name("a"))}
        )  # type: ignore[arg-type]
        body = json.dumps({"model": "llama3.2:latest", "messages": [], "stream": False})
        client = ClientConnection(
            app.site, http_request("POST", "/olla/ollama/api/chat", body.encode())
        )
        for _ in range(5):
            clock.advance(0.1)
            agent.flush()
        response = parse_response(client.transport.value())
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertTrue(json.loads(response.body)["done"])
        self.assertIn(response.header(b"x-olla-endpoint"), (b"a", b"b"))
        for service in app.services:
            service.stopService()
        cooperator.stop()

    def test_twistd_wiring(self) -> None:
        """If ``twistd olla`` builds the daemon, then the app's pollers, the listener and the
        drain and pool services are all parented, and starting it listens on the port."""
        reactor = MemoryReactorClock()
        config = _config("a:1")
        config = replace(config, server=replace(config.server, host="127.0.0.1", port=40999))
        service = build_service(config, reactor, builtin_profiles(), StreamSink(io.StringIO()))
        names = {type(child).__name__ for child in service}
        self.assertTrue(
            {"HealthService", "DiscoveryService", "StreamServerEndpointService"} <= names, names
        )
        service.startService()
        self.assertEqual([port for port, *_ in reactor.tcpServers], [40999])
        service.stopService()


class RepeatingTests(SynchronousTestCase):
    def test_calls_while_running_and_survives_a_failure(self) -> None:
        """If a repeating job raises, then the failure is logged and the job runs again at
        the next interval; once stopped, it runs no more and nothing is left scheduled."""
        clock = Clock()
        calls: list[float] = []

        def job() -> None:
            calls.append(clock.seconds())
            if len(calls) == 2:
                raise RuntimeError("boom")

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        repeating = Repeating(clock, 1.0, job, what="the test job")
        repeating.startService()
        self.assertEqual(calls, [])  # not at once unless asked
        clock.advance(1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(calls, [1.0, 2.0, 3.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("the test job", [e.get("what") for e in observer])
        repeating.stopService()
        clock.advance(5.0)
        self.assertEqual(calls, [1.0, 2.0, 3.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_now(self) -> None:
        """If asked to run ``now``, then the job runs at the start too."""
        clock = Clock()
        calls: list[float] = []
        repeating = Repeating(clock, 1.0, lambda: calls.append(clock.seconds()), what="x", now=True)
        repeating.startService()
        self.assertEqual(calls, [0.0])
        repeating.stopService()
