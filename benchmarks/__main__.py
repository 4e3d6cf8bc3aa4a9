"""``python -m benchmarks``: olla against the bare Twisted proxy, same run, same backend.
(``python -m benchmarks cpu`` is CPU per request against the floor, ``benchmarks/cpu.py``;
``python -m benchmarks fleet`` is the fleet-latency benchmark of ``benchmarks/fleet.py``;
``python -m benchmarks gate-sim`` its workloads in simulated time through the admission gate;
``python -m benchmarks workers`` compares ``--workers 1`` and ``--workers 2``;
``python -m benchmarks models-rss`` the memory over many model names, ``benchmarks/models_rss.py``.)

Starts the shared fake backend (``shared/bench/fake_backend.js``, Node), then each proxy in turn
pinned to CPU 0 (the bare Twisted floor of ``shared/bench/anchors/``, then olla as twistd),
runs ``shared/bench/loadrun.py`` against it, and prints a table, the targets of the foundation
issue as PASS/FAIL lines, and the merged JSON (also written to ``benchmarks/results/``).
Everything binds 127.0.0.1 and is stopped at the end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OLLA_SHARED_DIR", REPO.parent / "shared"))
BENCH = SHARED / "bench"

#: (label, scenario, metric) rows of the printed table.
ROWS = [
    ("S1 c=1 req/s", "S1", "rps"),
    ("S1 c=1 p50 ms", "S1", "p50_ms"),
    ("S1 proxy CPU us/req", "S1", "proxy_cpu_us_per_req"),
    ("S2 c=32 req/s", "S2_c32", "rps"),
    ("S2 c=32 proxy CPU us/req", "S2_c32", "proxy_cpu_us_per_req"),
    ("S2 c=128 req/s", "S2_c128", "rps"),
    ("S2 c=128 errors", "S2_c128", "errors"),
    ("S2 c=128 proxy CPU us/req", "S2_c128", "proxy_cpu_us_per_req"),
    ("S2 c=128 backend conns opened", "S2_c128", "backend_conns"),
    ("S2 c=128 requests", "S2_c128", "requests"),
    ("S3 c=1 TTFC p50 ms", "S3_c1", "ttfc_p50_ms"),
    ("S3 c=100 ok", "S3_c100", "ok"),
    ("S3 c=100 gap p50 ms (backend 20)", "S3_c100", "gap_p50_ms"),
    ("S3 c=100 gap p99 ms", "S3_c100", "gap_p99_ms"),
    ("S3 c=100 % gaps < 2 ms", "S3_c100", "gaps_lt2ms_pct"),
    ("S4 SSE c=100 gap p50 ms", "S4_c100", "gap_p50_ms"),
    ("S4 SSE c=100 % gaps < 2 ms", "S4_c100", "gaps_lt2ms_pct"),
    ("S5 50 MB download MiB/s", "S5", "mib_s_median"),
    ("S5 RSS before MB", "S5", "proxy_rss_before_mb"),
    ("S5 RSS peak MB", "S5", "proxy_rss_peak_mb"),
    ("S6 50 MB upload MiB/s", "S6", "mib_s_median"),
    ("S6 RSS before MB", "S6", "proxy_rss_before_mb"),
    ("S6 RSS peak MB", "S6", "proxy_rss_peak_mb"),
    ("S7 1000 slow streams ok", "S7", "ok"),
    ("S7 planned", "S7", "planned"),
    ("S7 RSS peak MB", "S7", "proxy_rss_peak_mb"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@contextmanager
def process(
    cmd: list[str],
    *,
    cpu: int | None,
    env: dict[str, str] | None = None,
    output: IO[bytes] | int = subprocess.DEVNULL,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (pinned to ``cpu`` when taskset exists); always stopped afterwards."""
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=output, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


#: ``--rate-limits``: every limit on (global, per IP) but so high that nothing is refused, so
#: the run measures what the buckets cost, not refusals
LIMITS_ON = {
    "per_ip_requests_per_minute": 100_000_000,
    "global_requests_per_minute": 100_000_000,
    "burst_size": 10_000_000,
}
#: the plain run: limits off explicitly (the Go defaults, 100/min per IP, would refuse the load)
LIMITS_OFF = {"per_ip_requests_per_minute": 0}


def bench_document(port: int, backend: str, level: str = "warn") -> dict[str, Any]:
    """olla on ``port`` in front of one Ollama-typed ``backend`` (probed every 2 s), JSON logs
    at ``level``: the config every benchmark starts from, adding what it measures."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "proxy": {"load_balancer": "least-connections"},
        "discovery": {
            "static": {
                "endpoints": [
                    {
                        "name": "bench",
                        "url": backend,
                        "type": "ollama",
                        "check_interval": "2s",
                        "check_timeout": "1s",
                    }
                ]
            }
        },
        "logging": {"level": level, "format": "json"},
    }


def olla_config(directory: Path, port: int, backend: str, level: str, limits: bool = False) -> Path:
    """olla as a relay beside the floor: the shared backend serves every request at once, so
    the admission queue is off (on, it would hold all but the model's cap of S3/S4/S7's
    streams and the runner would time them out; ``benchmarks fleet`` and ``benchmarks cpu``
    measure it)."""
    config = bench_document(port, backend, level)
    config["proxy"]["queue"] = {"enabled": False}
    config["server"]["rate_limits"] = LIMITS_ON if limits else LIMITS_OFF
    path = directory / f"olla-{level}{'-limits' if limits else ''}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(
    name: str, cmd: list[str], env: dict[str, str] | None, port: int, args: argparse.Namespace,
    backend: str, out: Path,
) -> dict[str, Any]:  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with process(cmd, cpu=0, env=env) as proc:
        wait_http(f"{base}/olla/ollama/api/tags")
        loadrun = [
            sys.executable, str(BENCH / "loadrun.py"), "--name", name, "--base", base,
            "--prefix", "/olla/ollama", "--pid", str(proc.pid), "--backend", backend,
            "--pin-cpu", "1", "--out", str(out),
        ]  # fmt: skip
        if args.quick:
            loadrun.append("--quick")
        if args.scenarios:
            loadrun += ["--scenarios", args.scenarios]
        subprocess.run(loadrun, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def metric(result: dict[str, Any], scenario: str, key: str) -> Any:
    return result.get("scenarios", {}).get(scenario, {}).get(key)


def targets(floor: dict[str, Any] | None, olla: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """The foundation issue's targets, judged on this run's numbers (None: not measured)."""
    checks: list[tuple[str, bool | None]] = []
    for scenario in ("S1", "S2_c32", "S2_c128"):
        mine = metric(olla, scenario, "proxy_cpu_us_per_req")
        base = metric(floor, scenario, "proxy_cpu_us_per_req") if floor else None
        ok = None if mine is None or base is None else mine <= 1.5 * base
        checks.append((f"{scenario} CPU/request within 1.5x of the floor", ok))
    for scenario in ("S3_c100", "S4_c100"):
        p50 = metric(olla, scenario, "gap_p50_ms")
        bunched = metric(olla, scenario, "gaps_lt2ms_pct")
        ok = None if p50 is None else abs(p50 - 20) <= 2 and (bunched or 0) < 1
        checks.append((f"{scenario} chunk gaps equal the backend's (no bunching)", ok))
    for scenario in ("S5", "S6"):
        before = metric(olla, scenario, "proxy_rss_before_mb")
        peak = metric(olla, scenario, "proxy_rss_peak_mb")
        ok = None if before is None or peak is None else peak - before < 10
        checks.append((f"{scenario} 50 MB with RSS growth < 10 MB", ok))
    ok_streams, planned = metric(olla, "S7", "ok"), metric(olla, "S7", "planned")
    checks.append(
        ("S7 every slow stream completes", None if planned is None else ok_streams == planned)
    )
    conns, requests = metric(olla, "S2_c128", "backend_conns"), metric(olla, "S2_c128", "requests")
    checks.append(
        ("S2 backend connections reused", None if conns is None else conns <= 128 < (requests or 0))
    )
    return checks


def limits_targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """Issue 15: CPU per small request with rate limits on within 1.1x of limits off, on the
    medians of the rounds; each line also shows the spread of the rounds (the noise)."""
    checks: list[tuple[str, bool | None]] = []
    for scenario in ("S1", "S2_c32", "S2_c128"):
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for name, result in results.items():
            value = metric(result, scenario, "proxy_cpu_us_per_req")
            if name.startswith("olla") and value is not None and "info" not in name:
                cpu[name.startswith("olla-limits")].append(value)
        label = f"{scenario} CPU/request with limits on within 1.1x of off"
        if not cpu[False] or not cpu[True]:
            checks.append((label, None))
            continue
        off, on = statistics.median(cpu[False]), statistics.median(cpu[True])
        spread = ", ".join(
            f"{'on' if limited else 'off'} {min(v):.0f}-{max(v):.0f} us"
            for limited, v in ((False, cpu[False]), (True, cpu[True]))
        )
        checks.append((f"{label} ({on / off:.3f}x of medians; {spread})", on <= 1.1 * off))
    return checks


def _against(args: argparse.Namespace, backend: str, work: Path) -> dict[str, dict[str, Any]]:
    """This olla and the one in ``args.against``, ``args.rounds`` times, alternating which goes
    first, so both see the same machine; results named ``olla#N`` and ``before#N``."""
    results: dict[str, dict[str, Any]] = {}
    twistd = str(Path(sys.executable).with_name("twistd"))
    trees = [("olla", REPO), ("before", args.against.resolve())]
    for round_ in range(args.rounds):
        for name, tree in trees if round_ % 2 == 0 else trees[::-1]:
            port = free_port()
            config = olla_config(work, port, backend, "warn")
            cmd = [twistd, "--nodaemon", "--pidfile=", "olla", "--config", str(config)]
            env = dict(os.environ, PYTHONPATH=str(tree))
            label = f"{name}#{round_ + 1}"
            results[label] = measure(label, cmd, env, port, args, backend, work / f"{label}.json")
    return results


def against_targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """CPU per small request within 3 % of the other checkout's, on the median of the per-round
    ratios (paired by round: the machine's drift cancels out); the spread of each side too."""
    checks: list[tuple[str, bool | None]] = []
    for scenario in ("S1", "S2_c32", "S2_c128"):
        ratios, mine, theirs = [], [], []
        for name, result in results.items():
            if not name.startswith("olla#"):
                continue
            other = results.get("before#" + name.partition("#")[2])
            a = metric(result, scenario, "proxy_cpu_us_per_req")
            b = metric(other, scenario, "proxy_cpu_us_per_req") if other else None
            if a is not None and b is not None:
                ratios.append(a / b)
                mine.append(a)
                theirs.append(b)
        label = f"{scenario} CPU/request within 1.03x of --against"
        if not ratios:
            checks.append((label, None))
            continue
        ratio = statistics.median(ratios)
        spread = (
            f"this {min(mine):.0f}-{max(mine):.0f} us, before {min(theirs):.0f}-{max(theirs):.0f}"
            f" us, round ratios {', '.join(f'{r:.3f}' for r in ratios)}"
        )
        checks.append((f"{label} ({ratio:.3f}x; {spread})", ratio <= 1.03))
    return checks


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, scenario, key in ROWS:
        cells = [metric(results[n], scenario, key) for n in names]
        if all(c is None for c in cells):
            continue
        lines.append(
            f"| {label} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fleet"]:  # the fleet-latency benchmark (benchmarks/fleet.py)
        from benchmarks import fleet

        return fleet.main(argv[1:])
    if argv[:1] == ["cpu"]:  # CPU per request against the floor, RSS, profile (benchmarks/cpu.py)
        from benchmarks import cpu

        return cpu.main(argv[1:])
    if argv[:1] == ["gate-sim"]:  # the fleet workloads in simulated time (benchmarks/gate_sim.py)
        from benchmarks import gate_sim

        return gate_sim.main(argv[1:])
    if argv[:1] == ["state"]:  # S2 with state.backend: redis against memory (benchmarks/state.py)
        from benchmarks import state

        return state.main(argv[1:])
    if argv[:1] == ["workers"]:  # --workers 1 against --workers N (benchmarks/workers.py)
        from benchmarks import workers

        return workers.main(argv[1:])
    if argv[:1] == ["guard-cpu"]:  # guards on vs off in one process (benchmarks/guard_cpu.py)
        from benchmarks import guard_cpu

        return guard_cpu.main(argv[1:])
    if argv[:1] == ["path-cpu"]:  # the in-memory request path, this checkout vs another
        from benchmarks import path_cpu

        return path_cpu.main(argv[1:])
    if argv[:1] == ["limiter-memory"]:  # bytes per tracked client (benchmarks/limiter_memory.py)
        from benchmarks import limiter_memory

        return limiter_memory.main(argv[1:])
    if argv[:1] == ["models-rss"]:  # RSS over many model names (benchmarks/models_rss.py)
        from benchmarks import models_rss

        return models_rss.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke counts, not a measurement")
    parser.add_argument("--scenarios", default="", help="e.g. S1,S3 (default: all)")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--info-logs", action="store_true", help="also run olla at log level info")
    parser.add_argument(
        "--rate-limits",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="ROUNDS",
        help="also run olla with global and per-IP limits on (never reached), right after; "
        "ROUNDS > 1 alternates off and on again that many times to show the noise",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the olla in DIR (another checkout, e.g. `git archive` of a commit), "
        "alternating with this one round by round, and judge CPU per request against it",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --against: rounds of this olla and DIR's"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (BENCH / "loadrun.py").exists():
        print(f"no load harness at {BENCH} (set OLLA_SHARED_DIR)", file=sys.stderr)
        return 2
    if not shutil.which("node"):
        print("node is needed for the fake backend", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("hint: wrk is not installed (apt-get install wrk); S1/S2 need it", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="olla-bench-"))
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    results: dict[str, dict[str, Any]] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    twistd = str(Path(sys.executable).with_name("twistd"))
    with process(["node", str(BENCH / "fake_backend.js"), str(backend_port)], cpu=1):
        wait_http(f"{backend}/api/tags")
        if not args.skip_floor:
            port = free_port()
            floor = [
                sys.executable, str(BENCH / "anchors" / "twisted_floor.py"), str(port), backend,
                "/olla/ollama",
            ]  # fmt: skip
            results["floor"] = measure("floor", floor, env, port, args, backend, work / "f.json")
        if args.against is not None:
            results.update(_against(args, backend, work))
        levels = ["warn", "info"] if args.info_logs and args.against is None else ["warn"]
        for level in levels if args.against is None else ():
            port = free_port()
            config = olla_config(work, port, backend, level)
            cmd = [twistd, "--nodaemon", "--pidfile=", "olla", "--config", str(config)]
            name = "olla" if level == "warn" else "olla-info-logs"
            results[name] = measure(name, cmd, env, port, args, backend, work / f"{name}.json")
            if args.rate_limits and level == "warn":
                # off and on alternate, so both see the same machine; the repeats show noise
                for round_ in range(args.rate_limits):
                    for limits in (False, True) if round_ else (True,):
                        name = ("olla-limits" if limits else "olla") + f"#{round_ + 1}"
                        port = free_port()
                        config = olla_config(work, port, backend, level, limits=limits)
                        cmd = [twistd, "--nodaemon", "--pidfile=", "olla", "--config", str(config)]
                        results[name] = measure(
                            name, cmd, env, port, args, backend, work / f"{name}.json"
                        )

    print()
    print(table(results))
    print()
    checks = targets(results.get("floor"), results["olla"]) if "olla" in results else []
    if args.against is not None:
        checks += against_targets(results)
    if args.rate_limits:
        checks += limits_targets(results)
    for label, ok in checks:
        print(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {label}")
    out = args.out or REPO / "benchmarks" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
