"""Fleet model management on a real ``twistd -n olla`` over fake Ollama processes, driven by the
real ollama SDK and httpx: a streamed pull's merged progress, a machine dying mid-pull,
``X-Olla-Endpoints``, client keys without ``manage_models``, and a 100 MB blob upload that
leaves olla's memory flat."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

BASE = "llama3.2:latest"
ADMIN = "sk-e2e-admin-0123456789"
USER = "sk-e2e-user-0123456789"
#: a pull of this size at this speed takes about a second, a progress line every 50 ms
PULL = {"pull_size": 50_000_000, "pull_speed": 50_000_000, "pull_tick_ms": 50}
MANAGED = {"model_management": {"enabled": True}}


@pytest.fixture(scope="module")
def fakes() -> Iterator[list[FakeProcess]]:
    started = [start_fake("--models", BASE, "--name", name) for name in ("A", "B")]
    try:
        yield started
    finally:
        for fake in started:
            fake.stop()


@pytest.fixture
def fleet(fakes: list[FakeProcess]) -> list[FakeProcess]:
    """The fakes as new: only the base model, default pull knobs, no requests recorded."""
    for fake in fakes:
        fake.set_state(
            models=[BASE],
            pull_fail_after=None,
            pull_die_after=None,
            **PULL,  # type: ignore[arg-type]
        )
        fake.reset()
    return fakes


@pytest.fixture(scope="module")
def olla(
    fakes: list[FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    endpoints = [ollama_endpoint(f.args[-1], f.url) for f in fakes]
    with running_olla(tmp_path_factory.mktemp("manage"), endpoints, extra=MANAGED) as daemon:
        yield daemon


def sdk(daemon: OllaDaemon, **headers: str) -> ollama.Client:
    return ollama.Client(host=f"{daemon.url}/olla/ollama", headers=headers or None, timeout=60)


def listed(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{url}/api/tags", timeout=10).json()["models"]]


def test_streamed_pull_is_monotonic_and_ends_in_success(
    olla: OllaDaemon, fleet: list[FakeProcess]
) -> None:
    """If the ollama SDK pulls a model through olla with two machines behind it, then each
    layer's merged progress only grows (completed and total summed over both machines), both
    machines' status lines are named, the last is success, and olla lists the model at once."""
    seen: dict[str, tuple[int, int]] = {}
    statuses: list[str] = []
    for progress in sdk(olla).pull("new-model:1b", stream=True):
        statuses.append(progress.status or "")
        if progress.digest:
            total, completed = progress.total or 0, progress.completed or 0
            last_total, last_completed = seen.get(progress.digest, (0, 0))
            assert total >= last_total and completed >= last_completed, progress
            assert completed <= total
            seen[progress.digest] = (total, completed)
    assert statuses[-1] == "success"
    assert {"A: pulling manifest", "B: pulling manifest", "A: success", "B: success"} <= set(
        statuses
    )
    weights = max(seen.values())
    assert weights == (2 * PULL["pull_size"], 2 * PULL["pull_size"])
    assert sum(1 for s in statuses if s.startswith("pulling ")) > 10
    assert all("new-model:1b" in listed(f.url) for f in fleet)
    assert "new-model:1b" in listed(f"{olla.url}/olla/ollama")
    unified = httpx.get(f"{olla.url}/olla/models", timeout=10).json()
    assert "new-model:1b" in json.dumps(unified)


def test_a_machine_dying_mid_pull_is_named(olla: OllaDaemon, fleet: list[FakeProcess]) -> None:
    """If one machine's connection is cut mid-pull, then the stream says so as it happens,
    ends with an error line naming it (the SDK raises with that message), and the other
    machine's pull completes."""
    fleet[1].set_state(pull_die_after=20_000_000)
    with httpx.stream(
        "POST", f"{olla.url}/olla/ollama/api/pull", json={"model": "half:1b"}, timeout=60
    ) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert response.status_code == 200
    assert any(line.get("status", "").startswith("B: failed: its stream was cut") for line in lines)
    final = lines[-1]
    assert list(final) == ["error"]
    assert final["error"].startswith("pull failed on 1 of 2 endpoint(s): B: its stream was cut")
    assert final["error"].endswith("(succeeded on A)")
    assert "half:1b" in listed(fleet[0].url) and "half:1b" not in listed(fleet[1].url)
    with pytest.raises(ollama.ResponseError, match="B: its stream was cut"):
        for _ in sdk(olla).pull("half2:1b", stream=True):
            pass


def test_header_narrows_the_targets(olla: OllaDaemon, fleet: list[FakeProcess]) -> None:
    """If X-Olla-Endpoints names one machine, then only that machine pulls; a name that is no
    endpoint is a 400."""
    done = sdk(olla, **{"X-Olla-Endpoints": "B"}).pull("only-b:1b", stream=False)
    assert done.status == "success"
    assert fleet[0].requests("/api/pull") == [] and len(fleet[1].requests("/api/pull")) == 1
    response = httpx.post(
        f"{olla.url}/olla/ollama/api/pull",
        json={"model": "x"},
        headers={"X-Olla-Endpoints": "nope"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "no endpoint named nope" in response.json()["error"]


def test_copy_and_delete_reach_every_machine(olla: OllaDaemon, fleet: list[FakeProcess]) -> None:
    """If a model is copied and the copy deleted through the SDK, then both machines follow
    and olla's catalogue with them."""
    client = sdk(olla)
    assert client.copy(BASE, "copied:1").status == "success"
    assert all("copied:1" in listed(f.url) for f in fleet)
    assert "copied:1" in listed(f"{olla.url}/olla/ollama")
    assert client.delete("copied:1").status == "success"
    assert all("copied:1" not in listed(f.url) for f in fleet)
    assert "copied:1" not in listed(f"{olla.url}/olla/ollama")
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("copied:1")
    assert missing.value.status_code == 404


@pytest.fixture(scope="module")
def keyed(
    fakes: list[FakeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OllaDaemon]:
    extra = {
        **MANAGED,
        "server": {
            "auth": {
                "api_keys": [
                    {"key": USER, "name": "user"},
                    {"key": ADMIN, "name": "admin", "manage_models": True},
                ]
            }
        },
    }
    endpoints = [ollama_endpoint(f.args[-1], f.url) for f in fakes]
    with running_olla(tmp_path_factory.mktemp("keyed"), endpoints, extra=extra) as daemon:
        yield daemon


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/pull", {"model": "x:1"}),
    ("POST", "/api/push", {"model": BASE}),
    ("POST", "/api/create", {"model": "x:1", "from": BASE}),
    ("POST", "/api/copy", {"source": BASE, "destination": "x:1"}),
    ("DELETE", "/api/delete", {"model": BASE}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, {}),
]


def test_key_without_manage_models_is_refused(keyed: OllaDaemon, fleet: list[FakeProcess]) -> None:
    """If a client key without manage_models asks for any management route, on /olla/ollama/
    or /olla/proxy/, then 403 in Ollama's error shape (the SDK's ResponseError), and no
    machine is asked; the admin key's pull works."""
    headers = {"Authorization": f"Bearer {USER}"}
    for prefix in ("/olla/ollama", "/olla/proxy"):
        for method, path, document in ROUTES:
            response = httpx.request(
                method, keyed.url + prefix + path, json=document, headers=headers, timeout=10
            )
            assert response.status_code == 403, (prefix, path)
            assert response.json() == {
                "error": "API key 'user' may not manage models (it needs manage_models: true)"
            }
    with pytest.raises(ollama.ResponseError) as refused:
        sdk(keyed, Authorization=f"Bearer {USER}").pull("x:1")
    assert refused.value.status_code == 403
    assert all(f.requests("/api/pull") == [] for f in fleet)
    done = sdk(keyed, Authorization=f"Bearer {ADMIN}").pull("admin:1b")
    assert done.status == "success"


def _memory(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak so far (VmHWM), in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def test_100mb_blob_upload_keeps_olla_memory_flat(
    olla: OllaDaemon, fleet: list[FakeProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If a 100 MB blob is uploaded through olla to two machines, then both receive it whole
    (sha256 checked by each) while olla's peak resident memory grows by far less than the
    blob (under 50 MB), even sent form-encoded: the body goes from twisted.web's spool file to
    each machine in 64 KiB pieces; HEAD then finds it on both."""
    blob = tmp_path / "model.gguf"
    digest = hashlib.sha256()
    with blob.open("wb") as f:
        block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, not all zeros
        for i in range(95):
            piece = bytes([i]) + block[1:]
            f.write(piece)
            digest.update(piece)
    size = blob.stat().st_size
    name = f"sha256:{digest.hexdigest()}"
    url = f"{olla.url}/olla/ollama/api/blobs/{name}"
    before = _memory(olla.process.pid)
    with blob.open("rb") as body:
        # curl --data-binary's default type: twisted.web would parse such a body into memory
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        response = httpx.post(url, content=body, headers=form, timeout=120)
    after = _memory(olla.process.pid)
    assert response.status_code == 201, response.text
    for fake in fleet:
        (upload,) = [r for r in fake.requests() if r["method"] == "POST"]
        assert (upload["body_size"], upload["body_sha256"]) == (size, digest.hexdigest())
    assert httpx.head(url, timeout=10).status_code == 200
    growth = after["VmHWM"] - before["VmHWM"]
    with capsys.disabled():
        print(
            f"\nblob upload {size / 1e6:.1f} MB to 2 machines: olla VmRSS "
            f"{before['VmRSS'] / 1e6:.1f} -> {after['VmRSS'] / 1e6:.1f} MB, peak (VmHWM) "
            f"{before['VmHWM'] / 1e6:.1f} -> {after['VmHWM'] / 1e6:.1f} MB "
            f"(+{growth / 1e6:.1f} MB)"
        )
    assert growth < 50 * 1024 * 1024
