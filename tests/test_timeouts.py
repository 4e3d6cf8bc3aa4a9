"""The arithmetic of response bounds and header waits (``olla.proxy.timeouts``), on a Clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock

from olla.config import OllaConfig, ProxyConfig
from olla.profiles import Profile, builtin_profiles
from olla.proxy.timeouts import AttemptDeadline, TimeoutPolicy, response_bound

OLLAMA = builtin_profiles().get("ollama")
LLAMACPP = builtin_profiles().get("llamacpp")
assert OLLAMA is not None and LLAMACPP is not None
PAGE = ProxyConfig(response_timeout=600.0, response_header_timeout=30.0)


def attempt_deadline(proxy: ProxyConfig, profile: Profile | None, **facts: Any) -> AttemptDeadline:
    """``TimeoutPolicy.attempt`` under ``proxy`` (and no ``server.write_timeout``)."""
    return TimeoutPolicy(replace(OllaConfig(), proxy=proxy)).attempt(profile, **facts)


def test_smallest_bound_wins() -> None:
    """If several settings bound a response, then the smallest does, and it is named."""
    assert response_bound(PAGE, OLLAMA).describe() == (
        "ollama profile characteristics.timeout (5m)"
    )
    tight = replace(PAGE, response_timeout=3.0)
    assert response_bound(tight, OLLAMA).describe() == "proxy.response_timeout (3s)"
    assert response_bound(PAGE, OLLAMA, write_timeout=60.0).setting == "server.write_timeout"
    unbounded = replace(PAGE, response_timeout=0.0)
    assert response_bound(unbounded, None).seconds is None
    longer = replace(OLLAMA, characteristics=replace(OLLAMA.characteristics, timeout=900.0))
    assert response_bound(PAGE, longer).seconds == 600.0


def test_warm_host_waits_the_header_timeout() -> None:
    """If the host has the model in memory, then the header wait is
    proxy.response_header_timeout and running out is a transport failure."""
    clock = Clock()
    deadline = attempt_deadline(
        PAGE, OLLAMA, started=clock.seconds(), now=clock.seconds(), cold=False, expected_load=300
    )
    assert (deadline.header_wait, deadline.loading) == (30.0, False)


def test_cold_host_waits_for_the_load() -> None:
    """If the host must load the model, then the header wait is base_timeout_seconds plus
    the expected load (the page's 70b case: 30 s + 300 s), within what is left of the
    response's bound, and running out means it is still loading."""
    clock = Clock()
    started = clock.seconds()
    deadline = attempt_deadline(
        PAGE, OLLAMA, started=started, now=clock.seconds(), cold=True, expected_load=40.0
    )
    assert (deadline.header_wait, deadline.loading) == (70.0, True)
    assert "expected load 40s" in deadline.explain
    clock.advance(290)  # a failover late in the request: only 10 s of the 5m bound are left
    late = attempt_deadline(
        PAGE, OLLAMA, started=started, now=clock.seconds(), cold=True, expected_load=40.0
    )
    assert late.header_wait == 10.0
    assert "what was left of ollama profile characteristics.timeout" in late.explain
    clock.advance(20)
    assert attempt_deadline(
        PAGE, OLLAMA, started=started, now=clock.seconds(), cold=True, expected_load=40.0
    ).expired


def test_cold_wait_never_below_the_header_timeout() -> None:
    """If base + load is shorter than the header timeout, then the header timeout stands;
    without load_time_buffer the load is not added."""
    quick = attempt_deadline(
        replace(PAGE, response_header_timeout=120.0),
        OLLAMA,
        started=0,
        now=0,
        cold=True,
        expected_load=5.0,
    )
    assert quick.header_wait == 120.0
    no_buffer = replace(
        OLLAMA,
        resources=replace(
            OLLAMA.resources,
            timeout_scaling=replace(OLLAMA.resources.timeout_scaling, load_time_buffer=False),
        ),
    )
    plain = attempt_deadline(PAGE, no_buffer, started=0, now=0, cold=True, expected_load=300.0)
    assert plain.header_wait == 30.0


def test_per_token_time() -> None:
    """If the platform gives time per prompt token (llama.cpp: 100 ms), then a larger body
    waits longer for its headers."""
    small = attempt_deadline(PAGE, LLAMACPP, started=0, now=0, cold=False, expected_load=0)
    large = attempt_deadline(
        PAGE, LLAMACPP, started=0, now=0, cold=False, expected_load=0, body_size=4000
    )
    assert small.header_wait == 30.0
    assert large.header_wait == 30.0 + 0.1 * 1000


def test_response_timer() -> None:
    """If the response timer is armed at each attempt, then it fires once what is left of
    the bound runs out, re-arming replaces the old timer, and a stopped one never fires."""
    from olla.proxy.timeouts import ResponseTimer

    clock = Clock()
    fired: list[float] = []
    timer = ResponseTimer(clock, lambda: fired.append(clock.seconds()))
    tight = replace(PAGE, response_timeout=3.0)
    timer.arm(attempt_deadline(tight, OLLAMA, started=0, now=0, cold=False, expected_load=0))
    clock.advance(1)
    timer.arm(attempt_deadline(tight, OLLAMA, started=0, now=1, cold=False, expected_load=0))
    clock.advance(2)
    assert fired == [3.0]
    timer.arm(attempt_deadline(tight, OLLAMA, started=3, now=3, cold=False, expected_load=0))
    timer.stop()
    clock.advance(10)
    assert fired == [3.0] and clock.getDelayedCalls() == []


def test_response_timer_times_the_header_wait_first() -> None:
    """If an attempt's header wait ends before the bound, then the one timer fires
    ``header_expired`` at the wait unless the headers came first; once they came it fires
    ``expired`` at the bound (no bound: nothing is left scheduled)."""
    from olla.proxy.timeouts import ResponseTimer

    clock = Clock()
    fired: list[tuple[str, float]] = []
    timer = ResponseTimer(
        clock,
        lambda: fired.append(("bound", clock.seconds())),
        lambda: fired.append(("headers", clock.seconds())),
    )
    bounded = replace(PAGE, response_header_timeout=5.0, response_timeout=60.0)
    timer.arm(attempt_deadline(bounded, OLLAMA, started=0, now=0, cold=False, expected_load=0))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5)
    assert fired == [("headers", 5.0)]
    timer.arm(attempt_deadline(bounded, OLLAMA, started=0, now=5, cold=False, expected_load=0))
    clock.advance(4)
    timer.answered()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(50)
    assert fired == [("headers", 5.0)]
    clock.advance(1)
    assert fired == [("headers", 5.0), ("bound", 60.0)]
    unbounded = replace(PAGE, response_header_timeout=5.0, response_timeout=0.0)
    timer.arm(attempt_deadline(unbounded, None, started=60, now=60, cold=False, expected_load=0))
    timer.answered()
    assert clock.getDelayedCalls() == []


def test_one_shot_moves_its_call() -> None:
    """If a one-shot timer is started again while it runs, then its one delayed call moves
    (it fires once, that long after the last start), and a stopped one never fires."""
    from olla.util.deadline import OneShot

    clock = Clock()
    fired: list[float] = []
    timer = OneShot(clock, lambda: fired.append(clock.seconds()))
    timer.start(5)
    clock.advance(3)
    timer.start(5)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4)
    assert fired == []
    clock.advance(1)
    assert fired == [8.0]
    timer.start(1)
    timer.stop()
    clock.advance(5)
    assert fired == [8.0] and clock.getDelayedCalls() == []


def test_idle_bound_fires_that_long_after_the_last_activity() -> None:
    """If activity is marked while an idle bound runs, then it fires exactly its seconds after
    the last mark (never sooner), with one delayed call at a time, and a stopped one never."""
    from olla.util.deadline import IdleBound

    clock = Clock()
    fired: list[float] = []
    idle = IdleBound(clock, lambda: fired.append(clock.seconds()))
    idle.start(5)
    for _ in range(4):  # a chunk every 2 s
        clock.advance(2)
        idle.active_at = clock.seconds()
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [13.0] and clock.getDelayedCalls() == []
    again = IdleBound(clock, lambda: fired.append(-1))
    again.start(5)
    clock.advance(3)
    again.stop()
    clock.advance(10)
    assert fired == [13.0] and clock.getDelayedCalls() == []
