"""Fixtures of the compatibility suite: one real Ollama and one olla in front of it per session.

The install is cached in ``.cache/real`` (see install.sh); where it is impossible (no registry, no
compiler) every test here is skipped with the installer's own words.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.real.backend import InstallImpossible, RealOllama, ensure_installed, running_real_ollama

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


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOllama]:
    try:
        ensure_installed()
    except InstallImpossible as why:
        pytest.skip(f"the real Ollama cannot be installed here: {why}")
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
