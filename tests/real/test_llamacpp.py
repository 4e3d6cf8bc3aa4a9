"""llama.cpp's own server behind olla: the same client checks as against the real Ollama.

The ``llama-server`` of ``bigdl-core-cpp==2.6.0`` runs beside the real Ollama; olla is given it
as ``type: auto`` and must find out it is llama.cpp, read its capacity, list its models and pass
the OpenAI SDK's calls through ``/olla/llamacpp/v1`` and ``/olla/proxy/v1`` so that they look
exactly as they do straight at the server (``differential.py``). This build predates llama.cpp's
Messages API, so Anthropic requests are translated; aider talks to it in OpenAI mode.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.clients.venvs import drive_anthropic
from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, EMBED_GGUF, LLAMA_EMBED_MODEL, RealLlamaServer
from tests.real.differential import compare_calls
from tests.real.test_aider import AIDER, run_aider

pytestmark = pytest.mark.e2e

PREFIXES = ["/olla/llamacpp", "/olla/proxy"]
MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 6}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def wait_capacity(olla: OllaDaemon, timeout: float = 60.0) -> dict[str, Any]:
    """The status rows once every endpoint's slots came from the backend (discovery reads
    /props just after the model list, so it may land a moment after the list does)."""
    deadline = time.monotonic() + timeout
    while True:
        status = get_json(olla.url + "/internal/status/endpoints")
        rows = {e["name"]: e for e in status["endpoints"]}
        if all(e["max_concurrency_source"] == "backend" for e in rows.values()):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"capacity not read from every backend after {timeout}s: {rows}")
        time.sleep(0.2)


def sdk_both_ways(
    server: RealLlamaServer, olla: OllaDaemon, prefix: str, call: Callable[[openai.OpenAI], Any]
) -> tuple[Any, Any]:
    return compare_calls(
        (f"{server.url}/v1", f"{olla.url}{prefix}/v1"),
        lambda base, recorder: openai.OpenAI(
            base_url=base, api_key="sk-test", http_client=recorder.client(), max_retries=0
        ),
        call,
    )


def test_detected_with_its_capacity(real_llama: RealLlamaServer, olla_llama: OllaDaemon) -> None:
    """If a llama-server is configured as ``type: auto``, then olla detects llama.cpp, and its
    status shows the slots and per-request context the server's own /props gives (its -np 2
    and -c 4096 shared by them), learnt from the backend, not configured."""
    rows = wait_capacity(olla_llama)
    chat = rows["llama-chat"]
    assert chat["type"] == "llamacpp" and chat["status"] == "healthy"
    assert chat["max_concurrency"] == real_llama.props["total_slots"] == 2
    assert chat["max_concurrency_source"] == "backend"
    n_ctx = real_llama.props["default_generation_settings"]["n_ctx"]
    assert chat["context_length"] == n_ctx == 2048
    if "llama-embed" in rows:
        assert rows["llama-embed"]["type"] == "llamacpp"
        assert rows["llama-embed"]["max_concurrency"] == 1
    olla_llama.wait_for_log("endpoint llama-chat detected as llamacpp")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_health(real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str) -> None:
    """If /health is asked through olla, then llama.cpp's own answer comes back."""
    _, proxied = compare_calls(
        (real_llama.url, f"{olla_llama.url}{prefix}"),
        lambda base, recorder: (base, recorder.client(timeout=30)),
        lambda client: client[1].get(client[0] + "/health"),
    )
    assert proxied.status_code == 200 and proxied.json() == {"status": "ok"}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_models_discovered(
    real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str
) -> None:
    """If the SDK lists models through olla, then it sees every model the llama-servers list
    (olla answers from what it discovered, in OpenAI's shape, without llama.cpp's ``meta``), and
    /olla/models places each on its server."""
    client = openai.OpenAI(base_url=f"{olla_llama.url}{prefix}/v1", api_key="x", max_retries=0)
    direct = [m["id"] for m in get_json(real_llama.url + "/v1/models")["data"]]
    expected = {CHAT_MODEL, *([LLAMA_EMBED_MODEL] if EMBED_GGUF.is_file() else [])}
    assert direct == [CHAT_MODEL]
    assert {m.id for m in client.models.list()} == expected
    unified = get_json(olla_llama.url + "/olla/models")["data"]
    where = {m["id"]: [a["endpoint"] for a in m["olla"]["availability"]] for m in unified}
    assert where[CHAT_MODEL] == ["llama-chat"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat(real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str) -> None:
    """If the SDK asks for a chat completion through olla, then it gets what the server gives
    straight: the same body structure, with text and usage."""
    _, proxied = sdk_both_ways(
        real_llama,
        olla_llama,
        prefix,
        lambda c: c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **GREEDY),
    )
    assert proxied.choices[0].message.role == "assistant"
    assert proxied.choices[0].message.content  # llama.cpp writes words (Ollama's build: noise)
    assert proxied.usage.completion_tokens > 0


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_stream_with_usage(
    real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str
) -> None:
    """If the SDK streams a chat through olla, then the same SSE events come back, one by one:
    deltas, then a last chunk with the finish reason and (llama.cpp's way) the usage."""

    def stream(client: openai.OpenAI) -> list[Any]:
        return list(
            client.chat.completions.create(
                model=CHAT_MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                **GREEDY,
            )
        )

    direct, proxied = sdk_both_ways(real_llama, olla_llama, prefix, stream)
    assert len(proxied) == len(direct) > 2
    assert proxied[-1].choices[0].finish_reason and proxied[-1].usage.total_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in proxied if c.choices)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_completions(real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str) -> None:
    """If the SDK asks for a legacy completion through olla, then a text choice comes back."""
    _, proxied = sdk_both_ways(
        real_llama,
        olla_llama,
        prefix,
        lambda c: c.completions.create(model=CHAT_MODEL, prompt="Hello", **GREEDY),
    )
    assert isinstance(proxied.choices[0].text, str)


@pytest.mark.parametrize("encoding", ["base64", "float"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_embeddings(
    real_llama_embed: RealLlamaServer, olla_llama: OllaDaemon, prefix: str, encoding: str
) -> None:
    """If the SDK embeds through olla (base64 is its default), then olla picks the server with
    the embedding model and the vectors are the ones it gives straight: 384 numbers, unit
    length."""
    kwargs: dict[str, Any] = {} if encoding == "base64" else {"encoding_format": "float"}
    direct, proxied = sdk_both_ways(
        real_llama_embed,
        olla_llama,
        prefix,
        lambda c: c.embeddings.create(model=LLAMA_EMBED_MODEL, input=["a", "b"], **kwargs),
    )
    assert [e.embedding for e in proxied.data] == [e.embedding for e in direct.data]
    vector = proxied.data[0].embedding
    assert len(vector) == 384 and abs(sum(x * x for x in vector) - 1.0) < 1e-3


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_model(real_llama: RealLlamaServer, olla_llama: OllaDaemon, prefix: str) -> None:
    """If the SDK names a model no server lists, then olla answers NotFoundError itself (a
    llama-server would answer any name with its own model)."""
    client = openai.OpenAI(base_url=f"{olla_llama.url}{prefix}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="nope:1b", messages=MESSAGES, max_tokens=1)
    assert "nope:1b" in str(raised.value)


def test_anthropic_sdk_translated(real_llama: RealLlamaServer, olla_llama: OllaDaemon) -> None:
    """If the Anthropic SDK creates, streams and counts tokens through olla against this
    llama-server (build b1, before llama.cpp's Messages API: it answers /v1/messages with 404),
    then olla translates and every call parses."""
    body = {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    assert real_llama.props["build_info"].startswith("b1-")
    assert httpx.post(real_llama.url + "/v1/messages", json=body, timeout=30).status_code == 404
    report = drive_anthropic(
        sys.executable, f"{olla_llama.url}/olla/anthropic", CHAT_MODEL, "--no-tools"
    )
    assert report["create"]["mode"] == "translation"
    assert report["create"]["type"] == "message"
    assert report["create"]["stop_reason"] in ("end_turn", "max_tokens")
    assert report["create"]["content"][0]["text"]  # llama.cpp writes real words
    assert report["create"]["usage"][0] > 0
    events = report["stream"]["events"]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events or "text" in events
    assert report["count_tokens"] >= 1
    assert report["unknown_model"] == {"status": 404, "type": "not_found_error"}


def test_anthropic_tools_translated(real_llama: RealLlamaServer, olla_llama: OllaDaemon) -> None:
    """If a Messages request with a tool goes through olla to this llama-server, then the
    translated answer is a valid message (a tool_use block with its input, or text). Streamed
    with tools, this build refuses ("Cannot use tools with stream"): olla hands that error on
    in Anthropic's envelope rather than failing in its own way."""
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    ask = {
        "model": CHAT_MODEL,
        "max_tokens": 48,
        "tools": [tool],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    }
    url = f"{olla_llama.url}/olla/anthropic/v1/messages"
    answer = httpx.post(url, json=ask, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-olla-mode"] == "translation"
    message = answer.json()
    assert message["type"] == "message" and message["content"]
    assert message["stop_reason"] in ("tool_use", "end_turn", "max_tokens")
    for block in message["content"]:
        assert block["type"] in ("text", "tool_use")
        if block["type"] == "tool_use":
            assert block["name"] == "get_weather" and isinstance(block["input"], dict)
    refused = httpx.post(url, json={**ask, "stream": True}, timeout=300)
    assert refused.status_code == 500
    assert refused.json()["error"]["message"] == "Cannot use tools with stream"


def test_aider_openai_mode(
    real_llama: RealLlamaServer, olla_llama: OllaDaemon, tmp_path: Path
) -> None:
    """If aider makes one turn through olla's llamacpp route in OpenAI mode, then it exits 0
    with a reply and token counts, as it does against the server directly."""
    if not AIDER.exists():
        pytest.skip(f"aider is not installed at {AIDER} (tests/real/install.sh)")
    direct = run_aider(tmp_path / "direct", "openai", real_llama.url + "/v1")
    proxied = run_aider(tmp_path / "proxied", "openai", olla_llama.url + "/olla/llamacpp/v1")
    for result in (direct, proxied):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Output tokens: ~" in result.stdout or "Tokens:" in result.stdout, result.stdout
        assert "APIError" not in result.stdout and "Retrying" not in result.stdout, result.stdout
    served = [e for e in olla_llama.events if e.get("path") == "/olla/llamacpp/v1/chat/completions"]
    assert any(e.get("status") == 200 and "duration_ms" in e for e in served)
