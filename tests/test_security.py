"""Security counters: each refusal counted once, in bounded memory, shown on the status page."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from olla.telemetry.security import SecurityStats
from tests.proxyharness import Harness, http_request
from tests.test_proxy import Backend


class SecurityStatsTests(SynchronousTestCase):
    def test_counts_each_kind(self) -> None:
        """If each kind of refusal happens, then each counter moves and violations add up."""
        stats = SecurityStats()
        stats.size_limit()
        stats.header_limit()
        stats.header_limit()
        stats.rate_limited("10.0.0.1")
        stats.rate_limited("10.0.0.1")
        stats.auth_failed()
        snap = stats.snapshot()
        self.assertEqual(
            (snap.size_limits, snap.header_limits, snap.rate_limits, snap.auth_failures),
            (1, 2, 2, 1),
        )
        self.assertEqual(snap.violations, 6)
        self.assertEqual(snap.blocked_ips, 1)
        self.assertEqual(snap.status, "normal")

    def test_elevated_past_many_blocked_addresses(self) -> None:
        """If more than ten addresses were rate limited, then the status is elevated."""
        stats = SecurityStats()
        for i in range(11):
            stats.rate_limited(f"10.0.0.{i}")
        self.assertEqual(stats.snapshot().status, "elevated")

    def test_blocked_addresses_are_bounded(self) -> None:
        """If 100k distinct addresses are limited, then only the newest max_tracked_ips are
        kept, while every refusal is still counted."""
        stats = SecurityStats(max_tracked_ips=1000)
        for i in range(100_000):
            stats.rate_limited(f"ip-{i}")
        snap = stats.snapshot()
        self.assertEqual(snap.blocked_ips, 1000)
        self.assertEqual(snap.rate_limits, 100_000)


class StatusCountsRefusalsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness({"a:1": Backend(Clock(), name="a")}, max_body_size=1000)

    def security(self) -> dict[str, object]:
        response = self.h.send(http_request("GET", "/internal/status")).response()
        assert response is not None
        body = json.loads(response.body)
        self.assertEqual(
            body["system"]["security_violations"], sum(body["security"]["violations"].values())
        )
        security: dict[str, object] = body["security"]
        return security

    def test_size_and_header_refusals_are_counted(self) -> None:
        """If a body is over the limit and a header line is too long, then /internal/status
        counts one size and one header violation; a served request counts nothing."""
        self.h.send(http_request("GET", "/internal/health"))
        self.assertEqual(
            self.security()["violations"],
            {"rate_limits": 0, "size_limits": 0, "header_limits": 0, "auth_failures": 0},
        )
        self.h.send(http_request("POST", "/olla/ollama/api/chat", b"x" * 2000))
        self.h.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"y" * 20_000 + b"\r\n\r\n")
        self.assertEqual(
            self.security()["violations"],
            {"rate_limits": 0, "size_limits": 1, "header_limits": 1, "auth_failures": 0},
        )
