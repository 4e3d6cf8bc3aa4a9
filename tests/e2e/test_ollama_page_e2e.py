"""The Ollama integration page's profile recipes, followed as a new user would, with a real
``twistd -n olla`` over fake Ollamas: its ``ollama-custom.yaml`` verbatim, and its Out-of-Memory
profile (``test_slow_loads_e2e`` follows its timeouts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.daemon import REPO, daemon_env, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

PAGE = REPO / "tests" / "data" / "page"


@pytest.fixture
def started() -> Iterator[list[FakeProcess]]:
    fakes: list[FakeProcess] = []
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


def test_page_customisation(tmp_path: Path, started: list[FakeProcess]) -> None:
    """If the page's ollama-custom.yaml sits, verbatim, in profiles/ beside the config, then
    /olla/ai/ reaches Ollama beside /olla/ollama/ (native and OpenAI paths), the Anthropic
    passthrough is still offered, validate-config is clean and names both files, and the
    page's capability and context patterns drive /olla/models (its lists replace the
    built-in's: llama3.2-vision is no longer vision by name, mistral:32k has no context)."""
    models = "llama3.2:latest,codellama:7b,llama3.2-vision:11b,mistral:32k"
    fake = start_fake(
        "--models", models, "--name", "A", "--version", "0.14.0", "--show-info", "bare"
    )
    started.append(fake)
    (tmp_path / "profiles").mkdir()
    shutil.copy(PAGE / "ollama-custom.yaml", tmp_path / "profiles" / "ollama-custom.yaml")
    with running_olla(tmp_path, [ollama_endpoint("A", fake.url)]) as daemon:
        chat = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}
        for path in (
            "/olla/ai/api/chat",
            "/olla/ollama/api/chat",
            "/olla/ollama/v1/chat/completions",
        ):
            response = httpx.post(daemon.url + path, json={**chat, "stream": False}, timeout=10)
            assert response.status_code == 200, (path, response.text)
        messages = httpx.post(
            f"{daemon.url}/olla/anthropic/v1/messages",
            json={**chat, "max_tokens": 16},
            timeout=10,
        )
        assert messages.status_code == 200, messages.text
        assert messages.headers["x-olla-mode"] == "passthrough"
        check = subprocess.run(
            [sys.executable, "-m", "olla", "validate-config", str(daemon.config_path)],
            capture_output=True,
            text=True,
            env=daemon_env(),
            timeout=30,
        )
        assert check.returncode == 0, check.stdout
        assert "[WARN]" not in check.stdout
        assert "profile ollama from built-in ollama.yaml + " in check.stdout
        assert "profiles/ollama-custom.yaml" in check.stdout
        by_id = {
            m["id"]: m["olla"]
            for m in httpx.get(f"{daemon.url}/olla/models", timeout=10).json()["data"]
        }
        assert "code-generation" in by_id["codellama:7b"]["capabilities"]
        assert by_id["llama3.2:latest"]["max_context_length"] == 8192
        assert by_id["llama3.2-vision:11b"]["type"] == "llm"
        assert by_id["mistral:32k"]["max_context_length"] is None
        status = httpx.get(f"{daemon.url}/internal/status", timeout=10).json()
        (ollama,) = [p for p in status["profiles"]["loaded"] if p["name"] == "ollama"]
        assert ollama["prefixes"] == ["ollama", "ai"]
        assert ollama["sources"][0] == "built-in ollama.yaml"
        assert ollama["sources"][1].endswith("profiles/ollama-custom.yaml")


def test_out_of_memory_profile(tmp_path: Path, started: list[FakeProcess]) -> None:
    """If a profile laid over Ollama carries the page's Out-of-Memory recipe (7b: at most one
    at a time), then /olla/models and /internal/status/models show it as the 7b model's cap,
    with its size class; other models keep the built-in's limits."""
    fake = start_fake("--models", "mistral:7b,llama3.2:latest", "--name", "A")
    fake.set_state(
        models=[
            {"name": "mistral:7b", "parameter_size": "7.2B"},
            {"name": "llama3.2:latest", "parameter_size": "3.2B"},
        ]
    )
    started.append(fake)
    (tmp_path / "profiles").mkdir()
    page_block = (PAGE / "out-of-memory.yaml").read_text()
    (tmp_path / "profiles" / "oom.yaml").write_text("name: ollama\n" + page_block)
    with running_olla(tmp_path, [ollama_endpoint("A", fake.url)]) as daemon:
        by_id = {
            m["id"]: m["olla"]["availability"][0]
            for m in httpx.get(f"{daemon.url}/olla/models", timeout=10).json()["data"]
        }
        assert (by_id["mistral:7b"]["size_class"], by_id["mistral:7b"]["max_concurrent"]) == (
            "7b",
            1,
        )
        assert by_id["mistral:7b"]["min_memory_gb"] == 4.0  # 8 GB x the q4 multiplier
        assert by_id["llama3.2:latest"]["max_concurrent"] == 8  # built-in concurrency_limits
        status = httpx.get(f"{daemon.url}/internal/status/models", timeout=10).json()
        (mistral,) = [m for m in status["recent_models"] if m["name"] == "mistral:7b"]
        assert mistral["resources"][0]["max_concurrent"] == 1
