"""LangChain's Ollama chat model and its OpenAI-compatible chat model, pointed at olla."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, RealOllama
from tests.real.differential import Recorder, compare_calls

pytestmark = pytest.mark.e2e

PROMPT = "Say hi"


def chat_ollama(base: str, recorder: Recorder) -> ChatOllama:
    return ChatOllama(
        model=CHAT_MODEL,
        base_url=base,
        temperature=0,
        seed=7,
        num_predict=6,
        client_kwargs={"transport": recorder},
    )


def chat_openai(base: str, recorder: Recorder) -> ChatOpenAI:
    return ChatOpenAI(
        model=CHAT_MODEL,
        base_url=base,
        api_key="sk-test",  # type: ignore[arg-type]
        temperature=0,
        seed=7,
        max_tokens=6,
        max_retries=0,
        http_client=recorder.client(),
    )


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_chat_ollama(real_ollama: RealOllama, olla: OllaDaemon, stream: bool) -> None:
    """If ChatOllama talks to /olla/ollama, then invoke and stream give an AI message as they do
    against the backend."""

    def use(model: ChatOllama) -> list[Any]:
        return list(model.stream(PROMPT)) if stream else [model.invoke(PROMPT)]

    _, proxied = compare_calls((real_ollama.url, f"{olla.url}/olla/ollama"), chat_ollama, use)
    assert all(isinstance(part, AIMessage | AIMessageChunk) for part in proxied)
    assert proxied[-1].response_metadata.get("done") is True or stream


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize("prefix", ["/olla/ollama/v1", "/olla/openai/v1"])
def test_chat_openai(real_ollama: RealOllama, olla: OllaDaemon, prefix: str, stream: bool) -> None:
    """If ChatOpenAI talks to olla's OpenAI-compatible routes, then invoke and stream work."""

    def use(model: ChatOpenAI) -> list[Any]:
        return list(model.stream(PROMPT)) if stream else [model.invoke(PROMPT)]

    _, proxied = compare_calls((f"{real_ollama.url}/v1", f"{olla.url}{prefix}"), chat_openai, use)
    assert all(isinstance(part, AIMessage | AIMessageChunk) for part in proxied)
    assert "".join(str(part.content) for part in proxied)
