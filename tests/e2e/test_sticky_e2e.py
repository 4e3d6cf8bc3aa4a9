"""Sticky sessions end to end: a real olla in front of three fake Ollamas, driven by the Ollama,
OpenAI and Anthropic SDKs as an agent would: one conversation growing turn by turn."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
NAMES = ("A", "B", "C")
STICKY = {"proxy": {"sticky_sessions": {"enabled": True}}}

#: one conversational turn through an SDK: (olla url, messages, system, extra headers) ->
#: the response headers olla sent and the assistant's answer
Headers = Mapping[str, str]
Turn = Callable[[str, list[dict[str, Any]], str, dict[str, str]], tuple[Headers, str]]


def _recorder() -> tuple[list[Headers], dict[str, Any]]:
    seen: list[Headers] = []
    return seen, {"response": [lambda response: seen.append(response.headers)]}


def ollama_turn(
    base: str, messages: list[dict[str, Any]], system: str, headers: dict[str, str]
) -> tuple[Headers, str]:
    seen, hooks = _recorder()
    client = ollama.Client(host=f"{base}/olla/ollama", headers=headers, event_hooks=hooks)
    answer = client.chat(MODEL, messages=[{"role": "system", "content": system}, *messages])
    return seen[-1], answer.message.content or ""


def openai_turn(
    base: str, messages: list[dict[str, Any]], system: str, headers: dict[str, str]
) -> tuple[Headers, str]:
    seen, hooks = _recorder()
    with httpx.Client(event_hooks=hooks) as http:
        client = openai.OpenAI(
            base_url=f"{base}/olla/openai/v1",
            api_key="unused",
            http_client=http,
            default_headers=headers,
            max_retries=0,
        )
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": system}, *messages]
        )
    return seen[-1], answer.choices[0].message.content or ""


def anthropic_turn(
    base: str, messages: list[dict[str, Any]], system: str, headers: dict[str, str]
) -> tuple[Headers, str]:
    client = anthropic.Anthropic(
        base_url=f"{base}/olla/anthropic", api_key="unused", default_headers=headers, max_retries=0
    )
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=32,
        system=system,
        messages=messages,  # type: ignore[arg-type]
    )
    answer = raw.parse()
    text = "".join(block.text for block in answer.content if block.type == "text")
    return raw.headers, text


SDKS: dict[str, Turn] = {"ollama": ollama_turn, "openai": openai_turn, "anthropic": anthropic_turn}


def _fleet() -> list[FakeProcess]:
    """Three equal hosts: the model loaded on each (so warm routing alone would rotate turns
    over all three), 0.14.0 (``/v1/messages``: Anthropic requests pass through to any)."""
    flags = ("--models", MODEL, "--loaded", MODEL, "--version", "0.14.0")
    return [start_fake(*flags, "--name", n) for n in NAMES]


@contextmanager
def sticky_fleet(directory: Path) -> Iterator[tuple[OllaDaemon, dict[str, FakeProcess]]]:
    """Three healthy fake Ollamas behind an olla with sticky sessions on; all stopped after."""
    fakes = _fleet()
    try:
        endpoints = [ollama_endpoint(n, f.url) for n, f in zip(NAMES, fakes, strict=True)]
        with running_olla(directory, endpoints, extra=STICKY) as daemon:
            yield daemon, dict(zip(NAMES, fakes, strict=True))
    finally:
        for fake in fakes:
            fake.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllaDaemon]:
    with sticky_fleet(tmp_path_factory.mktemp("olla")) as (daemon, _):
        yield daemon


def sticky_stats(daemon: OllaDaemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"{daemon.url}/internal/stats/sticky", timeout=5) as r:
        stats: dict[str, Any] = json.loads(r.read())
    return stats


def converse(
    turn: Turn, base: str, system: str, turns: int, start: int = 0, **headers: str
) -> list[Headers]:
    """``turns`` turns of one conversation (its history re-sent each time, as agents do)."""
    messages: list[dict[str, Any]] = []
    seen = []
    for i in range(start + turns):
        messages.append({"role": "user", "content": f"step {i}: go on"})
        if i < start:  # the turns already held before: replayed history only
            messages.append({"role": "assistant", "content": f"done {i}"})
            continue
        answered, text = turn(base, messages, system, headers)
        seen.append(answered)
        messages.append({"role": "assistant", "content": text})
    return seen


@pytest.mark.parametrize("sdk", list(SDKS))
def test_ten_turns_stay_on_one_endpoint(fleet: OllaDaemon, sdk: str) -> None:
    """If an SDK sends ten turns of one conversation while three endpoints are healthy, then
    every turn is served by the same endpoint: the first a miss, the nine others hits, keyed
    by the conversation's prefix; the stats count exactly those hits and misses."""
    before = sticky_stats(fleet)
    seen = converse(SDKS[sdk], fleet.url, f"You are the {sdk} test agent.", 10)
    served = {h["x-olla-endpoint"] for h in seen}
    assert len(served) == 1, [h["x-olla-endpoint"] for h in seen]
    assert [h["x-olla-sticky-session"] for h in seen] == ["miss"] + ["hit"] * 9
    assert {h["x-olla-sticky-key-source"] for h in seen} == {"prefix_hash"}
    after = sticky_stats(fleet)
    assert after["enabled"] is True
    assert after["hits"] - before["hits"] == 9
    assert after["misses"] - before["misses"] == 1
    assert after["insertions"] - before["insertions"] == 1


def test_conversations_spread_over_the_fleet(fleet: OllaDaemon) -> None:
    """If six conversations start on three equal hosts, then they do not all pin to one
    endpoint (new sessions go where the balancer sends them), so without stickiness the turns
    of the other tests would have moved."""
    firsts = [
        converse(openai_turn, fleet.url, f"agent {i}", 1)[0]["x-olla-endpoint"] for i in range(6)
    ]
    assert len(set(firsts)) > 1, firsts


def test_explicit_session_pins_across_prompts(fleet: OllaDaemon) -> None:
    """If requests with unrelated prompts (and each SDK) carry one X-Olla-Session-ID, then
    they all land on one endpoint, keyed by the header, which is echoed back."""
    session = {"X-Olla-Session-ID": "e2e-explicit-1"}
    seen = []
    for i, turn in enumerate([*SDKS.values()] * 2):
        messages = [{"role": "user", "content": f"unrelated question {i}"}]
        seen.append(turn(fleet.url, messages, f"system prompt {i}", session)[0])
    assert len({h["x-olla-endpoint"] for h in seen}) == 1
    assert {h["x-olla-sticky-key-source"] for h in seen} == {"session_header"}
    assert {h["x-olla-session-id"] for h in seen} == {"e2e-explicit-1"}
    # the Anthropic route is one more route: its key is scoped by the same model
    assert [h["x-olla-sticky-session"] for h in seen][1:] == ["hit"] * 5


@pytest.mark.parametrize("sdk", list(SDKS))
def test_killing_the_pinned_endpoint_moves_the_session(tmp_path: Path, sdk: str) -> None:
    """If the endpoint a conversation is pinned to dies, then the next turn is served by
    another endpoint with no client error (a repin), and the turns after stay there."""
    turn = SDKS[sdk]
    with sticky_fleet(tmp_path) as (daemon, fakes):
        system = f"You are the {sdk} failover agent."
        seen = converse(turn, daemon.url, system, 3)
        pinned = seen[0]["x-olla-endpoint"]
        assert {h["x-olla-endpoint"] for h in seen} == {pinned}
        fakes[pinned].stop()
        later = converse(turn, daemon.url, system, 4, start=3)  # raises on any client error
        moved = {h["x-olla-endpoint"] for h in later}
        assert len(moved) == 1 and pinned not in moved, [h["x-olla-endpoint"] for h in later]
        assert [h["x-olla-sticky-session"] for h in later] == ["repin"] + ["hit"] * 3
