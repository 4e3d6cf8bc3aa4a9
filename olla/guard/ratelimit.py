# -*- test-case-name: tests.test_ratelimit -*-
"""Token buckets on the injected clock: global, per client IP, per health caller, per key.

A bucket holds up to ``capacity`` tokens and gains ``rate`` per second; a request takes one.
Per-client buckets live in one bounded table: a bucket idle long enough to be full again is
the same as a new one, so the cleanup tick (a ``LoopingCall`` on the clock) drops it, and past
``max_tracked`` entries the least recently used goes first, so a caller rotating addresses
costs a fixed amount of memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: per-client buckets kept at most (about 200 bytes each with the key: 20 MB at the bound; see
#: ``python -m benchmarks limiter-memory``)
MAX_TRACKED = 100_000


class Bucket:
    """A token bucket: two floats, so a table of many stays small."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


@dataclass(slots=True)
class Verdict:
    """What a limit says about one request, and what the ``X-RateLimit-*`` headers show."""

    allowed: bool
    limit: int  # requests per minute
    remaining: int
    reset: int  # unix seconds when the bucket is full again
    retry_after: int = 0  # seconds, when refused

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"X-RateLimit-Limit", b"%d" % self.limit),
            (b"X-RateLimit-Remaining", b"%d" % self.remaining),
            (b"X-RateLimit-Reset", b"%d" % self.reset),
        ]
        if not self.allowed:
            out.append((b"Retry-After", b"%d" % self.retry_after))
        return out


class Limit:
    """``per_minute`` requests a minute with room for ``capacity`` at once."""

    def __init__(self, per_minute: int, capacity: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = float(max(capacity, 1))
        #: how long an untouched bucket takes to be full again from empty
        self.refill_time = self.capacity / self.rate

    def new_bucket(self, now: float) -> Bucket:
        return Bucket(self.capacity, now)

    def take(self, bucket: Bucket, now: float) -> Verdict:
        """Take a token from ``bucket`` if it has one; the verdict either way."""
        tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        bucket.tokens = tokens
        reset = math.ceil(now + (self.capacity - tokens) / self.rate)
        if allowed:
            return Verdict(True, self.per_minute, int(tokens), reset)
        retry = max(1, math.ceil((1.0 - tokens) / self.rate))
        return Verdict(False, self.per_minute, 0, reset, retry)


class BucketTable:
    """Buckets by key for one ``Limit``, least recently used first, at most ``max_tracked``."""

    def __init__(self, limit: Limit, max_tracked: int = MAX_TRACKED) -> None:
        self.limit = limit
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> Verdict:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = self.limit.new_bucket(now)
            if len(buckets) > self.max_tracked:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return self.limit.take(bucket, now)

    def give_back(self, key: str) -> None:
        """Return the token ``key`` just took (another limit refused the request)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.limit.capacity, bucket.tokens + 1.0)

    def sweep(self, now: float) -> int:
        """Drop the buckets idle long enough to be full again; how many went."""
        cutoff = now - self.limit.refill_time
        buckets = self._buckets
        dropped = 0
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if bucket.stamp > cutoff:
                break  # the rest were used more recently
            del buckets[key]
            dropped += 1
        if dropped and dropped >= len(buckets):
            # a dict keeps its grown table after deletions: copy the survivors to give it back
            self._buckets = OrderedDict(buckets)
        return dropped


@dataclass(frozen=True)
class LimitSettings:
    """The numbers the limiter runs on (``server.rate_limits`` with the per-key limits)."""

    global_per_minute: int
    per_ip_per_minute: int
    health_per_minute: int
    burst: int
    cleanup_interval: float
    max_tracked: int = MAX_TRACKED


class RateLimiter(Service):
    """The limits of one olla: a global bucket, one per client IP, one per health caller and
    one per API key with its own limit.

    ``per_ip_per_minute <= 0`` turns rate limiting off altogether (as the Go original does);
    ``global_per_minute <= 0`` only the global bucket; ``health_per_minute <= 0`` only the
    health buckets.
    It is a service: running, it sweeps idle buckets every ``cleanup_interval``.
    """

    _log = Logger()

    def __init__(self, settings: LimitSettings, clock: IReactorTime) -> None:
        self._clock = clock
        self._sweeper: LoopingCall | None = None
        self._configure(settings)

    def _configure(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.enabled = settings.per_ip_per_minute > 0
        clock = self._clock
        burst = settings.burst if settings.burst > 0 else settings.per_ip_per_minute
        self._global: Bucket | None = None
        self._global_limit: Limit | None = None
        if self.enabled and settings.global_per_minute > 0:
            self._global_limit = Limit(settings.global_per_minute, burst)
            self._global = self._global_limit.new_bucket(clock.seconds())
        self.per_ip = BucketTable(
            Limit(max(settings.per_ip_per_minute, 1), burst), settings.max_tracked
        )
        health = max(settings.health_per_minute, 1)
        self.health = BucketTable(Limit(health, max(burst, health // 60)), settings.max_tracked)
        self.per_key: dict[str, BucketTable] = {}

    def reconfigure(self, settings: LimitSettings) -> None:
        """New numbers from a reload. Unchanged numbers keep every bucket; changed ones start
        again with full buckets (a reload never leaves a client owing tokens it cannot get
        back under the new limit)."""
        if settings == self.settings:
            self.per_key.clear()  # per-key limits may have changed with the keys
            return
        sweeping = self._sweeper is not None
        self.stop()
        self._configure(settings)
        if sweeping:
            self.start()

    # ------------------------------------------------------------------ requests

    def check(self, client_ip: str) -> Verdict | None:
        """The verdict for one request from ``client_ip`` to a limited route (None: off)."""
        if not self.enabled:
            return None
        now = self._clock.seconds()
        verdict = self.per_ip.take(client_ip, now)
        if not verdict.allowed or self._global is None:
            return verdict
        assert self._global_limit is not None
        overall = self._global_limit.take(self._global, now)
        if overall.allowed:
            return verdict
        # a busy box refuses everyone: the client's own token goes back
        self.per_ip.give_back(client_ip)
        return Verdict(
            False, verdict.limit, verdict.remaining + 1, overall.reset, overall.retry_after
        )

    def check_health(self, client_ip: str) -> Verdict | None:
        """The verdict for a health check from ``client_ip``, on its own budget (None: off)."""
        if not self.enabled or self.settings.health_per_minute <= 0:
            return None
        return self.health.take(client_ip, self._clock.seconds())

    def check_key(self, name: str, per_minute: int) -> Verdict | None:
        """The verdict for key ``name``'s own limit of ``per_minute`` (None: it has none)."""
        if per_minute <= 0:
            return None
        table = self.per_key.get(name)
        if table is None:
            burst = self.settings.burst if self.settings.burst > 0 else per_minute
            table = self.per_key[name] = BucketTable(Limit(per_minute, min(burst, per_minute)))
        return table.take(name, self._clock.seconds())

    # ------------------------------------------------------------------ idle state

    def sweep(self) -> int:
        """Forget the per-client buckets that are full again; how many went."""
        now = self._clock.seconds()
        return self.per_ip.sweep(now) + self.health.sweep(now)

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        self.stop()
        super().stopService()

    def start(self) -> None:
        """Sweep every ``cleanup_interval`` on the clock (nothing to do when limits are off)."""
        interval = self.settings.cleanup_interval
        if not self.enabled or interval <= 0 or self._sweeper is not None:
            return
        sweeper = LoopingCall(self.sweep)
        sweeper.clock = self._clock
        sweeper.start(interval, now=False).addErrback(
            lambda f: self._log.failure("rate limit cleanup stopped", failure=f)
        )
        self._sweeper = sweeper

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
