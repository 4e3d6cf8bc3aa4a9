"""What the request path publishes: one record per upstream attempt and one per request, to
every listener ``build_app`` registered (the harness adds one of its own), whatever the route
and however the request ended; and the listeners that turn them into state."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.fleet.endpoints import Outcome
from olla.fleet.load import MemoryLoadStore
from olla.fleet.sticky import MemorySessionStore
from olla.fleet.values import SessionPin
from olla.guard.ratelimit import MemoryRateStore
from olla.interfaces import (
    ILoadStore,
    IOutcomeListener,
    IRateStore,
    IReconfigurable,
    ISessionStore,
)
from olla.telemetry.outcomes import Outcomes
from olla.telemetry.records import RequestRecord
from tests.proxyharness import HANG, REFUSE, Harness, http_request
from tests.test_anthropic import MESSAGE, ScriptedBackend
from tests.test_proxy import CHAT, Backend

TRANSLATED = b'{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1}}'


def request_lines(events: EventLoggingObserver) -> list[dict[str, Any]]:
    return [e for e in events if e.get("request_line")]


class RecordsPerRouteTests(SynchronousTestCase):
    """An extra listener registered in ``build_app`` hears one record per attempt and one per
    request, on every route."""

    def test_proxy_request_with_a_failover(self) -> None:
        """If a proxied request is refused by a and served by b, then the listener hears two
        attempt starts (the second taking over from the first), two attempt records (a's
        unreachable with its failover, b's ok) and one request record naming both."""
        h = Harness({"a:1": REFUSE, "b:1": Backend(Clock(), name="b")})
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        heard = h.outcomes
        self.assertEqual([s.endpoint.name for s in heard.started], ["a", "b"])
        self.assertIsNone(heard.started[0].after)
        self.assertIs(heard.started[1].after, heard.attempts[0])
        first, second = heard.attempts
        self.assertEqual((first.start.endpoint.name, first.outcome), ("a", Outcome.FAILED))
        self.assertEqual((first.failover, first.unreachable), ("unreachable", True))
        self.assertEqual(first.cause, "connection refused")
        self.assertEqual((second.start.endpoint.name, second.outcome), ("b", Outcome.OK))
        self.assertEqual(second.status, 200)
        (request,) = heard.requests
        self.assertEqual((request.endpoint, request.outcome, request.status), ("b", "ok", 200))
        self.assertEqual(request.attempts, 2)
        self.assertEqual(request.failovers, ("a:connection refused",))
        self.assertEqual(request.request_id, response.header(b"x-olla-request-id").decode())

    def _anthropic(self, kind: str) -> tuple[Harness, ScriptedBackend]:
        clock = Clock()
        backend = ScriptedBackend(clock)
        return Harness({"a:1": backend}, clock=clock, types={"a:1": kind}), backend

    def test_anthropic_passthrough(self) -> None:
        """If an Anthropic request passes through, then one attempt and one request record,
        the request's marked passthrough."""
        h, backend = self._anthropic("vllm")
        backend.pieces = [(0.0, b'{"type":"message","content":[]}')]
        raw = json.dumps(MESSAGE).encode()
        h.send(http_request("POST", "/olla/anthropic/v1/messages", raw))
        self.assertEqual(len(h.outcomes.started), 1)
        (attempt,) = h.outcomes.attempts
        self.assertEqual((attempt.outcome, attempt.status), (Outcome.OK, 200))
        (request,) = h.outcomes.requests
        self.assertEqual(
            (request.route, request.mode, request.outcome), ("anthropic", "passthrough", "ok")
        )

    def test_anthropic_translation(self) -> None:
        """If an Anthropic request is translated, then one attempt and one request record,
        the request's marked translation."""
        h, backend = self._anthropic("openai-compatible")
        backend.pieces = [(0.0, TRANSLATED)]
        raw = json.dumps(MESSAGE).encode()
        response = h.send(http_request("POST", "/olla/anthropic/v1/messages", raw)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(len(h.outcomes.started), 1)
        (attempt,) = h.outcomes.attempts
        self.assertEqual(attempt.outcome, Outcome.OK)
        (request,) = h.outcomes.requests
        self.assertEqual(
            (request.route, request.mode, request.outcome), ("anthropic", "translation", "ok")
        )


class AnthropicFailoverTests(SynchronousTestCase):
    def test_dead_native_host_hands_over_to_a_translating_one(self) -> None:
        """If the only host that speaks Messages natively refuses the connection, then the
        request is translated on a host that does not: the plan keeps every host."""
        clock = Clock()
        other = ScriptedBackend(clock)
        other.pieces = [(0.0, TRANSLATED)]
        h = Harness(
            {"native:1": REFUSE, "other:1": other},
            clock=clock,
            types={"native:1": "vllm", "other:1": "openai-compatible"},
        )
        raw = json.dumps(MESSAGE).encode()
        response = h.send(http_request("POST", "/olla/anthropic/v1/messages", raw)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-mode"), b"translation")
        self.assertEqual(response.header(b"x-olla-endpoint"), b"other")
        self.assertEqual(json.loads(response.body)["type"], "message")
        self.assertEqual([a.start.endpoint.name for a in h.outcomes.attempts], ["native", "other"])
        self.assertEqual(other.seen[0][0], b"/v1/chat/completions")
        self.assertEqual(h.translator_stats.translation, 1)
        self.assertEqual(h.translator_stats.succeeded, 1)

    def test_natives_go_first(self) -> None:
        """If a native host and a translating one both serve the model, then the native one
        is tried first whatever routing's balance (passthrough is preferred)."""
        clock = Clock()
        native, other = ScriptedBackend(clock), ScriptedBackend(clock)
        native.pieces = [(0.0, b'{"type":"message","content":[]}')]
        h = Harness(
            {"other:1": other, "native:1": native},
            clock=clock,
            types={"native:1": "vllm", "other:1": "openai-compatible"},
        )
        raw = json.dumps(MESSAGE).encode()
        for _ in range(3):
            response = h.send(http_request("POST", "/olla/anthropic/v1/messages", raw)).response()
            assert response is not None
            self.assertEqual(response.header(b"x-olla-endpoint"), b"native")
        self.assertEqual(other.seen, [])


class EndingsTests(SynchronousTestCase):
    """Every way a request ends leaves one record and one log line."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def one(self, h: Harness) -> RequestRecord:
        (record,) = h.outcomes.requests
        (line,) = request_lines(self.events)
        self.assertEqual((line["status"], line["outcome"]), (record.status, record.outcome))
        self.assertEqual(line["request_id"], record.request_id)
        return record

    def test_catalogue_listing(self) -> None:
        """If /api/tags is answered from the catalogue, then its record is ok with no
        endpoint and no attempt."""
        h = Harness({"a:1": Backend(Clock(), name="a")})
        h.send(http_request("GET", "/olla/ollama/api/tags"))
        record = self.one(h)
        self.assertEqual((record.status, record.outcome, record.attempts), (200, "ok", 0))
        self.assertEqual((record.endpoint, record.route), (None, "ollama"))
        self.assertGreater(record.bytes, 0)

    def test_model_management_is_501(self) -> None:
        """If a model management call is refused (501), then its record says rejected and
        why."""
        h = Harness({"a:1": Backend(Clock(), name="a")})
        h.send(http_request("POST", "/olla/ollama/api/pull", b'{"model": "x"}'))
        record = self.one(h)
        self.assertEqual((record.status, record.outcome), (501, "rejected"))
        self.assertIn("not supported", record.error or "")

    def test_unknown_route_is_404(self) -> None:
        """If a path under /olla/ names no route, then its record is a rejected 404."""
        h = Harness({"a:1": Backend(Clock(), name="a")})
        h.send(http_request("GET", "/olla/nowhere/api/tags"))
        record = self.one(h)
        self.assertEqual((record.status, record.outcome, record.route), (404, "rejected", "none"))

    def test_internal_routes_leave_none(self) -> None:
        """If the internal API is asked, then no request record (olla's own face, polled)."""
        h = Harness({"a:1": Backend(Clock(), name="a")})
        h.send(http_request("GET", "/internal/health"))
        self.assertEqual(h.outcomes.requests, [])

    def test_upstream_error_status_is_not_ok(self) -> None:
        """If the backend answers 400 and olla relays it in full, then the attempt is ok (the
        backend answered) but the request's outcome is error."""
        h = Harness({"a:1": Backend(Clock(), status=400, name="a")})
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        (attempt,) = h.outcomes.attempts
        self.assertEqual((attempt.outcome, attempt.status), (Outcome.OK, 400))
        record = self.one(h)
        self.assertEqual((record.status, record.outcome), (400, "error"))

    def test_client_leaves_while_backend_works(self) -> None:
        """If the client hangs up while the backend has not answered yet, then the attempt
        ends client_gone and the request leaves one record, 499 as nginx logs it."""
        h = Harness({"a:1": HANG})
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        self.assertEqual(h.outcomes.requests, [])
        client.disconnect()
        h.pump()
        (attempt,) = h.outcomes.attempts
        self.assertEqual(attempt.outcome, Outcome.CLIENT_GONE)
        record = self.one(h)
        self.assertEqual(
            (record.status, record.outcome, record.endpoint), (499, "client_gone", "a")
        )

    def test_client_leaves_mid_stream(self) -> None:
        """If the client hangs up in the middle of a streamed answer, then one record: 499,
        client_gone, with the bytes relayed so far."""
        backend = Backend(Clock(), name="a", chunks=5, delay=1.0)
        h = Harness({"a:1": backend}, clock=backend.clock)
        client = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        h.advance(1.5)
        client.disconnect()
        h.pump()
        record = self.one(h)
        self.assertEqual((record.status, record.outcome), (499, "client_gone"))
        self.assertGreater(record.bytes, 0)

    def test_guard_refusal(self) -> None:
        """If the guard refuses a request (a client key is missing), then one record: 401,
        rejected, why, no route below /olla/ reached."""
        from dataclasses import replace

        from olla.config import ClientAuthConfig, ClientKey

        def keyed(config: Any) -> Any:
            auth = ClientAuthConfig((ClientKey("sk-0123456789abcdef", "k"),))
            return replace(config, server=replace(config.server, auth=auth))

        h = Harness({"a:1": Backend(Clock(), name="a")}, adjust=keyed)
        h.send(http_request("POST", "/olla/ollama/api/chat", CHAT))
        record = self.one(h)
        self.assertEqual((record.status, record.outcome), (401, "rejected"))
        self.assertEqual(record.error, "missing or invalid API key")


class ListenerTests(SynchronousTestCase):
    def test_a_listener_that_raises_does_not_break_the_others(self) -> None:
        """If one listener raises, then it is logged and the next still hears the record."""
        outcomes = Outcomes()
        heard: list[RequestRecord] = []

        from olla.telemetry.outcomes import OutcomeListener

        class Raises(OutcomeListener):
            def request_finished(self, record: RequestRecord) -> None:
                raise RuntimeError("boom")

        class Keeps(OutcomeListener):
            def request_finished(self, record: RequestRecord) -> None:
                heard.append(record)

        outcomes.subscribe(Raises())
        outcomes.subscribe(Keeps())
        record = RequestRecord(None, None, "none", 200, "ok", 0, 0, 0.0)
        outcomes.request_finished(record)
        self.assertEqual(heard, [record])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_build_app_listeners_provide_the_interface(self) -> None:
        """If build_app subscribes its listeners, then each provides IOutcomeListener, and every
        reconfigurable component provides IReconfigurable."""
        h = Harness({"a:1": Backend(Clock(), name="a")})
        for listener in h.app.outcomes.listeners:
            verifyObject(IOutcomeListener, listener)
        self.assertIs(h.app.outcomes.listeners[-1], h.outcomes)
        for component in h.app.reconfigurables:
            verifyObject(IReconfigurable, component)


class StoreInterfaceTests(SynchronousTestCase):
    """The in-memory stores provide their interfaces, and answer at once (already fired)."""

    def test_load_store(self) -> None:
        """If attempts start and end, then the load store counts them and learns the time."""
        from olla.config import EndpointConfig
        from olla.fleet.endpoints import endpoints_from_config

        (ep,) = endpoints_from_config([EndpointConfig(url="http://a:1", name="a", type="ollama")])
        store = MemoryLoadStore()
        verifyObject(ILoadStore, store)
        store.started(ep, 10.0)
        self.assertEqual(store.in_flight(ep), 1)
        self.assertEqual(store.expected_service_time(ep, 12.0), 2.0)
        store.ended(ep, 10.0, served=2.0)
        self.assertEqual(store.in_flight(ep), 0)
        self.assertAlmostEqual(store.service_time(ep), 0.4)
        store.busy(ep, 20.0)
        self.assertEqual(store.busy_until(ep), 20.0)
        # nothing configured, nothing reported: the profile's default (the registry passes
        # its own rule, which knows what the backend reported: tests/test_capacity.py)
        self.assertEqual(store.slots(ep), ep.default_slots)
        self.assertEqual(MemoryLoadStore(slots=lambda endpoint: 2).slots(ep), 2)
        store.forget(ep)
        self.assertEqual((store.busy_until(ep), store.service_time(ep)), (0.0, 0.0))

    def test_session_store(self) -> None:
        """If a session is pinned, looked up and its endpoint unpinned, then the store says so
        through already-fired Deferreds."""
        from olla.config import StickySessionsConfig

        store = MemorySessionStore(StickySessionsConfig(enabled=True), Clock())
        verifyObject(ISessionStore, store)
        self.assertIsNone(self.successResultOf(store.lookup("k")))
        store.pin("k", "a")
        self.assertEqual(self.successResultOf(store.lookup("k")), SessionPin("a"))
        self.assertEqual(store.unpin("a"), 1)
        self.assertEqual(self.successResultOf(store.lookup("k")), SessionPin(None))

    def test_rate_store_all_or_none(self) -> None:
        """If one of two buckets has no token, then neither gives one."""
        store = MemoryRateStore(Clock(), 0.0)
        verifyObject(IRateStore, store)
        taken, levels = self.successResultOf(store.take([("ip:a", 1.0, 1.0)], 0.0))
        self.assertEqual((taken, levels), (True, [0.0]))
        taken, levels = self.successResultOf(
            store.take([("ip:b", 1.0, 1.0), ("ip:a", 1.0, 1.0)], 0.0)
        )
        self.assertEqual((taken, levels), (False, [1.0, 0.0]))
        taken, levels = self.successResultOf(store.take([("ip:b", 1.0, 1.0)], 0.0))
        self.assertEqual((taken, levels), (True, [0.0]))


class PassthroughPathTests(SynchronousTestCase):
    def test_each_native_host_on_its_own_messages_path(self) -> None:
        """If two hosts speak Messages on different paths (Docker Model Runner's
        /anthropic/v1/messages, vLLM's /v1/messages), then each is asked on its own path: the
        request that fails over from one to the other is passed through on both."""
        clock = Clock()
        vllm = ScriptedBackend(clock)
        vllm.status = 503  # busy: hands over
        runner = ScriptedBackend(clock)
        runner.pieces = [(0.0, b'{"type":"message","content":[]}')]
        h = Harness(
            {"vllm:1": vllm, "runner:1": runner},
            clock=clock,
            types={"vllm:1": "vllm", "runner:1": "docker-model-runner"},
        )
        raw = json.dumps(MESSAGE).encode()
        response = h.send(http_request("POST", "/olla/anthropic/v1/messages", raw)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-olla-mode"), b"passthrough")
        self.assertEqual(
            sorted(uri for _, uri, _ in h.agent.sent),
            [b"http://runner:1/anthropic/v1/messages", b"http://vllm:1/v1/messages"],
        )


class RequestLogTests(SynchronousTestCase):
    def test_lines_follow_the_config(self) -> None:
        """If the level is above info or server.request_logging is off, then no request line
        is built (the observer would drop it); a reload that turns them on brings them back."""
        from dataclasses import replace

        from olla.config import LoggingConfig, OllaConfig
        from olla.telemetry.requestlog import RequestLog

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        defaults = OllaConfig()
        quiet = replace(defaults, logging=replace(LoggingConfig(), level="warn"))
        off = replace(defaults, server=replace(defaults.server, request_logging=False))
        record = RequestRecord(None, None, "none", 200, "ok", 0, 0, 0.0, request_id="r-1")
        log = RequestLog(quiet)
        log.request_finished(record)
        self.assertEqual(request_lines(events), [])
        log.reconfigure(defaults)
        log.request_finished(record)
        (line,) = request_lines(events)
        self.assertEqual((line["request_id"], line["status"], line["outcome"]), ("r-1", 200, "ok"))
        self.assertEqual(line["log_namespace"], "olla.request")
        self.assertIs(line["log_level"], LogLevel.info)
        log.reconfigure(off)
        log.request_finished(record)
        self.assertEqual(len(request_lines(events)), 1)
