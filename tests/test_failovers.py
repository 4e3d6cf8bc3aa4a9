"""The recent-failovers ring, the exchange feeding it, and ``/internal/stats/failovers``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.telemetry.failovers import DEFAULT_SIZE, Failover, FailoverLog
from tests.proxyharness import REFUSE, Harness, http_request
from tests.test_proxy import Backend

MODEL = "llama3.2:latest"
CHAT = json.dumps({"model": MODEL, "messages": []}).encode()
#: the harness's clock starts here, so event times read as a real date
START = 1_790_000_000.0


# ---------------------------------------------------------------------------------- the ring


def _record(log: FailoverLog, n: int, at: float = 0.0) -> None:
    log.record(at, f"req-{n}", MODEL, "a", "b", "503")


def test_recent_is_newest_first() -> None:
    """If three failovers are recorded, then ``recent`` gives them back newest first."""
    log = FailoverLog()
    for n in range(3):
        _record(log, n, at=float(n))
    assert [e.request_id for e in log.recent()] == ["req-2", "req-1", "req-0"]
    assert log.total == 3


def test_ring_keeps_only_the_last_size_events() -> None:
    """If more failovers happen than the ring holds, then only the newest ``size`` are kept,
    and ``total`` still counts every one."""
    log = FailoverLog(size=4)
    for n in range(10):
        _record(log, n)
    assert [e.request_id for e in log.recent()] == ["req-9", "req-8", "req-7", "req-6"]
    assert log.total == 10
    assert log.size == 4


def test_default_size() -> None:
    """If no size is given, then the ring keeps the last 50 failovers."""
    log = FailoverLog()
    for n in range(DEFAULT_SIZE + 7):
        _record(log, n)
    assert log.size == DEFAULT_SIZE == 50
    assert len(log.recent()) == DEFAULT_SIZE
    assert log.recent()[-1].request_id == "req-7"


def test_size_below_one_is_refused() -> None:
    """If a ring of no events is asked for, then construction fails: it could record nothing."""
    with pytest.raises(ValueError, match="at least one"):
        FailoverLog(size=0)


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        ("503", "busy"),
        ("429", "busy"),
        ("connection refused", "unreachable"),
        ("timed out waiting for response headers", "unreachable"),
    ],
)
def test_kind_follows_the_cause(cause: str, kind: str) -> None:
    """If the cause is a status the backend answered, then the kind is busy; a connection
    failure's description is unreachable."""
    assert Failover(0.0, "r", MODEL, "a", "b", cause).kind == kind


# ---------------------------------------------------------------------------------- the exchange


def _harness(a: object, b: object) -> Harness:
    h = Harness(
        {"a:1": a, "b:1": b},  # type: ignore[dict-item]
        models={"a:1": [MODEL], "b:1": [MODEL]},
        clock=_clock(),
    )
    for endpoint in h.endpoints:
        h.catalogue.set_loaded(endpoint, [])
    h.catalogue.set_loaded(h.endpoints[0], [MODEL])  # a is warm: a goes first
    return h


def _clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


def _get(h: Harness, path: str) -> Any:
    response = h.send(http_request("GET", path)).response()
    assert response is not None and response.status == 200, response
    return json.loads(response.body)


class ExchangeFeedsTheRingTests(SynchronousTestCase):
    def test_busy_answer_is_recorded(self) -> None:
        """If the first candidate answers 503 and the second serves, then one failover is
        recorded: this request, its model, from a to b, cause 503 (busy), at the clock's time."""
        h = _harness(Backend(Clock(), status=503, name="a"), Backend(Clock(), name="b"))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        (event,) = h.app.failovers.recent()
        self.assertEqual(
            event,
            Failover(
                START,
                (response.header(b"x-olla-request-id") or b"").decode(),
                MODEL,
                "a",
                "b",
                "503",
            ),
        )
        self.assertEqual(event.kind, "busy")

    def test_connection_failure_is_recorded(self) -> None:
        """If the first candidate refuses the connection, then the failover to the second is
        recorded with the connection failure as its cause."""
        h = _harness(REFUSE, Backend(Clock(), name="b"))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        (event,) = h.app.failovers.recent()
        self.assertEqual((event.from_endpoint, event.to_endpoint), ("a", "b"))
        self.assertEqual(event.kind, "unreachable")
        self.assertEqual(event.cause, h.failures[0][1])

    def test_no_failover_no_event(self) -> None:
        """If the first candidate serves, then nothing is recorded."""
        h = _harness(Backend(Clock(), name="a"), Backend(Clock(), name="b"))
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(h.app.failovers.recent(), [])
        self.assertEqual(h.app.failovers.total, 0)

    def test_last_candidate_failing_is_not_a_failover(self) -> None:
        """If every candidate refuses, then one hand-over (a to b) is recorded and b's failure,
        which hands over to nobody, is not: the client gets the 502."""
        h = _harness(REFUSE, REFUSE)
        response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
        assert response is not None
        self.assertEqual(response.status, 502)
        self.assertEqual(
            [(e.from_endpoint, e.to_endpoint) for e in h.app.failovers.recent()], [("a", "b")]
        )


# ---------------------------------------------------------------------------------- the route


class FailoversRouteTests(SynchronousTestCase):
    def test_route_lists_the_recorded_failovers(self) -> None:
        """If two requests failed over, then ``/internal/stats/failovers`` lists both, newest
        first, with their time, request id, model, endpoints, kind and cause."""
        h = _harness(Backend(Clock(), status=503, name="a"), Backend(Clock(), name="b"))
        ids = []
        for _ in range(2):
            response = h.send(http_request("POST", "/olla/ollama/api/chat", CHAT)).response()
            assert response is not None and response.status == 200
            ids.append((response.header(b"x-olla-request-id") or b"").decode())
            # a's busy hold-off passes and b is cold again: the next request tries a first
            h.advance(5.0)
            h.catalogue.set_loaded(h.endpoints[1], [])
        payload = _get(h, "/internal/stats/failovers")
        self.assertEqual(payload["timestamp"], "2026-09-21T14:13:30Z")
        self.assertEqual(payload["total"], 2)
        self.assertEqual(payload["kept"], DEFAULT_SIZE)
        self.assertEqual(
            payload["failovers"],
            [
                {
                    "time": time,
                    "request_id": rid,
                    "model": MODEL,
                    "from": "a",
                    "to": "b",
                    "kind": "busy",
                    "cause": "503",
                }
                for time, rid in zip(
                    ["2026-09-21T14:13:25Z", "2026-09-21T14:13:20Z"], reversed(ids), strict=True
                )
            ],
        )

    def test_route_is_empty_before_any_failover(self) -> None:
        """If nothing failed over, then the route answers an empty list and a zero total."""
        h = _harness(Backend(Clock(), name="a"), Backend(Clock(), name="b"))
        payload = _get(h, "/internal/stats/failovers")
        self.assertEqual((payload["failovers"], payload["total"]), ([], 0))
