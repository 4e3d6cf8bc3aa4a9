"""A small fleet for the dashboard: a real ``twistd -n olla`` in front of fake Ollama processes,
some traffic, and one request that failed over (its first choice answered 503 busy).

The end-to-end test loads the dashboard against it; run as a script, it takes the README's
screenshot::

    python -m tests.e2e.dashboard_fleet docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import browser
from tests.e2e.daemon import OllaDaemon, free_port, ollama_endpoint, running_olla
from tests.fakes.process import FakeProcess, start_fake

MODEL = "llama3.2:latest"
CHAT = "/olla/ollama/api/chat"
#: an endpoint that never answers (nothing listens on its port), with a name that is markup
DEAD = "spare <i>&amp;</i>"
#: how long one wait for the fleet to settle may take
SETTLE = 20.0


@dataclass
class Fleet:
    daemon: OllaDaemon
    fakes: dict[str, FakeProcess]
    #: the request that failed over from "gpu-a" (busy) to "gpu-b"
    failed_over: str

    @property
    def page(self) -> str:
        return f"{self.daemon.url}/internal/ui/"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _chat(daemon: OllaDaemon, model: str = MODEL) -> tuple[int, dict[str, str]]:
    body = json.dumps({"model": model, "messages": [], "stream": False}).encode()
    request = urllib.request.Request(daemon.url + CHAT, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}


def _wait(what: str, check: Any, within: float = SETTLE) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {within}s")
        time.sleep(0.05)


def _statuses(daemon: OllaDaemon) -> dict[str, str]:
    payload = get_json(f"{daemon.url}/internal/status/endpoints")
    return {e["name"]: e["status"] for e in payload["endpoints"]}


def _loaded_on(daemon: OllaDaemon) -> set[str]:
    for model in get_json(f"{daemon.url}/olla/models")["data"]:
        if model["id"] == MODEL:
            return {a["endpoint"] for a in model["olla"]["availability"] if a["state"] == "loaded"}
    return set()


@contextmanager
def fleet(directory: Path, *, traffic: int = 3, dead: str = DEAD) -> Iterator[Fleet]:
    """gpu-a (priority 200) and gpu-b (100) serving, a dead spare named ``dead``; ``traffic``
    chats served by gpu-a, then one that gpu-a refuses with 503 and gpu-b serves. Everything
    is stopped on the way out, also when a step fails."""
    with ExitStack() as stack:
        fakes = {
            "gpu-a": stack.enter_context(
                start_fake("--name", "A", "--models", f"{MODEL},qwen2.5:7b", "--loaded", MODEL)
            ),
            "gpu-b": stack.enter_context(
                start_fake("--name", "B", "--models", f"{MODEL},mistral:7b", "--loaded", MODEL)
            ),
        }
        endpoints = [
            ollama_endpoint("gpu-a", fakes["gpu-a"].url, priority=200),
            ollama_endpoint("gpu-b", fakes["gpu-b"].url, priority=100),
            ollama_endpoint(dead, f"http://127.0.0.1:{free_port()}", priority=50),
        ]
        extra = {"proxy": {"load_balancer": "priority"}}
        daemon = stack.enter_context(
            running_olla(directory, endpoints, extra=extra, wait_models=False)
        )
        for name in fakes:
            daemon.wait_for_log(f"endpoint {name} serves")
        _wait("both fakes known warm", lambda: {"gpu-a", "gpu-b"} <= _loaded_on(daemon))
        _wait("the spare seen down", lambda: _statuses(daemon)[dead] != "unknown")
        for _ in range(traffic):
            assert _chat(daemon)[1]["x-olla-endpoint"] == "gpu-a"
        fakes["gpu-a"].set_state(status=503)
        try:
            status, headers = _chat(daemon)
        finally:
            fakes["gpu-a"].set_state(status=None)
        assert (status, headers["x-olla-endpoint"]) == (200, "gpu-b"), headers
        yield Fleet(daemon, fakes, headers["x-olla-request-id"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot the dashboard against a fake fleet.")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--size", default="1280,900", help="window size, WIDTH,HEIGHT")
    args = parser.parse_args()
    missing = browser.chromium_missing()
    if missing:
        raise SystemExit(missing)
    with (
        tempfile.TemporaryDirectory() as directory,
        fleet(Path(directory), traffic=8, dead="spare") as f,
    ):
        for _ in range(4):  # a little traffic on the second host too
            _chat(f.daemon, "mistral:7b")
        time.sleep(1.0)  # a health round after the failover
        browser.screenshot(f.page, args.output.resolve(), virtual_time_ms=5000, size=args.size)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
