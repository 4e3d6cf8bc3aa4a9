"""What a body needs (tools, vision, embeddings) and the candidates that can give it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from olla.config import EndpointConfig
from olla.fleet.endpoints import Endpoint, endpoints_from_config
from olla.fleet.models import ModelCatalogue, ModelInfo
from olla.profiles import builtin_profiles
from olla.proxy.needs import EMBEDDINGS, TOOLS, VISION, body_needs, narrow_by_needs
from olla.proxy.resource import ProviderRoute, ProxyResource
from olla.web.site import OllaRoot, OllaSite, RootResource
from tests.proxyharness import ClientConnection, Harness, http_request

IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CHAT = [{"role": "user", "content": "hi"}]


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


@pytest.mark.parametrize(
    ("body", "path", "needs"),
    [
        (_body(messages=CHAT), "/v1/chat/completions", set()),
        (_body(messages=CHAT, tools=[{"type": "function"}]), "/v1/chat/completions", {TOOLS}),
        (_body(messages=CHAT, tools=[]), "/api/chat", set()),
        (_body(messages=CHAT, tools=None), "/api/chat", set()),
        (_body(functions=[{"name": "f"}]), "/v1/chat/completions", {TOOLS}),
        (
            _body(messages=[{"role": "user", "content": "x", "images": ["AAAA"]}]),
            "/api/chat",
            {VISION},
        ),
        (_body(messages=[{"role": "user", "content": "x", "images": []}]), "/api/chat", set()),
        (_body(prompt="what is this", images=["AAAA"]), "/api/generate", {VISION}),
        (
            _body(messages=[{"role": "user", "content": [IMAGE_PART]}]),
            "/v1/chat/completions",
            {VISION},
        ),
        (
            _body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
            "/v1/chat/completions",
            set(),
        ),
        (
            _body(messages=[{"role": "user", "content": [IMAGE_PART]}], tools=[{"type": "x"}]),
            "/v1/chat/completions",
            {TOOLS, VISION},
        ),
        (_body(input="text"), "/v1/embeddings", {EMBEDDINGS}),
        (_body(input="text"), "/api/embed", {EMBEDDINGS}),
        (_body(prompt="text"), "/api/embeddings/", {EMBEDDINGS}),
        (_body(input="text"), "/v1/embeddings?x=1", {EMBEDDINGS}),
        (_body(input="text"), "/v1/responses", set()),  # "input" alone is not embeddings
        (None, "/api/embed", {EMBEDDINGS}),  # too large to parse: the path still counts
        (None, "/v1/chat/completions", set()),
        (b"{not json", "/v1/chat/completions", set()),
        (b"[1, 2]", "/api/chat", set()),
        (_body(messages="not a list", images="nope"), "/api/chat", set()),
    ],
)
def test_body_needs(body: bytes | None, path: str, needs: set[str]) -> None:
    """If a body asks for tools, carries images or hits an embeddings path, then that is
    what it needs; anything else needs nothing."""
    assert body_needs(body, path) == frozenset(needs)


def _fleet(models: Mapping[str, Sequence[str]]) -> tuple[list[Endpoint], ModelCatalogue]:
    configs = [EndpointConfig(url=f"http://{n}:1", name=n, type="ollama") for n in models]
    endpoints = endpoints_from_config(configs)
    catalogue = ModelCatalogue({"pic": ["llama3.2:latest"]})
    for endpoint in endpoints:
        names = models[endpoint.name]
        if names:
            catalogue.set_models(endpoint, [ModelInfo(n) for n in names], 0.0)
    return endpoints, catalogue


# text, vision, embeddings, and one whose models olla does not know yet
FLEET = {
    "text": ["llama3.2:latest"],
    "eyes": ["llava:7b", "llama3.2:latest"],
    "embed": ["nomic-embed-text:latest"],
    "blank": [],
}


def _narrow(needs: set[str], *names: str, model: str | None = None) -> list[str]:
    endpoints, catalogue = _fleet(FLEET)
    chosen = [ep for ep in endpoints if not names or ep.name in names]
    return [ep.name for ep in narrow_by_needs(chosen, frozenset(needs), catalogue, model)]


def test_narrow_to_known_capability() -> None:
    """If the body needs vision or embeddings and the catalogue knows which models have it,
    then only endpoints hosting such a model stay."""
    assert _narrow({VISION}) == ["eyes"]
    assert _narrow({EMBEDDINGS}) == ["embed"]


def test_nothing_known_nothing_narrowed() -> None:
    """If the catalogue knows no model with the need (tools today; vision among text-only
    endpoints), then the candidates stay as they were; a known need still narrows."""
    everyone = ["text", "eyes", "embed", "blank"]
    assert _narrow({TOOLS}) == everyone
    assert _narrow({VISION}, "text", "blank") == ["text", "blank"]
    assert _narrow({VISION, TOOLS}) == ["eyes"]
    assert _narrow(set()) == everyone


def test_nobody_fits_all_needs() -> None:
    """If no single model has every known need, then nothing is narrowed."""
    assert _narrow({VISION, EMBEDDINGS}) == ["text", "eyes", "embed", "blank"]


def test_requested_model_kept() -> None:
    """If the body names a model (or an alias of one), then its hosts stay whatever they can
    do: model routing comes next and must still find them."""
    assert _narrow({VISION}, model="llama3.2:latest") == ["text", "eyes"]
    assert _narrow({VISION}, model="LLAMA3.2:latest") == ["text", "eyes"]
    assert _narrow({VISION}, model="pic") == ["text", "eyes"]
    assert _narrow({VISION}, model="unknown") == ["eyes"]


def test_single_candidate() -> None:
    """If there is one candidate, then it stays."""
    assert _narrow({VISION}, "text") == ["text"]


class Named(Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        return json.dumps({"from": self.name}).encode()


class ProxyRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        names = ("text", "eyes", "embed")
        self.harness = h = Harness(
            {f"{n}:1": Named(n) for n in names},
            models={f"{n}:1": FLEET[n] for n in names},
        )
        profiles = builtin_profiles()
        everything = frozenset(p.name for p in profiles)
        route = ProviderRoute("proxy", everything, "", by_path=profiles)
        root = RootResource(OllaRoot({b"proxy": ProxyResource(route, h.deps)}), Resource())
        self.site = OllaSite(
            root, clock=h.clock, max_body_size=1 << 20, max_header_size=65536, timeout=0
        )

    def _send(self, path: str, body: Mapping[str, object]) -> str:
        raw = json.dumps(body).encode()
        client = ClientConnection(self.site, http_request("POST", path, raw))
        self.harness.pump()
        response = client.response()
        assert response is not None and response.status == 200, response
        answer: str = json.loads(response.body)["from"]
        return answer

    def test_proxy_route_narrowed_by_body(self) -> None:
        """If /olla/proxy/ gets an image chat or an embeddings call naming no model, then only
        an endpoint with a vision (embedding) model answers it; a plain chat goes anywhere."""
        for _ in range(3):
            image = {"messages": [{"role": "user", "content": [IMAGE_PART]}]}
            self.assertEqual(self._send("/olla/proxy/v1/chat/completions", image), "eyes")
            embed = {"input": "text"}
            self.assertEqual(self._send("/olla/proxy/v1/embeddings", embed), "embed")
        plain = {"messages": CHAT}
        seen = {self._send("/olla/proxy/v1/chat/completions", plain) for _ in range(6)}
        self.assertEqual(seen, {"text", "eyes", "embed"})
