# -*- test-case-name: tests.test_anthropic_translate -*-
"""Anthropic Messages requests: validation, and translation to OpenAI chat completions.

Pure functions over parsed JSON; nothing here touches the network or the reactor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class InvalidRequest(ValueError):
    """The request is not a valid Messages request; the message is safe to show the client."""


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{key}: must be a number")
    return float(value)


def validate(body: object) -> dict[str, Any]:
    """The request as a dict, or ``InvalidRequest`` naming the first thing wrong with it."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: field required (a non-empty string)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{index}.role: must be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequest(f"messages.{index}.content: must be a string or a list")
        if isinstance(content, list) and not all(isinstance(b, dict) for b in content):
            raise InvalidRequest(f"messages.{index}.content: blocks must be objects")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: field required (an integer of at least 1)")
    temperature = _number(body, "temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise InvalidRequest("temperature: must be between 0 and 2")
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise InvalidRequest("top_p: must be between 0 and 1")
    top_k = _number(body, "top_k")
    if top_k is not None and top_k < 0:
        raise InvalidRequest("top_k: must be 0 or more")
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and t.get("name") for t in tools)
    ):
        raise InvalidRequest("tools: must be a list of tools, each with a name")
    return body


# ---------------------------------------------------------------------------- what it needs


def uses_tools(body: Mapping[str, Any]) -> bool:
    return bool(body.get("tools"))


def uses_thinking(body: Mapping[str, Any]) -> bool:
    return body.get("thinking") is not None


def uses_images(body: Mapping[str, Any]) -> bool:
    return any(
        isinstance(block, dict) and block.get("type") == "image"
        for message in body.get("messages") or ()
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for block in message["content"]
    )


# ---------------------------------------------------------------------------- translation


def _text_of(content: object) -> str:
    """System prompts and tool results: a string, or the text of a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _image_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        url = f"data:{media};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Mapping[str, Any]) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(
        isinstance(b, dict) and b.get("type") == "text" for b in content
    ):
        text = _text_of(content)
    else:
        text = json.dumps(content)
    if block.get("is_error") and not text.lower().startswith("error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}


def _user_messages(content: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            out.append(_tool_result(block))
        elif kind == "text" and block.get("text"):
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += block["text"]
            else:
                parts.append({"type": "text", "text": str(block["text"])})
        elif kind == "image":
            image = _image_part(block)
            if image is not None:
                parts.append(image)
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
        else:  # images travel as OpenAI content parts, beside the text, in their order
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    text = "".join(str(block.get("text", "")) for block in content if block.get("type") == "text")
    calls = [
        {
            "id": str(block.get("id", "")),
            "type": "function",
            "function": {
                "name": str(block.get("name", "")),
                "arguments": json.dumps(block.get("input") or {}),
            },
        }
        for block in content
        if block.get("type") == "tool_use"
    ]
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_choice(choice: object) -> object:
    if not isinstance(choice, dict):
        return "auto"
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tool_choice.name: required when type is 'tool'")
        return {"type": "function", "function": {"name": name}}
    return {"any": "required", "none": "none"}.get(str(kind), "auto")


def to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body that asks what ``body`` (validated) asks."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body["messages"]:
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            if content:
                messages.append({"role": role, "content": content})
        elif role == "user":
            messages.extend(_user_messages(content))
        else:
            assistant = _assistant_message(content)
            if assistant is not None:
                messages.append(assistant)
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # for message_delta's usage
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
            for tool in tools
        ]
        if "tool_choice" in body:
            out["tool_choice"] = _tool_choice(body["tool_choice"])
    return out


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Olla's estimate: characters of system, messages and tools over four, at least one."""
    chars = len(_text_of(body.get("system")))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text":
                    chars += len(str(block.get("text", "")))
                elif block.get("type") == "tool_use":
                    chars += len(json.dumps(block.get("input") or {}))
                elif block.get("type") == "tool_result":
                    chars += len(_tool_result(block)["content"])
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            chars += len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
            chars += len(json.dumps(tool.get("input_schema") or {}))
    return max(1, chars // 4)
