"""The fake Ollama against the real one: the same SDK calls must cross the wire the same way.

The unit and e2e suites trust ``tests/fakes/ollama/``; this is what keeps that trust honest.
Two differences are deliberate and named in the fake's docstring: ``/api/show`` lists
``capabilities`` (newer Ollama does; olla reads them) and its ``model_info`` holds a few keys, not
the whole GGUF header; ``/v1/embeddings`` honours ``encoding_format: base64`` (newer Ollama and
OpenAI do; 0.5.4 always sends floats, which the OpenAI SDK also accepts).

The fake's llama.cpp flavour (``--llamacpp``) is held to the real ``llama-server`` the same way on
the routes it adds (``/props``, ``/slots``, ``/health``, ``/v1/models`` with ``meta``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fakes.process import FakeProcess, start_fake
from tests.real.backend import CHAT_MODEL, EMBED_MODEL, RealLlamaServer, RealOllama
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


def _keys(document: Any) -> Any:
    """Keys and value types, recursively (what a client can rely on)."""
    if isinstance(document, dict):
        return {k: _keys(v) for k, v in document.items()}
    if isinstance(document, list):
        return [_keys(document[0])] if document else []
    return type(document).__name__


def test_llamacpp_flavour_matches_real_llama_server(real_llama: RealLlamaServer) -> None:
    """If the fake runs as llama.cpp (``--llamacpp``, ``--capacity 2`` as ``-np 2``), then what
    it answers on /props, /slots, /health and /v1/models is a faithful subset of the real
    llama-server's answers: the same keys with the same types, the same slot count and
    per-slot context, the same 501 for /slots without --slots, the same owner."""
    with start_fake("--models", CHAT_MODEL, "--llamacpp", "--capacity", "2") as llama_fake:
        for path in ("/props", "/v1/models", "/health"):
            real, fake_doc = get_json(real_llama.url + path), get_json(llama_fake.url + path)
            assert_subset(_keys(fake_doc), _keys(real), path)
        real_props, fake_props = (get_json(b + "/props") for b in (real_llama.url, llama_fake.url))
        for read in (
            lambda p: p["total_slots"],
            lambda p: p["default_generation_settings"]["n_ctx"],
            lambda p: p["build_info"],
        ):
            assert read(fake_props) == read(real_props)
        real_slots = httpx.get(real_llama.url + "/slots", timeout=10)
        fake_slots = httpx.get(llama_fake.url + "/slots", timeout=10)
        assert (fake_slots.status_code, fake_slots.json()) == (501, real_slots.json())
        assert real_slots.status_code == 501
        servers = (real_llama.url, llama_fake.url)
        owners = {m["owned_by"] for b in servers for m in get_json(b + "/v1/models")["data"]}
        assert owners == {"llamacpp"}


def get_json(url: str) -> Any:
    return httpx.get(url, timeout=10).json()


def assert_subset(fake: Any, real: Any, where: str) -> None:
    if isinstance(fake, dict):
        assert isinstance(real, dict), where
        for key, value in fake.items():
            assert key in real, f"{where}: {key}"
            assert_subset(value, real[key], f"{where}.{key}")
    elif isinstance(fake, list):
        assert isinstance(real, list) and len(fake) <= max(1, len(real)), where
        for item in fake:
            assert_subset(item, real[0], f"{where}[]")
    else:
        assert fake == real, where
