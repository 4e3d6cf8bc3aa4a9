"""The Anthropic SDK (2.x and a 0.x release) through olla: passthrough to a fake Ollama that
speaks ``/v1/messages`` (0.14.0), translation to a fake OpenAI-compatible backend."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.venvs import ClientUnavailable, client_python, drive_anthropic
from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

NATIVE = "llama3.2:latest"  # on A, an Ollama new enough to speak Anthropic: passthrough
OPENAI = "qwen2.5:7b"  # on B, an OpenAI-compatible server: translation
SDK_0X = "anthropic==0.125.0"  # sends x-api-key (the 2.x line sends Authorization: Bearer)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProcess]]:
    with (
        start_fake("--models", NATIVE, "--name", "A", "--version", "0.14.0") as a,
        start_fake("--models", OPENAI, "--name", "B") as b,
    ):
        yield {"A": a, "B": b}


@pytest.fixture(scope="module")
def olla(
    fakes: dict[str, FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    endpoints = [
        ollama_endpoint("A", fakes["A"].url),
        {**ollama_endpoint("B", fakes["B"].url), "type": "openai-compatible"},
    ]
    extra = {
        "translators": {"anthropic": {"max_message_size": 65536}},
        "model_aliases": {"claude-sonnet": [NATIVE], "claude-haiku": [OPENAI]},
    }
    with running_olla(tmp_path_factory.mktemp("olla"), endpoints, extra=extra) as daemon:
        yield daemon


@pytest.fixture(scope="module", params=["2.x", "0.x"])
def sdk_python(request: pytest.FixtureRequest) -> str:
    if request.param == "2.x":
        return sys.executable
    try:
        return str(client_python(SDK_0X))
    except ClientUnavailable as why:
        pytest.skip(f"{SDK_0X} cannot be installed here: {why}")


TEXT_EVENTS = {"message_start", "content_block_start", "content_block_stop", "message_stop"}


@pytest.mark.parametrize("model", [NATIVE, OPENAI], ids=["passthrough", "translation"])
def test_sdk_calls(
    olla: OllaDaemon, fakes: dict[str, FakeProcess], sdk_python: str, model: str
) -> None:
    """If the SDK creates, streams, runs a tool round trip and counts tokens through olla, then
    every call parses, whether olla passes the request through or translates it."""
    for fake in fakes.values():
        fake.reset()
    report = drive_anthropic(sdk_python, f"{olla.url}/olla/anthropic", model, timeout=120)
    assert report["sdk"].startswith("2." if sdk_python == sys.executable else "0.")
    create = report["create"]
    assert (create["type"], create["role"]) == ("message", "assistant")
    assert create["mode"] == ("passthrough" if model == NATIVE else "translation")
    assert create["content"][0]["type"] == "text" and create["content"][0]["text"]
    assert create["stop_reason"] in ("end_turn", "max_tokens")
    stream = report["stream"]
    assert TEXT_EVENTS <= set(stream["events"])
    assert stream["events"][0] == "message_start" and stream["events"][-1] == "message_stop"
    assert stream["content"][0]["text"]
    tool = report["tool_use"]
    assert tool["stop_reason"] == "tool_use"
    assert tool["calls"] == [{"name": "get_weather", "input": {"city": "x"}}]
    assert "input_json" in tool["events"] or "content_block_delta" in tool["events"]
    assert report["tool_result"] == {"stop_reason": "end_turn", "content_types": ["text"]}
    assert report["count_tokens"] >= 1
    assert report["unknown_model"] == {"status": 404, "type": "not_found_error"}

    native = fakes["A"].requests("/v1/messages")
    translated = fakes["B"].requests("/v1/chat/completions")
    if model == NATIVE:
        assert len(native) == 4 and not translated
        for seen in native:
            headers = {k.lower() for k in seen["headers"]}
            assert "anthropic-version" in headers
            assert not headers & {"authorization", "x-api-key"}  # the client's key stays here
    else:
        assert len(translated) == 4 and not native
        asked = json.loads(translated[2]["body"])
        assert asked["tools"][0]["function"]["name"] == "get_weather"
        assert asked["stream"] is True and asked["messages"][-1]["role"] == "user"


@pytest.mark.parametrize(
    ("model", "mode", "endpoint"),
    [(NATIVE, "passthrough", "A"), (OPENAI, "translation", "B")],
)
def test_mode_headers(olla: OllaDaemon, model: str, mode: str, endpoint: str) -> None:
    """If a message goes through olla, then X-Olla-Mode says how and X-Olla-Endpoint where."""
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{olla.url}/olla/anthropic/v1/messages", json=body, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-olla-mode"] == mode
    assert response.headers["x-olla-endpoint"] == endpoint
    assert response.json()["type"] == "message"


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": NATIVE, "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid"),
        ({"model": "", "max_tokens": 5, "messages": []}, 400, "invalid"),
        ("not json", 400, "invalid"),
        (
            {
                "model": NATIVE,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x" * 70000}],
            },
            413,
            "request_too_large",
        ),
    ],
    ids=["no-max-tokens", "no-model", "bad-json", "oversized"],
)
def test_errors_in_anthropic_envelope(
    olla: OllaDaemon, body: object, status: int, kind: str
) -> None:
    """If a request is invalid or too large, then the answer is Anthropic's error envelope with
    the status's type and olla's request id, and no backend is asked."""
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = httpx.post(
        f"{olla.url}/olla/anthropic/v1/messages",
        content=raw,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"].startswith(kind)
    assert error["request_id"] == response.headers["x-olla-request-id"]
    assert response.headers["request-id"] == error["request_id"]


def test_backend_failure_is_an_anthropic_error(
    olla: OllaDaemon, fakes: dict[str, FakeProcess]
) -> None:
    """If the translated backend answers 500, then the client gets 500 api_error with the
    backend's message, in Anthropic's envelope."""
    body = {"model": OPENAI, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{olla.url}/olla/anthropic/v1/messages",
        json=body,
        headers={"X-Fake-Status": "500"},
        timeout=30,
    )
    assert response.status_code == 500
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["message"] != ""


@pytest.mark.parametrize(
    ("alias", "model", "fake", "path"),
    [
        ("claude-sonnet", NATIVE, "A", "/v1/messages"),
        ("claude-haiku", OPENAI, "B", "/v1/chat/completions"),
    ],
    ids=["passthrough", "translation"],
)
def test_aliases(
    olla: OllaDaemon,
    fakes: dict[str, FakeProcess],
    alias: str,
    model: str,
    fake: str,
    path: str,
) -> None:
    """If a Claude client asks for an alias, then the backend gets the model it knows."""
    fakes[fake].reset()
    body = {"model": alias, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{olla.url}/olla/anthropic/v1/messages", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-olla-endpoint"] == fake
    [seen] = fakes[fake].requests(path)
    assert json.loads(seen["body"])["model"] == model


def test_models_and_stats(olla: OllaDaemon) -> None:
    """If a client lists Anthropic models, then both backends' models are there in Anthropic's
    shape; the translator stats count passthrough and translation."""
    models = httpx.get(f"{olla.url}/olla/anthropic/v1/models", timeout=10).json()
    assert {m["id"] for m in models["data"]} == {NATIVE, OPENAI}
    assert all(m["type"] == "model" for m in models["data"])
    assert models["has_more"] is False
    stats = httpx.get(f"{olla.url}/internal/stats/translators", timeout=10).json()
    [entry] = [t for t in stats["translators"] if t["translator_name"] == "anthropic"]
    assert entry["passthrough_requests"] >= 1 and entry["translation_requests"] >= 1
    assert stats["summary"]["total_requests"] == entry["total_requests"]


def test_backend_dies_mid_stream(olla: OllaDaemon) -> None:
    """If the translated backend's stream is cut after two chunks, then the client's SSE ends
    with one Anthropic error event and a clean end of body, never a hang."""
    body = {
        "model": OPENAI,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = httpx.post(
        f"{olla.url}/olla/anthropic/v1/messages",
        json=body,
        headers={"X-Fake-Drop-After": "2", "X-Fake-Chunks": "6"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start"
    assert names[-1] == "error" and names.count("error") == 1
    assert "message_stop" not in names


def test_disabled_translator_has_no_routes(fakes: dict[str, FakeProcess], tmp_path: Path) -> None:
    """If translators.anthropic.enabled is false, then /olla/anthropic/ does not exist (404) and
    the other routes still work."""
    extra = {"translators": {"anthropic": {"enabled": False}}}
    endpoints = [ollama_endpoint("A", fakes["A"].url)]
    with running_olla(tmp_path, endpoints, extra=extra) as daemon:
        body = {"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        missing = httpx.post(f"{daemon.url}/olla/anthropic/v1/messages", json=body, timeout=10)
        assert missing.status_code == 404
        assert httpx.get(f"{daemon.url}/olla/ollama/api/tags", timeout=10).status_code == 200
