"""The Anthropic SDK through olla to the real Ollama 0.5.4, which predates Ollama's own
Messages API (0.14.0): olla must translate, and the SDK must not notice."""

from __future__ import annotations

import sys

import httpx
import pytest

from tests.clients.venvs import ClientUnavailable, client_python, drive_anthropic
from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, TOOLS_MODEL, RealOllama

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("release", ["2.x", "anthropic==0.125.0"])
def test_anthropic_sdk_translated(real_ollama: RealOllama, olla: OllaDaemon, release: str) -> None:
    """If the SDK creates, streams, runs a tool round trip and counts tokens through olla
    against the real Ollama, then each call parses and the unknown model is a not_found_error.
    (The tiny model writes noise, so when it does not call the tool the client's side of the
    round trip is written by hand: the translated tool_use/tool_result must still be accepted.)"""
    try:
        python = sys.executable if release == "2.x" else str(client_python(release))
    except ClientUnavailable as why:
        pytest.skip(f"{release} cannot be installed here: {why}")
    report = drive_anthropic(
        python, f"{olla.url}/olla/anthropic", TOOLS_MODEL, "--fabricate-tool-call"
    )
    assert report["create"]["type"] == "message"
    assert report["create"]["mode"] == "translation"
    assert report["create"]["stop_reason"] in ("end_turn", "max_tokens")
    assert report["create"]["usage"][0] > 0  # the backend's prompt_eval_count, translated
    events = report["stream"]["events"]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events or "text" in events
    tool = report["tool_use"]
    assert tool["events"][0] == "message_start" and tool["events"][-1] == "message_stop"
    assert tool["stop_reason"] in ("tool_use", "end_turn", "max_tokens")
    assert report["tool_result"]["stop_reason"] in ("end_turn", "max_tokens")
    assert report["tool_result"]["content_types"] == ["text"]
    assert report["count_tokens"] >= 1
    assert report["unknown_model"] == {"status": 404, "type": "not_found_error"}


def test_translation_mode_header(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If olla fronts Ollama 0.5.4, then it knows the version and translates (never passes a
    Messages request to a server that would 404 it)."""
    body = {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{olla.url}/olla/anthropic/v1/messages", json=body, timeout=120)
    assert response.status_code == 200
    assert response.headers["x-olla-mode"] == "translation"
    assert real_ollama.version.startswith("0.5.4")
