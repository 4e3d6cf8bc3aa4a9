"""``python -m benchmarks limiter-memory``: what the rate limiter keeps per client address.

Feeds N distinct addresses (default 100k) through a ``RateLimiter`` on a ``Clock`` and reports,
with ``tracemalloc``, the bytes held per tracked address, the entries kept (bounded by
``max_tracked``) and the bytes left after the idle sweep. Prints a table and the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc

from twisted.internet.task import Clock

from olla.guard.ratelimit import MAX_TRACKED, LimitSettings, RateLimiter


def measure(addresses: int, max_tracked: int) -> dict[str, float | int]:
    clock = Clock()
    settings = LimitSettings(
        global_per_minute=1000,
        per_ip_per_minute=100,
        health_per_minute=1000,
        burst=50,
        cleanup_interval=300.0,
        max_tracked=max_tracked,
    )
    timed = RateLimiter(settings, clock)  # the time per check, without tracemalloc's cost
    names = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(addresses)]
    started = time.perf_counter()
    for name in names:
        timed.check(name)
    new_us = (time.perf_counter() - started) / addresses * 1e6
    started = time.perf_counter()
    for name in names:
        timed.check(name)
    known_us = (time.perf_counter() - started) / addresses * 1e6
    del timed, names
    gc.collect()
    tracemalloc.start()
    limiter = RateLimiter(settings, clock)
    before = tracemalloc.get_traced_memory()[0]
    for i in range(addresses):  # each address a new string, as each request's is
        limiter.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    kept = len(limiter.per_ip)
    clock.advance(3600)
    limiter.sweep()
    gc.collect()
    after_sweep = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "addresses": addresses,
        "max_tracked": max_tracked,
        "entries_kept": kept,
        "bytes_held": held,
        "bytes_per_tracked_ip": round(held / max(kept, 1), 1),
        "entries_after_sweep": len(limiter.per_ip),
        "bytes_after_sweep": after_sweep,
        "check_us_new_address": round(new_us, 2),
        "check_us_known_address": round(known_us, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks limiter-memory", description=__doc__
    )
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--max-tracked", type=int, default=MAX_TRACKED)
    args = parser.parse_args(argv)
    result = measure(args.addresses, args.max_tracked)
    print("| metric | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
