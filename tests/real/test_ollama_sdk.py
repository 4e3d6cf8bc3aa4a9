"""The Ollama Python SDK against the real Ollama, directly and through olla: the same answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ollama
import pytest

from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, EMBED_MODEL, RealOllama
from tests.real.differential import compare_calls

pytestmark = pytest.mark.e2e

# Greedy and short: the same tokens, so the same number of stream chunks, on every run.
OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 6}
MESSAGES = [{"role": "user", "content": "Say hi"}]


def both_ways(
    real_ollama: RealOllama, olla: OllaDaemon, call: Callable[[ollama.Client], Any]
) -> tuple[Any, Any]:
    """Make ``call`` aimed at the backend, then at olla; compare what crossed the wire."""
    return compare_calls(
        (real_ollama.url, f"{olla.url}/olla/ollama"),
        lambda base, recorder: ollama.Client(host=base, transport=recorder),
        call,
    )


def embed_model(real_ollama: RealOllama) -> str:
    return EMBED_MODEL if EMBED_MODEL in real_ollama.models else CHAT_MODEL


def test_list(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the SDK lists models through olla, then it sees the backend's models, entry for entry."""
    direct, proxied = both_ways(real_ollama, olla, lambda c: c.list())
    assert sorted(m.model for m in proxied.models) == sorted(real_ollama.models)
    # Ollama orders by modified time in whole seconds, so the suite's models may come either way
    assert sorted((m.model, m.details.quantization_level) for m in proxied.models) == sorted(
        (m.model, m.details.quantization_level) for m in direct.models
    )


def test_show(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the SDK shows a model through olla, then template, details and model_info come back."""
    direct, proxied = both_ways(real_ollama, olla, lambda c: c.show(CHAT_MODEL))
    assert proxied.details.family == direct.details.family == "llama"
    assert proxied.modelinfo == direct.modelinfo


def test_ps(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the SDK asks what is loaded through olla, then it gets the backend's running models."""
    ollama.Client(host=real_ollama.url).generate(model=CHAT_MODEL)  # the preload idiom
    _, proxied = both_ways(real_ollama, olla, lambda c: c.ps())
    assert CHAT_MODEL in [m.model for m in proxied.models]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat(real_ollama: RealOllama, olla: OllaDaemon, stream: bool) -> None:
    """If the SDK chats through olla, streamed or not, then it gets the same reply structure and,
    streamed, the same number of NDJSON chunks ending in a done line."""

    def chat(client: ollama.Client) -> list[Any]:
        reply = client.chat(model=CHAT_MODEL, messages=MESSAGES, options=OPTIONS, stream=stream)
        return list(reply) if stream else [reply]

    _, proxied = both_ways(real_ollama, olla, chat)
    assert proxied[-1].done is True
    assert proxied[-1].done_reason in ("stop", "length")
    assert all(part.message.role == "assistant" for part in proxied)
    if stream:
        assert len(proxied) > 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_generate(real_ollama: RealOllama, olla: OllaDaemon, stream: bool) -> None:
    """If the SDK generates through olla, streamed or not, then it gets the same structure."""

    def generate(client: ollama.Client) -> list[Any]:
        reply = client.generate(model=CHAT_MODEL, prompt="Hello", options=OPTIONS, stream=stream)
        return list(reply) if stream else [reply]

    _, proxied = both_ways(real_ollama, olla, generate)
    assert proxied[-1].done is True
    assert isinstance(proxied[-1].eval_count, int)


def test_embed(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the SDK embeds two inputs through olla, then it gets two vectors of the model's size."""
    model = embed_model(real_ollama)
    direct, proxied = both_ways(real_ollama, olla, lambda c: c.embed(model=model, input=["a", "b"]))
    assert len(proxied.embeddings) == 2
    assert len(proxied.embeddings[0]) == len(direct.embeddings[0]) > 0
    assert proxied.embeddings == direct.embeddings


def test_embeddings(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the SDK uses the legacy /api/embeddings through olla, then one vector comes back."""
    model = embed_model(real_ollama)
    direct, proxied = both_ways(real_ollama, olla, lambda c: c.embeddings(model=model, prompt="a"))
    assert list(proxied.embedding) == list(direct.embedding)
    assert len(proxied.embedding) > 0


@pytest.mark.parametrize("method", ["chat", "generate", "show", "embed"])
def test_unknown_model(real_ollama: RealOllama, olla: OllaDaemon, method: str) -> None:
    """If the SDK names a model no backend has, then it raises ResponseError 404 through olla just
    as it does against the backend."""
    calls: dict[str, Callable[[ollama.Client], Any]] = {
        "chat": lambda c: c.chat(model="nope:1b", messages=MESSAGES),
        "generate": lambda c: c.generate(model="nope:1b", prompt="x"),
        "show": lambda c: c.show("nope:1b"),
        "embed": lambda c: c.embed(model="nope:1b", input="x"),
    }
    errors = []

    def failing(client: ollama.Client) -> None:
        with pytest.raises(ollama.ResponseError) as raised:
            calls[method](client)
        errors.append(raised.value)

    both_ways(real_ollama, olla, failing)
    assert [e.status_code for e in errors] == [404, 404]
    assert all("nope:1b" in e.error for e in errors)
