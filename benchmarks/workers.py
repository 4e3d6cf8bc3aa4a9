"""``python -m benchmarks workers``: S2 throughput with ``--workers 1`` against ``--workers N``.

One run, one fake backend (``shared/bench/fake_backend.js``), the shared load runner's S2 (small
``POST /api/chat`` at c=32 and c=128 with wrk) against each olla in turn, in ``--rounds``
back-to-back pairs so that a change in the machine's other load hits both alike; the ratio
quoted is the median of the rounds' ratios. Nothing is pinned:
the workers need every core, so olla, the backend and wrk share the machine alike for both
targets. It prints a table (requests/s, the ratio to one worker, CPU per request, errors, how
the requests spread over the workers) and the JSON, also written to
``benchmarks/results/workers-<time>.json``. Everything binds 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

SCENARIOS = ("S2_c32", "S2_c128")


def config_file(directory: Path, port: int, backend: str) -> Path:
    config = bench_document(port, backend)
    path = directory / f"olla-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def whoami(base: str) -> dict[str, Any]:
    """The status of whichever worker takes a fresh connection."""
    with urllib.request.urlopen(f"{base}/internal/status", timeout=5) as r:
        status: dict[str, Any] = json.loads(r.read())
        return status


def wait_workers(base: str, count: int, timeout: float = 60.0) -> None:
    """Until every worker has answered and can route (its first probe and model list done)."""
    deadline = time.monotonic() + timeout
    ready: set[int] = set()
    while len(ready) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only workers {sorted(ready)} of {count} became ready")
        try:
            with urllib.request.urlopen(f"{base}/olla/ollama/api/tags", timeout=5) as r:
                r.read()
            status = whoami(base)
        except OSError:
            time.sleep(0.1)
            continue
        if status["system"]["endpoints_up"] == "1/1":
            ready.add(status["worker"]["id"])


def spread(base: str, count: int, probes: int = 200) -> dict[int, int]:
    """Requests each worker counted (its own ``total_requests``), asked over fresh connections
    until every worker has answered once."""
    seen: dict[int, int] = {}
    for _ in range(probes):
        status = whoami(base)
        seen[status["worker"]["id"]] = status["system"]["total_requests"]
        if len(seen) == count:
            break
    return dict(sorted(seen.items()))


def measure(
    workers: int, backend: str, work: Path, args: argparse.Namespace
) -> dict[str, Any]:  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    twistd = str(Path(sys.executable).with_name("twistd"))
    cmd = [
        twistd,
        "--nodaemon",
        "--pidfile=",
        "olla",
        "--config",
        str(config_file(work, port, backend)),
    ]
    cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = work / f"workers-{workers}-{port}.json"
    with process(cmd, cpu=None, env=env) as proc:
        wait_workers(base, workers)
        loadrun = [
            sys.executable, str(BENCH / "loadrun.py"), "--name", f"workers-{workers}", "--base",
            base, "--prefix", "/olla/ollama", "--pid", str(proc.pid), "--backend", backend,
            "--scenarios", "S2", "--out", str(out),
        ]  # fmt: skip
        if args.quick:
            loadrun.append("--quick")
        subprocess.run(loadrun, check=True)
        by_worker = spread(base, workers)
    result: dict[str, Any] = json.loads(out.read_text())
    result["requests_by_worker"] = by_worker
    return result


def metric(result: dict[str, Any], scenario: str, key: str) -> Any:
    return result.get("scenarios", {}).get(scenario, {}).get(key)


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    """One column per target and round (``workers=2#1``); each ratio is to one worker's
    figure of the same round."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, cells: list[Any]) -> None:
        lines.append(
            f"| {label} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |"
        )

    for scenario in SCENARIOS:
        rps = [metric(results[n], scenario, "rps") for n in names]
        bases = [metric(results[same_round(n, baseline)], scenario, "rps") for n in names]
        row(f"{scenario} req/s", rps)
        row(
            f"{scenario} x one worker (same round)",
            [
                round(r / b, 2) if r is not None and b else None
                for r, b in zip(rps, bases, strict=True)
            ],
        )
        row(f"{scenario} p50 ms", [metric(results[n], scenario, "p50_ms") for n in names])
        row(f"{scenario} errors", [metric(results[n], scenario, "errors") for n in names])
        row(
            f"{scenario} olla CPU us/req",
            [metric(results[n], scenario, "proxy_cpu_us_per_req") for n in names],
        )
        row(
            f"{scenario} olla core busy %",
            [metric(results[n], scenario, "proxy_core_busy_pct") for n in names],
        )
    row("requests by worker", [results[n].get("requests_by_worker") for n in names])
    return "\n".join(lines)


def same_round(name: str, baseline: str) -> str:
    """``workers=2#3`` -> ``workers=1#3``."""
    return baseline + name[name.index("#") :] if "#" in name else baseline


def ratios(results: dict[str, dict[str, Any]], target: str, baseline: str) -> dict[str, Any]:
    """Per scenario: each round's requests/s ratio (``target`` over ``baseline``, measured
    back to back) and their median, the figure to quote on a box with other work on it."""
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        per_round = []
        for name in results:
            if name.startswith(target + "#"):
                mine = metric(results[name], scenario, "rps")
                base = metric(results[same_round(name, baseline)], scenario, "rps")
                if mine is not None and base:
                    per_round.append(round(mine / base, 2))
        out[scenario] = {
            "per_round": per_round,
            "median": statistics.median(per_round) if per_round else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="the count compared with 1")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of (1 worker, N workers), back to back"
    )
    parser.add_argument("--quick", action="store_true", help="smoke counts, not a measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (BENCH / "loadrun.py").exists():
        print(f"no load harness at {BENCH} (set OLLA_SHARED_DIR)", file=sys.stderr)
        return 2
    if not shutil.which("node"):
        print("node is needed for the fake backend", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="olla-bench-workers-"))
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    with process(["node", str(BENCH / "fake_backend.js"), str(backend_port)], cpu=None):
        wait_http(f"{backend}/api/tags")
        for round_ in range(1, args.rounds + 1):
            for count in (1, args.workers):
                results[f"workers={count}#{round_}"] = measure(count, backend, work, args)
    load_after = os.getloadavg()
    summary_ratios = ratios(results, f"workers={args.workers}", "workers=1")
    print()
    print(table(results, "workers=1"))
    print()
    for scenario, figures in summary_ratios.items():
        print(
            f"{scenario}: --workers {args.workers} / --workers 1 requests/s, per round "
            f"{figures['per_round']}, median {figures['median']}"
        )
    print(
        f"\ncores: {os.cpu_count()}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (other processes share the box)"
    )
    out = (
        args.out
        or REPO / "benchmarks" / "results" / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"load_before": load_before, "load_after": load_after, "cores": os.cpu_count()}
    out.write_text(
        json.dumps({"host": summary, "ratios": summary_ratios, "results": results}, indent=1)
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
