"""Hot reload: a config file applied to the running graph on a Clock.

Each test builds the whole app (``build_app``) over in-memory fake Ollamas, writes a config file,
loads it with the daemon's own loader (``olla.daemon.tap.load_all``), and edits it as an operator
would.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from olla.config import EndpointConfig, OllaConfig
from olla.daemon import tap
from olla.daemon.app import build_app
from olla.daemon.logging import (
    HangupRelay,
    LogReopener,
    StreamSink,
    SwitchableObserver,
    make_observer,
)
from olla.daemon.reload import (
    ConfigWatcher,
    Reloader,
    changed_keys,
    endpoint_changes,
)
from olla.daemon.tap import load_all
from olla.fleet.balancer import LeastConnectionsBalancer, PriorityBalancer
from olla.fleet.endpoints import Endpoint, EndpointStatus, Outcome, endpoints_from_config
from olla.interfaces import IReconfigurable
from olla.profiles import builtin_profiles
from tests.fakes.ollama import FakeOllama
from tests.proxyharness import ClientConnection, HostAgent, http_request

MODEL = "llama3.2:latest"
HOSTS = ("a", "b", "c")


def _endpoint(name: str, **extra: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "url": f"http://{name}:1",
        "type": "ollama",
        "check_interval": "1s",
        "check_timeout": "500ms",
    }
    entry.update(extra)
    return entry


def _document(endpoints: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 40114},
        "proxy": {"load_balancer": "round-robin"},
        "discovery": {"static": {"endpoints": endpoints}},
        "logging": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return document


class ReloadHarness:
    """The app over fake Ollamas ``a``, ``b`` and ``c`` (only the configured ones are used),
    its config file, and a ``Reloader`` on it."""

    def __init__(
        self, case: SynchronousTestCase, endpoints: list[dict[str, Any]], **sections: Any
    ) -> None:
        self.clock = Clock()
        self.fakes = {name: FakeOllama(self.clock, name=name) for name in HOSTS}
        self.agent = HostAgent({f"{n}:1".encode(): fake for n, fake in self.fakes.items()})
        self.cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        self.path = Path(case.mktemp())
        self.path.mkdir()
        self.path = self.path / "olla.yaml"
        self.write(_document(endpoints, **sections))
        config, profiles = load_all(str(self.path))
        self.app = build_app(
            config, profiles, clock=self.clock, agent=self.agent, cooperator=self.cooperator
        )
        self.out = io.StringIO()
        self.sink = StreamSink(self.out)
        self.observer = SwitchableObserver(make_observer("json", "info", self.sink), self.sink)
        self.reloader = Reloader(
            self.app,
            load_all,
            clock=self.clock,
            profiles=profiles,
            observer=self.observer,
        )
        for service in self.app.services:
            service.startService()
        self.pump()
        case.addCleanup(self.stop)

    def write(self, document: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(document))

    def reload(self, endpoints: list[dict[str, Any]], **sections: Any) -> bool:
        self.write(_document(endpoints, **sections))
        return self.reloader.reload()

    def pump(self, steps: int = 5, step: float = 0.1) -> None:
        for _ in range(steps):
            self.clock.advance(step)
            self.agent.flush()

    def endpoint(self, name: str) -> Endpoint:
        endpoint = self.app.registry.by_name(name)
        assert endpoint is not None
        return endpoint

    def status(self, name: str) -> EndpointStatus:
        return self.app.registry.state(self.endpoint(name)).status

    def chat(self, stream: bool = False, chunks: int = 3, delay_ms: int = 0) -> ClientConnection:
        body = json.dumps({"model": MODEL, "messages": [], "stream": stream}).encode()
        headers = {"X-Fake-Chunks": str(chunks), "X-Fake-Delay-Ms": str(delay_ms)}
        return ClientConnection(
            self.app.site, http_request("POST", "/olla/ollama/api/chat", body, headers)
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        client = ClientConnection(self.app.site, http_request("GET", path, None, headers))
        self.pump(2)
        return client.response()

    def stop(self) -> None:
        for service in self.app.services:
            if service.running:
                service.stopService()
        self.cooperator.stop()


def _events() -> EventLoggingObserver:
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    return events


def _messages(events: EventLoggingObserver, level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e.get("log_level") is level]


class DiffTests(SynchronousTestCase):
    """What changed between two configs, and what a reload can apply."""

    def test_changed_keys_are_leaf_paths(self) -> None:
        """If two configs differ in a nested key and the endpoint list, then ``changed_keys``
        names exactly those paths, and not where the config came from."""
        old = OllaConfig(source="a.yaml")
        new = replace(
            old,
            source="b.yaml",
            server=replace(old.server, port=40115),
            proxy=replace(old.proxy, retry=replace(old.proxy.retry, max_attempts=2)),
            discovery=replace(
                old.discovery,
                endpoints=(EndpointConfig(url="http://a:1", name="a", type="ollama"),),
            ),
        )
        self.assertEqual(
            changed_keys(old, new),
            ["server.port", "proxy.retry.max_attempts", "discovery.endpoints"],
        )
        self.assertEqual(changed_keys(old, old), [])

    def test_live_and_restart_keys(self) -> None:
        """If a key is applied by a reload (a component's ``reconfigures`` names it, or it has
        no effect yet anyway), then it is live; the listen address, the log destination and
        the translators need a restart."""
        reloader = ReloadHarness(self, [_endpoint("a")]).reloader
        for key in (
            "discovery.endpoints",
            "proxy.load_balancer",
            "proxy.retry.max_attempts",
            "server.request_limits.max_body_size",
            "model_aliases",
            "logging.level",
            "server.rate_limits.burst_size",
            "server.auth.api_keys",
            "proxy.stream_buffer_size",
            "proxy.response_timeout",
            "server.write_timeout",
            "discovery.refresh_interval",
            "model_registry.enable_unifier",
        ):
            self.assertTrue(reloader.is_live(key), key)
        for key in (
            "server.port",
            "server.host",
            "logging.output",
            "proxy.connection_timeout",
            "translators.anthropic.enabled",
            "discovery.model_discovery.enabled",
            "proxy.engine",
            "proxy.connection_keep_alive",
            "proxy.profile_filter.include",
            "engineering.show_nerdstats",
        ):
            self.assertFalse(reloader.is_live(key), key)

    def test_endpoint_changes(self) -> None:
        """If the new config keeps one endpoint as it was, changes another's priority, moves a
        third to a new address, drops one and adds one, then each is classified so: the kept
        one is the running object, only the address change loses its health, and the order
        is the new config's."""

        def built(*configs: EndpointConfig) -> list[Endpoint]:
            return endpoints_from_config(configs)

        def ep(name: str, url: str | None = None, priority: int = 100) -> EndpointConfig:
            return EndpointConfig(
                url=url or f"http://{name}:1", name=name, type="ollama", priority=priority
            )

        running = built(ep("keep"), ep("prio"), ep("moved"), ep("gone"))
        wanted = built(
            ep("new"), ep("moved", "http://elsewhere:1"), ep("prio", priority=5), ep("keep")
        )
        changes = endpoint_changes(running, wanted)
        self.assertEqual([e.name for e in changes.added], ["new"])
        self.assertEqual([e.name for e in changes.removed], ["gone"])
        self.assertEqual(
            [(old.name, new.name, keep) for old, new, keep in changes.changed],
            [("moved", "moved", False), ("prio", "prio", True)],
        )
        self.assertEqual([e.name for e in changes.order], ["new", "moved", "prio", "keep"])
        self.assertIs(changes.order[3], running[0])
        self.assertEqual(changes.describe(), "+new, -gone, ~moved, ~prio")
        self.assertFalse(endpoint_changes(running, built(*(e.config for e in running))))


class ReloadTests(SynchronousTestCase):
    """Reloads applied to the running app."""

    def test_added_endpoint_is_probed_and_serves(self) -> None:
        """If a reload adds an endpoint, then it is probed at once, its models are listed, it
        takes requests, and the endpoint that stayed keeps its state object and health."""
        h = ReloadHarness(self, [_endpoint("a")])
        a = h.endpoint("a")
        a_state = h.app.registry.state(a)
        self.assertEqual(h.fakes["b"].requests, [])
        # warm routing off: the model is loaded on a only, and b must get a share anyway
        self.assertTrue(
            h.reload([_endpoint("a"), _endpoint("b")], proxy={"warm_routing": {"enabled": False}})
        )
        self.assertTrue(any(r.path == "/" for r in h.fakes["b"].requests))  # probed at once
        self.assertIs(h.endpoint("a"), a)
        self.assertIs(h.app.registry.state(a), a_state)
        self.assertEqual(a_state.status, EndpointStatus.HEALTHY)
        h.pump()
        self.assertEqual(h.status("b"), EndpointStatus.HEALTHY)
        self.assertIn(MODEL, {m.name for m in h.app.catalogue.models_of(h.endpoint("b"))})
        served = set()
        for _ in range(4):
            client = h.chat()
            h.pump(3)
            response = client.response()
            assert response is not None
            self.assertEqual(response.status, 200)
            served.add(response.header(b"x-olla-endpoint"))
        self.assertEqual(served, {b"a", b"b"})
        self.assertEqual(h.reloader.generation.number, 2)

    def test_removed_endpoint_gets_nothing_and_leaves_no_trace(self) -> None:
        """If a reload removes an idle endpoint, then it is no longer routed to or probed,
        and its model list and circuit are gone."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        b = h.endpoint("b")
        h.app.registry.breakers.failed(b)
        self.assertTrue(h.reload([_endpoint("a")]))
        self.assertNotIn(b, h.app.registry)
        self.assertEqual(h.app.registry.draining, [])
        self.assertEqual(h.app.catalogue.models_of(b), [])
        self.assertNotIn(b, h.app.registry.breakers._circuits)
        probes_before = len(h.fakes["b"].requests)
        for _ in range(4):
            client = h.chat()
            h.pump(3)
            response = client.response()
            assert response is not None
            self.assertEqual(response.header(b"x-olla-endpoint"), b"a")
        h.pump(30)  # three check intervals
        self.assertEqual(len(h.fakes["b"].requests), probes_before)

    def test_stream_in_flight_finishes_on_removed_endpoint(self) -> None:
        """If a reload removes the endpoint a stream is being served by, then the stream
        finishes there in full, the endpoint is counted as draining until it ends, its
        in-flight counter goes back to zero and it is then gone; new requests go elsewhere."""
        h = ReloadHarness(self, [_endpoint("a")])
        a = h.endpoint("a")
        client = h.chat(stream=True, chunks=5, delay_ms=1000)
        h.pump(3)
        self.assertEqual(h.app.registry.load.in_flight(a), 1)
        self.assertTrue(h.reload([_endpoint("b")]))
        self.assertEqual(h.app.registry.draining, [a])
        self.assertEqual(h.app.registry.load.in_flight(a), 1)
        h.pump(80)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-endpoint"), b"a")
        lines = [json.loads(line) for line in response.body.splitlines() if line.strip()]
        self.assertTrue(lines[-1]["done"])
        self.assertEqual(h.app.registry.draining, [])
        self.assertEqual(h.app.catalogue.models_of(a), [])
        with self.assertRaises(KeyError):
            h.app.registry.state(a)
        after = h.chat()
        h.pump(3)
        response = after.response()
        assert response is not None
        self.assertEqual(response.header(b"x-olla-endpoint"), b"b")
        self.assertEqual(h.app.registry.load.in_flight(h.endpoint("b")), 0)

    def test_late_reports_about_removed_endpoint_change_nothing(self) -> None:
        """If attempts and reports about a removed endpoint arrive after the reload (a
        connection failure, a busy answer, a health result), then nothing crashes, the
        removed endpoint does not come back, and its counters still end at zero."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        a = h.endpoint("a")
        registry = h.app.registry
        registry.attempt_started(a, h.clock.seconds())
        registry.attempt_started(a, h.clock.seconds())
        h.reload([_endpoint("b")])
        h.app.health.report_connection_failure(a, "refused")
        registry.backend_busy(a, 5)
        registry.probe_finished(a, EndpointStatus.HEALTHY, latency=0.1)
        registry.models_listed(a, 3)
        self.assertEqual(registry.routable(), [h.endpoint("b")])
        registry.attempt_ended(a, Outcome.FAILED, started=h.clock.seconds())
        self.assertEqual(registry.load.in_flight(a), 1)
        registry.attempt_ended(a, Outcome.OK, started=h.clock.seconds())
        self.assertEqual(registry.draining, [])
        self.assertNotIn(a, registry.breakers._circuits)

    def test_running_probe_of_removed_endpoint_is_cancelled(self) -> None:
        """If a reload removes an endpoint while its health probe hangs, then the probe is
        cancelled and no status is written for it, and no error is logged."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        h.agent.behaviour[b"b:1"] = "hang"
        h.pump(15)  # b's next probe is running, and hangs
        self.assertTrue(h.agent.hanging)
        events = _events()
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h.reload([_endpoint("a")])
        self.assertTrue(all(d.called for d in h.agent.hanging))
        h.pump(30)
        self.assertEqual(_messages(events, LogLevel.error), [])
        self.assertEqual([ep.name for ep in h.app.registry], ["a"])

    def test_running_discovery_of_removed_endpoint_is_cancelled(self) -> None:
        """If a reload removes an endpoint while its model list is being asked for, then the
        request is cancelled, no failure is logged for it, and no model list comes back."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        b = h.endpoint("b")
        h.agent.behaviour[b"b:1"] = "hang"
        running = h.app.discovery.refresh(b)
        self.assertFalse(running.called)
        events = _events()
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h.reload([_endpoint("a")])
        self.assertTrue(running.called)
        h.pump(10)
        self.assertEqual(_messages(events, LogLevel.warn), [])
        self.assertEqual(h.app.catalogue.models_of(b), [])

    def test_changed_priority_keeps_health(self) -> None:
        """If a reload changes only an endpoint's priority, then the new endpoint is routable
        at once (its health and model list are kept), with the new priority."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        old = h.endpoint("a")
        h.reload([_endpoint("a", priority=5), _endpoint("b")])
        new = h.endpoint("a")
        self.assertIsNot(new, old)
        self.assertEqual(new.priority, 5)
        self.assertEqual(h.app.registry.state(new).status, EndpointStatus.HEALTHY)
        self.assertIn(new, h.app.registry.routable())
        self.assertIn(MODEL, {m.name for m in h.app.catalogue.models_of(new)})

    def test_changed_address_starts_unknown(self) -> None:
        """If a reload moves an endpoint to another address, then what was known about the old
        address is not trusted: it is unknown until its first probe there passes."""
        h = ReloadHarness(self, [_endpoint("a"), _endpoint("b")])
        h.agent.behaviour[b"c:1"] = "refuse"
        h.reload([_endpoint("a", url="http://c:1"), _endpoint("b")])
        self.assertEqual(h.status("a"), EndpointStatus.UNKNOWN)  # not the old health
        self.assertNotIn(h.endpoint("a"), h.app.registry.routable())
        del h.agent.behaviour[b"c:1"]
        h.pump(12)
        self.assertEqual(h.status("a"), EndpointStatus.HEALTHY)
        self.assertTrue(any(r.path == "/" for r in h.fakes["c"].requests))

    def test_bad_config_keeps_the_running_one(self) -> None:
        """If the edited file is invalid, then the reload is refused with the key path in the
        log, the endpoints and settings stay, and the generation does not move."""
        h = ReloadHarness(self, [_endpoint("a")])
        events = _events()
        self.addCleanup(globalLogPublisher.removeObserver, events)
        running = h.reloader.config
        ok = h.reload([_endpoint("a"), _endpoint("b", check_interval="soon")])
        self.assertFalse(ok)
        self.assertIs(h.reloader.config, running)
        self.assertIs(h.app.config, running)
        self.assertEqual([ep.name for ep in h.app.registry], ["a"])
        self.assertEqual(h.reloader.generation.number, 1)
        errors = _messages(events, LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("discovery.static.endpoints[1].check_interval", errors[0])
        self.assertIn("keeping generation 1", errors[0])
        h.path.write_text("discovery: [unclosed")
        self.assertFalse(h.reloader.reload())
        self.assertIn("invalid YAML", _messages(events, LogLevel.error)[-1])

    def test_generation_counts_changes_and_status_shows_it(self) -> None:
        """If the same file is reloaded, then the generation stays; if it changed, then it
        moves by one, and ``/internal/status`` shows it with a new ETag."""
        h = ReloadHarness(self, [_endpoint("a")])
        first = h.get("/internal/status")
        config = json.loads(first.body)["config"]
        self.assertEqual(config["generation"], 1)
        self.assertEqual(config["file"], str(h.path))
        self.assertTrue(h.reloader.reload())
        self.assertEqual(h.reloader.generation.number, 1)
        etag = first.header(b"etag").decode()
        self.assertEqual(h.get("/internal/status", {"If-None-Match": etag}).status, 304)
        h.clock.advance(10)
        h.reload([_endpoint("a")], proxy={"load_balancer": "priority"})
        self.assertEqual(h.reloader.generation.number, 2)
        second = h.get("/internal/status", {"If-None-Match": etag})
        self.assertEqual(second.status, 200)
        payload = json.loads(second.body)
        self.assertEqual(payload["config"]["generation"], 2)
        self.assertEqual(payload["proxy"]["balancer"], "priority")
        self.assertNotEqual(payload["config"]["loaded_at"], config["loaded_at"])

    def test_a_failing_component_does_not_stop_the_others(self) -> None:
        """If one component's reconfigure raises, then it is logged, every other component
        still applies the new config, and the reload completes (a new generation)."""

        @implementer(IReconfigurable)
        class Broken:
            reconfigures = ("proxy.profile",)

            def reconfigure(self, config: OllaConfig) -> None:
                raise RuntimeError("broken component")

        h = ReloadHarness(self, [_endpoint("a")])
        h.app.reconfigurables = (Broken(), *h.app.reconfigurables)
        reloader = Reloader(h.app, load_all, clock=h.clock, profiles=builtin_profiles())
        h.write(_document([_endpoint("a")], proxy={"load_balancer": "priority"}))
        self.assertTrue(reloader.reload())
        self.assertIsInstance(h.app.router.balancer, PriorityBalancer)
        self.assertEqual(reloader.generation.number, 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_settings_take_effect(self) -> None:
        """If a reload changes the balancer, routing, aliases, proxy, limits and logging, then
        the running router, catalogue, proxy deps, site and log observer use the new values."""
        h = ReloadHarness(self, [_endpoint("a")])
        self.assertNotIsInstance(h.app.router.balancer, PriorityBalancer)
        h.reload(
            [_endpoint("a")],
            proxy={"load_balancer": "priority", "retry": {"max_attempts": 2}},
            server={"request_limits": {"max_body_size": "1KB"}, "read_header_timeout": "3s"},
            model_aliases={"fast": ["llama3.2:latest"]},
            model_registry={"routing_strategy": {"type": "optimistic"}},
            logging={"level": "warn", "format": "text"},
        )
        self.assertIsInstance(h.app.router.balancer, PriorityBalancer)
        self.assertEqual(h.app.router.strategy.type, "optimistic")
        self.assertEqual(h.app.catalogue.alias_targets("fast"), ("llama3.2:latest",))
        self.assertEqual(h.app.deps.config.retry.max_attempts, 2)
        self.assertEqual(h.app.site.max_body_size, 1024)
        self.assertEqual(h.app.site.header_timeout, 3.0)
        before = h.out.getvalue()
        log = Logger(namespace="olla.test", observer=h.observer)
        log.info("quiet now")
        log.warn("still {what}", what="heard")
        written = h.out.getvalue()[len(before) :]
        self.assertNotIn("quiet now", written)
        self.assertIn("WARN", written)  # text format
        self.assertIn("still heard", written)
        body = json.dumps({"model": "x", "messages": []}).encode() * 100
        client = ClientConnection(h.app.site, http_request("POST", "/olla/ollama/api/chat", body))
        h.pump(2)
        response = client.response()
        assert response is not None
        self.assertEqual(response.status, 413)
        h.reload([_endpoint("a")], proxy={"load_balancer": "least-connections"})
        self.assertIsInstance(h.app.router.balancer, LeastConnectionsBalancer)

    def test_timeouts_and_catalogue_follow(self) -> None:
        """If a reload changes the response bounds, the unifier or the discovery timings, then
        the next exchanges and discoveries use them."""
        h = ReloadHarness(self, [_endpoint("a")])
        h.reload(
            [_endpoint("a")],
            proxy={"response_timeout": "3s", "profile": "streaming"},
            server={"write_timeout": "2s"},
            model_registry={"enable_unifier": False, "unification": {"cleanup_interval": "1m"}},
            discovery={"refresh_interval": "7s"},
        )
        self.assertEqual(h.app.timeouts.proxy.response_timeout, 3.0)
        self.assertEqual(h.app.timeouts.write_timeout, 2.0)
        self.assertEqual(h.app.timeouts.gather(b"application/json"), 0)
        self.assertFalse(h.app.catalogue.unify)
        self.assertEqual(
            (h.app.discovery.cleanup_interval, h.app.discovery.loaded_interval), (60.0, 7.0)
        )

    def test_protection_follows(self) -> None:
        """If a reload adds a client key, tightens the per-IP limit and gates /internal/*, then
        the next requests meet the new guards: no key is a 401, the third request in a minute a
        429; removing them again opens everything (the limiter keeps running as one service)."""
        h = ReloadHarness(self, [_endpoint("a")])
        limiter = h.app.limiter

        def status(path: str, headers: dict[str, str] | None = None) -> int:
            client = ClientConnection(h.app.site, http_request("GET", path, headers=headers))
            h.pump(2)
            response = client.response()
            assert response is not None
            return response.status

        self.assertEqual(status("/olla/ollama/api/tags"), 200)
        h.reload(
            [_endpoint("a")],
            server={
                "auth": {"api_keys": [{"key": "sekrit-key-0123", "name": "team"}]},
                "rate_limits": {"per_ip_requests_per_minute": 2, "burst_size": 2},
            },
        )
        self.assertIs(h.app.limiter, limiter)
        self.assertEqual(status("/olla/ollama/api/tags"), 401)
        key = {"Authorization": "Bearer sekrit-key-0123"}
        self.assertEqual(status("/olla/ollama/api/tags", key), 200)
        self.assertEqual(status("/olla/ollama/api/tags", key), 429)
        h.reload([_endpoint("a")], server={"rate_limits": {"per_ip_requests_per_minute": 0}})
        for _ in range(5):
            self.assertEqual(status("/olla/ollama/api/tags"), 200)

    def test_model_management_follows(self) -> None:
        """If a reload changes model_management.targets or the access policy, then the next
        management call uses them; turning it on or off needs a restart."""
        endpoints = [_endpoint("a"), _endpoint("b")]
        on = {"enabled": True, "targets": ["a"]}
        h = ReloadHarness(self, endpoints, model_management=on)
        manager = h.app.management
        assert manager is not None
        events = _events()
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h.reload(
            endpoints,
            model_management={"enabled": True, "targets": ["b"]},
            dashboard={"access_policy": {"allowed_cidrs": ["10.0.0.0/8"]}},
        )
        self.assertEqual(manager.targets, ("b",))
        self.assertIsNotNone(manager.policy.refusal("127.0.0.1", None))
        self.assertFalse([m for m in _messages(events, LogLevel.warn) if "restart" in m])
        h.reload(endpoints, model_management={"enabled": False})
        warnings = [m for m in _messages(events, LogLevel.warn) if "restart" in m]
        self.assertIn("model_management.enabled", warnings[-1])

    def test_metrics_info_follows(self) -> None:
        """If a reload changes the balancer, then olla_info on /internal/metrics names the new
        one, and says which worker (1 of 1) the figures are from."""
        h = ReloadHarness(self, [_endpoint("a")])
        h.reload([_endpoint("a")], proxy={"load_balancer": "priority"})
        client = ClientConnection(h.app.site, http_request("GET", "/internal/metrics"))
        h.pump(2)
        response = client.response()
        assert response is not None
        info = [
            line for line in response.body.decode().splitlines() if line.startswith("olla_info{")
        ]
        self.assertEqual(len(info), 1, info)
        for label in ('balancer="priority"', 'worker="1"', 'workers="1"'):
            self.assertIn(label, info[0])

    def test_restart_keys_are_logged_every_reload(self) -> None:
        """If the file changes the listen port, then the reload says it needs a restart
        (again on the next reload, since the daemon still listens on the old one), and the
        rest of the file is applied."""
        h = ReloadHarness(self, [_endpoint("a")])
        events = _events()
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h.reload([_endpoint("a"), _endpoint("b")], server={"port": 40115})
        h.reload(
            [_endpoint("a"), _endpoint("b")],
            server={"port": 40115},
            proxy={"load_balancer": "priority"},
        )
        warnings = [m for m in _messages(events, LogLevel.warn) if "restart" in m]
        self.assertEqual(len(warnings), 2)
        self.assertIn("server.port", warnings[0])
        self.assertEqual([ep.name for ep in h.app.registry], ["a", "b"])
        self.assertEqual(h.reloader.generation.number, 3)

    def test_discovery_settings_follow(self) -> None:
        """If a reload changes the discovery interval, then the next discovery round runs
        on the new interval."""
        h = ReloadHarness(self, [_endpoint("a")])
        tags = lambda: len([r for r in h.fakes["a"].requests if r.path == "/api/tags"])  # noqa: E731
        before = tags()
        h.reload([_endpoint("a")], discovery={"model_discovery": {"interval": "10s"}})
        h.clock.advance(9.5)
        h.agent.flush()
        self.assertEqual(tags(), before)
        h.pump(6)
        self.assertEqual(tags(), before + 1)


class HangupTests(SynchronousTestCase):
    def test_sighup_reopens_then_reloads(self) -> None:
        """If SIGHUP arrives, then the log is reopened first and the config reloaded after."""
        calls: list[str] = []

        class Sink(StreamSink):
            def reopen(self) -> bool:
                calls.append("reopen")
                return True

        reopener = LogReopener(Sink(io.StringIO()))
        hangup = HangupRelay(
            Clock(),  # type: ignore[arg-type]
            [reopener.reopen, lambda: calls.append("reload")],
            lambda s, h: None,
        )
        hangup.fire()
        self.assertEqual(calls, ["reopen", "reload"])


class WatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = Path(self.mktemp())
        self.path.write_text("one")
        self.reloads: list[str] = []
        self.watcher = ConfigWatcher(
            str(self.path), lambda: self.reloads.append(self.path.read_text()), self.clock, 1.0
        )
        self.watcher.startService()

    def _write(self, text: str) -> None:
        self.path.write_text(text)
        stat = os.stat(self.path)
        # a distinct mtime, as a later write would have
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    def _polls(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(1)

    def test_change_is_applied_once_settled(self) -> None:
        """If the file changes, then it is reloaded once, on the poll after the change was
        seen (it must stay the same for one interval), and not again while it stays so."""
        self._write("two")
        self.clock.advance(1)
        self.assertEqual(self.reloads, [])
        self.clock.advance(1)
        self.assertEqual(self.reloads, ["two"])
        self._polls(5)
        self.assertEqual(self.reloads, ["two"])

    def test_touch_without_change_does_not_reload(self) -> None:
        """If only the file's mtime moves, then the same content is not reloaded."""
        self._write("one")
        self._polls(3)
        self.assertEqual(self.reloads, [])

    def test_write_in_progress_waits(self) -> None:
        """If the file keeps changing from one poll to the next, then nothing is reloaded until
        it settles, and then only its final content."""
        self._write("tw")
        self.clock.advance(1)
        self._write("two, longer")
        self.clock.advance(1)
        self.assertEqual(self.reloads, [])
        self.clock.advance(1)
        self.assertEqual(self.reloads, ["two, longer"])

    def test_missing_file_is_survived(self) -> None:
        """If the file disappears for a while (a save by rename), then the watcher keeps
        polling and reloads what appears."""
        self.path.unlink()
        self._polls(2)
        self._write("back")
        self._polls(2)
        self.assertEqual(self.reloads, ["back"])

    def test_stop_leaves_nothing_scheduled(self) -> None:
        """If the watcher stops, then no poll remains scheduled on the clock."""
        self.watcher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TwistdTests(SynchronousTestCase):
    """``twistd olla``: SIGHUP reloads, ``--watch-config`` watches the file."""

    def _options(self, *args: str) -> tap.Options:
        path = Path(self.mktemp())
        path.write_text(yaml.safe_dump(_document([_endpoint("a")])))
        options = tap.Options()
        options.parent = {"nodaemon": True}  # type: ignore[assignment]  # twistd's options
        options.parseOptions(["--config", str(path), *args])
        return options

    def test_watch_options(self) -> None:
        """If ``--watch-config`` is given, then the file is watched at ``--watch-interval``
        (1 s by default); a watch interval that is not positive is a usage error."""
        self.assertFalse(self._options()["watch-config"])
        options = self._options("--watch-config", "--watch-interval", "0.5")
        self.assertTrue(options["watch-config"])
        self.assertEqual(options["watch-interval"], 0.5)
        self.assertEqual(self._options("--watch-config")["watch-interval"], 1.0)
        with self.assertRaises(usage.UsageError):
            self._options("--watch-interval", "0")

    def test_daemon_wiring(self) -> None:
        """If the daemon is built with a watch interval, then a ConfigWatcher on the config
        file is among its services, and SIGHUP (after reopening the log) reloads the file."""
        options = self._options()
        reactor = MemoryReactorClock()
        service = tap.build_service(
            options.config, reactor, options.profiles, StreamSink(io.StringIO()), watch_config=2
        )
        (watcher,) = [child for child in service if isinstance(child, ConfigWatcher)]
        self.assertEqual((watcher.path, watcher.interval), (options.config.source, 2))
        (hangup,) = [child for child in service if isinstance(child, HangupRelay)]
        assert service.reloader is not None
        Path(str(options.config.source)).write_text(
            yaml.safe_dump(_document([_endpoint("a"), _endpoint("b")]))
        )
        hangup.fire()
        self.assertEqual(service.reloader.generation.number, 2)
        without = tap.build_service(
            options.config, MemoryReactorClock(), options.profiles, StreamSink(io.StringIO())
        )
        self.assertFalse([child for child in without if isinstance(child, ConfigWatcher)])
