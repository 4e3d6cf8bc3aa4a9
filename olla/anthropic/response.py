# -*- test-case-name: tests.test_anthropic_translate -*-
"""OpenAI chat completion answers turned into Anthropic Messages answers.

``to_message`` translates a whole JSON answer; ``StreamTranslator`` turns an OpenAI SSE byte
stream into the Anthropic event sequence as the bytes arrive, whatever their split points.
Pure code: the caller feeds bytes and writes what comes back.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from zope.interface import implementer

from olla.interfaces import IStreamTranslator

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def message_id() -> str:
    """``msg_01`` and 22 base58 characters: a random 128-bit number written in base58 (58**22
    is above 2**128), read from the OS once rather than once per character."""
    number = int.from_bytes(secrets.token_bytes(16))
    digits = []
    for _ in range(22):
        number, digit = divmod(number, 58)
        digits.append(_BASE58[digit])
    return "msg_01" + "".join(digits)


def stop_reason(finish_reason: object) -> str:
    return STOP_REASONS.get(str(finish_reason), "end_turn")


class MalformedAnswer(ValueError):
    """The backend's 2xx body is not a chat completion."""


def _arguments(raw: object) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _reasoning(message: Mapping[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning", "thinking"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def to_message(
    document: object, model: str, new_id: Callable[[], str] = message_id
) -> dict[str, Any]:
    """The Anthropic message for one OpenAI chat completion (``MalformedAnswer`` if it is not)."""
    if not isinstance(document, dict):
        raise MalformedAnswer("not a JSON object")
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswer("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedAnswer("choice has no message")
    content: list[dict[str, Any]] = []
    thinking = _reasoning(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        function = call["function"]
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + new_id()[6:]),
                "name": str(function.get("name", "")),
                "input": _arguments(function.get("arguments")),
            }
        )
    if not content:
        content.append({"type": "text", "text": ""})
    usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": document.get("model") or model or "unknown",
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def sse_event(name: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(payload).encode())


def error_event(error_type: str, message: str) -> bytes:
    return sse_event("error", {"type": "error", "error": {"type": error_type, "message": message}})


@implementer(IStreamTranslator)
class StreamTranslator:
    """One OpenAI SSE stream in, the Anthropic SSE event sequence out.

    ``feed`` takes bytes as they arrive (any split point) and returns the events they complete;
    ``finish`` closes the message when the upstream ended. A malformed chunk, an upstream error
    event or a stream that ends without finishing gives one ``error`` event and nothing after.
    """

    def __init__(
        self, model: str, input_tokens: int, new_id: Callable[[], str] = message_id
    ) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._new_id = new_id
        self._buffer = b""
        self._started = False
        self._block_index = -1
        self._block_type: str | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index -> our block index
        self._open_tool: int | None = None  # OpenAI index of the tool block now open
        self._finish_reason: object = None
        self._usage: dict[str, Any] | None = None
        self._output_chars = 0
        self.done = False  # message_stop or error written: nothing more will be
        self.failed = False

    # ----------------------------------------------------------------- input

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        self._buffer += data
        out: list[bytes] = []
        while not self.done and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            out.append(self._line(line.rstrip(b"\r")))
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream body ended cleanly."""
        if self.done:
            return b""
        out = self._line(self._buffer.rstrip(b"\r")) if self._buffer.strip() else b""
        self._buffer = b""
        if self.done:
            return out
        if self._finish_reason is None:
            return out + self._fail("api_error", "the backend's stream ended before it finished")
        return out + self._close()

    def fail(self, message: str) -> bytes:
        """The upstream broke (connection lost, timeout): one error event, then nothing."""
        if self.done:
            return b""
        return self._fail("api_error", message)

    # ----------------------------------------------------------------- parsing

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return b""  # blank lines, comments, event names: OpenAI streams carry data only
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return self._close()
        try:
            chunk = json.loads(payload)
        except ValueError:
            return self._fail("api_error", "the backend sent a malformed stream chunk")
        if not isinstance(chunk, dict):
            return self._fail("api_error", "the backend sent a malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            return self._fail("api_error", str(message or "Backend error"))
        return self._chunk(chunk)

    def _chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = [self._start(chunk)]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            assert isinstance(delta, dict)
            thinking = _reasoning(delta)
            if thinking:
                out.append(self._text_delta("thinking", thinking))
            if isinstance(delta.get("content"), str) and delta["content"]:
                out.append(self._text_delta("text", delta["content"]))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._tool_delta(call))
                    if self.done:
                        return b"".join(out)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    # ----------------------------------------------------------------- events

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        return sse_event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self._new_id(),
                    "type": "message",
                    "role": "assistant",
                    "model": self._model or "unknown",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": self._input_tokens,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        )

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._block_index += 1
        self._block_type = block["type"]
        return out + sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": self._block_index, "content_block": block},
        )

    def _close_block(self) -> bytes:
        if self._block_type is None:
            return b""
        self._block_type = None
        self._open_tool = None
        return sse_event(
            "content_block_stop", {"type": "content_block_stop", "index": self._block_index}
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._block_index, "delta": delta},
        )

    def _text_delta(self, kind: str, text: str) -> bytes:
        self._output_chars += len(text)
        out = b""
        if self._block_type != kind:
            out = self._open({"type": kind, kind: ""})
        field = "text_delta" if kind == "text" else "thinking_delta"
        return out + self._delta({"type": field, kind: text})

    def _tool_delta(self, call: Mapping[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        out = b""
        if index not in self._tool_blocks:
            out = self._open(
                {
                    "type": "tool_use",
                    "id": str(call.get("id") or "toolu_" + self._new_id()[6:]),
                    "name": str(function.get("name", "")),
                    "input": {},
                }
            )
            self._tool_blocks[index] = self._block_index
            self._open_tool = index
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object, not its JSON text
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            if self._open_tool != index:
                return out + self._fail(
                    "api_error", "the backend sent tool arguments for a finished tool call"
                )
            self._output_chars += len(arguments)
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _close(self) -> bytes:
        out = self._start({}) + self._close_block()
        usage = self._usage or {}
        output_tokens = usage.get("completion_tokens")
        if not isinstance(output_tokens, int):
            output_tokens = self._output_chars // 4
        input_tokens = usage.get("prompt_tokens")
        if not isinstance(input_tokens, int):
            input_tokens = self._input_tokens
        self.done = True
        return (
            out
            + sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(self._finish_reason),
                        "stop_sequence": None,
                    },
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            )
            + sse_event("message_stop", {"type": "message_stop"})
        )

    def _fail(self, error_type: str, message: str) -> bytes:
        self.done = True
        self.failed = True
        return error_event(error_type, message)
