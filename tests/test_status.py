"""The read-only status API: /internal/status, /internal/status/endpoints, /internal/process."""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq import content
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from olla import __version__
from olla.config import AuthConfig, EndpointConfig, OllaConfig, ProxyConfig
from olla.fleet.endpoints import (
    Endpoint,
    EndpointRegistry,
    EndpointStatus,
    Outcome,
    endpoints_from_config,
)
from olla.web.internal import InternalApp
from olla.web.status import (
    ZERO_TIME,
    accepts_gzip,
    etag_matches,
    format_bytes,
    format_latency,
    format_percentage,
    format_uptime,
    process_payload,
    rfc3339,
    system_status,
    time_ago,
    time_until,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
WEAK_ETAG = re.compile(r'^W/"[0-9a-z]+"$')


def _configs(*specs: tuple[str, int]) -> list[EndpointConfig]:
    return [
        EndpointConfig(url=f"http://10.0.0.{i + 1}:11434", name=name, type="ollama", priority=p)
        for i, (name, p) in enumerate(specs)
    ]


class _Harness(SynchronousTestCase):
    """A registry on a Clock, the internal app over StubTreq, and request helpers."""

    def build(
        self,
        configs: list[EndpointConfig],
        *,
        config: OllaConfig | None = None,
        proc_self: Path | None = None,
        active: int = 0,
    ) -> list[Endpoint]:
        self.clock = Clock()
        self.clock.advance(T0)
        self.endpoints = endpoints_from_config(configs)
        self.registry = EndpointRegistry(self.endpoints, self.clock)
        self.internal = InternalApp(
            self.registry,
            clock=self.clock,
            config=config or OllaConfig(),
            active_connections=lambda: active,
            proc_self=proc_self,
        )
        resource = self.internal.app.resource()
        #: for plain JSON reads (treq negotiates and undoes gzip itself)
        self.treq = StubTreq(resource)
        #: for requests whose headers must go out exactly as written
        self.agent = RequestTraversalAgent(resource)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))
        return self.endpoints

    def fleet(self, *specs: tuple[str, int]) -> dict[str, Endpoint]:
        return {ep.name: ep for ep in self.build(_configs(*specs))}

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[IResponse, bytes]:
        """One request with exactly these headers, and the raw (undecoded) body."""
        raw = Headers({k: [v] for k, v in (headers or {}).items()})
        response = self.successResultOf(
            self.agent.request(method.encode(), b"http://olla.test" + path.encode(), raw)
        )
        body = self.successResultOf(content(response))
        return response, body

    def get_json(self, path: str) -> Any:
        response = self.successResultOf(self.treq.get("http://olla.test" + path))
        self.assertEqual(response.code, 200)
        return json.loads(self.successResultOf(self.treq.content(response)))

    def header(self, response: IResponse, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return None if values is None else ", ".join(values)

    def traffic(
        self, endpoint: Endpoint, ok: int, failed: int = 0, latency: float = 0.1, size: int = 0
    ) -> None:
        started = self.clock.seconds() - latency
        for _ in range(ok):
            self.registry.attempt_started(endpoint, started)
            self.registry.attempt_ended(endpoint, Outcome.OK, started=started, relayed=size)
        for _ in range(failed):
            self.registry.attempt_started(endpoint, started)
            self.registry.attempt_ended(endpoint, Outcome.FAILED, started=started)


# =========================================================================== pure formats


class FormatTests(SynchronousTestCase):
    def test_percentage(self) -> None:
        """If a rate is 0, 100 or in between, then it shows as "0%", "100%" or one decimal."""
        self.assertEqual(format_percentage(0), "0%")
        self.assertEqual(format_percentage(100.0), "100%")
        self.assertEqual(format_percentage(99.56), "99.6%")
        self.assertEqual(format_percentage(50), "50.0%")

    def test_latency(self) -> None:
        """If a latency is under or over a second, then it shows in ms or in tenths of seconds."""
        self.assertEqual(format_latency(0), "0ms")
        self.assertEqual(format_latency(7), "7ms")
        self.assertEqual(format_latency(120), "120ms")
        self.assertEqual(format_latency(1000), "1.0s")
        self.assertEqual(format_latency(1234), "1.2s")

    def test_bytes(self) -> None:
        """If a byte count crosses 1024, then it shows in binary units with two decimals."""
        self.assertEqual(format_bytes(0), "0 B")
        self.assertEqual(format_bytes(1023), "1023 B")
        self.assertEqual(format_bytes(1536), "1.50 KB")
        self.assertEqual(format_bytes(5 * 1024**2), "5.00 MB")
        self.assertEqual(format_bytes(int(1.2 * 1024**3)), "1.20 GB")
        self.assertEqual(format_bytes(3 * 1024**4), "3.00 TB")

    def test_time_ago(self) -> None:
        """If something happened some time back, then it reads "Ns/m/h/d ago", or "never"."""
        self.assertEqual(time_ago(None, 100.0), "never")
        self.assertEqual(time_ago(98.0, 100.0), "2s ago")
        self.assertEqual(time_ago(97.5, 100.0), "2s ago")
        self.assertEqual(time_ago(10.0, 100.0), "2m ago")
        self.assertEqual(time_ago(0.0, 7200.0), "2h ago")
        self.assertEqual(time_ago(0.0, 3 * 86400.0), "3d ago")
        self.assertEqual(time_ago(101.0, 100.0), "0s ago")

    def test_time_until(self) -> None:
        """If something is due later, now or never, then "in Ns", "now" or "unknown"."""
        self.assertEqual(time_until(None, 100.0), "unknown")
        self.assertEqual(time_until(90.0, 100.0), "now")
        self.assertEqual(time_until(100.0, 100.0), "now")
        self.assertEqual(time_until(103.5, 100.0), "in 3s")
        self.assertEqual(time_until(400.0, 100.0), "in 5m")

    def test_uptime(self) -> None:
        """If olla has run seconds, minutes, hours or days, then uptime reads accordingly."""
        self.assertEqual(format_uptime(42), "42s")
        self.assertEqual(format_uptime(17 * 60), "17m")
        self.assertEqual(format_uptime(3 * 3600 + 12 * 60 + 5), "3h 12m")
        self.assertEqual(format_uptime(2 * 86400 + 5 * 3600), "2d 5h")

    def test_rfc3339(self) -> None:
        """If a timestamp has a fraction, then RFC 3339 keeps it; else whole seconds, in UTC."""
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00Z")
        self.assertEqual(rfc3339(T0), "2023-11-14T22:13:20Z")
        self.assertEqual(rfc3339(T0 + 0.25), "2023-11-14T22:13:20.25Z")


class SystemStatusRuleTests(SynchronousTestCase):
    def test_no_endpoints(self) -> None:
        """If no endpoint is configured, then the system is critical."""
        self.assertEqual(system_status(0, 0, 0, 0), "critical")

    def test_without_traffic(self) -> None:
        """If there is no traffic, then only the share of healthy endpoints decides."""
        self.assertEqual(system_status(3, 3, 0, 0), "healthy")
        self.assertEqual(system_status(5, 4, 0, 0), "healthy")
        self.assertEqual(system_status(3, 2, 0, 0), "degraded")
        self.assertEqual(system_status(3, 1, 0, 0), "critical")

    def test_with_traffic(self) -> None:
        """If there is traffic, then a low success rate degrades or breaks a healthy fleet."""
        self.assertEqual(system_status(3, 3, 96, 4), "healthy")
        self.assertEqual(system_status(3, 3, 94, 6), "degraded")
        self.assertEqual(system_status(3, 3, 89, 11), "critical")
        self.assertEqual(system_status(3, 2, 100, 0), "degraded")
        self.assertEqual(system_status(3, 1, 100, 0), "critical")


class NegotiationTests(SynchronousTestCase):
    def test_accepts_gzip(self) -> None:
        """If Accept-Encoding lists gzip (or *) with q above 0, then gzip is acceptable."""
        cases = {
            None: False,
            "": False,
            "gzip": True,
            "GZip": True,
            "gzip, deflate, br": True,
            "gzip;q=0": False,
            "gzip; q=0.0": False,
            "gzip;q=0.5": True,
            "identity": False,
            "br": False,
            "*": True,
            "*;q=0": False,
            "br, gzip;q=0, *": False,
            "deflate, *;q=0.1": True,
            "gzip," + " " * 2000: False,
        }
        for header, expected in cases.items():
            self.assertEqual(accepts_gzip(header), expected, header)

    def test_etag_matches(self) -> None:
        """If If-None-Match names the tag (weakly), lists it, or is *, then it matches."""
        tag = 'W/"abc123"'
        cases = {
            None: False,
            "": False,
            'W/"abc123"': True,
            '"abc123"': True,
            "*": True,
            '"nope", W/"abc123"': True,
            '"nope",W/"other"': False,
            'W/"abc12"': False,
            'W/"abc123", ' + " " * 1100: False,
        }
        for header, expected in cases.items():
            self.assertEqual(etag_matches(header, tag), expected, header)


# =========================================================================== /internal/status


class StatusTests(_Harness):
    def test_endpoint_fields_with_traffic(self) -> None:
        """If an endpoint has traffic and checks, then every field has the documented format."""
        ep = self.fleet(("a", 100))["a"]
        self.registry.set_status(ep, EndpointStatus.HEALTHY)
        self.traffic(ep, ok=249, latency=0.120, size=4 * 1024**2)
        self.traffic(ep, ok=0, failed=1)
        self.traffic(ep, ok=1, latency=0.004)
        self.registry.attempt_started(ep, self.clock.seconds())  # one still in flight
        state = self.registry.state(ep)
        state.last_check = T0 - 2
        state.next_check = T0 + 3.5
        state.last_model_sync = T0 - 60
        state.model_count = 4
        entry = self.get_json("/internal/status")["endpoints"][0]
        self.assertEqual(
            entry,
            {
                "id": ep.id,
                "name": "a",
                "url": "http://10.0.0.1:11434",
                "status": "healthy",
                "priority": 100,
                "success_rate": "99.6%",
                "avg_latency": "120ms",
                "avg_latency_ms": 120,
                "min_latency_ms": 4,
                "max_latency_ms": 120,
                "traffic": "996.00 MB",
                "connections": 1,
                "requests": 251,
                "last_check": "2s ago",
                "health_check_at": "2023-11-14T22:13:18Z",
                "next_check": "in 3s",
                "next_check_at": "2023-11-14T22:13:23.5Z",
                "issues": "",
                "models": {"last_updated": "2023-11-14T22:12:20Z", "count": 4},
            },
        )

    def test_endpoint_fields_without_traffic(self) -> None:
        """If an endpoint was never checked nor used, then zeros, "never", "unknown", no _at."""
        self.fleet(("a", 100))
        entry = self.get_json("/internal/status")["endpoints"][0]
        self.assertEqual(entry["success_rate"], "0%")
        self.assertEqual(entry["avg_latency"], "0ms")
        self.assertNotIn("avg_latency_ms", entry)
        self.assertEqual((entry["min_latency_ms"], entry["max_latency_ms"]), (0, 0))
        self.assertEqual(entry["traffic"], "0 B")
        self.assertEqual(entry["last_check"], "never")
        self.assertNotIn("health_check_at", entry)
        self.assertEqual(entry["next_check"], "unknown")
        self.assertNotIn("next_check_at", entry)
        self.assertEqual(entry["models"], {"last_updated": ZERO_TIME, "count": 0})
        self.assertEqual(entry["status"], "unknown")

    def test_overdue_check_reads_now(self) -> None:
        """If the next check is due or overdue, then next_check reads "now"."""
        ep = self.fleet(("a", 100))["a"]
        self.registry.state(ep).next_check = T0 - 1
        self.assertEqual(self.get_json("/internal/status")["endpoints"][0]["next_check"], "now")

    def test_sorting(self) -> None:
        """If endpoints differ in priority and health, then priority desc, healthy, name, id."""
        eps = self.fleet(("d", 100), ("c", 100), ("b", 100), ("low", 50), ("top", 200))
        for name in ("d", "low", "top"):
            self.registry.set_status(eps[name], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["b"], EndpointStatus.OFFLINE)
        expected = ["top", "d", "b", "c", "low"]
        for path in ("/internal/status", "/internal/status/endpoints"):
            names = [e["name"] for e in self.get_json(path)["endpoints"]]
            self.assertEqual(names, expected, path)

    def test_sorting_same_name_by_id(self) -> None:
        """If two endpoints share priority, health and name, then the id breaks the tie."""
        self.build(
            [
                EndpointConfig(url="http://h:1/?a=1", name="twin", type="ollama"),
                EndpointConfig(url="http://h:1/?a=2", name="twin", type="ollama"),
            ]
        )
        ids = [e["id"] for e in self.get_json("/internal/status")["endpoints"]]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 2)

    def test_issues(self) -> None:
        """If an endpoint fails often, errs, is slow or is down, then issues lists each cause."""
        eps = self.fleet(("flaky", 100), ("slow", 100), ("down", 100), ("fine", 100))
        self.registry.set_status(eps["flaky"], EndpointStatus.HEALTHY)
        self.traffic(eps["flaky"], ok=2, failed=9)
        self.registry.set_status(eps["slow"], EndpointStatus.HEALTHY)
        self.traffic(eps["slow"], ok=3, latency=6.0)
        self.registry.set_status(eps["down"], EndpointStatus.OFFLINE)
        self.registry.state(eps["down"]).consecutive_failures = 4
        self.registry.set_status(eps["fine"], EndpointStatus.HEALTHY)
        self.traffic(eps["fine"], ok=20)
        issues = {e["name"]: e["issues"] for e in self.get_json("/internal/status")["endpoints"]}
        self.assertEqual(
            issues,
            {
                "flaky": "low success rate",
                "slow": "high latency",
                "down": "consecutive failures, unavailable",
                "fine": "",
            },
        )

    def test_low_rate_needs_more_than_ten_requests(self) -> None:
        """If an endpoint has failed but seen ten requests or fewer, then no low-rate issue."""
        ep = self.fleet(("a", 100))["a"]
        self.registry.set_status(ep, EndpointStatus.HEALTHY)
        self.traffic(ep, ok=1, failed=9)
        self.assertEqual(self.get_json("/internal/status")["endpoints"][0]["issues"], "")

    def test_sections(self) -> None:
        """If the config names an engine, profile and balancer, then proxy{} echoes them."""
        self.build(
            _configs(("a", 1)),
            config=OllaConfig(
                proxy=ProxyConfig(engine="sherpa", profile="streaming", load_balancer="priority")
            ),
        )
        payload = self.get_json("/internal/status")
        self.assertEqual(
            payload["proxy"], {"engine": "sherpa", "profile": "streaming", "balancer": "priority"}
        )
        self.assertEqual(
            payload["security"],
            {
                "status": "normal",
                "blocked_ips": 0,
                "violations": {
                    "rate_limits": 0,
                    "size_limits": 0,
                    "header_limits": 0,
                    "auth_failures": 0,
                },
            },
        )
        self.assertEqual(payload["timestamp"], "2023-11-14T22:13:20Z")
        self.assertEqual(
            list(payload),
            ["timestamp", "endpoints", "proxy", "security", "system", "config", "worker", "state"],
        )
        self.assertEqual(payload["state"], {"backend": "memory", "ok": True, "fallbacks": 0})
        self.assertEqual(
            payload["config"],
            {"generation": 1, "loaded_at": "2023-11-14T22:13:20Z", "file": None},
        )

    def test_system_without_traffic(self) -> None:
        """If a healthy fleet has seen no traffic, then the system is healthy with rate "N/A"."""
        eps = self.fleet(("a", 100), ("b", 100))
        for ep in eps.values():
            self.registry.set_status(ep, EndpointStatus.HEALTHY)
        self.clock.advance(3 * 3600 + 12 * 60)
        system = self.get_json("/internal/status")["system"]
        self.assertEqual(
            system,
            {
                "status": "healthy",
                "endpoints_up": "2/2",
                "success_rate": "N/A",
                "avg_latency": "0ms",
                "total_traffic": "0 B",
                "uptime": "3h 12m",
                "start_time": "2023-11-14T22:13:20Z",
                "version": __version__,
                "commit": "unknown",
                "active_connections": 0,
                "security_violations": 0,
                "total_requests": 0,
                "total_failures": 0,
                "has_traffic": False,
            },
        )

    def test_system_with_traffic(self) -> None:
        """If traffic fails too often, then the system is critical and the totals add up."""
        eps = self.fleet(("a", 100), ("b", 100), ("c", 100))
        self.registry.set_status(eps["a"], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["b"], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["c"], EndpointStatus.BUSY)
        self.traffic(eps["a"], ok=8, latency=0.2, size=1024)
        self.traffic(eps["b"], ok=0, failed=2)
        self.registry.attempt_started(eps["a"], self.clock.seconds())
        system = self.get_json("/internal/status")["system"]
        self.assertEqual(system["status"], "critical")
        self.assertEqual(system["endpoints_up"], "2/3")
        self.assertEqual(system["success_rate"], "80.0%")
        self.assertEqual(system["avg_latency"], "200ms")
        self.assertEqual(system["total_traffic"], "8.00 KB")
        self.assertEqual((system["total_requests"], system["total_failures"]), (10, 2))
        self.assertEqual(system["active_connections"], 1)
        self.assertIs(system["has_traffic"], True)

    def test_system_degraded(self) -> None:
        """If two of three endpoints are healthy and nothing failed, then degraded."""
        eps = self.fleet(("a", 100), ("b", 100), ("c", 100))
        self.registry.set_status(eps["a"], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["b"], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["c"], EndpointStatus.OFFLINE)
        self.traffic(eps["a"], ok=5)
        self.assertEqual(self.get_json("/internal/status")["system"]["status"], "degraded")

    def test_no_endpoints_is_critical(self) -> None:
        """If no endpoints are configured, then the system is critical and lists are empty."""
        self.build([])
        payload = self.get_json("/internal/status")
        self.assertEqual(payload["endpoints"], [])
        self.assertEqual(payload["system"]["status"], "critical")
        self.assertEqual(payload["system"]["endpoints_up"], "0/0")


# ============================================================= /internal/status/endpoints


class EndpointsStatusTests(_Harness):
    def test_counts(self) -> None:
        """If endpoints are healthy, busy, offline and unknown, then healthy 1, routable 2."""
        eps = self.fleet(("a", 1), ("b", 1), ("c", 1), ("d", 1))
        self.registry.set_status(eps["a"], EndpointStatus.HEALTHY)
        self.registry.set_status(eps["b"], EndpointStatus.BUSY)
        self.registry.set_status(eps["c"], EndpointStatus.OFFLINE)
        payload = self.get_json("/internal/status/endpoints")
        self.assertEqual(
            (payload["total_count"], payload["healthy_count"], payload["routable_count"]),
            (4, 1, 2),
        )
        self.assertEqual(payload["timestamp"], "2023-11-14T22:13:20Z")

    def test_fields(self) -> None:
        """If an endpoint has been probed, synced and used, then every field is formatted."""
        ep = self.fleet(("a", 100))["a"]
        self.registry.set_status(ep, EndpointStatus.HEALTHY)
        self.traffic(ep, ok=3, latency=0.050)
        self.traffic(ep, ok=1, failed=0, latency=0.250)
        state = self.registry.state(ep)
        state.last_check = T0 - 5
        state.last_probe_latency = 0.0123
        state.next_check = T0 + 5
        state.last_model_sync = T0 - 120
        state.model_count = 7
        entry = self.get_json("/internal/status/endpoints")["endpoints"][0]
        self.assertEqual(
            entry,
            {
                "id": ep.id,
                "name": "a",
                "url": "http://10.0.0.1:11434",
                "type": "ollama",
                "status": "healthy",
                "priority": 100,
                "model_count": 7,
                "request_count": 4,
                "success_rate": "100%",
                "min_latency_ms": 50,
                "max_latency_ms": 250,
                "avg_latency_ms": 100,
                "active_connections": 0,
                "health_check": "5s ago",
                "health_check_at": "2023-11-14T22:13:15Z",
                "response_time": "12ms",
                "next_check_at": "2023-11-14T22:13:25Z",
                "last_model_sync": "2m ago",
                "last_model_sync_at": "2023-11-14T22:11:20Z",
                "consecutive_failures": 0,
                "status_reason": "",
                "max_concurrency": 4,
                "max_concurrency_source": "default",
            },
        )

    def test_fields_without_traffic(self) -> None:
        """If an endpoint is fresh, then "N/A", no avg, "never" and no optional fields."""
        self.fleet(("a", 100))
        entry = self.get_json("/internal/status/endpoints")["endpoints"][0]
        self.assertEqual(entry["success_rate"], "N/A")
        self.assertEqual(entry["health_check"], "never")
        for key in (
            "avg_latency_ms",
            "health_check_at",
            "response_time",
            "next_check_at",
            "last_model_sync",
            "last_model_sync_at",
        ):
            self.assertNotIn(key, entry)
        self.assertNotIn("issues", entry)
        self.assertEqual((entry["min_latency_ms"], entry["max_latency_ms"]), (0, 0))

    def test_issue_first_match(self) -> None:
        """If several issues apply, then only the first of unavailable/unstable/low rate shows."""
        eps = self.fleet(("down", 1), ("unstable", 1), ("lossy", 1), ("fine", 1))
        self.registry.set_status(eps["down"], EndpointStatus.UNHEALTHY, "HTTP 500")
        self.registry.state(eps["down"]).consecutive_failures = 9
        self.registry.set_status(eps["unstable"], EndpointStatus.BUSY)
        self.registry.state(eps["unstable"]).consecutive_failures = 4
        self.registry.set_status(eps["lossy"], EndpointStatus.BUSY)
        self.traffic(eps["lossy"], ok=5, failed=7)
        self.registry.set_status(eps["fine"], EndpointStatus.HEALTHY)
        self.traffic(eps["fine"], ok=1, failed=20)  # healthy with no failed probes: no issue
        entries = {e["name"]: e for e in self.get_json("/internal/status/endpoints")["endpoints"]}
        self.assertEqual(entries["down"]["issues"], "unavailable")
        self.assertEqual(entries["down"]["status_reason"], "HTTP 500")
        self.assertEqual(entries["down"]["consecutive_failures"], 9)
        self.assertEqual(entries["unstable"]["issues"], "unstable")
        self.assertEqual(entries["lossy"]["issues"], "low success rate")
        self.assertNotIn("issues", entries["fine"])


class CredentialTests(_Harness):
    SECRET_URL = "http://alice:hunter22@gpu.lan:11434/ollama/?api_key=qwerty99#frag"

    def test_urls_never_carry_credentials(self) -> None:
        """If an endpoint URL has userinfo, query and fragment, then no route shows them."""
        self.build(
            [
                EndpointConfig(
                    url=self.SECRET_URL,
                    name="gpu",
                    type="ollama",
                    auth=AuthConfig("bearer", "Authorization", "Bearer sk-topsecret"),
                )
            ]
        )
        ep = self.endpoints[0]
        self.registry.set_status(
            ep,
            EndpointStatus.CONFIG_ERROR,
            f"GET {ep.health_url} answered 401 (token sk-topsecret, user alice:hunter22, "
            "key qwerty99)",
        )
        for path in ("/internal/status", "/internal/status/endpoints", "/internal/process"):
            _, body = self.request(path)
            for secret in (b"hunter22", b"alice", b"qwerty99", b"api_key", b"frag", b"topsecret"):
                self.assertNotIn(secret, body, path)
        entry = self.get_json("/internal/status/endpoints")["endpoints"][0]
        self.assertEqual(entry["url"], "http://gpu.lan:11434/ollama/")
        self.assertIn("http://gpu.lan:11434/ollama/", entry["status_reason"])
        self.assertIn("***", entry["status_reason"])


# =========================================================================== conditional GET


class ConditionalTests(_Harness):
    PATHS = ("/internal/status", "/internal/status/endpoints")

    def setUp(self) -> None:
        self.eps = self.fleet(("a", 100), ("b", 100), ("c", 50))
        for ep in self.eps.values():
            self.registry.set_status(ep, EndpointStatus.HEALTHY)
        self.traffic(self.eps["a"], ok=3)

    def etag(self, path: str) -> str:
        response, _ = self.request(path)
        tag = self.header(response, "ETag")
        assert tag is not None
        return tag

    def test_headers_on_200(self) -> None:
        """If a status route answers 200, then it carries a weak ETag, cache and Vary headers."""
        for path in self.PATHS:
            response, body = self.request(path)
            self.assertEqual(response.code, 200)
            self.assertRegex(self.header(response, "ETag") or "", WEAK_ETAG)
            self.assertEqual(self.header(response, "Cache-Control"), "private, no-cache")
            self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
            self.assertEqual(
                self.header(response, "Content-Type"), "application/json; charset=utf-8"
            )
            self.assertIsNone(self.header(response, "Content-Encoding"))
            json.loads(body)

    def test_etag_stable_over_time(self) -> None:
        """If only the clock and per-tick check times move, then the ETag stays the same."""
        before = {path: self.etag(path) for path in self.PATHS}
        self.clock.advance(3600)
        for ep in self.eps.values():
            state = self.registry.state(ep)
            state.last_check = self.clock.seconds() - 1
            state.next_check = self.clock.seconds() + 4
            state.last_probe_latency = 0.017
        after = {path: self.etag(path) for path in self.PATHS}
        self.assertEqual(before, after)

    def test_etag_changes_with_status(self) -> None:
        """If an endpoint's status changes, then both ETags change."""
        before = {path: self.etag(path) for path in self.PATHS}
        self.registry.set_status(self.eps["b"], EndpointStatus.OFFLINE, "connection refused")
        after = {path: self.etag(path) for path in self.PATHS}
        for path in self.PATHS:
            self.assertNotEqual(before[path], after[path], path)

    def test_etag_changes_with_traffic(self) -> None:
        """If a request completes, then both ETags change."""
        before = {path: self.etag(path) for path in self.PATHS}
        self.traffic(self.eps["c"], ok=1)
        after = {path: self.etag(path) for path in self.PATHS}
        for path in self.PATHS:
            self.assertNotEqual(before[path], after[path], path)

    def test_not_modified(self) -> None:
        """If If-None-Match names the ETag (as is, strong form, *, or in a list), then bare 304."""
        for path in self.PATHS:
            tag = self.etag(path)
            for header in (tag, tag[2:], "*", f'"stale", {tag}', f'W/"x",{tag[2:]}'):
                response, body = self.request(
                    path, {"If-None-Match": header, "Accept-Encoding": "gzip"}
                )
                self.assertEqual(response.code, 304, (path, header))
                self.assertEqual(body, b"")
                self.assertIsNone(self.header(response, "Content-Encoding"))
                self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
                self.assertEqual(self.header(response, "ETag"), tag)

    def test_not_modified_after_time_passes(self) -> None:
        """If a dashboard revalidates a minute later with nothing changed, then 304."""
        tag = self.etag("/internal/status")
        self.clock.advance(60)
        response, _ = self.request("/internal/status", {"If-None-Match": tag})
        self.assertEqual(response.code, 304)

    def test_stale_or_oversized_if_none_match(self) -> None:
        """If If-None-Match is stale or over 1 KiB, then the full 200 is sent."""
        for path in self.PATHS:
            tag = self.etag(path)
            padded = tag + ", " + ", ".join(['"padding"'] * 120)
            for header in ('W/"stale"', padded):
                response, body = self.request(path, {"If-None-Match": header})
                self.assertEqual(response.code, 200, (path, header[:20]))
                json.loads(body)

    def test_gzip(self) -> None:
        """If the client accepts gzip and the body is big, then it is gzipped, no length set."""
        for path in self.PATHS:
            plain_response, plain = self.request(path)
            self.assertGreater(len(plain), 256)
            for accept in ("gzip", "br, gzip;q=0.5", "*", "deflate, gzip"):
                response, body = self.request(path, {"Accept-Encoding": accept})
                self.assertEqual(self.header(response, "Content-Encoding"), "gzip", accept)
                self.assertIsNone(self.header(response, "Content-Length"))
                self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
                self.assertEqual(json.loads(gzip.decompress(body)), json.loads(plain))

    def test_no_gzip(self) -> None:
        """If gzip is refused (q=0), not offered, or not listed, then the body goes as it is."""
        for path in self.PATHS:
            for accept in ("gzip;q=0", "identity", "br", "br, gzip;q=0, *", "*;q=0"):
                response, body = self.request(path, {"Accept-Encoding": accept})
                self.assertIsNone(self.header(response, "Content-Encoding"), accept)
                self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
                json.loads(body)


class SmallBodyTests(_Harness):
    def test_small_body_not_gzipped(self) -> None:
        """If the body is 256 bytes or less, then it is not gzipped even when gzip is accepted."""
        self.build([])
        response, body = self.request("/internal/status/endpoints", {"Accept-Encoding": "gzip"})
        self.assertLessEqual(len(body), 256)
        self.assertIsNone(self.header(response, "Content-Encoding"))
        self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
        self.assertEqual(json.loads(body)["total_count"], 0)


# =========================================================================== /internal/process


def _fake_proc(base: str, rss_kib: int, hwm_kib: int, fds: int) -> Path:
    root = Path(base)
    (root / "fd").mkdir(parents=True)
    for n in range(fds):
        (root / "fd" / str(n)).write_text("")
    (root / "status").write_text(
        f"Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t{hwm_kib:8d} kB\nVmRSS:\t{rss_kib:8d} kB\n"
    )
    return root


class ProcessTests(_Harness):
    def mktemp(self) -> str:
        """A fresh directory path under the system temp dir, never under the checkout."""
        base = tempfile.mkdtemp(prefix="olla-proc-")
        self.addCleanup(shutil.rmtree, base, True)
        return os.path.join(base, "proc")

    def test_route_with_fake_proc(self) -> None:
        """If /proc/self is readable, then memory and descriptors come from it."""
        proc = _fake_proc(self.mktemp(), rss_kib=2048, hwm_kib=4096, fds=3)
        self.build(_configs(("a", 1)), proc_self=proc, active=5)
        self.clock.advance(125)
        payload = self.get_json("/internal/process")
        self.assertEqual(payload["timestamp"], "2023-11-14T22:15:25Z")
        self.assertEqual(
            payload["memory"],
            {"rss_bytes": 2097152, "rss_peak_bytes": 4194304, "rss_human": "2.00 MB"},
        )
        self.assertEqual(payload["open_file_descriptors"], 3)
        self.assertEqual(payload["connections"], {"active": 5})
        runtime = payload["runtime"]
        self.assertEqual(runtime["uptime"], "2m")
        self.assertEqual(runtime["uptime_seconds"], 125.0)
        self.assertEqual(runtime["start_time"], "2023-11-14T22:13:20Z")
        self.assertEqual(runtime["pid"], os.getpid())
        for key in ("python_version", "python_implementation", "twisted_version", "platform"):
            self.assertIsInstance(runtime[key], str)
        self.assertIsInstance(runtime["num_cpu"], int)
        self.assertEqual(set(payload["cpu"]), {"user_seconds", "system_seconds"})
        collection = payload["garbage_collection"]
        self.assertEqual(len(collection["counts"]), len(gc.get_count()))
        self.assertEqual(len(collection["collections"]), len(gc.get_stats()))
        self.assertNotIn("objects_tracked", collection)

    def test_without_proc(self) -> None:
        """If /proc is missing, then memory falls back to getrusage and descriptors are null."""
        payload = process_payload(
            now=T0, started=T0, active_connections=0, proc_self=Path(self.mktemp())
        )
        self.assertIsNone(payload["open_file_descriptors"])
        self.assertGreater(payload["memory"]["rss_bytes"], 0)
        self.assertEqual(payload["memory"]["rss_bytes"], payload["memory"]["rss_peak_bytes"])
        skipped = process_payload(now=T0, started=T0, active_connections=0, proc_self=None)
        self.assertIsNone(skipped["open_file_descriptors"])

    def test_garbled_status_file(self) -> None:
        """If the status file lacks VmRSS, then the getrusage figure stands in for it."""
        root = Path(self.mktemp())
        (root / "fd").mkdir(parents=True)
        (root / "status").write_text("Name:\tpython\nVmHWM:\tlots kB\n")
        payload = process_payload(now=T0, started=T0, active_connections=0, proc_self=root)
        self.assertEqual(payload["open_file_descriptors"], 0)
        self.assertGreater(payload["memory"]["rss_peak_bytes"], 0)


# =========================================================================== the rest


class OtherRouteTests(_Harness):
    def test_health_still_works(self) -> None:
        """If /internal/health is asked, then it answers healthy whatever the endpoints are."""
        eps = self.fleet(("a", 1))
        self.registry.set_status(eps["a"], EndpointStatus.OFFLINE)
        self.assertEqual(self.get_json("/internal/health"), {"status": "healthy"})
        self.assertEqual(self.get_json("/version")["name"], "Olla")

    def test_any_method(self) -> None:
        """If a status route is called with POST or HEAD, then it still answers 200."""
        self.fleet(("a", 1))
        for path in ("/internal/status", "/internal/status/endpoints", "/internal/process"):
            response, body = self.request(path, method="POST")
            self.assertEqual(response.code, 200, path)
            json.loads(body)
            response, body = self.request(path, method="HEAD")
            self.assertEqual((response.code, body), (200, b""), path)

    def test_unknown_path(self) -> None:
        """If an unknown internal path is asked, then 404 JSON."""
        self.fleet(("a", 1))
        response, body = self.request("/internal/status/nope")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"error": "404 page not found"})


class ModelStatusTests(SynchronousTestCase):
    """``/internal/status/models`` in the Go original's shape (pure payload builder)."""

    def test_shape(self) -> None:
        """If two endpoints list models, then the payload has the Go original's fields: the
        summaries with type, size, params, quant, last seen, endpoints paired with their ids,
        aliases and capabilities, olla's resources per endpoint, and with
        detailed=true&group=family the model groups, unknown last."""
        from olla.fleet.models import ModelCatalogue, ModelInfo
        from olla.web.modelstatus import status_models

        a, b = endpoints_from_config(_configs(("b-host", 100), ("a-host", 100)))
        catalogue = ModelCatalogue({"fast": ["llama3.2:latest"]})
        llama = ModelInfo(
            "llama3.2:latest",
            size=2019393189,
            digest="d1",
            family="llama",
            parameter_size="3.2B",
            quantization="q4km",
        )
        catalogue.set_models(a, [llama, ModelInfo("mystery:1")], T0 - 120)
        catalogue.set_models(b, [llama], T0 - 60)
        payload, stable = status_models(catalogue, [a, b], T0)
        self.assertEqual(
            (payload["total_models"], payload["total_families"], payload["total_endpoints"]),
            (2, 2, 2),
        )
        self.assertEqual(
            payload["models_by_family"], {"llama": ["llama3.2:latest"], "unknown": ["mystery:1"]}
        )
        first = payload["recent_models"][0]
        self.assertEqual(first["name"], "llama3.2:latest")
        self.assertEqual(first["type"], "llm")
        self.assertEqual(first["size"], "1.88 GB")
        self.assertEqual((first["params"], first["quant"]), ("3.2B", "Q4_K_M"))
        self.assertEqual(first["last_seen"], "1m ago")
        self.assertEqual(first["last_seen_at"], rfc3339(T0 - 60))
        self.assertEqual(first["endpoints"], ["a-host", "b-host"])
        self.assertEqual(first["endpoint_ids"], [b.id, a.id])
        self.assertEqual(first["aliases"], ["fast"])
        self.assertIn("chat", first["capabilities"])
        self.assertEqual(first["resources"][0]["size_class"], "3b")
        self.assertEqual(first["resources"][0]["load_time_prior_ms"], 15000)
        self.assertEqual(first["resources"][0]["max_concurrent"], 8)
        self.assertNotIn("model_groups", payload)
        self.assertNotIn("last_seen", json.dumps(stable).replace("last_seen_at", ""))
        detailed, _ = status_models(catalogue, [a, b], T0, detailed=True, group="family")
        groups = detailed["model_groups"]
        self.assertEqual([g["family"] for g in groups], ["llama", "unknown"])
        self.assertEqual(groups[0]["endpoints"], ["a-host", "b-host"])
        self.assertEqual(groups[1]["model_count"], 1)
