"""The Anthropic translator's pure parts: request translation, answers, the SSE stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from olla.anthropic.passthrough import (
    chat_completions_path,
    passthrough_endpoints,
    speaks_anthropic,
)
from olla.anthropic.request import (
    InvalidRequest,
    estimate_input_tokens,
    to_openai,
    validate,
)
from olla.anthropic.response import MalformedAnswer, StreamTranslator, to_message
from olla.anthropic.stats import Fallback, TranslatorStats, translators_payload
from olla.config import EndpointConfig
from olla.fleet.endpoints import endpoints_from_config
from olla.profiles import builtin_profiles
from olla.util.versions import version_at_least

BASE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


def fixed_id() -> str:
    return "msg_01TEST"


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"tools": [{"description": "no name"}]}, "tools"),
    ],
)
def test_validation_names_the_field(change: dict[str, Any], complaint: str) -> None:
    """If a Messages request breaks a rule, then the error names the field it broke."""
    with pytest.raises(InvalidRequest, match=complaint):
        validate({**BASE, **change})


def test_validation_needs_an_object() -> None:
    """If the body is not a JSON object, then it is rejected."""
    with pytest.raises(InvalidRequest):
        validate(["not", "an", "object"])


def test_missing_max_tokens() -> None:
    """If max_tokens is missing, then the request is invalid (Anthropic requires it)."""
    body = dict(BASE)
    del body["max_tokens"]
    with pytest.raises(InvalidRequest, match="max_tokens"):
        validate(body)


# ------------------------------------------------------------------------------ requests


def test_full_request_translation() -> None:
    """If a request has a system prompt, text, an image, tool use and results, tools, a tool
    choice and stop sequences, then the OpenAI body carries each of them."""
    body = validate(
        {
            "model": "m",
            "max_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "stream": True,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "thinking": {"type": "enabled", "budget_tokens": 100},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is "},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                        },
                        {"type": "text", "text": "this?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm"},
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "a cat"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "boom"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "And now?"},
                    ],
                },
                {"role": "assistant", "content": ""},
            ],
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "look"},
        }
    )
    assert to_openai(body) == {
        "model": "m",
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "text", "text": "this?"},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"},
            {"role": "user", "content": "And now?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "look", "description": "d", "parameters": {"type": "object"}},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice(choice: dict[str, str], expected: str) -> None:
    """If tool_choice is auto, any or none, then OpenAI gets auto, required or none."""
    body = {**BASE, "tools": [{"name": "f"}], "tool_choice": choice}
    assert to_openai(validate(body))["tool_choice"] == expected


def test_tool_choice_without_name() -> None:
    """If tool_choice names no tool, then the request is invalid."""
    with pytest.raises(InvalidRequest, match="tool_choice"):
        to_openai(validate({**BASE, "tools": [{"name": "f"}], "tool_choice": {"type": "tool"}}))


def test_assistant_tool_call_only_has_null_content() -> None:
    """If an assistant turn is only a tool call, then its OpenAI content is null."""
    body = {
        **BASE,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f"}]},
        ],
    }
    assistant = to_openai(validate(body))["messages"][1]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"]["arguments"] == "{}"


def test_token_estimate() -> None:
    """If a request has 40 characters of text, then the estimate is 10 tokens (at least 1)."""
    assert (
        estimate_input_tokens({**BASE, "messages": [{"role": "user", "content": "x" * 40}]}) == 10
    )
    assert estimate_input_tokens({"messages": []}) == 1


# ------------------------------------------------------------------------------ answers


def test_answer_translation() -> None:
    """If the backend answers with reasoning, text and a tool call, then the message has a
    thinking, a text and a tool_use block, with mapped stop reason and usage."""
    answer = {
        "model": "up",
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "reasoning_content": "think",
                    "content": "hello",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}},
                        {"id": "c2", "function": {"name": "g", "arguments": "not json"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    assert to_message(answer, "m", fixed_id) == {
        "id": "msg_01TEST",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": [
            {"type": "thinking", "thinking": "think", "signature": ""},
            {"type": "text", "text": "hello"},
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop: str) -> None:
    """If the backend finishes for a reason, then the Anthropic stop reason is its mapping, and
    an empty answer is one empty text block."""
    answer = {"choices": [{"message": {"content": ""}, "finish_reason": finish}]}
    message = to_message(answer, "m", fixed_id)
    assert message["stop_reason"] == stop
    assert message["content"] == [{"type": "text", "text": ""}]
    assert message["model"] == "m"


@pytest.mark.parametrize("answer", [[], {}, {"choices": []}, {"choices": [{"x": 1}]}])
def test_malformed_answers(answer: object) -> None:
    """If a 2xx body is not a chat completion, then MalformedAnswer."""
    with pytest.raises(MalformedAnswer):
        to_message(answer, "m", fixed_id)


# ------------------------------------------------------------------------------ streams


def sse(*chunks: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(extra)
    if content is not None:
        d["content"] = content
    return {"model": "up", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


TEXT_STREAM = sse(
    delta(role="assistant", content=""),
    delta("Hel"),
    delta("lo"),
    delta(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
)

TOOL_STREAM = sse(
    delta(reasoning_content="plan"),
    delta("ok"),
    delta(
        tool_calls=[
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
        ]
    ),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a"'}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]),
    delta(finish="tool_calls"),
)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def translate(stream: bytes, pieces: list[bytes] | None = None) -> bytes:
    translator = StreamTranslator("m", 7, fixed_id)
    out = b"".join(translator.feed(p) for p in (pieces if pieces is not None else [stream]))
    return out + translator.finish()


def test_text_stream() -> None:
    """If the backend streams text, then the events are message_start, one text block with a
    delta per chunk, message_delta with stop reason and upstream usage, message_stop."""
    got = events(translate(TEXT_STREAM))
    assert [name for name, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert (start["id"], start["model"], start["usage"]["input_tokens"]) == ("msg_01TEST", "up", 7)
    assert got[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [d["delta"]["text"] for _, d in got[2:4]] == ["Hel", "lo"]
    assert got[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert got[5][1]["usage"]["input_tokens"] == 5
    assert got[5][1]["usage"]["output_tokens"] == 2


def test_tool_stream() -> None:
    """If the backend streams reasoning, text and a tool call in pieces, then thinking, text and
    tool_use blocks follow each other, the arguments as input_json_delta pieces."""
    got = events(translate(TOOL_STREAM))
    starts = [d["content_block"] for name, d in got if name == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
    ]
    partial = [
        d["delta"]["partial_json"]
        for name, d in got
        if name == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert "".join(partial) == '{"a": 1}'
    assert [name for name, _ in got].count("content_block_stop") == 3
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert got[-2][1]["usage"]["output_tokens"] == len('planok{"a": 1}') // 4


@pytest.mark.parametrize("stream", [TEXT_STREAM, TOOL_STREAM], ids=["text", "tools"])
def test_every_split_point(stream: bytes) -> None:
    """If the upstream bytes arrive split at any point, or one byte at a time, then the events
    are exactly those of the whole stream."""
    whole = translate(stream)
    for cut in range(1, len(stream)):
        assert translate(stream, [stream[:cut], stream[cut:]]) == whole, cut
    assert translate(stream, [bytes([b]) for b in stream]) == whole


def test_crlf_and_noise() -> None:
    """If the upstream uses CRLF, comments and event lines, then only data lines count."""
    noisy = TEXT_STREAM.replace(b"\n", b"\r\n").replace(b"data: [DONE]", b": ping\r\ndata: [DONE]")
    assert translate(noisy) == translate(TEXT_STREAM)


@pytest.mark.parametrize(
    "stream",
    [
        sse(delta("Hel"), done=False),  # cut before finishing
        sse(delta("Hel"), done=False)[:-5],  # cut mid-chunk
        b"",  # nothing at all
        sse(delta("Hel"))[:12] + b"{not json}\n\n",
        sse(delta("Hel"), {"error": {"message": "backend exploded"}}),
    ],
    ids=["truncated", "cut-mid-chunk", "empty", "malformed", "upstream-error"],
)
def test_broken_streams_end_with_one_error(stream: bytes) -> None:
    """If the upstream stream is truncated, malformed or reports an error, then the output ends
    with exactly one Anthropic error event and nothing after it."""
    got = events(translate(stream))
    assert got[-1][0] == "error"
    assert got[-1][1]["type"] == "error"
    assert got[-1][1]["error"]["type"] == "api_error"
    assert [name for name, _ in got].count("error") == 1
    assert "message_stop" not in [name for name, _ in got]


def test_upstream_error_message_is_kept() -> None:
    """If the backend streams an error object, then its message reaches the client."""
    got = events(translate(sse(delta("x"), {"error": {"message": "backend exploded"}})))
    assert got[-1][1]["error"]["message"] == "backend exploded"


def test_connection_failure_mid_stream() -> None:
    """If the connection breaks mid-stream, then fail() writes one error event and later input
    is ignored."""
    translator = StreamTranslator("m", 1, fixed_id)
    translator.feed(sse(delta("Hel"), done=False))
    tail = translator.fail("connection lost")
    assert events(tail)[0][1]["error"]["message"] == "connection lost"
    assert translator.feed(b"data: {}\n\n") == b"" and translator.finish() == b""


def test_arguments_for_a_closed_tool() -> None:
    """If arguments arrive for a tool call whose block is already closed, then an error event."""
    stream = sse(
        delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]),
        delta("text in between"),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]),
        delta(finish="tool_calls"),
    )
    got = events(translate(stream))
    assert got[-1][0] == "error"


def test_output_tokens_estimated_without_usage() -> None:
    """If the backend sends no usage, then output tokens are characters over four."""
    got = events(translate(sse(delta("x" * 20), delta(finish="length"))))
    assert got[-2][1]["usage"]["output_tokens"] == 5
    assert got[-2][1]["delta"]["stop_reason"] == "max_tokens"


# ------------------------------------------------------------------------------ passthrough


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        ("0.14.0", "0.14.0", True),
        ("0.14.2", "0.14.0", True),
        ("0.15", "0.14.0", True),
        ("v1.0.0", "0.14.0", True),
        ("0.5.4-ipexllm-20250407", "0.14.0", False),
        ("0.13.9", "0.14.0", False),
        (None, "0.14.0", False),
        ("garbage", "0.14.0", False),
        (None, None, True),
        ("b4847-1a2b3c4", "b4847", True),
        ("b1-6ecf5e8", "b4847", False),
    ],
)
def test_versions(have: str | None, need: str | None, ok: bool) -> None:
    """If a backend reports a version, then it passes min_version only when it is as new."""
    assert version_at_least(have, need) is ok


def test_passthrough_endpoints() -> None:
    """If endpoints of several types could take a request, then only those whose profile speaks
    Anthropic, at a version new enough, without a conflicting limitation, are chosen."""
    profiles = builtin_profiles()
    configs = [
        EndpointConfig(name="old-ollama", url="http://127.0.0.1:1", type="ollama"),
        EndpointConfig(name="new-ollama", url="http://127.0.0.1:2", type="ollama"),
        EndpointConfig(name="vllm", url="http://127.0.0.1:3", type="vllm"),
        EndpointConfig(name="compat", url="http://127.0.0.1:4", type="openai-compatible"),
    ]
    endpoints = endpoints_from_config(configs, profiles)
    versions = {"old-ollama": "0.5.4", "new-ollama": "0.14.1"}
    native = passthrough_endpoints(endpoints, profiles, lambda ep: versions.get(ep.name), BASE)
    assert [ep.name for ep in native] == ["new-ollama", "vllm"]
    assert list(native.values()) == ["/v1/messages", "/v1/messages"]
    assert not speaks_anthropic(profiles.get("openai-compatible"), None, BASE)
    assert chat_completions_path(profiles.get("ollama")) == "/v1/chat/completions"


# ------------------------------------------------------------------------------ stats


def test_stats_payload() -> None:
    """If requests pass through, translate and fail, then the stats page counts each, in the
    Go original's list of entries named by ``translator_name``."""
    stats = TranslatorStats("anthropic")
    stats.started(passthrough=True, streaming=True, fallback=None)
    stats.ended(ok=True, latency=0.2)
    stats.started(passthrough=False, streaming=False, fallback=Fallback.CANNOT_PASSTHROUGH)
    stats.ended(ok=False, latency=1.0)
    payload = translators_payload([stats], "2026-01-01T00:00:00Z")
    [entry] = payload["translators"]
    assert entry["translator_name"] == "anthropic"
    assert payload["timestamp"] == "2026-01-01T00:00:00Z"
    assert entry["total_requests"] == 2
    assert entry["success_rate"] == "50.0%"
    assert entry["passthrough_rate"] == "50.0%"
    assert entry["fallback_cannot_passthrough"] == 1
    assert entry["average_latency"] == "200ms"
    assert payload["summary"]["total_streaming"] == 1
    assert payload["summary"]["active_translators"] == 1


def test_translator_seam() -> None:
    """If the Anthropic translator is used through ITranslator, then it provides the interface
    and its streams provide IStreamTranslator."""
    from zope.interface.verify import verifyObject

    from olla.anthropic.translator import AnthropicTranslator
    from olla.interfaces import IStreamTranslator, ITranslator

    translator = AnthropicTranslator()
    assert verifyObject(ITranslator, translator)
    assert verifyObject(IStreamTranslator, translator.stream("m", 1))
    body = translator.validate(dict(BASE))
    assert translator.translate_request(body)["messages"] == [{"role": "user", "content": "hi"}]
    assert translator.estimate_tokens(body) == 1


def test_message_ids_are_base58_and_distinct() -> None:
    """If olla makes message ids, then each is ``msg_01`` and 22 base58 characters, and
    they do not repeat."""
    from olla.anthropic.response import _BASE58, message_id

    ids = [message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for made in ids:
        assert made.startswith("msg_01") and len(made) == 28, made
        assert set(made[6:]) <= set(_BASE58), made
    assert set("".join(made[6:] for made in ids)) == set(_BASE58)  # every character is used
