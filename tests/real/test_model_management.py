"""Fleet model management against two real Ollama 0.5.4 servers with separate model stores.

The ollama SDK (0.6) sends the new create request (``from``, ``files``...), which Ollama 0.5.4
does not take: olla writes it as the Modelfile each server understands. Each server is asked
directly afterwards, and olla's own catalogue too. No real ``pull`` or ``push``: a real Ollama
would try to reach its registry (those are tested against the fakes, tests/e2e).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.real.backend import (
    CACHE,
    CHAT_MODEL,
    InstallImpossible,
    RealOllama,
    ensure_installed,
)

pytestmark = pytest.mark.e2e

GGUF = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DERIVED = "smollm2-terse:135m"
COPY = "smollm2-copy:135m"
FROM_FILE = "smollm2-file:135m"
SYSTEM = "Answer in one word."


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RealOllama]]:
    """Two real Ollamas, each with its own model store holding the small chat model."""
    try:
        ensure_installed(parts=("ollama", "models"))
    except InstallImpossible as why:
        pytest.skip(f"the real Ollama cannot be installed here: {why}")
    servers: list[RealOllama] = []
    try:
        for name in ("left", "right"):
            server = RealOllama(tmp_path_factory.mktemp(f"manage-{name}"))
            servers.append(server)
            server.create(CHAT_MODEL, GGUF)
        yield servers
    finally:
        for server in servers:
            server.stop()


def _endpoints(machines: list[RealOllama]) -> list[dict[str, Any]]:
    return [
        ollama_endpoint(name, server.url, check_interval="3s", check_timeout="2s")
        for name, server in zip(("left", "right"), machines, strict=True)
    ]


#: a create or a blob upload on the CPU of a busy machine can take a while
SLOW = {"proxy": {"response_header_timeout": "300s", "read_timeout": "300s"}}


@pytest.fixture(scope="module")
def olla(
    machines: list[RealOllama], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    extra = {**SLOW, "model_management": {"enabled": True}}
    with running_olla(tmp_path_factory.mktemp("olla"), _endpoints(machines), extra=extra) as d:
        yield d


def through(olla: OllaDaemon) -> ollama.Client:
    return ollama.Client(host=f"{olla.url}/olla/ollama", timeout=300)


def names_on(server: RealOllama) -> set[str]:
    return {m.model or "" for m in ollama.Client(host=server.url).list().models}


def catalogue(olla: OllaDaemon) -> set[str]:
    """What olla lists, in the Ollama shape and in its unified one."""
    tags = {m.model or "" for m in through(olla).list().models}
    unified = httpx.get(f"{olla.url}/olla/models", timeout=10).text
    assert all(name in unified for name in tags)
    return tags


def test_create_copy_delete_across_both(machines: list[RealOllama], olla: OllaDaemon) -> None:
    """If the SDK creates a model derived from the small one through olla, then both servers
    list it (with its system prompt, so the Modelfile olla wrote said the same) and olla's
    catalogue has it; a copy lands on both; deleting both leaves neither on either server and
    olla's catalogue drops them."""
    client = through(olla)
    progress = list(
        client.create(
            model=DERIVED,
            from_=CHAT_MODEL,
            system=SYSTEM,
            parameters={"temperature": 0.1},
            stream=True,
        )
    )
    statuses = [p.status or "" for p in progress]
    assert statuses[-1] == "success"
    assert {"left: success", "right: success"} <= set(statuses)
    for server in machines:
        assert DERIVED in names_on(server)
        shown = ollama.Client(host=server.url).show(DERIVED)
        assert f"SYSTEM {SYSTEM}" in (shown.modelfile or "")
        assert "temperature" in (shown.parameters or "")
    assert DERIVED in catalogue(olla)

    assert client.copy(DERIVED, COPY).status == "success"
    for server in machines:
        assert COPY in names_on(server)
    assert {DERIVED, COPY} <= catalogue(olla)

    for name in (COPY, DERIVED):
        assert client.delete(name).status == "success"
    for server in machines:
        assert not {DERIVED, COPY} & names_on(server)
        assert CHAT_MODEL in names_on(server)
    assert not {DERIVED, COPY} & catalogue(olla)
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(COPY)
    assert gone.value.status_code == 404


def test_create_from_an_uploaded_gguf(machines: list[RealOllama], olla: OllaDaemon) -> None:
    """If a GGUF file is uploaded through olla (the SDK's create_blob, as Open WebUI's upload)
    and a model created from it (``files``), then each server got the blob (olla asked each
    first) and created the model; a second upload finds the blob on both."""
    client = through(olla)
    digest = client.create_blob(GGUF)
    assert digest == "sha256:" + hashlib.sha256(GGUF.read_bytes()).hexdigest()
    assert httpx.head(f"{olla.url}/olla/ollama/api/blobs/{digest}", timeout=10).status_code == 200
    for server in machines:
        assert httpx.head(f"{server.url}/api/blobs/{digest}", timeout=10).status_code == 200
    done = client.create(model=FROM_FILE, files={GGUF.name: digest})
    assert done.status == "success"
    for server in machines:
        assert FROM_FILE in names_on(server)
    assert FROM_FILE in catalogue(olla)
    assert client.delete(FROM_FILE).status == "success"
    assert FROM_FILE not in catalogue(olla)


@pytest.fixture(scope="module")
def olla_off(
    machines: list[RealOllama], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    with running_olla(tmp_path_factory.mktemp("olla-off"), _endpoints(machines)) as d:
        yield d


def test_disabled_routes_answer_501(machines: list[RealOllama], olla_off: OllaDaemon) -> None:
    """If model_management is off (the default), then each management route answers 501 as
    the Go original does, and the servers are left alone."""
    routes = [
        ("POST", "/api/pull", {"model": CHAT_MODEL}),
        ("POST", "/api/push", {"model": CHAT_MODEL}),
        ("POST", "/api/create", {"model": "x:1", "from": CHAT_MODEL}),
        ("POST", "/api/copy", {"source": CHAT_MODEL, "destination": "x:1"}),
        ("DELETE", "/api/delete", {"model": CHAT_MODEL}),
    ]
    for method, path, document in routes:
        response = httpx.request(
            method, f"{olla_off.url}/olla/ollama{path}", json=document, timeout=10
        )
        assert response.status_code == 501, path
        assert response.json() == {"error": "model management operations not supported by proxy"}
    for server in machines:
        assert names_on(server) >= {CHAT_MODEL} and "x:1" not in names_on(server)
