"""The OpenAI Python SDK against the real Ollama's /v1 API, directly and through olla."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, EMBED_MODEL, RealOllama
from tests.real.differential import compare_calls

pytestmark = pytest.mark.e2e

PREFIXES = ["/olla/ollama/v1", "/olla/proxy/v1"]
MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 6}


def both_ways(
    real_ollama: RealOllama, olla: OllaDaemon, prefix: str, call: Callable[[openai.OpenAI], Any]
) -> tuple[Any, Any]:
    return compare_calls(
        (f"{real_ollama.url}/v1", f"{olla.url}{prefix}"),
        lambda base, recorder: openai.OpenAI(
            base_url=base, api_key="sk-test", http_client=recorder.client(), max_retries=0
        ),
        call,
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_models_list(real_ollama: RealOllama, olla: OllaDaemon, prefix: str) -> None:
    """If the SDK lists models through olla, then it sees the backend's ids."""
    direct, proxied = both_ways(real_ollama, olla, prefix, lambda c: list(c.models.list()))
    ids = sorted(m.id for m in proxied)
    assert ids == sorted(m.id for m in direct) == sorted(real_ollama.models)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat(real_ollama: RealOllama, olla: OllaDaemon, prefix: str) -> None:
    """If the SDK asks for a chat completion through olla, then one choice comes back with usage."""
    _, proxied = both_ways(
        real_ollama,
        olla,
        prefix,
        lambda c: c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **GREEDY),
    )
    assert proxied.choices[0].message.role == "assistant"
    assert proxied.usage.completion_tokens > 0


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_stream_with_usage(real_ollama: RealOllama, olla: OllaDaemon, prefix: str) -> None:
    """If the SDK streams a chat with include_usage through olla, then the same SSE events come
    back: deltas, a finish reason, a usage chunk with no choices, then [DONE]."""

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

    direct, proxied = both_ways(real_ollama, olla, prefix, stream)
    assert len(proxied) == len(direct) > 2
    assert proxied[-1].choices == [] and proxied[-1].usage.total_tokens > 0
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in proxied)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_completions(real_ollama: RealOllama, olla: OllaDaemon, prefix: str) -> None:
    """If the SDK asks for a legacy completion through olla, then a text choice comes back."""
    _, proxied = both_ways(
        real_ollama,
        olla,
        prefix,
        lambda c: c.completions.create(model=CHAT_MODEL, prompt="Hello", **GREEDY),
    )
    assert isinstance(proxied.choices[0].text, str)


@pytest.mark.parametrize("encoding", ["base64", "float"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_embeddings(real_ollama: RealOllama, olla: OllaDaemon, prefix: str, encoding: str) -> None:
    """If the SDK embeds through olla (base64 is its default), then the vectors are the
    backend's."""
    model = EMBED_MODEL if EMBED_MODEL in real_ollama.models else CHAT_MODEL
    kwargs: dict[str, Any] = {} if encoding == "base64" else {"encoding_format": "float"}
    direct, proxied = both_ways(
        real_ollama,
        olla,
        prefix,
        lambda c: c.embeddings.create(model=model, input=["a", "b"], **kwargs),
    )
    assert [e.embedding for e in proxied.data] == [e.embedding for e in direct.data]
    assert len(proxied.data) == 2 and len(proxied.data[0].embedding) > 0


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_model(real_ollama: RealOllama, olla: OllaDaemon, prefix: str) -> None:
    """If the SDK names a model no backend has, then NotFoundError through olla as directly."""
    errors = []

    def failing(client: openai.OpenAI) -> None:
        with pytest.raises(openai.NotFoundError) as raised:
            client.chat.completions.create(model="nope:1b", messages=MESSAGES)
        errors.append(raised.value)

    both_ways(real_ollama, olla, prefix, failing)
    assert all("nope:1b" in str(e) for e in errors)
