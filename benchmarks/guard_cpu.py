"""``python -m benchmarks guard-cpu``: CPU per small request with the guards on and off, in
one process, interleaved.

The load benchmark (``--rate-limits``) measures the real daemon, but on a shared 2-core VM its
rounds spread by 1.5x or more, far more than the 10 % it must judge. This one runs olla's
whole request path in memory (``tests/proxyharness.py``: the real ``OllaSite`` and channel,
routing, the exchange, an in-memory backend, all on a ``Clock``) and counts process CPU time
(``time.process_time``: other processes' load does not add to it) for batches of small
``POST /olla/ollama/api/chat`` requests, alternating configurations batch by batch (each
taking each place in a round in turn) so all see the same machine:

- ``off``: ``per_ip_requests_per_minute: 0`` (no limits, no keys);
- ``limits``: global and per-IP limits on, never reached;
- ``limits+key``: the same and a client key required (sent as a bearer token).

Then the guard's own step alone (fresh requests through ``Guard.check``, the headers it owns
set): the microseconds it adds to a request, which noise cannot hide in.
Prints the tables (median and spread of the batches per configuration, the ratio to ``off``)
and the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from olla.config import ClientAuthConfig, ClientKey, OllaConfig, RateLimits
from olla.front.context import ContextRequest, RequestContext
from olla.guard.ratelimit import LimitSettings, MemoryRateStore, RateLimiter
from olla.guard.stage import Guard
from olla.telemetry.security import SecurityStats
from olla.web.site import set_owned_headers
from tests.proxyharness import Harness, http_request

CHAT = b'{"model": "llama3.2:latest", "messages": [], "stream": false}'
KEY = "sk-bench-0123456789"


class Backend(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"message": {"role": "assistant", "content": "hi"}, "done": true}'


def _limits(on: bool, key: bool) -> Callable[[OllaConfig], OllaConfig]:
    def adjust(config: OllaConfig) -> OllaConfig:
        rate = replace(
            RateLimits(),
            per_ip_requests_per_minute=100_000_000 if on else 0,
            global_requests_per_minute=100_000_000,
            burst_size=10_000_000,
        )
        auth = ClientAuthConfig((ClientKey(KEY, "bench"),) if key else ())
        return replace(config, server=replace(config.server, rate_limits=rate, auth=auth))

    return adjust


CONFIGS: dict[str, tuple[bool, bool]] = {
    "off": (False, False),
    "limits": (True, False),
    "limits+key": (True, True),
}


def batch(h: Harness, raw: bytes, requests: int) -> float:
    """CPU microseconds per request for ``requests`` requests, one connection each."""
    gc.collect()
    started = time.process_time()
    for _ in range(requests):
        client = h.send(raw)
        response = client.response()
        assert response is not None and response.status == 200, response
        client.disconnect()  # nothing piles up from batch to batch
    return (time.process_time() - started) / requests * 1e6


def guard_alone(on: bool, key: bool, calls: int) -> float:
    """CPU microseconds per request of the guard's own step (a fresh request and context each
    time, the headers it owns set as the answer's head would set them)."""
    config = _limits(on, key)(OllaConfig())
    clock = Clock()
    limiter = RateLimiter(LimitSettings.from_config(config), MemoryRateStore(clock, 0.0), clock)
    guard = Guard(config, limiter, SecurityStats())
    headers = {b"authorization": f"Bearer {KEY}".encode()} if key else {}
    started = time.process_time()
    for _ in range(calls):
        request = ContextRequest(DummyChannel())
        request.path = b"/olla/ollama/api/chat"
        request.method = b"POST"
        request.context = RequestContext("bench", 0.0, "127.0.0.1", request.path)
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        guard.check(request)
        for prefix, owned in request.context.owned_headers:
            set_owned_headers(request, prefix, owned)
    return (time.process_time() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks guard-cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="per batch")
    parser.add_argument("--rounds", type=int, default=45, help="batches per configuration")
    args = parser.parse_args(argv)
    harnesses = {
        name: Harness({"a:1": Backend()}, adjust=_limits(on, key))
        for name, (on, key) in CONFIGS.items()
    }
    raws = {
        name: http_request(
            "POST",
            "/olla/ollama/api/chat",
            CHAT,
            {"Authorization": f"Bearer {KEY}"} if key else None,
        )
        for name, (_, key) in CONFIGS.items()
    }
    for name, h in harnesses.items():  # warm up: imports, caches, first buckets
        batch(h, raws[name], 200)
    samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for round_ in range(args.rounds):
        shift = round_ % len(names)  # each configuration takes each place in turn
        for name in names[shift:] + names[:shift]:
            samples[name].append(batch(harnesses[name], raws[name], args.requests))
    base = statistics.median(samples["off"])
    result: dict[str, Any] = {"requests_per_batch": args.requests, "rounds": args.rounds}
    print("| config | CPU us/request (median) | min | max | ratio to off (median of rounds) |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        median = statistics.median(values)
        # paired by round: the machine's drift over the run cancels out
        ratio = statistics.median(v / off for v, off in zip(values, samples["off"], strict=True))
        result[name] = {
            "median_us": round(median, 1),
            "min_us": round(min(values), 1),
            "max_us": round(max(values), 1),
            "ratio_to_off": round(ratio, 3),
            "samples_us": [round(v, 1) for v in values],
        }
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {max(values):.1f} | {ratio:.3f} |")
    alone = {name: guard_alone(on, key, 20_000) for name, (on, key) in CONFIGS.items()}
    print("\n| guard step alone | CPU us/request | added to off | added / olla's off median |")
    print("|---|---|---|---|")
    for name, value in alone.items():
        added = value - alone["off"]
        result[name]["guard_alone_us"] = round(value, 2)
        result[name]["guard_added_us"] = round(added, 2)
        print(f"| {name} | {value:.2f} | {added:.2f} | {added / base:.3f} |")
    worst = max(result[name]["ratio_to_off"] for name in CONFIGS)
    added = max(alone.values()) - alone["off"]
    print()
    print(
        f"{'PASS' if worst <= 1.1 else 'FAIL'}  whole path: guards on within 1.1x of off "
        f"({worst:.3f}x)"
    )
    print(
        f"{'PASS' if base + added <= 1.1 * base else 'FAIL'}  the guard's own step adds "
        f"{added:.1f} us to {base:.0f} us ({(base + added) / base:.3f}x)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
