"""The composition root: the whole app, built by ``build_app`` on a Clock, serves a request
after its own health checks and model discovery have run; ``twistd``'s wiring wraps it."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig, OllaConfig
from olla.daemon.app import build_app
from olla.daemon.logging import StreamSink
from olla.daemon.tap import build_service
from olla.fleet.endpoints import EndpointStatus
from olla.profiles import builtin_profiles
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
