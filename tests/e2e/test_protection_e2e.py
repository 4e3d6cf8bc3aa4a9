"""Protection on a real ``twistd -n olla`` over fake backends: client keys with the OpenAI,
Anthropic and Ollama SDKs, per-IP limits (direct, through a trusted proxy, and an untrusted
peer's forged header), CORS preflights from a browser's point of view, and the internal
routes gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
KEY = "sk-e2e-team-0123456789"  # from ${OLLA_E2E_KEY}
FILE_KEY = "sk-e2e-file-9876543210"  # from api_keys_file
WRONG = "sk-e2e-wrong-000000000"
ORIGIN = "http://webui.example"
LIMIT = 5


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    # 0.14.0: the fake speaks /v1/messages, so the Anthropic SDK is passed through
    with start_fake("--models", MODEL, "--name", "A", "--version", "0.14.0") as process:
        yield process


@pytest.fixture(scope="module")
def keyed(fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllaDaemon]:
    """Keys required (one from the environment, one from a file), CORS on for one origin,
    internal routes only for a network the test is not on."""
    directory = tmp_path_factory.mktemp("keyed")
    (directory / "keys.txt").write_text(f"# the team's keys\n{FILE_KEY}\n")
    extra = {
        "server": {
            "auth": {
                "api_keys": [{"key": "${OLLA_E2E_KEY}", "name": "team"}],
                "api_keys_file": "keys.txt",
            },
            "cors": {"enabled": True, "allowed_origins": [ORIGIN]},
        },
        "dashboard": {
            "gate_internal_api": True,
            "access_policy": {"allowed_cidrs": ["10.0.0.0/8"]},
        },
    }
    with running_olla(
        directory, [ollama_endpoint("A", fake.url)], extra=extra, env={"OLLA_E2E_KEY": KEY}
    ) as daemon:
        yield daemon


def limited(fake: FakeProcess, directory: Path, trusted: list[str]) -> Iterator[OllaDaemon]:
    extra = {
        "server": {
            "rate_limits": {
                "per_ip_requests_per_minute": LIMIT,
                "burst_size": LIMIT,
                "global_requests_per_minute": 0,
                "trust_proxy_headers": True,
                "trusted_proxy_cidrs": trusted,
            }
        }
    }
    with running_olla(directory, [ollama_endpoint("A", fake.url)], extra=extra) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def behind_proxy(
    fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    """5/min per client; the test's own address (127.0.0.1) is a trusted proxy."""
    yield from limited(fake, tmp_path_factory.mktemp("trusting"), ["127.0.0.0/8"])


@pytest.fixture(scope="module")
def exposed(fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllaDaemon]:
    """5/min per client; only 10.0.0.0/8 is trusted, so 127.0.0.1 is a plain client."""
    yield from limited(fake, tmp_path_factory.mktemp("untrusting"), ["10.0.0.0/8"])


def chat(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(f"{url}/olla/ollama/api/chat", json=body, headers=headers, timeout=30)


# ---------------------------------------------------------------------- client keys


def test_openai_sdk_right_key_and_wrong_key(keyed: OllaDaemon, fake: FakeProcess) -> None:
    """If the OpenAI SDK sends the right key, then the completion works and the backend never
    sees the key; with a wrong one it raises AuthenticationError with OpenAI's error type."""
    fake.reset()
    base = f"{keyed.url}/olla/openai/v1"
    good = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    reply = good.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content
    bad = openai.OpenAI(base_url=base, api_key=WRONG, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == (
        "authentication_error"
    )
    seen = fake.requests("/v1/chat/completions")
    assert len(seen) == 1
    assert not {k.lower() for k in seen[0]["headers"]} & {"authorization", "x-api-key"}


def test_anthropic_sdk_right_key_and_wrong_key(keyed: OllaDaemon, fake: FakeProcess) -> None:
    """If the Anthropic SDK sends the file's key, then the message works; with a wrong key it
    raises AuthenticationError in Anthropic's envelope."""
    fake.reset()
    base = f"{keyed.url}/olla/anthropic"
    good = anthropic.Anthropic(base_url=base, api_key=FILE_KEY, max_retries=0)
    message = good.messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.type == "message" and message.content
    bad = anthropic.Anthropic(base_url=base, api_key=WRONG, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"
    for seen in fake.requests("/v1/messages"):
        assert not {k.lower() for k in seen["headers"]} & {"authorization", "x-api-key"}


def test_ollama_sdk_right_key_and_wrong_key(keyed: OllaDaemon) -> None:
    """If the Ollama SDK sends the right key as a bearer token, then chat works; with a wrong
    one it raises ResponseError 401 with Ollama's plain error."""
    host = f"{keyed.url}/olla/ollama"
    good = ollama.Client(host=host, headers={"Authorization": f"Bearer {KEY}"})
    reply = good.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    bad = ollama.Client(host=host, headers={"Authorization": f"Bearer {WRONG}"})
    with pytest.raises(ollama.ResponseError) as caught:
        bad.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.error == "missing or invalid API key"


def test_keys_never_logged_and_refusals_counted(keyed: OllaDaemon) -> None:
    """If keys were used, right and wrong, in every accepted header, then no log line holds
    any of them, and each 401 has its refusal line naming the client address."""
    assert chat(keyed.url).status_code == 401
    assert chat(keyed.url, {"x-api-key": KEY}).status_code == 200
    assert chat(keyed.url, {"api-key": FILE_KEY}).status_code == 200
    text = "\n".join(keyed.lines)
    for secret in (KEY, FILE_KEY, WRONG):
        assert secret not in text
    refusals = [e for e in keyed.events if e.get("status") == 401 and e.get("request_line")]
    assert refusals and {e["client_ip"] for e in refusals} == {"127.0.0.1"}


# ---------------------------------------------------------------------- internal routes


def test_internal_gate_keeps_health_open(keyed: OllaDaemon) -> None:
    """If internal routes are open only to 10.0.0.0/8, then /internal/status is a 403 to
    this test (127.0.0.1), and /internal/health still answers 200 without a key."""
    status = httpx.get(f"{keyed.url}/internal/status", timeout=10)
    assert status.status_code == 403
    assert "error" in status.json()
    assert httpx.get(f"{keyed.url}/internal/health", timeout=10).status_code == 200


# ---------------------------------------------------------------------- CORS


def test_preflight_from_allowed_origin(keyed: OllaDaemon, fake: FakeProcess) -> None:
    """If a browser preflights from the allowed origin, then olla answers 204 with the CORS
    headers (no key needed: browsers send none on a preflight) and the backend never sees
    it; the actual request then exposes the X-Olla-* headers."""
    fake.reset()
    preflight = httpx.options(
        f"{keyed.url}/olla/openai/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert fake.requests("/v1/chat/completions") == []  # (its health probes go on)
    actual = chat(keyed.url, {"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Olla-Endpoint" in actual.headers["access-control-expose-headers"]


def test_preflight_from_other_origin(keyed: OllaDaemon, fake: FakeProcess) -> None:
    """If a browser preflights from another origin, then there is no CORS answer (a 403
    without Access-Control-*) and the backend never sees it."""
    fake.reset()
    preflight = httpx.options(
        f"{keyed.url}/olla/openai/v1/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 403
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
    assert fake.requests("/v1/chat/completions") == []  # (its health probes go on)


# ---------------------------------------------------------------------- rate limits


def test_exactly_n_then_429_with_the_sdk(behind_proxy: OllaDaemon) -> None:
    """If a client has 5/min, then exactly 5 requests succeed with X-RateLimit-* headers and
    the 6th is a 429 with Retry-After, which the OpenAI SDK raises as RateLimitError."""
    client = {"X-Forwarded-For": "198.51.100.1"}
    seen = [chat(behind_proxy.url, client) for _ in range(LIMIT)]
    assert [r.status_code for r in seen] == [200] * LIMIT
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["4", "3", "2", "1", "0"]
    assert {r.headers["x-ratelimit-limit"] for r in seen} == {str(LIMIT)}
    refused = chat(behind_proxy.url, client)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "rate limit" in refused.json()["error"]
    sdk = openai.OpenAI(
        base_url=f"{behind_proxy.url}/olla/openai/v1",
        api_key="unused",
        max_retries=0,
        default_headers=client,
    )
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["retry-after"]


def test_trusted_proxy_limits_each_forwarded_client(behind_proxy: OllaDaemon) -> None:
    """If a trusted proxy forwards two clients, then each gets its own 5: one spending its
    budget does not touch the other's."""
    first = [chat(behind_proxy.url, {"X-Forwarded-For": "198.51.100.2"}) for _ in range(6)]
    second = [chat(behind_proxy.url, {"X-Forwarded-For": "198.51.100.3"}) for _ in range(5)]
    assert [r.status_code for r in first] == [200] * 5 + [429]
    assert [r.status_code for r in second] == [200] * 5
    lines = [e for e in behind_proxy.events if e.get("request_line")]
    assert {"198.51.100.2", "198.51.100.3"} <= {e.get("client_ip") for e in lines}


def test_untrusted_peer_header_ignored(exposed: OllaDaemon) -> None:
    """If an untrusted peer claims a new address in X-Forwarded-For on each request, then it
    is still limited as itself: 5 successes, then 429."""
    seen = [chat(exposed.url, {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(6)]
    assert [r.status_code for r in seen] == [200] * 5 + [429]
