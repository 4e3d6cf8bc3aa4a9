"""``type: auto`` across real processes: the platform is learnt, then routed as that type."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-auto-token"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProcess]]:
    started = {
        "ollama": start_fake("--models", "m-ollama", "--name", "ollama"),
        # the fake's OpenAI-only mode also serves LM Studio's /api/v0/models
        "openai": start_fake(
            "--models", "m-openai", "--name", "openai", "--openai-only", "--require-token", TOKEN
        ),
        "locked": start_fake("--models", "m-locked", "--openai-only", "--require-token", TOKEN),
        # a plain OpenAI-compatible server: /v1/* and nothing of any platform's own
        "plain": start_fake("--models", "m-plain", "--openai-only", "--no-lmstudio-api"),
    }
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture(scope="module")
def olla(
    fakes: dict[str, FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    directory = tmp_path_factory.mktemp("auto")
    auth = {"type": "bearer", "token": TOKEN}
    endpoints = [
        ollama_endpoint("auto-ollama", fakes["ollama"].url, type="auto"),
        ollama_endpoint("auto-openai", fakes["openai"].url, type="auto", auth=auth),
        # its token is not configured: nothing answers, so it stays undetected
        ollama_endpoint("auto-locked", fakes["locked"].url, type="auto"),
        ollama_endpoint("auto-plain", fakes["plain"].url, type="auto"),
    ]
    with running_olla(directory, endpoints, wait_models=False) as daemon:
        for name in ("auto-ollama", "auto-openai", "auto-plain"):
            daemon.wait_for_log(f"endpoint {name} serves")
        yield daemon


def _by_name(daemon: OllaDaemon) -> dict[str, dict[str, object]]:
    status = httpx.get(f"{daemon.url}/internal/status/endpoints", timeout=10).json()
    return {e["name"]: e for e in status["endpoints"]}


def test_detected_types(olla: OllaDaemon) -> None:
    """If auto endpoints front a fake Ollama and the token-protected OpenAI-only fake, then
    they are detected as ollama and lm-studio (with the token), and the one without its token
    shows detecting with a reason and no secret."""
    olla.wait_for_log("endpoint auto-ollama detected as ollama")
    olla.wait_for_log("endpoint auto-openai detected as lm-studio")
    olla.wait_for_log("endpoint auto-plain detected as openai-compatible")
    endpoints = _by_name(olla)
    assert endpoints["auto-plain"]["type"] == "openai-compatible"
    assert (endpoints["auto-ollama"]["type"], endpoints["auto-ollama"]["status"]) == (
        "ollama",
        "healthy",
    )
    assert (endpoints["auto-openai"]["type"], endpoints["auto-openai"]["status"]) == (
        "lm-studio",
        "healthy",
    )
    locked = endpoints["auto-locked"]
    assert (locked["type"], locked["status"]) == ("auto", "detecting")
    assert "check auth" in str(locked["status_reason"])
    assert TOKEN not in olla.output()


def test_routed_as_detected_type(olla: OllaDaemon, fakes: dict[str, FakeProcess]) -> None:
    """If the platforms are known, then /olla/ollama/api/chat reaches the Ollama and
    /olla/lmstudio/ the other, and their models come from the detected model lists."""
    response = httpx.post(
        f"{olla.url}/olla/ollama/api/chat",
        json={"model": "m-ollama", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-olla-endpoint"] == "auto-ollama"
    assert response.headers["x-olla-backend-type"] == "ollama"
    response = httpx.post(
        f"{olla.url}/olla/lmstudio/v1/chat/completions",
        json={"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-olla-endpoint"] == "auto-openai"
    tags = httpx.get(f"{olla.url}/olla/ollama/api/tags", timeout=10).json()
    assert [m["name"] for m in tags["models"]] == ["m-ollama"]
    listed = fakes["openai"].requests("/api/v0/models")
    assert listed
    assert all(r["headers"]["authorization"] == [f"Bearer {TOKEN}"] for r in listed)


def test_nothing_routed_while_detecting(olla: OllaDaemon, fakes: dict[str, FakeProcess]) -> None:
    """If an endpoint is still detecting, then even a request that names no model (so any
    OpenAI-compatible endpoint may take it) never reaches it."""
    seen = set()
    for _ in range(9):
        response = httpx.post(
            f"{olla.url}/olla/openai/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        seen.add(response.headers["x-olla-endpoint"])
    assert seen == {"auto-ollama", "auto-openai", "auto-plain"}
    assert fakes["locked"].requests("/v1/chat/completions") == []
