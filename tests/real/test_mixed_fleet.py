"""A mixed fleet: the real Ollama and a real llama-server behind one olla, serving the same model.

llama-server is started with ``--alias smollm2:135m``, Ollama's name for the same weights, so
``/olla/models`` has one model on two kinds of server. The embedding model keeps each server's
own name (``all-minilm:l6-v2``, ``all-minilm-l6-v2``) and olla's ``model_aliases`` joins them.
A request for the shared model fails over from one kind to the other when the first dies: the
dying one is made the first choice (priority balancer) and olla's health checks are slowed down,
so it is the request itself that finds the dead server and hands over.
"""

from __future__ import annotations

import json
import math
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.daemon import OllaDaemon, running_olla
from tests.real.backend import (
    CHAT_MODEL,
    EMBED_MODEL,
    LLAMA_EMBED_MODEL,
    RealLlamaServer,
    RealOllama,
    kill_group,
    running_llama_server,
    smollm2,
)
from tests.real.conftest import llama_endpoint

pytestmark = pytest.mark.e2e

SHARED_EMBED = "all-minilm"
CHAT: dict[str, Any] = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 4,
}
PATIENT = {"response_header_timeout": "300s", "read_timeout": "300s"}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def ollama_entry(name: str, url: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "url": url,
        "type": "ollama",
        "check_interval": "3s",
        "check_timeout": "2s",
        **extra,
    }


@pytest.fixture(scope="module")
def mixed(
    real_ollama: RealOllama,
    real_llama: RealLlamaServer,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OllaDaemon]:
    """One olla over the real Ollama, the chat llama-server and (where it runs) the embedding
    one; round robin without warm routing, so that every host of a model takes its turn."""
    endpoints = [
        ollama_entry("real-ollama", real_ollama.url),
        llama_endpoint("real-llama", real_llama.url),
    ]
    aliases = {}
    if EMBED_MODEL in real_ollama.models:
        embed: RealLlamaServer = request.getfixturevalue("real_llama_embed")
        endpoints.append(llama_endpoint("real-llama-embed", embed.url))
        aliases[SHARED_EMBED] = [EMBED_MODEL, LLAMA_EMBED_MODEL]
    extra = {
        "proxy": {**PATIENT, "load_balancer": "round-robin", "warm_routing": {"enabled": False}},
        "model_aliases": aliases,
    }
    with running_olla(tmp_path_factory.mktemp("olla-mixed"), endpoints, extra=extra) as daemon:
        yield daemon


def test_one_model_on_two_kinds(mixed: OllaDaemon) -> None:
    """If Ollama and llama.cpp both serve smollm2:135m, then /olla/models shows it once, on
    both, and the OpenAI list through /olla/proxy/ names it once."""
    unified = get_json(mixed.url + "/olla/models")["data"]
    [entry] = [m for m in unified if m["id"] == CHAT_MODEL]
    hosts = sorted(a["endpoint"] for a in entry["olla"]["availability"])
    assert hosts == ["real-llama", "real-ollama"]
    ids = [m["id"] for m in get_json(mixed.url + "/olla/proxy/v1/models")["data"]]
    assert ids.count(CHAT_MODEL) == 1


def test_served_by_both_kinds(mixed: OllaDaemon) -> None:
    """If the shared model is asked for four times through /olla/proxy/v1, then both kinds of
    server answer in turn, each with a whole OpenAI chat completion."""
    kinds = set()
    for _ in range(4):
        reply = httpx.post(f"{mixed.url}/olla/proxy/v1/chat/completions", json=CHAT, timeout=300)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        kinds.add((reply.headers["x-olla-endpoint"], reply.headers["x-olla-backend-type"]))
    assert kinds == {("real-ollama", "ollama"), ("real-llama", "llamacpp")}


def test_alias_joins_names_across_kinds(mixed: OllaDaemon, real_ollama: RealOllama) -> None:
    """If the embedding model has a different name on each kind and an alias joins them, then
    a request for the alias is served by both, each under its own name, with (nearly) the same
    vector: the same weights in two engines."""
    if EMBED_MODEL not in real_ollama.models:
        pytest.skip("the embedding GGUF is not here")
    vectors: dict[str, list[float]] = {}
    for _ in range(2):
        reply = httpx.post(
            f"{mixed.url}/olla/proxy/v1/embeddings",
            json={"model": SHARED_EMBED, "input": "hello world"},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        endpoint = reply.headers["x-olla-endpoint"]
        native = EMBED_MODEL if endpoint == "real-ollama" else LLAMA_EMBED_MODEL
        assert reply.json()["model"] == native  # olla wrote each server's own name in
        vectors[endpoint] = reply.json()["data"][0]["embedding"]
    assert set(vectors) == {"real-ollama", "real-llama-embed"}
    a, b = vectors.values()
    cosine = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
    assert cosine > 0.99


def failover_fleet(directory: Path, victim: dict[str, object], survivor: dict[str, object]) -> Any:
    """olla with ``victim`` first (priority) and probed too rarely for olla to notice its death
    before a request does; the survivor is probed as usual."""
    slow = {"check_interval": "120s", "check_timeout": "5s"}
    endpoints = [{**victim, **slow, "priority": 200}, {**survivor, "priority": 100}]
    extra = {"proxy": {**PATIENT, "load_balancer": "priority"}}
    directory.mkdir(parents=True)
    return running_olla(directory, endpoints, extra=extra)


def assert_failed_over(olla: OllaDaemon, victim: str, survivor: str, kind: str) -> None:
    """The next chat for the shared model is a 200 from ``survivor`` (``kind``), streamed and
    not, and olla recorded the hand-over from ``victim``."""
    client = openai.OpenAI(base_url=f"{olla.url}/olla/proxy/v1", api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.status_code == 200
    assert raw.headers["x-olla-endpoint"] == survivor
    assert raw.headers["x-olla-backend-type"] == kind
    assert raw.parse().choices[0].message.role == "assistant"
    failovers = get_json(olla.url + "/internal/stats/failovers")["failovers"]
    assert failovers and failovers[0]["from"] == victim and failovers[0]["to"] == survivor
    assert failovers[0]["model"] == CHAT_MODEL
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_llama_dies_ollama_serves(real_ollama: RealOllama, tmp_path: Path) -> None:
    """If the llama-server that goes first dies, then the next request for the shared model
    fails over to Ollama and is a 200 from it."""
    with running_llama_server(tmp_path / "victim", smollm2(), CHAT_MODEL, parallel=1) as victim:
        fleet = failover_fleet(
            tmp_path / "olla",
            llama_endpoint("victim-llama", victim.url),
            ollama_entry("real-ollama", real_ollama.url),
        )
        with fleet as olla:
            kill_group(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            assert_failed_over(olla, "victim-llama", "real-ollama", "ollama")


def test_ollama_dies_llama_serves(real_llama: RealLlamaServer, tmp_path: Path) -> None:
    """If the Ollama that goes first dies, then the next request for the shared model fails
    over to llama.cpp and is a 200 from it."""
    victim = RealOllama(tmp_path / "victim")
    try:
        victim.create(CHAT_MODEL, smollm2())
        fleet = failover_fleet(
            tmp_path / "olla",
            ollama_entry("victim-ollama", victim.url),
            llama_endpoint("real-llama", real_llama.url),
        )
        with fleet as olla:
            kill_group(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            assert_failed_over(olla, "victim-ollama", "real-llama", "llamacpp")
    finally:
        victim.stop()
