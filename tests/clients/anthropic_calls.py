"""Drive the Anthropic Python SDK installed beside this interpreter; print what it saw as JSON.

    python anthropic_calls.py BASE_URL MODEL [--no-tools] [--fabricate-tool-call]

Runs ``messages.create``, ``messages.stream`` (text), a tool-use round trip with
``messages.stream`` and ``messages.count_tokens``, each through the SDK's own parsing. With
``--fabricate-tool-call`` the round trip goes on even when the model chose not to call the tool
(a tiny real model rarely does): the assistant's call is written by hand, as a client replaying
a conversation would. Standard
library and the SDK only, so that any venv with any release of the SDK can run it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anthropic

TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def blocks(message: Any) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content]


def main() -> None:
    base, model = sys.argv[1], sys.argv[2]
    client = anthropic.Anthropic(base_url=base, api_key="sk-client-secret", max_retries=0)
    ask = [{"role": "user", "content": "Say hi"}]
    out: dict[str, Any] = {"sdk": anthropic.__version__}

    raw = client.messages.with_raw_response.create(model=model, max_tokens=16, messages=ask)
    created = raw.parse()
    out["create"] = {
        "mode": raw.headers.get("x-olla-mode"),
        "type": created.type,
        "role": created.role,
        "stop_reason": created.stop_reason,
        "content": blocks(created),
        "usage": [created.usage.input_tokens, created.usage.output_tokens],
    }

    with client.messages.stream(model=model, max_tokens=16, messages=ask) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    out["stream"] = {"events": events, "stop_reason": final.stop_reason, "content": blocks(final)}

    if "--no-tools" not in sys.argv:
        question = [{"role": "user", "content": "Weather in Paris?"}]
        with client.messages.stream(
            model=model, max_tokens=64, messages=question, tools=[TOOL]
        ) as stream:
            tool_events = [event.type for event in stream]
            asked = stream.get_final_message()
        uses = [b.model_dump() for b in asked.content if b.type == "tool_use"]
        out["tool_use"] = {
            "events": tool_events,
            "stop_reason": asked.stop_reason,
            "calls": [{"name": u["name"], "input": u["input"]} for u in uses],
        }
        if not uses and "--fabricate-tool-call" in sys.argv:
            uses = [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "x"},
                }
            ]
        if uses:
            follow_up = [
                *question,
                {"role": "assistant", "content": uses},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": u["id"], "content": "sunny"}
                        for u in uses
                    ],
                },
            ]
            answered = client.messages.create(
                model=model, max_tokens=32, messages=follow_up, tools=[TOOL]
            )
            out["tool_result"] = {
                "stop_reason": answered.stop_reason,
                "content_types": [b.type for b in answered.content],
            }

    counted = client.messages.count_tokens(model=model, messages=ask)
    out["count_tokens"] = counted.input_tokens

    try:
        client.messages.create(model="no-such-model:1b", max_tokens=8, messages=ask)
    except anthropic.APIStatusError as e:
        out["unknown_model"] = {"status": e.status_code, "type": e.body["error"]["type"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
