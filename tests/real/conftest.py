"""Fixtures of the compatibility suite, one of each per session: a real Ollama and an olla in
front of it; a real llama.cpp ``llama-server`` for chat (and one for embeddings, where the GGUF
is there) and an olla in front of those, which finds out on its own (``type: auto``) what they are.

The install is cached in ``.cache/real`` (see install.sh); where it is impossible (no registry, no
compiler) every test here is skipped with the installer's own words.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.real.backend import (
    CHAT_MODEL,
    EMBED_GGUF,
    LLAMA_EMBED_MODEL,
    InstallImpossible,
    RealLlamaServer,
    RealOllama,
    ensure_installed,
    running_llama_server,
    running_real_ollama,
    smollm2,
)

CLIENTS = ("openai", "ollama", "anthropic", "langchain-ollama", "langchain-openai", "httpx")


def pytest_report_header() -> list[str]:
    """The versions this run exercised, for the README's "Tested with" table."""
    seen = []
    for name in CLIENTS:
        try:
            seen.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ["real clients: " + ", ".join(seen)]


def installed() -> None:
    try:
        ensure_installed()
    except InstallImpossible as why:
        pytest.skip(f"the real backends cannot be installed here: {why}")


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOllama]:
    installed()
    with running_real_ollama(tmp_path_factory.mktemp("real-ollama")) as server:
        print(f"\nreal Ollama {server.version} at {server.url}, models {server.models}")
        yield server


@pytest.fixture(scope="session")
def olla(real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllaDaemon]:
    endpoint = ollama_endpoint(
        "real-ollama", real_ollama.url, check_interval="3s", check_timeout="2s"
    )
    extra = {"proxy": {"response_header_timeout": "300s", "read_timeout": "300s"}}
    with running_olla(tmp_path_factory.mktemp("olla"), [endpoint], extra=extra) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def real_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLlamaServer]:
    """llama-server with SmolLM2 under the name the real Ollama gives it, two parallel slots."""
    installed()
    workdir = tmp_path_factory.mktemp("real-llama")
    with running_llama_server(workdir, smollm2(), CHAT_MODEL, parallel=2) as server:
        print(f"\nreal llama-server {server.version} at {server.url}, model {server.alias}")
        yield server


@pytest.fixture(scope="session")
def real_llama_embed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLlamaServer]:
    """llama-server --embeddings with the MiniLM GGUF, under llama.cpp's own kind of name."""
    if not EMBED_GGUF.is_file():
        pytest.skip(f"no embedding model at {EMBED_GGUF} (set OLLA_EMBED_GGUF)")
    installed()
    workdir = tmp_path_factory.mktemp("real-llama-embed")
    with running_llama_server(
        workdir, EMBED_GGUF, LLAMA_EMBED_MODEL, parallel=1, embeddings=True
    ) as server:
        yield server


def llama_endpoint(name: str, url: str, **extra: object) -> dict[str, object]:
    """A llama-server behind olla as a user would add one: ``type: auto`` (probes patient
    enough for a busy 2-core machine: a detection that times out is retried an interval on)."""
    return {
        "name": name,
        "url": url,
        "type": "auto",
        "check_interval": "5s",
        "check_timeout": "4s",
        **extra,
    }


@pytest.fixture(scope="session")
def olla_llama(
    real_llama: RealLlamaServer,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OllaDaemon]:
    """olla in front of the chat llama-server and, where it runs, the embedding one."""
    endpoints = [llama_endpoint("llama-chat", real_llama.url)]
    if EMBED_GGUF.is_file():
        embed: RealLlamaServer = request.getfixturevalue("real_llama_embed")
        endpoints.append(llama_endpoint("llama-embed", embed.url))
    extra = {"proxy": {"response_header_timeout": "300s", "read_timeout": "300s"}}
    with running_olla(tmp_path_factory.mktemp("olla-llama"), endpoints, extra=extra) as daemon:
        yield daemon
