"""Observability through a real ``twistd -n olla`` over fake backend processes: after chats,
streams and Anthropic calls, ``/internal/metrics`` parses with prometheus_client's parser and
counts what was sent; the stats pages have the Go original's fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

NATIVE = "llama3.2:latest"  # on A, an Ollama that speaks Anthropic too (passthrough)
OPENAI = "qwen2.5:7b"  # on B, an OpenAI-compatible server (Anthropic translated)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProcess]]:
    with (
        start_fake("--models", NATIVE, "--name", "A", "--version", "0.14.0") as a,
        start_fake("--models", OPENAI, "--name", "B") as b,
    ):
        yield {"A": a, "B": b}


@pytest.fixture(scope="module")
def olla(
    fakes: dict[str, FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    endpoints = [
        ollama_endpoint("A", fakes["A"].url),
        {**ollama_endpoint("B", fakes["B"].url), "type": "openai-compatible"},
    ]
    extra = {"translators": {"anthropic": {"enabled": True}}}
    with running_olla(tmp_path_factory.mktemp("olla"), endpoints, extra=extra) as daemon:
        yield daemon


def scrape(olla: OllaDaemon) -> Samples:
    response = httpx.get(f"{olla.url}/internal/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def pick(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def _sse_data(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def _chat(olla: OllaDaemon, stream: bool, chunks: int) -> dict[str, Any]:
    body = {"model": NATIVE, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{olla.url}/olla/ollama/api/chat",
        json=body,
        headers={"X-Fake-Chunks": str(chunks)},
        timeout=30,
    )
    assert response.status_code == 200
    final: dict[str, Any] = json.loads(response.text.strip().splitlines()[-1])
    assert final["done"] is True
    return final


def test_metrics_count_what_was_sent(olla: OllaDaemon) -> None:
    """If olla serves Ollama chats (whole and streamed), an OpenAI stream with usage and
    Anthropic messages (passthrough streamed, translated whole), then the requests per
    endpoint and model, the tokens and the TTFT observations in ``/internal/metrics`` grow by
    exactly what was sent: tokens equal the fakes' counts, one TTFT per stream."""
    before = scrape(olla)
    finals = [
        _chat(olla, False, 3),
        _chat(olla, False, 2),
        _chat(olla, True, 4),
        _chat(olla, True, 5),
    ]

    openai = httpx.post(
        f"{olla.url}/olla/openai/v1/chat/completions",
        json={
            "model": OPENAI,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hello there"}],
        },
        timeout=30,
    )
    assert openai.status_code == 200
    [openai_usage] = [c["usage"] for c in _sse_data(openai.text) if c.get("usage")]

    passthrough = httpx.post(
        f"{olla.url}/olla/anthropic/v1/messages",
        json={
            "model": NATIVE,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=30,
    )
    assert passthrough.status_code == 200
    assert passthrough.headers["x-olla-mode"] == "passthrough"
    [delta] = [e for e in _sse_data(passthrough.text) if e["type"] == "message_delta"]
    translated = httpx.post(
        f"{olla.url}/olla/anthropic/v1/messages",
        json={"model": OPENAI, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert translated.status_code == 200
    assert translated.headers["x-olla-mode"] == "translation"

    after = scrape(olla)

    def grew(name: str, **labels: str) -> float:
        return pick(after, name, **labels) - pick(before, name, **labels)

    # requests per endpoint, model and route
    assert (
        grew("olla_requests_total", endpoint="A", model=NATIVE, route="ollama", status="200") == 4
    )
    assert (
        grew("olla_requests_total", endpoint="B", model=OPENAI, route="openai", status="200") == 1
    )
    assert grew("olla_requests_total", endpoint="A", model=NATIVE, route="anthropic") == 1
    assert grew("olla_requests_total", endpoint="B", model=OPENAI, route="anthropic") == 1
    assert grew("olla_requests_total") == 7

    # tokens equal the fakes' own counts
    a_prompt = sum(f["prompt_eval_count"] for f in finals) + delta["usage"]["input_tokens"]
    a_completion = sum(f["eval_count"] for f in finals) + delta["usage"]["output_tokens"]
    b_prompt = openai_usage["prompt_tokens"] + translated.json()["usage"]["input_tokens"]
    b_completion = openai_usage["completion_tokens"] + translated.json()["usage"]["output_tokens"]
    assert grew("olla_tokens_total", endpoint="A", direction="prompt") == a_prompt
    assert grew("olla_tokens_total", endpoint="A", direction="completion") == a_completion
    assert grew("olla_tokens_total", endpoint="B", direction="prompt") == b_prompt
    assert grew("olla_tokens_total", endpoint="B", direction="completion") == b_completion

    # one TTFT per stream: two NDJSON chats and an Anthropic stream on A, an SSE stream on B
    assert grew("olla_time_to_first_token_seconds_count", endpoint="A") == 3
    assert grew("olla_time_to_first_token_seconds_count", endpoint="B") == 1
    assert grew("olla_request_duration_seconds_count") == 7

    # translator modes, endpoint health, process figures
    assert grew("olla_translator_requests_total", mode="passthrough") == 1
    assert grew("olla_translator_requests_total", mode="translation") == 1
    assert pick(after, "olla_endpoint_up", endpoint="A", status="healthy") == 1
    assert pick(after, "olla_circuit_breaker_state", endpoint="B", state="closed") == 1
    assert pick(after, "olla_health_checks_total", endpoint="A", status="healthy") >= 1
    assert pick(after, "olla_process_resident_memory_bytes") > 0


def test_stats_pages_have_the_go_fields(olla: OllaDaemon) -> None:
    """If traffic was served, then ``/internal/stats/models`` lists each model with the Go
    original's fields and the summary, and ``/internal/stats/translators`` lists entries named
    by ``translator_name`` with the summary."""
    _chat(olla, False, 2)
    page = httpx.get(f"{olla.url}/internal/stats/models?include_summary=true", timeout=10).json()
    assert {"timestamp", "models", "endpoints", "summary"} <= set(page)
    native = next(m for m in page["models"] if m["name"] == NATIVE)
    for key in (
        "total_requests",
        "successful_requests",
        "failed_requests",
        "success_rate",
        "total_traffic",
        "average_latency",
        "p95_latency",
        "p99_latency",
        "unique_clients",
        "last_requested",
        "routing_hits",
        "routing_misses",
        "routing_fallbacks",
    ):
        assert key in native, key
    assert native["total_requests"] >= 1 and native["endpoints"] == ["A"]
    assert native["completion_tokens"] >= 2
    assert {
        "total_models",
        "active_models",
        "total_requests",
        "overall_success_rate",
        "total_traffic",
        "most_popular_model",
        "least_popular_model",
    } <= set(page["summary"])
    assert "A" in page["endpoints"]
    translators = httpx.get(f"{olla.url}/internal/stats/translators", timeout=10).json()
    [entry] = translators["translators"]
    assert entry["translator_name"] == "anthropic"
    assert translators["summary"]["total_translators"] == 1
