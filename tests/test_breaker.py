"""The proxy circuit breaker, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from olla.config import EndpointConfig
from olla.fleet.breaker import FAILURE_THRESHOLD, OPEN_FOR, CircuitBreakers
from olla.fleet.endpoints import endpoints_from_config

(EP,) = endpoints_from_config([EndpointConfig(url="http://a:1", name="a", type="ollama")])


def test_opens_after_threshold() -> None:
    """If five attempts in a row fail, then the endpoint is skipped for 30 s."""
    clock = Clock()
    breakers = CircuitBreakers(clock)
    for _ in range(FAILURE_THRESHOLD - 1):
        breakers.failed(EP)
        assert breakers.allows(EP)
    breakers.failed(EP)
    assert not breakers.allows(EP)
    clock.advance(OPEN_FOR - 0.1)
    assert not breakers.allows(EP)


def test_success_resets_count() -> None:
    """If a success comes between failures, then the count starts again."""
    breakers = CircuitBreakers(Clock())
    for _ in range(FAILURE_THRESHOLD - 1):
        breakers.failed(EP)
    breakers.succeeded(EP)
    breakers.failed(EP)
    assert breakers.allows(EP)


def test_half_open_single_trial() -> None:
    """If the open period ends, then one trial is let through; its success closes the
    circuit, its failure opens it for another 30 s."""
    clock = Clock()
    breakers = CircuitBreakers(clock)
    for _ in range(FAILURE_THRESHOLD):
        breakers.failed(EP)
    clock.advance(OPEN_FOR)
    assert breakers.allows(EP)
    breakers.attempt_started(EP)
    assert not breakers.allows(EP)  # one trial at a time
    breakers.failed(EP)
    assert not breakers.allows(EP)
    clock.advance(OPEN_FOR)
    breakers.attempt_started(EP)
    breakers.released(EP)  # client left: no verdict, slot free again
    assert breakers.allows(EP)
    breakers.attempt_started(EP)
    breakers.succeeded(EP)
    assert breakers.allows(EP)


def test_state_for_the_metrics() -> None:
    """If a circuit opens and its open period ends, then its state reads ``closed``, then
    ``open``, then ``half_open``, and ``closed`` again after a success."""
    clock = Clock()
    breakers = CircuitBreakers(clock)
    assert breakers.state(EP) == "closed"
    for _ in range(FAILURE_THRESHOLD):
        breakers.failed(EP)
    assert breakers.state(EP) == "open"
    clock.advance(OPEN_FOR)
    assert breakers.state(EP) == "half_open"
    breakers.succeeded(EP)
    assert breakers.state(EP) == "closed"


def test_open_circuit_logs_once() -> None:
    """If a circuit opens and attempts already under way keep failing while it is open, then
    one warning says it opened; a failed half-open trial says so once more."""
    clock = Clock()
    breakers = CircuitBreakers(clock)
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(FAILURE_THRESHOLD + 10):
            breakers.failed(EP)
        opened = [e for e in events if e.get("log_level") is LogLevel.warn]
        assert len(opened) == 1
        clock.advance(OPEN_FOR)
        breakers.attempt_started(EP)  # the half-open trial
        breakers.failed(EP)
        breakers.failed(EP)  # another late failure: silent
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e.get("log_level") is LogLevel.warn]
    assert len(warnings) == 2
