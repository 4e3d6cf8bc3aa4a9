"""The fake Ollama against the real one: the same SDK calls must cross the wire the same way.

The unit and e2e suites trust ``tests/fakes/ollama/``; this is what keeps that trust honest.
Two differences are deliberate and named in the fake's docstring: ``/api/show`` lists
``capabilities`` (newer Ollama does; olla reads them) and its ``model_info`` holds a few keys, not
the whole GGUF header; ``/v1/embeddings`` honours ``encoding_format: base64`` (newer Ollama and
OpenAI do; 0.5.4 always sends floats, which the OpenAI SDK also accepts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ollama
import openai
import pytest

from tests.fakes.process import FakeProcess, start_fake
from tests.real.backend import CHAT_MODEL, EMBED_MODEL, RealOllama
from tests.real.differential import compare_calls

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]
OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 6}
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 6}


@pytest.fixture(scope="module")
def fake(real_ollama: RealOllama) -> Iterator[FakeProcess]:
    with start_fake("--models", ",".join(real_ollama.models), "--version", "0.5.4") as process:
        yield process


def embed_model(real_ollama: RealOllama) -> str:
    return EMBED_MODEL if EMBED_MODEL in real_ollama.models else CHAT_MODEL


OLLAMA_CALLS: dict[str, Callable[[ollama.Client, str], Any]] = {
    "list": lambda c, _: c.list(),
    "ps": lambda c, _: c.ps(),
    "chat": lambda c, _: c.chat(model=CHAT_MODEL, messages=MESSAGES, options=OPTIONS),
    "chat-stream": lambda c, _: list(
        c.chat(model=CHAT_MODEL, messages=MESSAGES, options=OPTIONS, stream=True)
    ),
    "generate": lambda c, _: c.generate(model=CHAT_MODEL, prompt="Hello", options=OPTIONS),
    "generate-stream": lambda c, _: list(
        c.generate(model=CHAT_MODEL, prompt="Hello", options=OPTIONS, stream=True)
    ),
    "embed": lambda c, m: c.embed(model=m, input=["a", "b"]),
    "embeddings": lambda c, m: c.embeddings(model=m, prompt="a"),
}

OPENAI_CALLS: dict[str, Callable[[openai.OpenAI, str], Any]] = {
    "models": lambda c, _: list(c.models.list()),
    "chat": lambda c, _: c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **GREEDY),
    "chat-stream": lambda c, _: list(
        c.chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    ),
    "completions": lambda c, _: c.completions.create(model=CHAT_MODEL, prompt="Hello", **GREEDY),
    "embeddings-float": lambda c, m: c.embeddings.create(
        model=m, input=["a", "b"], encoding_format="float"
    ),
}


def preload(base: str) -> None:
    ollama.Client(host=base).generate(model=CHAT_MODEL)  # so that /api/ps lists it on both


@pytest.mark.parametrize("name", sorted(OLLAMA_CALLS))
def test_ollama_sdk_calls(real_ollama: RealOllama, fake: FakeProcess, name: str) -> None:
    """If the Ollama SDK makes a call to the real server and to the fake, then both answers have
    the same status, media type, structure and number of stream chunks."""
    bases = (real_ollama.url, fake.url)
    for base in bases:
        preload(base)
    model = embed_model(real_ollama)
    compare_calls(
        bases,
        lambda base, rec: ollama.Client(host=base, transport=rec),
        lambda client: OLLAMA_CALLS[name](client, model),
    )


@pytest.mark.parametrize("name", sorted(OPENAI_CALLS))
def test_openai_sdk_calls(real_ollama: RealOllama, fake: FakeProcess, name: str) -> None:
    """If the OpenAI SDK makes a call to the real server's /v1 and to the fake's, then both
    answers have the same status, media type, structure and number of SSE events."""
    model = embed_model(real_ollama)
    compare_calls(
        (real_ollama.url, fake.url),
        lambda base, rec: openai.OpenAI(
            base_url=base + "/v1", api_key="x", http_client=rec.client(), max_retries=0
        ),
        lambda client: OPENAI_CALLS[name](client, model),
    )


def test_show_keys(real_ollama: RealOllama, fake: FakeProcess) -> None:
    """If the SDK shows a model on both, then the same top-level keys and details come back,
    capabilities aside (the fake's deliberate addition)."""
    real = ollama.Client(host=real_ollama.url).show(CHAT_MODEL).model_dump(exclude_none=True)
    faked = ollama.Client(host=fake.url).show(CHAT_MODEL).model_dump(exclude_none=True)
    faked.pop("capabilities", None)
    real.pop("capabilities", None)
    assert set(faked) == set(real)
    assert set(faked["details"]) == set(real["details"])


def test_errors(real_ollama: RealOllama, fake: FakeProcess) -> None:
    """If an unknown model is asked for on each route, then the fake's status and error text
    are the real server's."""
    for route in ("chat", "generate", "show"):
        answers = []
        for base in (real_ollama.url, fake.url):
            client = ollama.Client(host=base)
            with pytest.raises(ollama.ResponseError) as raised:
                if route == "chat":
                    client.chat(model="nope:1b", messages=MESSAGES)
                elif route == "generate":
                    client.generate(model="nope:1b", prompt="x")
                else:
                    client.show("nope:1b")
            answers.append((raised.value.status_code, raised.value.error))
        assert answers[0] == answers[1], route
