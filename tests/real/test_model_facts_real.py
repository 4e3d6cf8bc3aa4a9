"""What the real Ollama says about its models reaches ``/olla/models``: the context window
from ``/api/show``'s ``model_info`` (and its ``capabilities``, where this Ollama lists them)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CHAT_MODEL, RealOllama

pytestmark = pytest.mark.e2e


def _show(real_ollama: RealOllama) -> dict[str, Any]:
    answer = httpx.post(f"{real_ollama.url}/api/show", json={"model": CHAT_MODEL}, timeout=30)
    answer.raise_for_status()
    document: dict[str, Any] = answer.json()
    return document


def _unified(olla: OllaDaemon) -> dict[str, Any]:
    """CHAT_MODEL's ``olla`` block, once discovery has asked /api/show about it."""
    deadline = time.monotonic() + 30
    while True:
        data = httpx.get(f"{olla.url}/olla/models", timeout=10).json()["data"]
        entry: dict[str, Any] = next(m["olla"] for m in data if m["id"] == CHAT_MODEL)
        if entry["max_context_length"] is not None or time.monotonic() > deadline:
            return entry
        time.sleep(0.2)


def test_context_and_capabilities_from_show(real_ollama: RealOllama, olla: OllaDaemon) -> None:
    """If the real Ollama describes SmolLM2 at /api/show, then /olla/models reports its
    context window from model_info (SmolLM2's name matches no context pattern), and every
    capability this Ollama lists for it."""
    show = _show(real_ollama)
    info = show["model_info"]
    arch = info["general.architecture"]
    context = info[f"{arch}.context_length"]
    assert isinstance(context, int) and context > 0
    entry = _unified(olla)
    assert entry["max_context_length"] == context
    listed = show.get("capabilities")
    if listed is not None:  # older Ollamas do not list them
        expanded = {"completion": "completion", "tools": "tools", "vision": "vision"}
        for capability in listed:
            assert expanded.get(capability, capability) in entry["capabilities"], listed
    status = httpx.get(f"{olla.url}/internal/status/models", timeout=10).json()
    (summary,) = [m for m in status["recent_models"] if m["name"] == CHAT_MODEL]
    assert summary["resources"][0]["size_class"] == "default"  # 135M: far from every row
