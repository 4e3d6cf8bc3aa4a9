"""Token buckets on a ``Clock``: refill, burst, global, health and per-key budgets, idle
cleanup and bounded memory."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from olla.guard.ratelimit import (
    BucketTable,
    Limit,
    LimitSettings,
    MemoryRateStore,
    RateLimiter,
    Verdict,
)


def now(verdict: Deferred[Verdict | None]) -> Verdict | None:
    """The verdict of the in-memory store: already there, no waiting."""
    results: list[Verdict | None] = []
    verdict.addCallback(results.append)
    assert len(results) == 1, "the in-memory store answers at once"
    return results[0]


def limiter(
    clock: Clock,
    *,
    per_ip: int = 60,
    burst: int = 5,
    global_: int = 0,
    health: int = 1000,
    cleanup: float = 300.0,
    max_tracked: int = 100_000,
) -> RateLimiter:
    return RateLimiter(
        LimitSettings(
            global_per_minute=global_,
            per_ip_per_minute=per_ip,
            health_per_minute=health,
            burst=burst,
        ),
        MemoryRateStore(clock, cleanup, max_tracked),
        clock,
    )


def allowed(rl: RateLimiter, ip: str, n: int) -> int:
    count = 0
    for _ in range(n):
        verdict = now(rl.check(ip))
        assert verdict is not None
        count += verdict.allowed
    return count


def test_burst_then_refused_with_retry_after() -> None:
    """If a client sends more than the burst at once, then exactly the burst passes, and the
    next gets a refusal whose Retry-After is the time to the next token."""
    clock = Clock()
    rl = limiter(clock, per_ip=60, burst=5)
    verdicts = [now(rl.check("10.0.0.1")) for _ in range(6)]
    assert [v.allowed for v in verdicts if v] == [True] * 5 + [False]
    assert [v.remaining for v in verdicts if v] == [4, 3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused is not None
    assert refused.retry_after == 1  # 60/min: one token a second
    assert refused.limit == 60
    assert (b"Retry-After", b"1") in refused.headers()


def test_refill_at_the_configured_rate() -> None:
    """If the bucket is empty, then one token comes back per 60/rate seconds and no sooner,
    and it never holds more than the burst."""
    clock = Clock()
    rl = limiter(clock, per_ip=6, burst=2)  # one token every 10 s
    assert allowed(rl, "a", 3) == 2
    clock.advance(9.9)
    assert allowed(rl, "a", 1) == 0
    clock.advance(0.2)
    assert allowed(rl, "a", 2) == 1
    clock.advance(3600)
    assert allowed(rl, "a", 5) == 2  # capped at the burst


def test_reset_is_when_the_bucket_is_full_again() -> None:
    """If two tokens of a 6/min bucket were taken at t=100, then X-RateLimit-Reset is the unix
    second when both are back (t=120)."""
    clock = Clock()
    clock.advance(100)
    rl = limiter(clock, per_ip=6, burst=2)
    now(rl.check("a"))
    verdict = now(rl.check("a"))
    assert verdict is not None
    assert verdict.reset == 120


def test_clients_have_their_own_buckets() -> None:
    """If one client used its burst, then another client still gets its own."""
    clock = Clock()
    rl = limiter(clock, burst=3)
    assert allowed(rl, "10.0.0.1", 5) == 3
    assert allowed(rl, "10.0.0.2", 5) == 3


def test_global_bucket_refuses_everyone_and_returns_the_client_token() -> None:
    """If the global budget is spent, then every client is refused, and the refused request
    does not cost the client its own token."""
    clock = Clock()
    rl = limiter(clock, per_ip=600, burst=2, global_=60)
    assert allowed(rl, "a", 1) + allowed(rl, "b", 1) == 2
    verdict = now(rl.check("c"))
    assert verdict is not None and not verdict.allowed
    assert verdict.retry_after == 1
    clock.advance(1.0)  # one global token back; c still has its full burst
    assert allowed(rl, "c", 1) == 1


def test_per_ip_zero_turns_everything_off() -> None:
    """If per_ip_requests_per_minute is 0, then nothing is limited, the global bucket neither
    (as the Go original does), and nothing is tracked."""
    clock = Clock()
    rl = limiter(clock, per_ip=0, global_=1)
    assert all(now(rl.check("a")) is None for _ in range(100))
    assert now(rl.check_health("a")) is None
    assert rl.store.tracked("ip") == 0


def test_burst_zero_means_one_minute_of_requests() -> None:
    """If burst_size is 0, then a client may send one minute's worth at once."""
    rl = limiter(Clock(), per_ip=10, burst=0)
    assert allowed(rl, "a", 20) == 10


def test_health_has_its_own_budget() -> None:
    """If a client spent its proxy budget, then its health checks still pass on their own
    budget, and the health budget is refused past its own limit."""
    clock = Clock()
    rl = limiter(clock, per_ip=60, burst=1, health=60)
    assert allowed(rl, "a", 2) == 1
    health = [now(rl.check_health("a")) for _ in range(3)]
    assert [v.allowed for v in health if v] == [True, False, False]


def test_per_key_limit() -> None:
    """If a key has its own limit, then its requests share one bucket whatever their address;
    a key without one is not limited."""
    clock = Clock()
    rl = limiter(clock, burst=50)
    results = [now(rl.check_key("alice", 3)) for _ in range(4)]
    assert [v.allowed for v in results if v] == [True, True, True, False]
    assert now(rl.check_key("bob", 0)) is None


def test_idle_buckets_are_swept_on_the_clock() -> None:
    """If clients go quiet, then the cleanup tick (a LoopingCall on the clock) drops every
    bucket that has refilled, and keeps the ones still refilling."""
    clock = Clock()
    rl = limiter(clock, per_ip=60, burst=10, cleanup=30)
    rl.store.startService()
    try:
        for i in range(1000):
            now(rl.check(f"10.0.{i // 256}.{i % 256}"))
        clock.advance(25)
        allowed(rl, "busy", 10)
        assert rl.store.tracked("ip") == 1001
        clock.advance(5)  # tick at t=30: the 1000 idle ones have refilled (10 s), busy not
        assert rl.store.tracked("ip") == 1
        clock.advance(30)  # busy has been idle 35 s: full again, gone too
        assert rl.store.tracked("ip") == 0
    finally:
        rl.store.stopService()
    assert not clock.getDelayedCalls()


def test_a_swept_bucket_is_as_good_as_new() -> None:
    """If a bucket is dropped once full, then the client's next burst is the same as if it had
    been kept (dropping loses nothing)."""
    clock = Clock()
    rl = limiter(clock, per_ip=60, burst=3)
    assert allowed(rl, "a", 3) == 3
    clock.advance(3)
    assert rl.store.sweep() == 1
    assert allowed(rl, "a", 4) == 3


def test_memory_bounded_for_100k_distinct_ips() -> None:
    """If 100k distinct addresses each send one request (and no time passes for a sweep),
    then at most max_tracked buckets are kept, the most recently used ones."""
    clock = Clock()
    rl = limiter(clock, per_ip=60, burst=5, max_tracked=10_000)
    for i in range(100_000):
        now(rl.check(f"2001:db8::{i:x}"))
    assert rl.store.tracked("ip") == 10_000
    assert rl.store.tracked("health") == 0
    verdict = now(rl.check("2001:db8::1869f"))  # the last one: still tracked, one token fewer
    assert verdict is not None and verdict.remaining == 3


def test_default_table_bound_holds_100k() -> None:
    """If 100k distinct addresses each send one request under the default bound, then the
    table holds each once and never more than the bound."""
    table = BucketTable(Limit(100, 50))
    for i in range(100_000):
        table.level(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.0)
    assert len(table) == min(100_000, table.max_tracked)
    table.level("one-more", 0.0)
    assert len(table) <= table.max_tracked
