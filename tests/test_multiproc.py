"""``--workers`` metrics: each worker writes its collector's figures into prometheus_client's
multiprocess files, and a scrape merges them: counters and histograms summed over every worker
(a dead one's too), live gauges over the live ones."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from twisted.internet.task import Clock

from olla.daemon.supervisor import MetricsDirectory
from olla.web.multiproc import ENV, WorkerFigures, merged_registry


class Figures(Collector):
    """A worker's collector: a counter, an in-flight gauge, an up gauge, a histogram."""

    def __init__(self, requests: int, in_flight: int, durations: list[tuple[str, float]]) -> None:
        self.requests, self.in_flight, self.durations = requests, in_flight, durations

    def collect(self) -> Iterable[object]:
        counter = CounterMetricFamily("olla_requests_total", "r", labels=["endpoint"])
        counter.add_metric(["a"], self.requests)
        yield counter
        gauge = GaugeMetricFamily("olla_endpoint_in_flight_requests", "f", labels=["endpoint"])
        gauge.add_metric(["a"], self.in_flight)
        yield gauge
        yield GaugeMetricFamily("olla_uptime_seconds", "u", value=10.0 * self.requests)
        histogram = HistogramMetricFamily("olla_request_duration_seconds", "d", labels=["endpoint"])
        histogram.add_metric(["a"], self.durations, sum_value=1.5)
        yield histogram


def samples(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in merged_registry(path).collect():
        for sample in family.samples:
            assert isinstance(sample, Sample)
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV, str(tmp_path))
    return str(tmp_path)


def test_merged_across_workers(directory: str) -> None:
    """If two workers wrote their figures, then a scrape sums counters, in-flight gauges and
    histograms (buckets cumulative again, count from them) and takes the longest uptime; once a
    worker is marked dead, its counters stay and its live gauges go."""
    one = WorkerFigures(
        Figures(3, 2, [("0.1", 1), ("1.0", 3), ("+Inf", 3)]), Clock(), process=lambda: 101
    )
    two = WorkerFigures(
        Figures(4, 1, [("0.1", 2), ("1.0", 2), ("+Inf", 4)]), Clock(), process=lambda: 102
    )
    one.flush()
    two.flush()
    seen = samples(directory)
    endpoint = (("endpoint", "a"),)
    assert seen[("olla_requests_total", endpoint)] == 7
    assert seen[("olla_endpoint_in_flight_requests", endpoint)] == 3
    assert seen[("olla_uptime_seconds", ())] == 40
    assert seen[("olla_request_duration_seconds_bucket", (("endpoint", "a"), ("le", "0.1")))] == 3
    assert seen[("olla_request_duration_seconds_bucket", (("endpoint", "a"), ("le", "1.0")))] == 5
    assert seen[("olla_request_duration_seconds_bucket", (("endpoint", "a"), ("le", "+Inf")))] == 7
    assert seen[("olla_request_duration_seconds_count", endpoint)] == 7
    assert seen[("olla_request_duration_seconds_sum", endpoint)] == 3.0
    mark_process_dead(102, directory)
    seen = samples(directory)
    assert seen[("olla_requests_total", endpoint)] == 7
    assert seen[("olla_endpoint_in_flight_requests", endpoint)] == 2


def test_written_on_the_next_turn(directory: str) -> None:
    """If a request finishes, then the figures are written on the next reactor turn, once."""
    clock = Clock()
    source = Figures(1, 0, [("+Inf", 1)])
    figures = WorkerFigures(source, clock, process=lambda: 103)
    figures.changed()
    figures.changed()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert samples(directory)[("olla_requests_total", (("endpoint", "a"),))] == 1
    assert clock.getDelayedCalls() == []


def test_directory_wiped_and_owned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the operator names a directory, then stale figures there are removed at start and the
    directory stays; without one, a fresh directory is made and removed at stop."""
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    given = MetricsDirectory(str(tmp_path))
    given.startService()
    given.stopService()
    assert tmp_path.exists() and not list(tmp_path.iterdir())
    monkeypatch.delenv(ENV, raising=False)
    own = MetricsDirectory()
    own.startService()
    assert os.path.isdir(own.path)
    own.stopService()
    assert not os.path.exists(own.path)
