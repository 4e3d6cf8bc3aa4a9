# -*- test-case-name: tests.test_ratelimit -*-
"""Rate limits: global, per client IP, per health caller, per key, as token buckets.

``RateLimiter`` is the policy: which buckets a request takes a token from, with what limits,
and the verdict (``X-RateLimit-*``, ``Retry-After``). The buckets live in an
``olla.interfaces.IRateStore``; ``MemoryRateStore`` keeps them in this process.

A bucket holds up to ``capacity`` tokens and gains ``rate`` per second; a request takes one.
A bucket's key names its limit (``ip:60:50:10.0.0.1``), so a reload that changes a limit
starts its clients on fresh, full buckets while the old ones age out. In memory, buckets of one
kind and limit share one bounded table: a bucket idle long enough to be full again is the same
as a new one, so the cleanup tick (a ``LoopingCall`` on the clock) drops it, and past
``max_tracked`` entries the least recently used goes first, so a caller rotating addresses
costs a fixed amount of memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from olla.config import OllaConfig
from olla.interfaces import IRateStore, IReconfigurable

#: per-client buckets kept at most per table (about 200 bytes each with the key: 20 MB at the
#: bound; see ``python -m benchmarks limiter-memory``)
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
        self._prefixes: dict[str, str] = {}

    def bucket(self, kind: str, key: str) -> tuple[str, float, float]:
        """The store's bucket for ``key`` under this limit (the key names the limit)."""
        prefix = self._prefixes.get(kind)
        if prefix is None:
            prefix = self._prefixes[kind] = f"{kind}:{self.per_minute}:{self.capacity:g}:"
        return prefix + key, self.rate, self.capacity

    def verdict(self, tokens: float, now: float, taken: bool) -> Verdict:
        """This limit's verdict on a bucket left with ``tokens``: ``taken`` when the request
        took one (else it holds less than a whole one and refused)."""
        reset = math.ceil(now + (self.capacity - tokens) / self.rate)
        if taken:
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

    def level(self, key: str, now: float) -> tuple[Bucket, float]:
        """``key``'s bucket (made full if new, the most recently used now) and its tokens."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = Bucket(self.limit.capacity, now)
            if len(buckets) > self.max_tracked:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        tokens = min(self.limit.capacity, bucket.tokens + (now - bucket.stamp) * self.limit.rate)
        return bucket, tokens

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


@implementer(IRateStore)
class MemoryRateStore(Service):
    """Token buckets in this process: one bounded table per kind and limit (a running
    service sweeps idle buckets every ``cleanup_interval``)."""

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, cleanup_interval: float, max_tracked: int = MAX_TRACKED
    ) -> None:
        self._clock = clock
        self.cleanup_interval = cleanup_interval
        self.max_tracked = max_tracked
        self._tables: dict[tuple[str, float, float], BucketTable] = {}
        self._sweeper: LoopingCall | None = None

    def _table(self, key: str, rate: float, capacity: float) -> BucketTable:
        kind = key.partition(":")[0]
        table = self._tables.get((kind, rate, capacity))
        if table is None:
            limit = Limit(round(rate * 60), round(capacity))
            table = self._tables[(kind, rate, capacity)] = BucketTable(limit, self.max_tracked)
        return table

    def take(
        self, buckets: Sequence[tuple[str, float, float]], now: float
    ) -> Deferred[tuple[bool, list[float]]]:
        found = [
            self._table(key, rate, capacity).level(key, now) for key, rate, capacity in buckets
        ]
        taken = all(tokens >= 1.0 for _, tokens in found)
        levels = []
        for bucket, tokens in found:
            if taken:
                tokens -= 1.0
            bucket.tokens, bucket.stamp = tokens, now
            levels.append(tokens)
        return succeed((taken, levels))

    def tracked(self, kind: str) -> int:
        """Buckets of ``kind`` (``ip``, ``health``, ``key``, ``global``) kept now."""
        return sum(len(table) for (k, _, _), table in self._tables.items() if k == kind)

    def sweep(self) -> int:
        """Forget the buckets that are full again (and the tables left empty); how many."""
        now = self._clock.seconds()
        dropped = 0
        for index, table in list(self._tables.items()):
            dropped += table.sweep(now)
            if not len(table):
                del self._tables[index]
        return dropped

    # ------------------------------------------------------------------ the sweeper

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> None:
        self._stop()
        super().stopService()

    def reconfigure_interval(self, interval: float) -> None:
        """Sweep every ``interval`` from now on (0: never)."""
        if interval == self.cleanup_interval:
            return
        self.cleanup_interval = interval
        if self.running:
            self._stop()
            self._start()

    def _start(self) -> None:
        if self.cleanup_interval <= 0 or self._sweeper is not None:
            return
        sweeper = LoopingCall(self.sweep)
        sweeper.clock = self._clock
        sweeper.start(self.cleanup_interval, now=False).addErrback(
            lambda f: self._log.failure("rate limit cleanup stopped", failure=f)
        )
        self._sweeper = sweeper

    def _stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None


@dataclass(frozen=True)
class LimitSettings:
    """The numbers the limiter runs on (``server.rate_limits``)."""

    global_per_minute: int
    per_ip_per_minute: int
    health_per_minute: int
    burst: int

    @classmethod
    def from_config(cls, config: OllaConfig) -> LimitSettings:
        limits = config.server.rate_limits
        return cls(
            global_per_minute=limits.global_requests_per_minute,
            per_ip_per_minute=limits.per_ip_requests_per_minute,
            health_per_minute=limits.health_requests_per_minute,
            burst=limits.burst_size,
        )


@implementer(IReconfigurable)
class RateLimiter:
    """The limits of one olla: a global bucket, one per client IP, one per health caller and
    one per API key with its own limit.

    ``per_ip_per_minute <= 0`` turns rate limiting off altogether (as the Go original does);
    ``global_per_minute <= 0`` only the global bucket; ``health_per_minute <= 0`` only the
    health buckets.
    """

    reconfigures = ("server.rate_limits.",)

    def __init__(self, settings: LimitSettings, store: IRateStore, clock: IReactorTime) -> None:
        self.store = store
        self._clock = clock
        self._configure(settings)

    def _configure(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.enabled = settings.per_ip_per_minute > 0
        burst = settings.burst if settings.burst > 0 else settings.per_ip_per_minute
        self._global: Limit | None = None
        if self.enabled and settings.global_per_minute > 0:
            self._global = Limit(settings.global_per_minute, burst)
        self._per_ip = Limit(max(settings.per_ip_per_minute, 1), burst)
        health = max(settings.health_per_minute, 1)
        self._health = Limit(health, max(burst, health // 60))

    def reconfigure(self, config: OllaConfig) -> None:
        """New numbers from a reload. A limit that changed starts its clients on full buckets
        (its buckets' keys name it); one that did not keeps every bucket. The store's sweep
        interval follows ``cleanup_interval``."""
        settings = LimitSettings.from_config(config)
        if settings != self.settings:
            self._configure(settings)
        if isinstance(self.store, MemoryRateStore):
            self.store.reconfigure_interval(config.server.rate_limits.cleanup_interval)

    # ------------------------------------------------------------------ requests

    def check(self, client_ip: str) -> Deferred[Verdict | None]:
        """The verdict for one request from ``client_ip`` to a limited route (None: off).

        The client's bucket and the global one are taken together: when the global budget is
        spent, everyone is refused and the client keeps its own token.
        """
        if not self.enabled:
            return succeed(None)
        buckets = [self._per_ip.bucket("ip", client_ip)]
        if self._global is not None:
            buckets.append(self._global.bucket("global", ""))
        now = self._clock.seconds()
        return self.store.take(buckets, now).addCallback(_both, self._per_ip, self._global, now)

    def check_health(self, client_ip: str) -> Deferred[Verdict | None]:
        """The verdict for a health check from ``client_ip``, on its own budget (None: off)."""
        if not self.enabled or self.settings.health_per_minute <= 0:
            return succeed(None)
        return self._one(self._health, "health", client_ip)

    def check_key(self, name: str, per_minute: int) -> Deferred[Verdict | None]:
        """The verdict for key ``name``'s own limit of ``per_minute`` (None: it has none)."""
        if per_minute <= 0:
            return succeed(None)
        burst = self.settings.burst if self.settings.burst > 0 else per_minute
        return self._one(Limit(per_minute, min(burst, per_minute)), "key", name)

    def _one(self, limit: Limit, kind: str, key: str) -> Deferred[Verdict | None]:
        now = self._clock.seconds()
        return self.store.take([limit.bucket(kind, key)], now).addCallback(
            lambda taken: limit.verdict(taken[1][0], now, taken[0])
        )


def _both(
    taken: tuple[bool, list[float]], per_ip: Limit, overall: Limit | None, now: float
) -> Verdict:
    """The client's verdict from its own bucket and the global one (taken together)."""
    took, levels = taken
    own = levels[0]
    if took or own < 1.0 or overall is None:
        return per_ip.verdict(own, now, took)
    # the global budget is spent: the client is refused with the global bucket's timing, and
    # keeps its own token
    refused = overall.verdict(levels[1], now, False)
    return Verdict(False, per_ip.per_minute, int(own), refused.reset, refused.retry_after)
