"""``type: auto`` on a Clock: which platform an endpoint runs, and what changes once it is known."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from olla.config import AuthConfig, EndpointConfig, ModelDiscoveryConfig
from olla.fleet.detect import (
    Answer,
    Detection,
    PlatformDetector,
    by_port,
    choose,
    explain,
    recognise,
)
from olla.fleet.discovery import DiscoveryService
from olla.fleet.endpoints import Endpoint, EndpointRegistry, EndpointStatus, endpoints_from_config
from olla.fleet.health import HealthService, HTTPHealthChecker
from olla.fleet.models import ModelCatalogue
from olla.interfaces import IPlatformDetector
from olla.profiles import DETECTION_ORDER, builtin_profiles, load_profiles
from olla.web.status import summary_endpoint
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import HANG, REFUSE, HostAgent

PROFILES = builtin_profiles()
TOKEN = "sk-detect-secret"

# What each platform answers on the model list paths detection asks (others: 404).
LISTS: dict[str, dict[str, object]] = {
    "ollama": {
        "/": b"Ollama is running",
        "/api/tags": {"models": [{"name": "llama3.2:latest"}]},
        "/v1/models": {
            "object": "list",
            "data": [{"id": "llama3.2:latest", "owned_by": "library"}],
        },
    },
    # llama.cpp answers Ollama's /api/tags too, with OpenAI's "data" beside "models"
    "llamacpp": {
        "/api/tags": {
            "models": [{"name": "m.gguf"}],
            "object": "list",
            "data": [{"id": "m.gguf", "owned_by": "llamacpp"}],
        },
        "/v1/models": {"object": "list", "data": [{"id": "m.gguf", "owned_by": "llamacpp"}]},
        "/health": {"status": "ok"},
    },
    "lm-studio": {
        "/v1/models": {"data": [{"id": "qwen", "owned_by": "organization_owner"}]},
        "/api/v0/models": {"data": [{"id": "qwen", "type": "llm", "state": "loaded"}]},
    },
    "vllm": {
        "/v1/models": {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 8192}]},
        "/health": b"",
    },
    "omlx": {"/v1/models": {"data": [{"id": "m", "owned_by": "omlx"}]}, "/health": b"{}"},
    "openai-compatible": {"/v1/models": {"data": [{"id": "gpt", "owned_by": "openai"}]}},
}


class Lists(Resource):
    """A backend that answers fixed paths (JSON documents or raw bytes) and 404 elsewhere."""

    isLeaf = True

    def __init__(self, answers: dict[str, object], status: int = 200) -> None:
        super().__init__()
        self.answers = answers
        self.status = status  # anything but 200: that status everywhere
        self.seen: list[tuple[str, dict[bytes, Sequence[bytes]]]] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        self.seen.append((path, dict(request.requestHeaders.getAllRawHeaders())))
        if self.status != 200:
            request.setResponseCode(self.status)
            return b""
        if path not in self.answers:
            request.setResponseCode(404)
            return b"404 page not found"
        answer = self.answers[path]
        return answer if isinstance(answer, bytes) else json.dumps(answer).encode()


def _auto(url: str = "http://h:1", **extra: Any) -> Endpoint:
    settings: dict[str, Any] = {"check_interval": 5.0, "check_timeout": 2.0, **extra}
    config = EndpointConfig(url=url, name="auto", type="auto", **settings)
    (endpoint,) = endpoints_from_config([config])
    return endpoint


def _pump(agent: HostAgent, clock: Clock) -> None:
    for _ in range(6):
        agent.flush()
        clock.advance(0)


class ChooseTests(SynchronousTestCase):
    def _choose(self, platform: str) -> str | None:
        endpoint = _auto()
        documents = LISTS[platform]
        asked = []
        for profile in endpoint.candidates:
            path = profile.model_discovery_path
            if path in documents and not isinstance(documents[path], bytes):
                asked.append((profile, Answer(documents[path])))
            else:
                asked.append((profile, Answer(problem="HTTP 404")))
        found = choose(asked)
        return found.name if found else None

    def test_every_platform_told_apart(self) -> None:
        """If a server answers as a given platform, then that platform is chosen, even where
        an earlier one in the order shares its model list path."""
        for platform in LISTS:
            self.assertEqual(self._choose(platform), platform)

    def test_order(self) -> None:
        """If an endpoint is ``type: auto``, then it tries the §6.1 platforms in order."""
        spec = ("ollama", "llamacpp", "lm-studio", "vllm", "omlx", "openai-compatible")
        self.assertEqual(DETECTION_ORDER, spec)
        self.assertEqual(tuple(p.name for p in _auto().candidates), spec)
        configured = endpoints_from_config([EndpointConfig("http://h:1", "o", "ollama")])
        self.assertEqual((configured[0].candidates, configured[0].detecting), ((), False))

    def test_nothing_recognised(self) -> None:
        """If no path answers a model list, then nothing is chosen and the reason names each
        path's problem, never the URL."""
        asked = [(p, Answer(problem="HTTP 404")) for p in _auto().candidates]
        self.assertIsNone(choose(asked))
        self.assertIsNone(choose([(PROFILES.get("ollama"), Answer({"data": []}))]))  # type: ignore[list-item]
        reason = explain(
            {
                "http://u:p@h:1/api/tags": Answer(problem="HTTP 404"),
                "http://u:p@h:1/v1/models": Answer(problem="connection refused"),
                "http://u:p@h:1/api/v0/models": Answer({"object": "list"}),
            }
        )
        self.assertEqual(
            reason,
            "no known platform answered: /api/tags HTTP 404, /v1/models connection refused, "
            "/api/v0/models not a known model list",
        )
        self.assertNotIn("u:p", reason)
        same = explain({"http://h:1/a": Answer(problem="timed out")})
        self.assertEqual(same, "no known platform answered: timed out")

    def test_profile_headers_recognise(self) -> None:
        """If an OpenAI-shaped list carries no owner mark but the answer has a header the
        platform's profile names (vLLM's X-vLLM-Version, llama.cpp's Server), then it is that
        platform; a plain one is not."""
        plain = {"object": "list", "data": [{"id": "m", "object": "model"}]}
        vllm, llamacpp = PROFILES.get("vllm"), PROFILES.get("llamacpp")
        assert vllm is not None and llamacpp is not None
        self.assertFalse(recognise(vllm, Answer(plain)))
        self.assertTrue(recognise(vllm, Answer(plain, headers={"x-vllm-version": ("0.9",)})))
        server = {"server": ("llama.cpp/b5000",)}
        self.assertTrue(recognise(llamacpp, Answer(plain, headers=server)))

    def test_default_ports_tried_first(self) -> None:
        """If an auto endpoint listens on a platform's default port, then that platform is
        tried before the others (the rest keep the §6.1 order)."""
        (endpoint,) = endpoints_from_config([EndpointConfig("http://h:1234", "a", "auto")])
        order = [p.name for p in by_port(endpoint, endpoint.candidates)]
        self.assertEqual(order[0], "lm-studio")
        self.assertEqual(order[1:], [n for n in DETECTION_ORDER if n != "lm-studio"])


class DetectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def _detect(self, backend: Resource | str, endpoint: Endpoint | None = None) -> Detection:
        self.agent = HostAgent({b"h:1": backend})
        detector = PlatformDetector(self.agent, self.clock, "9.9")
        d = detector.detect(endpoint or _auto())
        _pump(self.agent, self.clock)
        return self.successResultOf(d)

    def test_provides_interface(self) -> None:
        """If a PlatformDetector is built, then it provides IPlatformDetector."""
        self.assertTrue(
            verifyObject(IPlatformDetector, PlatformDetector(HostAgent({}), self.clock, "1"))
        )

    def test_each_path_once_at_once_with_auth(self) -> None:
        """If an auto endpoint fronts an Ollama, then each distinct model list path is asked
        once, all before any answer, with the endpoint's headers and auth; ollama is found."""
        backend = Lists(LISTS["ollama"])
        auth = AuthConfig("bearer", "Authorization", f"Bearer {TOKEN}")
        endpoint = _auto(auth=auth, headers={"X-Tenant": "t"})
        self.agent = HostAgent({b"h:1": backend})
        d = PlatformDetector(self.agent, self.clock, "9.9").detect(endpoint)
        self.assertEqual(
            [uri for _, uri, _ in self.agent.sent],
            [b"http://h:1/api/tags", b"http://h:1/v1/models", b"http://h:1/api/v0/models"],
        )
        _pump(self.agent, self.clock)
        detection = self.successResultOf(d)
        self.assertEqual(detection.profile, PROFILES.get("ollama"))
        for _, headers in backend.seen:
            self.assertEqual(headers[b"Authorization"], [f"Bearer {TOKEN}".encode()])
            self.assertEqual(headers[b"X-Tenant"], [b"t"])
            self.assertEqual(headers[b"User-Agent"], [b"olla-Discovery/9.9"])

    def test_platforms_over_http(self) -> None:
        """If servers of each platform answer over HTTP, then each is detected as itself."""
        for platform, answers in LISTS.items():
            detection = self._detect(Lists(answers))
            assert detection.profile is not None, platform
            self.assertEqual(detection.profile.name, platform)

    def test_fake_ollama(self) -> None:
        """If the fake Ollama (or its OpenAI-only mode, which also serves LM Studio's
        /api/v0/models) is asked, then it is detected as ollama (lm-studio)."""
        ollama = self._detect(FakeOllama(self.clock))
        openai = self._detect(FakeOllama(self.clock, openai_only=True))
        assert ollama.profile is not None and openai.profile is not None
        self.assertEqual((ollama.profile.name, openai.profile.name), ("ollama", "lm-studio"))

    def test_refused_and_unknown(self) -> None:
        """If the server refuses, or answers no known list, then there is no platform and the
        reason says why."""
        refused = self._detect(REFUSE)
        self.assertIsNone(refused.profile)
        self.assertEqual(refused.reason, "no known platform answered: connection refused")
        html = self._detect(Lists({"/v1/models": b"<html>", "/api/tags": {"x": 1}}))
        self.assertIsNone(html.profile)
        self.assertIn("/v1/models not JSON", html.reason)
        self.assertIn("/api/tags not a known model list", html.reason)
        self.assertIn("/api/v0/models HTTP 404", html.reason)

    def test_auth_refused_hint(self) -> None:
        """If the server answers 401 everywhere, then the reason says to check auth."""
        detection = self._detect(Lists({}, status=401))
        self.assertEqual(detection.reason, "no known platform answered: HTTP 401 (check auth)")

    def test_timeout(self) -> None:
        """If the server never answers, then detection gives up after check_timeout."""
        self.agent = HostAgent({b"h:1": HANG})
        d = PlatformDetector(self.agent, self.clock, "1").detect(_auto())
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        detection = self.successResultOf(d)
        self.assertEqual((detection.profile, detection.latency), (None, 2.0))
        self.assertEqual(detection.reason, "no known platform answered: timed out")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_base_path_kept(self) -> None:
        """If the endpoint URL has a path, then detection asks below it."""
        self.agent = HostAgent({b"h:1": Lists({})})
        PlatformDetector(self.agent, self.clock, "1").detect(_auto("http://h:1/llm/"))
        self.assertEqual(self.agent.sent[0][1], b"http://h:1/llm/api/tags")

    def test_user_profile_path(self) -> None:
        """If a user profile replaces ollama with another model list path, then detection asks
        that path."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "ollama.yaml").write_text(
            "name: ollama\nrouting: {prefixes: [ollama]}\n"
            "api: {model_discovery_path: /ollama/tags}\nrequest: {response_format: ollama}\n"
        )
        config = EndpointConfig(url="http://h:1", name="a", type="auto")
        (endpoint,) = endpoints_from_config([config], load_profiles(directory))
        detection = self._detect(Lists({"/ollama/tags": {"models": []}}), endpoint)
        assert detection.profile is not None
        self.assertEqual(detection.profile.model_discovery_path, "/ollama/tags")


@implementer(IPlatformDetector)
class ScriptedDetector:
    """Answers from a list of platform names (None: not recognised); the last repeats."""

    def __init__(self, *script: str | None) -> None:
        self.script = list(script)
        self.calls = 0

    def detect(self, endpoint: Endpoint) -> Deferred[Detection]:
        self.calls += 1
        name = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if name is None:
            return succeed(Detection(None, 0.01, "no known platform answered: HTTP 404"))
        return succeed(Detection(PROFILES.get(name), 0.01))


class AutoEndpointTests(SynchronousTestCase):
    """An auto endpoint under the health service, from detecting to routed as its type."""

    def _service(
        self, detector: IPlatformDetector, backend: Resource, **extra: Any
    ) -> tuple[HealthService, EndpointRegistry, Endpoint]:
        self.clock = Clock()
        self.agent = HostAgent({b"h:1": backend})
        self.endpoint = endpoint = _auto(**extra)
        registry = EndpointRegistry([endpoint], self.clock)
        checker = HTTPHealthChecker(self.agent, self.clock, "1", random.Random(1), detector)
        return HealthService(registry, checker, self.clock, random.Random(2)), registry, endpoint

    def _advance(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        _pump(self.agent, self.clock)

    def test_detecting_until_found(self) -> None:
        """If detection fails, then the endpoint shows detecting (type auto), is not routable and
        is asked again every check_interval without backoff; once found, it is healthy and
        routed as that type, and the recovery listeners run."""
        detector = ScriptedDetector(None, None, None, None, "ollama")
        service, registry, endpoint = self._service(detector, Lists(LISTS["ollama"]))
        recovered: list[Endpoint] = []
        service.on_recovered.append(recovered.append)
        service.startService()
        self._advance()
        state = registry.state(endpoint)
        self.assertEqual(state.status, EndpointStatus.DETECTING)
        self.assertEqual(state.consecutive_failures, 0)
        self.assertEqual(registry.routable(), [])
        summary = summary_endpoint(endpoint, state, self.clock.seconds(), 0)
        self.assertEqual((summary["status"], summary["type"]), ("detecting", "auto"))
        self.assertIn("no known platform", summary["status_reason"])
        for _ in range(3):
            self.assertLessEqual(state.next_check or 0.0, self.clock.seconds() + 5.0)
            self._advance(5.0)
        self.assertEqual(detector.calls, 4)
        self.assertEqual(state.status, EndpointStatus.DETECTING)
        self._advance(5.0)
        self.assertEqual(state.status, EndpointStatus.HEALTHY)
        self.assertEqual(endpoint.type, "ollama")
        self.assertEqual(registry.routable(frozenset({"ollama"})), [endpoint])
        self.assertEqual(recovered, [endpoint])
        self.assertEqual(self.agent.sent[-1][1], b"http://h:1/")  # ollama's health path
        self._advance(5.0)
        self.assertEqual(detector.calls, 5)  # known now: never detected again
        self.successResultOf(service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_as_configured(self) -> None:
        """If an auto endpoint is detected, then its type, health and model URLs and
        response_format are those of the same endpoint configured with that type, configured
        URL overrides included."""
        for platform in ("ollama", "vllm", "lm-studio"):
            service, registry, endpoint = self._service(
                ScriptedDetector(platform), Lists({"/": b"", "/health": b"", "/v1/models": b""})
            )
            service.startService()
            self._advance()
            (configured,) = endpoints_from_config([replace(endpoint.config, type=platform)])
            self.assertEqual(endpoint.platform, configured.platform)
            self.assertFalse(endpoint.detecting)
            service.stopService()
        overridden = _auto(model_url="/custom/models")
        registry = EndpointRegistry([overridden], Clock())
        registry.set_detected(overridden, PROFILES.get("ollama"))  # type: ignore[arg-type]
        self.assertEqual(overridden.model_url, "http://h:1/custom/models")
        self.assertEqual(overridden.health_url, "http://h:1/")

    def test_detected_logged(self) -> None:
        """If a platform is found, then one structured event says which."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        service, registry, endpoint = self._service(
            ScriptedDetector("vllm"), Lists({"/health": b""})
        )
        service.startService()
        self._advance()
        found = [
            e for e in events if e.get("log_format") == "endpoint {endpoint} detected as {type}"
        ]
        self.assertEqual([(e["endpoint"], e["type"]) for e in found], [("auto", "vllm")])
        service.stopService()

    def test_health_of_detected_type_decides(self) -> None:
        """If the platform is found but its health path fails, then the type is known and the
        status is that health result, like a configured endpoint of that type."""
        service, registry, endpoint = self._service(ScriptedDetector("vllm"), Lists({}))
        service.startService()
        self._advance()
        self.assertEqual(endpoint.type, "vllm")
        self.assertEqual(registry.state(endpoint).status, EndpointStatus.UNHEALTHY)
        self.assertEqual(self.agent.sent[-1][1], b"http://h:1/health")
        service.stopService()

    def test_hung_detection_stays_detecting(self) -> None:
        """If detection never answers, then the guard ends the probe and the endpoint stays
        detecting (not offline)."""
        hanging = ScriptedDetector(None)
        hanging.detect = lambda endpoint: Deferred()  # type: ignore[method-assign]
        service, registry, endpoint = self._service(hanging, Lists({}))
        service.startService()
        self._advance(11.0)  # check_timeout 2 s: the guard is 5 x 2 + 1
        self.assertEqual(registry.state(endpoint).status, EndpointStatus.DETECTING)
        self.assertEqual(registry.state(endpoint).status_reason, "health check hung")
        service.stopService()

    def test_real_detector_with_auth_then_discovery(self) -> None:
        """If an auto endpoint with a bearer token fronts the fake Ollama, then detection and
        the health probe carry the token, and discovery then reads its /api/tags as Ollama's."""
        fake = FakeOllama(Clock(), [FakeModel("llama3.2:latest")])
        fake.required_token = TOKEN
        auth = AuthConfig("bearer", "Authorization", f"Bearer {TOKEN}")
        self.clock = Clock()
        self.agent = HostAgent({b"h:1": fake})
        endpoint = _auto(auth=auth)
        registry = EndpointRegistry([endpoint], self.clock)
        checker = HTTPHealthChecker(self.agent, self.clock, "1", random.Random(1))
        service = HealthService(registry, checker, self.clock, random.Random(2))
        catalogue = ModelCatalogue()
        discovery = DiscoveryService(
            registry, catalogue, self.agent, self.clock, ModelDiscoveryConfig(), "1"
        )
        service.startService()
        discovery.startService()
        self._advance()
        self._advance()
        self.assertEqual(registry.state(endpoint).status, EndpointStatus.HEALTHY)
        self.assertEqual(endpoint.type, "ollama")
        for _, _, headers in self.agent.sent:
            self.assertEqual(headers.getRawHeaders(b"authorization"), [f"Bearer {TOKEN}".encode()])
        self.assertEqual([m.name for m in catalogue.models_of(endpoint)], ["llama3.2:latest"])
        service.stopService()
        discovery.stopService()
