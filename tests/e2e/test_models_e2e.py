"""Model-aware routing across real processes: two Ollamas and an OpenAI-style server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProcess]]:
    started = {
        "A": start_fake("--models", "llama3.2:latest,shared:7b", "--name", "A"),
        "B": start_fake("--models", "shared:7b", "--loaded", "shared:7b", "--name", "B"),
        "C": start_fake("--models", "test-model", "--name", "C", "--openai-only"),
    }
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


def _endpoints(fakes: dict[str, FakeProcess]) -> list[dict[str, Any]]:
    return [
        ollama_endpoint("A", fakes["A"].url),
        ollama_endpoint("B", fakes["B"].url),
        ollama_endpoint("C", fakes["C"].url, type="openai-compatible"),
    ]


def _chat(daemon: OllaDaemon, model: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/olla/ollama/api/chat",
        json={"model": model, "messages": [], "stream": False},
        timeout=10,
    )


def test_catalogue_and_routing(tmp_path: Path, fakes: dict[str, FakeProcess]) -> None:
    """If A has llama3.2 and shared, B has shared loaded and C (OpenAI) has test-model, then
    tags list each Ollama model once, llama3.2 always reaches A, shared goes to the warm B,
    an unknown model is a 404 that reaches no backend, and with A down llama3.2 is a 503."""
    with running_olla(tmp_path, _endpoints(fakes)) as daemon:
        tags = httpx.get(f"{daemon.url}/olla/ollama/api/tags", timeout=10).json()["models"]
        assert sorted(m["name"] for m in tags) == ["llama3.2:latest", "shared:7b"]
        sdk = ollama.Client(host=f"{daemon.url}/olla/ollama")
        assert sorted(m.model for m in sdk.list().models) == ["llama3.2:latest", "shared:7b"]
        everything = httpx.get(f"{daemon.url}/olla/openai/v1/models", timeout=10).json()
        assert sorted(m["id"] for m in everything["data"]) == [
            "llama3.2:latest",
            "shared:7b",
            "test-model",
        ]
        for _ in range(6):
            response = _chat(daemon, "llama3.2:latest")
            assert response.headers["x-olla-endpoint"] == "A"
        for _ in range(6):
            response = _chat(daemon, "shared:7b")
            assert response.headers["x-olla-endpoint"] == "B"
        assert response.headers["x-olla-routing-reason"] == "model_loaded"

        for fake in fakes.values():
            fake.reset()
        missing = _chat(daemon, "nope:1b")
        assert missing.status_code == 404
        assert missing.headers["x-olla-routing-reason"] == "model_not_found"
        assert list(missing.json()) == ["error"]
        assert missing.headers["x-olla-routing-decision"] == "rejected"
        assert all(
            not [r for r in fake.requests() if r["path"] == "/api/chat"] for fake in fakes.values()
        )

        fakes["A"].stop()
        first = _chat(daemon, "llama3.2:latest")  # the failed attempt marks A offline
        assert first.status_code in (502, 503)
        down = _chat(daemon, "llama3.2:latest")
        assert down.status_code == 503
        assert "model_unavailable" in down.json()["error"]


def test_pulled_model_routable_within_interval(
    tmp_path: Path, fakes: dict[str, FakeProcess]
) -> None:
    """If a model is pulled on a backend after startup, then it is routable within one
    discovery interval."""
    extra = {"discovery": {"model_discovery": {"interval": "1s"}}}
    with running_olla(tmp_path, _endpoints(fakes), extra=extra) as daemon:
        assert _chat(daemon, "fresh:1b").status_code == 404
        fakes["B"].set_state(models=["shared:7b", "fresh:1b"])
        deadline = time.monotonic() + 2.5
        while _chat(daemon, "fresh:1b").status_code != 200:
            assert time.monotonic() < deadline, "not routable within one discovery interval"
            time.sleep(0.05)
        assert _chat(daemon, "fresh:1b").headers["x-olla-endpoint"] == "B"


def test_discovery_strategy_refreshes_on_miss(
    tmp_path: Path, fakes: dict[str, FakeProcess]
) -> None:
    """If the discovery strategy refreshes on a miss, then a freshly pulled model routes at
    once."""
    extra = {
        "model_registry": {
            "routing_strategy": {
                "type": "discovery",
                "options": {"discovery_refresh_on_miss": True, "discovery_timeout": "2s"},
            }
        }
    }
    with running_olla(tmp_path, _endpoints(fakes), extra=extra) as daemon:
        fakes["A"].set_state(models=["llama3.2:latest", "shared:7b", "fresh:1b"])
        response = _chat(daemon, "fresh:1b")
        assert response.status_code == 200
        assert response.headers["x-olla-endpoint"] == "A"
        assert response.headers["x-olla-routing-strategy"] == "discovery"


def test_alias_end_to_end(tmp_path: Path, fakes: dict[str, FakeProcess]) -> None:
    """If an alias maps to a model, then the backend receives its own name and the client the
    routing headers."""
    extra = {"model_aliases": {"house-llm": ["llama3.2:latest"]}}
    with running_olla(tmp_path, _endpoints(fakes), extra=extra) as daemon:
        fakes["A"].reset()
        response = _chat(daemon, "House-LLM")
        assert response.status_code == 200
        assert response.headers["x-olla-routing-strategy"] == "alias"
        assert response.headers["x-olla-model"] == "house-llm"
        chat = [r for r in fakes["A"].requests() if r["path"] == "/api/chat"][-1]
        assert json.loads(chat["body"])["model"] == "llama3.2:latest"


def test_models_listing_formats(tmp_path: Path, fakes: dict[str, FakeProcess]) -> None:
    """If /olla/models is asked in each format, then it answers; a bad format is a 400."""
    with running_olla(tmp_path, _endpoints(fakes)) as daemon:
        unified = httpx.get(f"{daemon.url}/olla/models", timeout=10).json()
        shared = [m for m in unified["data"] if m["id"] == "shared:7b"][0]
        states = {a["endpoint"]: a["state"] for a in shared["olla"]["availability"]}
        assert states == {"A": "available", "B": "loaded"}
        ollama_fmt = httpx.get(f"{daemon.url}/olla/models?format=ollama", timeout=10).json()
        assert "models" in ollama_fmt
        detail = httpx.get(f"{daemon.url}/olla/models/shared:7b", timeout=10).json()
        assert detail["endpoints"] == ["A", "B"]
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{daemon.url}/olla/models?format=xml", timeout=10)
        assert raised.value.code == 400
        status = httpx.get(f"{daemon.url}/internal/status/models", timeout=10).json()
        assert status["total_models"] == 3 and status["total_endpoints"] == 3
        assert sorted(status["models_by_family"]["llama"]) == ["llama3.2:latest", "shared:7b"]
