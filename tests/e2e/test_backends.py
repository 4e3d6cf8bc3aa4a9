"""Seven backend types behind one olla: provider routes, the universal route, backend auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

TYPES = ("lm-studio", "vllm", "llamacpp", "sglang", "litellm", "openai-compatible")
PREFIX = {
    "ollama": "ollama",
    "lm-studio": "lmstudio",
    "vllm": "vllm",
    "llamacpp": "llamacpp",
    "sglang": "sglang",
    "litellm": "litellm",
    "openai-compatible": "openai-compatible",
}
TOKEN = "s3cret-vllm-token"


@pytest.fixture(scope="module")
def fleet() -> Iterator[dict[str, FakeProcess]]:
    fakes = {"ollama": start_fake("--models", "shared,m-ollama", "--name", "ollama")}
    for kind in TYPES:
        extra = ["--require-token", TOKEN] if kind == "vllm" else []
        fakes[kind] = start_fake(
            "--models", f"shared,m-{kind}", "--name", kind, "--openai-only", *extra
        )
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop()


def _endpoints(fleet: dict[str, FakeProcess], token_file: Path | None) -> list[dict[str, Any]]:
    out = []
    for kind, fake in fleet.items():
        endpoint = ollama_endpoint(kind, fake.url, type=kind)
        if kind == "vllm" and token_file is not None:
            endpoint["auth"] = {"type": "bearer", "token_file": str(token_file)}
        out.append(endpoint)
    return out


def _chat(daemon: OllaDaemon, path: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}{path}",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


@pytest.fixture(scope="module")
def olla(
    fleet: dict[str, FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    directory = tmp_path_factory.mktemp("backends")
    token_file = directory / "vllm.token"
    token_file.write_text(TOKEN + "\n")
    (directory / "profiles").mkdir()
    (directory / "profiles" / "ollama.yaml").write_text(
        "name: ollama\nrouting: {prefixes: [ollama, ai]}\n"
        "api: {openai_compatible: true, paths: [/, /api/chat, /api/generate, /api/tags, "
        "/api/show, /v1/models, /v1/chat/completions], health_check_path: /, "
        "model_discovery_path: /api/tags}\nrequest: {response_format: ollama}\n"
    )
    with running_olla(directory, _endpoints(fleet, token_file)) as daemon:
        yield daemon


def test_provider_routes_stay_in_their_type(olla: OllaDaemon) -> None:
    """If a model every backend has is asked through a provider prefix, then only that
    prefix's type answers (fail-closed)."""
    for kind, prefix in PREFIX.items():
        path = "/api/chat" if kind == "ollama" else "/v1/chat/completions"
        # /olla/openai-compatible/ is inclusive (any OpenAI-compatible type), so ask it for a
        # model only that server has
        model = f"m-{kind}" if kind == "openai-compatible" else "shared"
        for _ in range(3):
            response = _chat(olla, f"/olla/{prefix}{path}", model)
            assert response.status_code == 200, (kind, response.text)
            assert response.headers["x-olla-backend-type"] == kind


def test_universal_route(olla: OllaDaemon) -> None:
    """If /olla/proxy/ is used, then Ollama paths reach only Ollama and OpenAI paths reach
    the endpoint that hosts the model."""
    for _ in range(4):
        response = _chat(olla, "/olla/proxy/api/chat", "shared")
        assert response.headers["x-olla-backend-type"] == "ollama"
    for kind in TYPES:
        response = _chat(olla, "/olla/proxy/v1/chat/completions", f"m-{kind}")
        assert response.status_code == 200
        assert response.headers["x-olla-endpoint"] == kind


def test_openai_listing_has_everything(olla: OllaDaemon) -> None:
    """If /olla/openai/v1/models is asked, then every backend's models are there."""
    listing = httpx.get(f"{olla.url}/olla/openai/v1/models", timeout=10).json()
    ids = {m["id"] for m in listing["data"]}
    assert ids == {"shared", "m-ollama", *(f"m-{kind}" for kind in TYPES)}


def test_custom_profile_prefix(olla: OllaDaemon) -> None:
    """If a user profile gives Ollama the extra prefix ai, then /olla/ai/api/chat works."""
    response = _chat(olla, "/olla/ai/api/chat", "m-ollama")
    assert response.status_code == 200
    assert response.headers["x-olla-backend-type"] == "ollama"


def test_unknown_prefix_and_redirect(olla: OllaDaemon) -> None:
    """If a prefix is unknown, then 404; a known prefix without its slash redirects."""
    assert httpx.get(f"{olla.url}/olla/tgi/v1/models", timeout=10).status_code == 404
    response = httpx.get(f"{olla.url}/olla/vllm", timeout=10)
    assert response.status_code == 301 and response.headers["location"] == "/olla/vllm/"


def test_backend_token_used_and_never_shown(olla: OllaDaemon) -> None:
    """If a backend demands a bearer token from token_file, then olla sends it on requests,
    probes and discovery, and the token appears in no status page and no log line."""
    response = _chat(olla, "/olla/vllm/v1/chat/completions", "m-vllm")
    assert response.status_code == 200
    for path in ("/internal/status", "/internal/status/endpoints", "/internal/status/models"):
        assert TOKEN not in httpx.get(f"{olla.url}{path}", timeout=10).text
    assert TOKEN not in olla.output()


def test_missing_token_is_config_error(fleet: dict[str, FakeProcess], tmp_path: Path) -> None:
    """If the token is not configured, then the endpoint shows config_error."""
    with running_olla(tmp_path, _endpoints({"vllm": fleet["vllm"]}, None), wait_models=False) as d:
        d.wait_for_log("vllm is now config_error")
        status = httpx.get(f"{d.url}/internal/status/endpoints", timeout=10).json()
        (endpoint,) = status["endpoints"]
        assert endpoint["status"] == "config_error"
        assert json.dumps(status).count(TOKEN) == 0
