"""A real ``twistd -n olla`` in front of real fake-Ollama processes, driven by real clients."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.e2e.daemon import (
    REPO,
    OllaDaemon,
    daemon_env,
    free_port,
    ollama_endpoint,
    running_olla,
    twistd,
    write_config,
)
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

CHAT_MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text:latest"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake("--models", f"{CHAT_MODEL},{EMBED_MODEL}", "--name", "A") as process:
        yield process


@pytest.fixture(scope="module")
def olla(fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllaDaemon]:
    directory = tmp_path_factory.mktemp("olla")
    with running_olla(directory, [ollama_endpoint("fake-a", fake.url)]) as daemon:
        yield daemon


def test_ollama_sdk(olla: OllaDaemon) -> None:
    """If the Ollama SDK points at /olla/ollama, then list, show, chat, generate (streamed and
    not), embed and embeddings all work through olla."""
    client = ollama.Client(host=f"{olla.url}/olla/ollama")
    names = [m.model for m in client.list().models]
    assert CHAT_MODEL in names
    assert client.show(CHAT_MODEL).modelfile is not None
    reply = client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.message.role == "assistant"
    chunks = list(
        client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert len(chunks) >= 2 and chunks[-1].done
    assert client.generate(model=CHAT_MODEL, prompt="hi").done
    streamed = list(client.generate(model=CHAT_MODEL, prompt="hi", stream=True))
    assert streamed[-1].done and len(streamed) >= 2
    assert len(client.embed(model=EMBED_MODEL, input=["a", "b"]).embeddings) == 2
    assert client.embeddings(model=EMBED_MODEL, prompt="a").embedding


def test_ollama_sdk_unknown_model(olla: OllaDaemon) -> None:
    """If a client asks for a model the backend lacks, then the backend's 404 reaches the SDK
    as a ResponseError."""
    client = ollama.Client(host=f"{olla.url}/olla/ollama")
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="nope:latest", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404


def test_openai_sdk(olla: OllaDaemon) -> None:
    """If the OpenAI SDK points at /olla/ollama/v1, then models, chat, chat stream and
    embeddings (base64 by default) work through olla."""
    client = openai.OpenAI(base_url=f"{olla.url}/olla/ollama/v1", api_key="sk-test")
    assert CHAT_MODEL in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(stream)
    assert any(e.usage is not None for e in events)
    assert any(e.choices and e.choices[0].finish_reason for e in events)
    embeddings = client.embeddings.create(model=EMBED_MODEL, input=["a", "b"])
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) > 0


def test_stream_chunks_arrive_spaced(olla: OllaDaemon) -> None:
    """If the backend streams 20 chunks 50 ms apart, then the client reads 20 separate chunks
    about 50 ms apart: olla neither buffers nor bunches them."""
    arrivals: list[float] = []
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST",
        f"{olla.url}/olla/ollama/api/chat",
        json=body,
        headers={"X-Fake-Chunks": "20", "X-Fake-Delay-Ms": "50"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                assert "message" in json.loads(line)
    content_lines = arrivals[:20]
    assert len(arrivals) == 21  # 20 content chunks and the final done line
    gaps = [b - a for a, b in zip(content_lines, content_lines[1:], strict=False)]
    assert 0.03 < statistics.median(gaps) < 0.2, gaps
    assert sum(1 for gap in gaps if gap < 0.01) <= 2, gaps  # not bunched


def test_headers_and_request_id(olla: OllaDaemon, fake: FakeProcess) -> None:
    """If a request goes through olla, then the response names the endpoint and the request,
    and the backend saw forwarding headers but no client credentials."""
    fake.reset()
    request = urllib.request.Request(
        f"{olla.url}/olla/ollama/api/version",
        headers={"X-Request-ID": "e2e-123", "Authorization": "Bearer secret"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["X-Olla-Request-ID"] == "e2e-123"
        assert response.headers["X-Olla-Endpoint"] == "fake-a"
        assert response.headers["X-Olla-Backend-Type"] == "ollama"
    seen = [r for r in fake.requests() if r["path"] == "/api/version"][-1]
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-forwarded-for"] == ["127.0.0.1"]
    completed = olla.wait_for_log("e2e-123")
    assert "fake-a" in completed


def test_management_501_and_limits(olla: OllaDaemon) -> None:
    """If a client calls /api/pull, then olla answers 501 itself."""
    request = urllib.request.Request(
        f"{olla.url}/olla/ollama/api/pull", data=b'{"model":"x"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 501
    assert "error" in json.loads(raised.value.read())


def test_big_download_memory_flat(olla: OllaDaemon) -> None:
    """If a 50 MB body streams through olla, then the daemon's peak RSS grows by far less
    than the body size."""
    before = _peak_rss(olla)
    received = 0
    with httpx.stream(
        "GET", f"{olla.url}/olla/ollama/big?bytes={50 * 1024 * 1024}", timeout=60
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += len(chunk)
    assert received == 50 * 1024 * 1024
    assert _peak_rss(olla) - before < 20 * 1024 * 1024


def test_big_upload_memory_flat(olla: OllaDaemon) -> None:
    """If a 50 MB request body goes through olla, then the backend gets every byte and the
    daemon's peak RSS grows by far less than the body size."""
    before = _peak_rss(olla)
    size = 50 * 1024 * 1024

    def body() -> Iterator[bytes]:
        block = b"x" * (1024 * 1024)
        for _ in range(50):
            yield block

    response = httpx.post(
        f"{olla.url}/olla/ollama/upload",
        content=body(),
        headers={"Content-Length": str(size)},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["bytes"] == size
    assert _peak_rss(olla) - before < 20 * 1024 * 1024


def _peak_rss(daemon: OllaDaemon) -> int:
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_client_disconnect_reaches_backend(olla: OllaDaemon, fake: FakeProcess) -> None:
    """If a client drops a stream, then olla drops its upstream request too (the backend's
    stream stops instead of running to the end)."""
    body = json.dumps({"model": CHAT_MODEL, "messages": []}).encode()
    with socket.create_connection(("127.0.0.1", olla.port), timeout=10) as sock:
        sock.sendall(
            b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: x\r\nX-Fake-Chunks: 200\r\n"
            b"X-Fake-Delay-Ms: 50\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert b"200 OK" in sock.recv(4096)
    olla.wait_for_log("client_gone")


def test_unreachable_backend_502(tmp_path: Path) -> None:
    """If the only endpoint goes away, then a request gets a JSON 502 naming it (not a hang)."""
    with start_fake("--models", CHAT_MODEL) as lonely:
        endpoints = [ollama_endpoint("doomed", lonely.url, check_interval="30s")]
        with running_olla(tmp_path, endpoints) as daemon:
            daemon.wait_for_log("endpoint doomed serves 1 model(s)")
            lonely.stop()
            request = urllib.request.Request(
                f"{daemon.url}/olla/ollama/api/chat",
                data=json.dumps({"model": CHAT_MODEL, "messages": []}).encode(),
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(request, timeout=10)
            assert raised.value.code == 502
            assert "doomed" in json.loads(raised.value.read())["error"]


def test_broken_config_exits_with_key_path(tmp_path: Path) -> None:
    """If the config has an invalid value, then twistd exits non-zero naming the key path."""
    config = write_config(tmp_path, [ollama_endpoint("a", "http://127.0.0.1:1")])
    text = config.read_text().replace("check_interval: 1s", "check_interval: fast")
    config.write_text(text)
    result = subprocess.run(
        [twistd(), "--nodaemon", "--pidfile=", "olla", "--config", str(config)],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "discovery.static.endpoints[0].check_interval" in result.stdout + result.stderr


def test_go_config_with_unknown_keys_loads(tmp_path: Path, fake: FakeProcess) -> None:
    """If a config carries keys olla does not know, then it still starts and warns."""
    config = write_config(
        tmp_path,
        [ollama_endpoint("a", fake.url)],
        extra={"proxy": {"max_retries": 3, "shiny_new_knob": True}},
    )
    daemon = OllaDaemon(config)
    try:
        daemon.wait_ready()
        assert "shiny_new_knob" in daemon.output()
    finally:
        daemon.stop()


def test_shipped_config_serves_health(tmp_path: Path) -> None:
    """If olla runs on the shipped etc/olla.yaml (as `make run` does), then
    /internal/health answers."""
    port = free_port()
    daemon = OllaDaemon(_shipped_config_on(tmp_path, port), env={"OLLA_SERVER_PORT": str(port)})
    try:
        daemon.wait_ready()
        with urllib.request.urlopen(f"{daemon.url}/internal/health", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "healthy"}
    finally:
        # twistd re-raises the signal it stopped on, after a clean shutdown
        assert daemon.stop() in (0, -15)


def _shipped_config_on(directory: Path, port: int) -> Path:
    """etc/olla.yaml as shipped, with only the port changed so tests never collide."""
    text = (REPO / "etc" / "olla.yaml").read_text()
    path = directory / "olla.yaml"
    path.write_text(text.replace("port: 40114", f"port: {port}"))
    return path


def test_sigterm_lets_streams_finish(tmp_path: Path, fake: FakeProcess) -> None:
    """If olla gets SIGTERM while a stream is running, then it stops accepting new
    connections, the stream still completes, and the daemon exits."""
    config = write_config(tmp_path, [ollama_endpoint("a", fake.url)])
    daemon = OllaDaemon(config)
    try:
        daemon.wait_ready()
        lines: list[str] = []
        with httpx.stream(
            "POST",
            f"{daemon.url}/olla/ollama/api/chat",
            json={"model": CHAT_MODEL, "messages": []},
            headers={"X-Fake-Chunks": "20", "X-Fake-Delay-Ms": "50"},
            timeout=30,
        ) as response:
            iterator = response.iter_lines()
            lines.append(next(iterator))
            daemon.process.send_signal(signal.SIGTERM)
            daemon.wait_for_log("waiting up to")
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{daemon.url}/internal/health", timeout=5)
            lines.extend(line for line in iterator if line)
        assert len(lines) == 21 and json.loads(lines[-1])["done"]
        daemon.process.wait(15)
    finally:
        daemon.stop()
