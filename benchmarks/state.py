"""``python -m benchmarks state``: what sharing state through Redis costs a request.

The shared load runner's S2 (small ``POST /api/chat`` with wrk, c=32 and c=128) against olla
with ``state.backend: memory`` and then with ``state.backend: redis`` (a ``redis-server``
started on a free loopback port, no persistence), in ``--rounds`` back-to-back pairs in one run,
alternating which goes first, on one fake backend. Both olla configs are the same otherwise,
with what the store serves switched on: sticky sessions (every request looks its session up
and pins it) and a per-IP and global rate limit set so high that nothing is refused (every
request takes its buckets). olla is pinned to CPU 0; redis-server, the backend and wrk share
CPU 1 (redis-server's own CPU is not olla's and is not counted).

It prints a table (requests/s and olla's CPU per request per round and target), the ratio of
the medians of the per-round ratios, judged against the target (CPU per request with the store
within 1.3x of without), and the store's round trips per request and their latency as olla's
client measured them (``/internal/status`` ``state.round_trips``, read before each olla
stops: every command counted, including the few per second that are no request's: the lease
heartbeat, load syncs, poll leases). JSON in ``benchmarks/results/state-<time>.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from benchmarks.__main__ import BENCH, REPO, bench_document, free_port, process, wait_http
from tests.e2e.redis import RedisServer, available

TARGET = 1.3
SCENARIOS = ("S2_c32", "S2_c128")
#: every request takes its buckets (never refused) and looks its session up
LIMITS = {
    "per_ip_requests_per_minute": 100_000_000,
    "global_requests_per_minute": 100_000_000,
    "burst_size": 10_000_000,
}


def config(directory: Path, port: int, backend: str, store: str | None) -> Path:
    document = bench_document(port, backend)
    document["server"]["rate_limits"] = LIMITS
    document["proxy"]["sticky_sessions"] = {"enabled": True}
    if store is not None:
        document["state"] = {"backend": "redis", "url": store}
    path = directory / f"olla-{'redis' if store else 'memory'}-{port}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_one(
    name: str, path: Path, port: int, backend: str, work: Path, quick: bool
) -> dict[str, Any]:
    twistd = str(Path(sys.executable).with_name("twistd"))
    cmd = [twistd, "--nodaemon", "--pidfile=", "olla", "--config", str(path)]
    base = f"http://127.0.0.1:{port}"
    out = work / f"{name}.json"
    with process(cmd, cpu=0, env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
        wait_http(f"{base}/olla/ollama/api/tags")
        loadrun = [
            sys.executable, str(BENCH / "loadrun.py"), "--name", name, "--base", base,
            "--prefix", "/olla/ollama", "--pid", str(proc.pid), "--backend", backend,
            "--pin-cpu", "1", "--out", str(out), "--scenarios", "S2",
        ]  # fmt: skip
        if quick:
            loadrun.append("--quick")
        subprocess.run(loadrun, check=True)
        state, served = status(base)
        light = light_load(base, state, served)
    result: dict[str, Any] = json.loads(out.read_text())
    result["state"] = state
    #: every request this olla served (loadrun's warm-ups too): the round trips' denominator
    result["served"] = served
    result["light"] = light
    return result


def status(base: str) -> tuple[dict[str, Any], float]:
    """The store's figures (``/internal/status``) and every request served so far."""
    with urllib.request.urlopen(f"{base}/internal/status", timeout=10) as response:
        state: dict[str, Any] = json.loads(response.read())["state"]
    with urllib.request.urlopen(f"{base}/internal/metrics", timeout=10) as response:
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in response.read().decode().splitlines()
            if line.startswith("olla_requests_total{")
        )
    return state, served


LIGHT = 200


def light_load(base: str, before: dict[str, Any], served: float) -> dict[str, Any]:
    """``LIGHT`` requests one after another on one connection (olla idle between them): the
    store's round trips per request and their mean latency when olla is not saturated."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    for i in range(LIGHT):
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/olla/ollama/api/chat", body.replace("hi", f"hi {i}"), headers)
        conn.getresponse().read()
    conn.close()
    after, now_served = status(base)
    if "round_trips" not in after:
        return {}
    trips, was = after["round_trips"], before["round_trips"]
    commands = trips["commands"] - was["commands"]
    return {
        "requests": now_served - served,
        "commands": commands,
        "per_request": commands / max(1.0, now_served - served),
        "mean_ms": (trips["total_ms"] - was["total_ms"]) / commands if commands else None,
    }


def figure(result: dict[str, Any], scenario: str, key: str) -> Any:
    return result.get("scenarios", {}).get(scenario, {}).get(key)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks state", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke counts, not a measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (BENCH / "loadrun.py").exists():
        print(f"no load harness at {BENCH} (set OLLA_SHARED_DIR)", file=sys.stderr)
        return 2
    if not available():
        print("redis-server is needed (apt-get install redis-server)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="olla-bench-state-"))
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    results: dict[str, dict[str, Any]] = {}
    store = RedisServer()
    store.start()
    try:
        with process(["node", str(BENCH / "fake_backend.js"), str(backend_port)], cpu=1):
            wait_http(f"{backend}/api/tags")
            for round_ in range(1, args.rounds + 1):
                pair = [("memory", None), ("redis", store.url)]
                for kind, url in pair if round_ % 2 else pair[::-1]:
                    port = free_port()
                    path = config(work, port, backend, url)
                    name = f"{kind}#{round_}"
                    results[name] = run_one(name, path, port, backend, work, args.quick)
    finally:
        store.stop()

    lines = [
        "| round | target | " + " | ".join(f"{s} req/s | {s} CPU us/req" for s in SCENARIOS) + " |"
    ]
    lines.append("|---" * (2 + 2 * len(SCENARIOS)) + "|")
    for name, result in results.items():
        kind, round_ = name.split("#")
        cells = []
        for scenario in SCENARIOS:
            cells += [
                str(figure(result, scenario, "rps")),
                str(figure(result, scenario, "proxy_cpu_us_per_req")),
            ]
        lines.append(f"| {round_} | {kind} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    verdicts = []
    for scenario in SCENARIOS:
        ratios = []
        for round_ in range(1, args.rounds + 1):
            on = figure(results[f"redis#{round_}"], scenario, "proxy_cpu_us_per_req")
            off = figure(results[f"memory#{round_}"], scenario, "proxy_cpu_us_per_req")
            if on and off:
                ratios.append(on / off)
        if not ratios:
            print(f"n/a   {scenario}: no CPU figures")
            continue
        ratio = statistics.median(ratios)
        verdict = ratio <= TARGET
        verdicts.append(verdict)
        print(
            f"{'PASS' if verdict else 'FAIL'}  {scenario} CPU/request with the store within "
            f"{TARGET}x of without ({ratio:.3f}x, median of rounds "
            f"{', '.join(f'{r:.3f}' for r in ratios)})"
        )
    trips = []
    for name, result in results.items():
        if not name.startswith("redis"):
            continue
        requests = int(result["served"])
        counted = result["state"]["round_trips"]
        trips.append((name, requests, counted))
        per = counted["commands"] / requests if requests else float("nan")
        print(
            f"store round trips: {name}: {counted['commands']} commands for {requests} requests "
            f"= {per:.2f} per request; latency mean {counted['mean_ms']} ms, p50 <= "
            f"{counted['p50_ms_at_most']} ms, p99 <= {counted['p99_ms_at_most']} ms; "
            f"failed {counted['failed']}; fallbacks {result['state']['fallbacks']} (under S2: "
            "olla saturated, a reply waits its turn in olla's loop)"
        )
        light = result.get("light") or {}
        if light.get("commands"):
            print(
                f"store round trips at light load: {name}: {light['per_request']:.2f} per "
                f"request over {light['requests']:.0f} sequential requests, mean "
                f"{light['mean_ms']:.3f} ms"
            )
    out = (
        args.out or REPO / "benchmarks" / "results" / f"state-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nJSON: {out}")
    return 0
