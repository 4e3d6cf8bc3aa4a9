"""``--workers 2``: ``/internal/metrics`` shows the whole daemon in one scrape (prometheus_client's
multiprocess mode), whichever worker answers it, and the live gauges count live workers."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.daemon import OllaDaemon, ollama_endpoint, write_config
from tests.e2e.test_state_e2e import served_by_worker
from tests.fakes.process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:latest"
CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake("--models", MODEL, "--loaded", MODEL, "--name", "A") as process:
        yield process


def get(port: int, method: str, path: str, body: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def figures(text: str) -> dict[str, float]:
    """Each sample's value summed over its labels, by sample name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def test_one_scrape_shows_every_worker(fake: FakeProcess, tmp_path: Path) -> None:
    """If two workers served 60 requests, then each of 12 scrapes (on fresh connections, so
    both workers answer some) reads 60 requests, and a duration histogram of 60."""
    config = write_config(tmp_path, [ollama_endpoint("fake-a", fake.url)])
    daemon = OllaDaemon(config, args=["--workers", "2"])
    try:
        daemon.wait_ready()
        while sum(" serves " in line for line in daemon.lines) < 2:
            daemon.wait_for_log(" serves ", timeout=20)
        with ThreadPoolExecutor(6) as pool:  # at once, so both workers accept some
            answers = list(
                pool.map(
                    lambda _: get(daemon.port, "POST", "/olla/ollama/api/chat", CHAT), range(60)
                )
            )
            assert [status for status, _ in answers] == [200] * 60
            served = served_by_worker(daemon)
            assert len(served) == 2 and sum(served.values()) == 60, served
            scrapes = list(
                pool.map(lambda _: get(daemon.port, "GET", "/internal/metrics"), range(12))
            )
        reads = []
        for status, text in scrapes:
            assert status == 200
            seen = figures(text)
            reads.append(
                (seen.get("olla_requests_total"), seen.get("olla_request_duration_seconds_count"))
            )
        assert reads == [(60.0, 60.0)] * 12, (reads, served)
    finally:
        daemon.stop()
