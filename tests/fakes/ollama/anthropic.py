"""The Anthropic Messages API of Ollama >= 0.14.0 (``AnthropicMixin``): ``POST /v1/messages``."""

from __future__ import annotations

from typing import Any

from .wire import (
    SSE,
    _Call,
    _field_type_error,
    _pick_tool,
    _split,
    _tokens,
    go_json,
    tool_arguments,
)


def _anthropic_text(content: object) -> str:
    """The text of an Anthropic ``content`` (a string or blocks, tool results included)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_result":
                texts.append(_anthropic_text(block.get("content")))
    return " ".join(texts)


class AnthropicMixin:
    """The ``/v1/messages`` handler."""

    @staticmethod
    def _anthropic_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The tool_use to answer a Messages request with (name, input), if any: not when the
        last user message carries a ``tool_result``, nor with ``tool_choice`` type none."""
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content
        ):
            return None
        choice = body.get("tool_choice")
        choice = choice if isinstance(choice, dict) else {}
        if choice.get("type") == "none":
            return None
        tool = _pick_tool(body.get("tools"), choice.get("name") if choice.get("type") else None)
        if tool is None or not isinstance(tool.get("name"), str):
            return None
        return tool["name"], tool_arguments(tool.get("input_schema"))

    def _messages(self, call: _Call) -> bytes | int:
        """``POST /v1/messages`` as Ollama's Anthropic middleware answers it."""
        body = call.body
        error = _field_type_error(
            body,
            "MessagesRequest",
            (
                ("model", str, "string"),
                ("max_tokens", int, "int"),
                ("messages", list, "[]anthropic.MessageParam"),
                ("stream", bool, "bool"),
            ),
        )
        if error is not None:
            return self._bad_body(call, error)
        name = body.get("model")
        if not name:
            return self._bad_body(call, "model is required")
        max_tokens = body.get("max_tokens") or 0
        if max_tokens <= 0:
            return self._bad_body(call, "max_tokens is required and must be positive")
        messages = body.get("messages") or []
        if not messages:
            return self._bad_body(call, "messages is required")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support chat')
        if (held := self._admit(call, model)) is not None:
            return held
        texts = [_anthropic_text(body.get("system"))]
        texts += [_anthropic_text(m.get("content")) for m in messages if isinstance(m, dict)]
        input_tokens = _tokens(" ".join(texts)) + 10
        ident = self._next_id("msg_")
        knobs = call.knobs
        tool = self._anthropic_tool(body)
        if tool is None:
            wanted = knobs.chunks
            knobs.chunks = min(wanted, max_tokens)
            pieces = self._pieces(knobs.chunks)
            stop_reason = "max_tokens" if wanted > max_tokens else "end_turn"
            block: dict[str, Any] = {"type": "text", "text": "".join(pieces)}
            opening_block: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        else:
            tool_name, arguments = tool
            pieces = _split(go_json(arguments).decode(), max(2, knobs.chunks))
            knobs.chunks = len(pieces)
            stop_reason = "tool_use"
            tool_id = self._next_id("toolu_")
            block = {"type": "tool_use", "id": tool_id, "name": tool_name, "input": arguments}
            opening_block = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        usage = {"input_tokens": input_tokens, "output_tokens": len(pieces)}
        message: dict[str, Any] = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return self._json(call, message, latency=self._generation_latency(call))

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + go_json(payload) + b"\n\n"

        started = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        opening = [
            event("message_start", {"type": "message_start", "message": started}),
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": opening_block},
            ),
            event("ping", {"type": "ping"}),
        ]
        groups = [
            [event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})]
            for d in deltas
        ]
        closing = [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
        if groups:
            groups[0] = opening + groups[0]
        else:
            closing = opening + closing
        groups.append(closing)
        call.request.setHeader(b"cache-control", b"no-cache")
        return self._stream(call, SSE, groups)
