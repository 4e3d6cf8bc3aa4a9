"""Ollama's OpenAI-compatible API (``OpenAIMixin``): ``/v1/models``, ``/v1/models/{name}``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import unquote

from .wire import (
    _GO_TYPES,
    SSE,
    FakeModel,
    _Call,
    _split,
    _tokens,
    embedding_vector,
    floats_base64,
    go_json,
)


class OpenAIMixin:
    """The ``/v1/*`` handlers."""

    def _openai_model(self, model: FakeModel) -> dict[str, Any]:
        if self.llama is not None:
            return self._llama_model(model)
        owner = model.name.split("/")[0] if "/" in model.name else "library"
        return {
            "id": model.name,
            "object": "model",
            "created": int(model.modified_at),
            "owned_by": owner,
        }

    def _v1_models(self, call: _Call) -> bytes | int:
        data = [self._openai_model(m) for m in self.models] or None  # Go's nil slice
        return self._json(call, {"object": "list", "data": data}, latency=call.knobs.ttft)

    def _v1_model(self, call: _Call) -> bytes | int:
        name = unquote(call.path[len("/v1/models/") :])
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        entry = {**self._openai_model(model), "id": name}
        return self._json(call, entry, latency=call.knobs.ttft)

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _v1_chat(self, call: _Call) -> bytes | int:
        body = call.body
        messages = body.get("messages")
        if not messages:
            return self._bad_body(call, "[] is too short - 'messages'")
        name = body.get("model")
        model = self.model(name)
        if not name:
            return self._fail(call, 400, "model is required")
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support chat')
        if (held := self._admit(call, model)) is not None:
            return held
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        prompt_tokens = _tokens(text) + 10
        ident = f"chatcmpl-{int(hashlib.sha256(text.encode()).hexdigest(), 16) % 999}"
        tool = self._function_tool(body)
        if tool is not None:
            return self._v1_chat_tool(call, ident, prompt_tokens, *tool)
        pieces = self._pieces(call.knobs.chunks)
        usage = self._usage(prompt_tokens, len(pieces))
        if not body.get("stream"):
            completion = {
                "id": ident,
                "object": "chat.completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            return self._v1_chat_chunk(ident, str(name), choices, extra)

        def choice(content: str, finish: str | None) -> dict[str, Any]:
            delta = {"role": "assistant", "content": content}
            return {"index": 0, "delta": delta, "finish_reason": finish}

        groups = [[chunk([choice(p, None)])] for p in pieces]
        final = [chunk([choice("", "stop")])]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            final.append(chunk([], {"usage": usage}))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_chat_chunk(
        self,
        ident: str,
        name: str,
        choices: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(self.clock.seconds()),
            "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **(extra or {}),
        }
        return b"data: " + go_json(payload) + b"\n\n"

    def _v1_chat_tool(
        self,
        call: _Call,
        ident: str,
        prompt_tokens: int,
        tool_name: str,
        arguments: dict[str, Any],
    ) -> bytes | int:
        """A chat completion that calls ``tool_name``; streamed, the call's id, type and name
        come first, then its arguments in ``max(2, chunks)`` pieces, as OpenAI streams them."""
        body = call.body
        name = str(body.get("model"))
        text = go_json(arguments).decode()
        pieces = _split(text, max(2, call.knobs.chunks))
        usage = self._usage(prompt_tokens, len(pieces))
        call_id = self._next_id("call_", 8)
        call.knobs.chunks = len(pieces) + 1  # as long as the stream takes
        if not body.get("stream"):
            function = {"name": tool_name, "arguments": text}
            tool_call = {"id": call_id, "type": "function", "function": function}
            message = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
            completion = {
                "id": ident,
                "object": "chat.completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
            return self._v1_chat_chunk(ident, name, choices)

        opening = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": tool_name, "arguments": ""},
        }
        groups = [[chunk({"role": "assistant", "content": "", "tool_calls": [opening]})]]
        for piece in pieces:
            argument = {"index": 0, "function": {"arguments": piece}}
            groups.append([chunk({"tool_calls": [argument]})])
        final = [chunk({"role": "assistant", "content": ""}, "tool_calls")]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            final.append(self._v1_chat_chunk(ident, name, [], {"usage": usage}))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_completions(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support generate')
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):  # 0.5.4 takes a single string prompt only
            kind = _GO_TYPES.get(type(prompt), "value")
            return self._bad_body(
                call,
                f"json: cannot unmarshal {kind} into Go struct field "
                "CompletionRequest.prompt of type string",
            )
        if (held := self._admit(call, model)) is not None:
            return held
        prompt_tokens = _tokens(prompt) + 10
        pieces = self._pieces(call.knobs.chunks)
        usage = self._usage(prompt_tokens, len(pieces))
        ident = f"cmpl-{int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 999}"
        if not body.get("stream"):
            completion = {
                "id": ident,
                "object": "text_completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": "".join(pieces), "index": 0, "finish_reason": "stop"}],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None) -> bytes:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": int(self.clock.seconds()),
                "choices": choices,
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if chunk_usage is not None:
                payload["usage"] = chunk_usage
            return b"data: " + go_json(payload) + b"\n\n"

        zero = self._usage(0, 0) if with_usage else None  # 0.5.4 puts zeros on every chunk

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "finish_reason": finish}

        groups = [[chunk([choice(p, None)], zero)] for p in pieces]
        final = [chunk([choice("", "stop")], zero)]
        if with_usage:
            final.append(chunk([], usage))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_embeddings(self, call: _Call) -> bytes | int:
        body = call.body
        raw_input = body.get("input")
        if raw_input == "":
            raw_input = [""]
        if raw_input is None or raw_input == []:
            return self._bad_body(call, "invalid input")
        inputs = self._inputs(raw_input)
        if inputs is None:
            return self._fail(call, 400, "invalid input type")
        encoding = str(body.get("encoding_format") or "float").lower()
        if encoding not in ("float", "base64"):
            message = (
                f"Invalid value for 'encoding_format' = {body.get('encoding_format')}. "
                "Supported values: ['float', 'base64']."
            )
            return self._bad_body(call, message)
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if (held := self._admit(call, model)) is not None:
            return held
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_vector(model.name, text, model.dimensions)
            embedding: Any = floats_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        tokens = sum(_tokens(text) for text in inputs)
        payload = {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._json(call, payload, latency=call.knobs.ttft)
