"""``/internal/metrics`` (``olla.web.metrics``) and the stats the exchange and the health
service feed, through the whole app built on a Clock over in-memory fake Ollamas."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig, OllaConfig
from olla.daemon.app import App, build_app
from olla.profiles import builtin_profiles
from olla.telemetry.stats import OTHER
from olla.web.metrics import counter_family, gauge_family
from tests.fakes.ollama import FakeOllama
from tests.proxyharness import REFUSE, ClientConnection, HostAgent, http_request, parse_response

MODEL = "llama3.2:latest"


def _config() -> OllaConfig:
    defaults = OllaConfig()
    endpoints = (
        EndpointConfig(url="http://a:1", name="a", type="ollama", priority=100),
        EndpointConfig(url="http://b:1", name="b", type="ollama", priority=50),
    )
    return replace(defaults, discovery=replace(defaults.discovery, endpoints=endpoints))


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by its name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def pick(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fakes = {b"a:1": FakeOllama(self.clock), b"b:1": FakeOllama(self.clock)}
        self.agent = HostAgent(self.fakes)
        self.cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        self.app = self._build()
        for service in self.app.services:
            service.startService()
            self.addCleanup(service.stopService)
        self.addCleanup(self.cooperator.stop)
        self.pump()
        self.assertTrue(self.app.registry.ready)

    def _build(self) -> App:
        return build_app(
            _config(),
            builtin_profiles(),
            clock=self.clock,
            agent=self.agent,
            cooperator=self.cooperator,
        )

    def pump(self, steps: int = 6) -> None:
        for _ in range(steps):
            self.clock.advance(0.1)
            self.agent.flush()

    def send(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        raw = None if body is None else json.dumps(body).encode()
        client = ClientConnection(self.app.site, http_request(method, path, raw, headers))
        self.pump()
        response = parse_response(client.transport.value())
        assert response is not None
        return response

    def scrape(self) -> Samples:
        response = self.send("GET", "/internal/metrics")
        self.assertEqual(response.status, 200)
        content_type = response.header(b"content-type")
        assert content_type is not None
        self.assertTrue(content_type.startswith(b"text/plain; version="))
        return parse(response.body.decode())

    def chat(self, stream: bool, chunks: int = 4) -> dict[str, Any]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}
        body["stream"] = stream
        response = self.send(
            "POST", "/olla/ollama/api/chat", body, **{"X-Fake-Chunks": str(chunks)}
        )
        self.assertEqual(response.status, 200)
        final: dict[str, Any] = json.loads(response.body.strip().splitlines()[-1])
        return final

    def test_requests_tokens_and_ttft(self) -> None:
        """If two streamed and one whole chat are served, then the metrics count three requests
        for that endpoint and model, tokens equal to the fake's counts, and one TTFT
        observation per stream only."""
        finals = [self.chat(True, 4), self.chat(True, 2), self.chat(False, 3)]
        samples = self.scrape()
        labels = {"endpoint": "a", "model": MODEL, "route": "ollama", "status": "200"}
        self.assertEqual(pick(samples, "olla_requests_total", **labels), 3)
        prompt = sum(f["prompt_eval_count"] for f in finals)
        completion = sum(f["eval_count"] for f in finals)
        self.assertEqual(completion, 9)
        self.assertEqual(
            pick(samples, "olla_tokens_total", endpoint="a", model=MODEL, direction="prompt"),
            prompt,
        )
        self.assertEqual(
            pick(samples, "olla_tokens_total", endpoint="a", model=MODEL, direction="completion"),
            completion,
        )
        self.assertEqual(pick(samples, "olla_time_to_first_token_seconds_count", endpoint="a"), 2)
        self.assertEqual(pick(samples, "olla_request_duration_seconds_count", endpoint="a"), 3)
        self.assertEqual(pick(samples, "olla_generation_tokens_per_second_count"), 3)
        self.assertEqual(pick(samples, "olla_upstream_attempts_total", outcome="ok"), 3)
        self.assertEqual(pick(samples, "olla_endpoint_up", endpoint="a", status="healthy"), 1)
        self.assertEqual(pick(samples, "olla_endpoint_up", endpoint="a", status="offline"), 0)
        self.assertEqual(pick(samples, "olla_circuit_breaker_state", state="closed"), 2)
        self.assertEqual(pick(samples, "olla_endpoint_in_flight_requests"), 0)
        self.assertGreaterEqual(pick(samples, "olla_discovery_total", result="ok"), 2)
        self.assertGreaterEqual(pick(samples, "olla_health_checks_total", status="healthy"), 2)
        self.assertEqual(pick(samples, "olla_info", engine="olla"), 1)
        self.assertGreater(pick(samples, "olla_process_resident_memory_bytes"), 0)

    def test_request_log_line_has_tokens(self) -> None:
        """If a streamed chat is served, then its log line carries the tokens and TTFT."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        final = self.chat(True, 5)
        [line] = [e for e in events if e.get("request_line")]
        self.assertEqual(line["completion_tokens"], 5)
        self.assertEqual(line["prompt_tokens"], final["prompt_eval_count"])
        self.assertIsNotNone(line["ttft_ms"])
        self.assertIn(f" tokens={final['prompt_eval_count']}/5 ttft=", formatEvent(line))

    def test_failover_by_cause(self) -> None:
        """If the preferred endpoint refuses connections, then the request is served by the
        other, and the metrics count one failover from it caused by ``unreachable``."""
        self.agent.behaviour[b"a:1"] = REFUSE
        self.chat(False)
        samples = self.scrape()
        self.assertEqual(
            pick(samples, "olla_failovers_total", endpoint="a", cause="unreachable"), 1
        )
        self.assertEqual(
            pick(samples, "olla_upstream_attempts_total", endpoint="a", outcome="failed"), 1
        )
        self.assertEqual(pick(samples, "olla_requests_total", endpoint="b", status="200"), 1)

    def test_busy_failover_by_status(self) -> None:
        """If the preferred endpoint answers 503 (busy), then the other serves the request and
        the failover counts with cause ``status_503``, the attempt as ``refused``."""
        self.fakes[b"a:1"].apply_state({"status": 503})
        self.chat(False)
        samples = self.scrape()
        self.assertEqual(pick(samples, "olla_failovers_total", endpoint="a", cause="status_503"), 1)
        self.assertEqual(pick(samples, "olla_upstream_attempts_total", outcome="refused"), 1)
        self.assertEqual(pick(samples, "olla_requests_total", endpoint="b", status="200"), 1)

    def test_every_attempt_failed(self) -> None:
        """If both endpoints refuse connections, then the 502 counts once, under the last
        endpoint tried, as a failure of the model."""
        self.agent.behaviour[b"a:1"] = REFUSE
        self.agent.behaviour[b"b:1"] = REFUSE
        body = {"model": MODEL, "stream": False, "messages": []}
        self.assertEqual(self.send("POST", "/olla/ollama/api/chat", body).status, 502)
        samples = self.scrape()
        self.assertEqual(pick(samples, "olla_requests_total"), 1)
        self.assertEqual(pick(samples, "olla_requests_total", endpoint="b", status="502"), 1)
        self.assertEqual(pick(samples, "olla_failovers_total"), 1)  # a handed over, b could not
        [model] = json.loads(self.send("GET", "/internal/stats/models").body)["models"]
        self.assertEqual((model["total_requests"], model["failed_requests"]), (1, 1))

    def test_rejections_and_security(self) -> None:
        """If a request names an unknown model and another is too large, then the first counts
        under endpoint ``none`` and the second as a size-limit violation."""
        response = self.send("POST", "/olla/ollama/api/chat", {"model": "nope", "messages": []})
        self.assertEqual(response.status, 404)
        self.app.security.size_limit()
        samples = self.scrape()
        self.assertEqual(pick(samples, "olla_requests_total", endpoint="none", status="404"), 1)
        self.assertEqual(pick(samples, "olla_security_violations_total", kind="size_limit"), 1)
        self.assertEqual(pick(samples, "olla_security_blocked_ips"), 0)

    def test_models_past_the_cap(self) -> None:
        """If requests name more models than the cap (served ones and unknown ones), then the
        metrics' model labels stay at the cap plus ``other``."""
        self.app.stats.max_models = 1
        self.chat(False)
        embed = {"model": "nomic-embed-text:latest", "input": "hi"}
        self.assertEqual(self.send("POST", "/olla/ollama/api/embed", embed).status, 200)
        for name in ("x1", "x2"):
            self.send("POST", "/olla/ollama/api/chat", {"model": name, "messages": []})
        samples = self.scrape()
        models = {dict(ls)["model"] for (n, ls) in samples if n == "olla_requests_total"}
        self.assertEqual(models, {MODEL, OTHER})
        self.assertEqual(pick(samples, "olla_requests_total", model=OTHER), 3)

    def test_own_registry_per_app(self) -> None:
        """If two apps are built in one process, then each has its own registry and neither
        touches prometheus_client's global one."""
        before = set(REGISTRY._names_to_collectors)
        other = self._build()
        self.assertIsNot(other.metrics.registry, self.app.metrics.registry)
        self.assertEqual(set(REGISTRY._names_to_collectors), before)
        self.chat(False)
        samples = parse(
            __import__("prometheus_client").generate_latest(other.metrics.registry).decode()
        )
        self.assertEqual(pick(samples, "olla_requests_total"), 0)

    def test_stats_pages(self) -> None:
        """If chats are served, then ``/internal/stats/models`` lists the model with its
        requests, endpoints and tokens, and ``/internal/stats/translators`` is a list."""
        final = self.chat(True, 3)
        page = json.loads(self.send("GET", "/internal/stats/models").body)
        [model] = page["models"]
        self.assertEqual(model["name"], MODEL)
        self.assertEqual(model["total_requests"], 1)
        self.assertEqual(model["endpoints"], ["a"])
        self.assertEqual(model["completion_tokens"], 3)
        self.assertEqual(model["prompt_tokens"], final["prompt_eval_count"])
        self.assertEqual(page["summary"]["most_popular_model"], MODEL)
        detailed = json.loads(
            self.send(
                "GET", "/internal/stats/models?include_endpoints=true&include_summary=true"
            ).body
        )
        self.assertEqual(detailed["models"][0]["endpoint_breakdown"]["a"]["request_count"], 1)
        self.assertEqual(set(detailed["endpoints"]), {"a"})
        translators = json.loads(self.send("GET", "/internal/stats/translators").body)
        self.assertIsInstance(translators["translators"], list)
        self.assertIn("timestamp", translators)

    def test_openmetrics_when_asked(self) -> None:
        """If the scraper asks for OpenMetrics (as Prometheus does), then it gets that format,
        and it parses with prometheus_client's OpenMetrics parser."""
        from prometheus_client.openmetrics.parser import (
            text_string_to_metric_families as openmetrics_families,
        )

        self.chat(False)
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        response = self.send("GET", "/internal/metrics", Accept=accept)
        self.assertEqual(response.status, 200)
        content_type = response.header(b"content-type") or b""
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"))
        self.assertTrue(response.body.endswith(b"# EOF\n"))
        families = {f.name: f for f in openmetrics_families(response.body.decode())}
        [sample] = families["olla_requests"].samples
        self.assertEqual((sample.labels["endpoint"], sample.value), ("a", 1))

    def test_dashboard_reads_only_exported_metrics(self) -> None:
        """If the Grafana dashboard in ``etc/`` is imported, then every ``olla_`` metric its
        queries name is one olla exports (a renamed metric fails here, not on a wall)."""
        response = self.send("GET", "/internal/metrics")
        exported: set[str] = set()
        for family in text_string_to_metric_families(response.body.decode()):
            suffixes = ("", "_total", "_bucket", "_count", "_sum", "_info")
            exported.update(family.name + suffix for suffix in suffixes)
        dashboard = json.loads(
            (Path(__file__).parents[1] / "etc/grafana-dashboard.json").read_text()
        )
        exprs = [
            target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
        ]
        exprs += [v["definition"] for v in dashboard["templating"]["list"]]
        named = {name for expr in exprs for name in re.findall(r"\bolla_[a-z_]+", expr)}
        self.assertGreater(len(named), 20)
        self.assertEqual(named - exported, set())
        self.assertEqual(dashboard["__inputs"][0]["pluginId"], "prometheus")


class LabelledFamilyTests(SynchronousTestCase):
    """``counter_family`` and ``gauge_family``: a family from ``(label values, value)`` rows."""

    def test_rows_in_label_order(self) -> None:
        """If a counter or a gauge family is built from rows, then it has one sample per row
        under its labels, sorted by their values; no rows, no samples."""
        rows = [(("b", "x"), 2), (("a", "y"), 1.5), (("a", "x"), 0)]
        labels = ("endpoint", "kind")
        counter = counter_family("olla_things_total", "Things", labels, rows)
        gauge = gauge_family("olla_held", "Held now", labels, iter(rows))
        self.assertEqual((counter.type, gauge.type), ("counter", "gauge"))
        self.assertEqual((counter.name, gauge.documentation), ("olla_things", "Held now"))
        for family, sample in ((counter, "olla_things_total"), (gauge, "olla_held")):
            self.assertEqual(
                [(s.name, s.labels, s.value) for s in family.samples],
                [
                    (sample, {"endpoint": "a", "kind": "x"}, 0),
                    (sample, {"endpoint": "a", "kind": "y"}, 1.5),
                    (sample, {"endpoint": "b", "kind": "x"}, 2),
                ],
            )
        self.assertEqual(gauge_family("olla_none", "None", ("endpoint",), ()).samples, [])
