"""``python -m benchmarks cpu``: olla's CPU per request against the bare Twisted floor, same run.

Issue 27's yardstick. One fake backend (``shared/bench/fake_backend.js``, CPU 1 with wrk) and,
round after round (alternating which goes first, so both see the same machine), each target
alone on CPU 0: the floor (``shared/bench/anchors/twisted_floor.py``), olla at its defaults
(one ``type: ollama`` endpoint, ``logging.level: info``, JSON log lines written) and, unless
``--no-redis``, the same olla with ``state.backend: redis`` (a ``redis-server`` on a free
loopback port, CPU 1, stopped by PID). CPU is the target process's utime+stime from
``/proc/PID/stat`` over a wrk run, divided by the responses wrk counted:

- ``S1``: small ``POST /api/chat`` (``stream: false``), c=1;
- ``S2_c32`` / ``S2_c128``: the same at c=32 and c=128;
- ``SSE``: ``POST /v1/chat/completions`` streamed, 64 chunks with no delay, c=8: CPU per chunk;
- ``anthropic``: ``POST /olla/anthropic/v1/messages`` (translated to the backend's OpenAI
  API and back) against the floor relaying the same request's OpenAI form.

With ``--floor-plus``, three more targets run S1 and S2 c=32 in every round: the floor in a
process that imported olla's daemon, then with olla's request log line added, then with its
token reading too (``benchmarks/floor_plus.py``), each given as a ratio to the floor and as its
share of the 1.15x budget.

The verdict is the median over rounds of each round's olla/floor ratio (the VM is shared and
noisy: ratios within one round are what count). Then, once: olla's idle RSS and its peak RSS
over 1,000 slow streams (the shared runner's S7), and a cProfile of olla under S2 c=32
(``twistd --profile``), whose top 20 frames from ``olla/`` (by own time) are printed with
their share of the whole profile. Table, then JSON (``benchmarks/results/cpu-<time>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.__main__ import BENCH, REPO, free_port, process, wait_http

TARGET = 1.15
PREFIX = "/olla/ollama"
MODEL = "llama3.2:latest"
SSE_CHUNKS = 64
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
OPENAI_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
SSE = {**OPENAI_CHAT, "stream": True, "max_tokens": SSE_CHUNKS}
ANTHROPIC = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

#: (name, concurrency, path for olla, path for the floor, body, divisor of the CPU figure)
SCENARIOS: list[tuple[str, int, str, str, dict[str, Any], int]] = [
    ("S1", 1, f"{PREFIX}/api/chat", f"{PREFIX}/api/chat", CHAT, 1),
    ("S2_c32", 32, f"{PREFIX}/api/chat", f"{PREFIX}/api/chat", CHAT, 1),
    ("S2_c128", 128, f"{PREFIX}/api/chat", f"{PREFIX}/api/chat", CHAT, 1),
    ("SSE", 8, f"{PREFIX}/v1/chat/completions", f"{PREFIX}/v1/chat/completions", SSE, SSE_CHUNKS),
    (
        "anthropic",
        32,
        "/olla/anthropic/v1/messages",
        f"{PREFIX}/v1/chat/completions",
        ANTHROPIC,
        1,
    ),
]
REDIS_SCENARIOS = ("S1", "S2_c32", "S2_c128")
#: ``--floor-plus``: the floor in a process that imported olla's daemon (``floor+olla``), then
#: with olla's request log line (``floor+log``), then with its token reading too
#: (``floor+log+tokens``): ``benchmarks/floor_plus.py``
FLOOR_PLUS = {"floor+olla": [], "floor+log": ["--log"], "floor+log+tokens": ["--log", "--tokens"]}
FLOOR_PLUS_SCENARIOS = ("S1", "S2_c32")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def settle(pid: int, max_s: float = 8.0) -> None:
    """Wait until the target is nearly idle (it may still be finishing the last run)."""
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(0.3)
        if cpu_seconds(pid) - before < 0.03:
            return


def wrk(url: str, conns: int, seconds: float, body: dict[str, Any]) -> dict[str, Any]:
    cmd = [
        "taskset", "-c", "1", "wrk", "-t", "1", "-c", str(conns), "-d", f"{round(seconds)}s",
        "--timeout", "5s", "-s", str(BENCH / "wrk_post.lua"), url,
    ]  # fmt: skip
    env = dict(os.environ, WRK_BODY=json.dumps(body), WRK_MAX_REQUESTS="0")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    figures: dict[str, Any] = json.loads(line[9:])
    return figures


def scenario(pid: int, base: str, path: str, conns: int, body: dict[str, Any], seconds: float,
             divisor: int) -> dict[str, Any]:  # fmt: skip
    wrk(base + path, conns, 1, body)  # warm-up: connections, pools, caches
    settle(pid)
    before = cpu_seconds(pid)
    figures = wrk(base + path, conns, seconds, body)
    used = cpu_seconds(pid) - before
    requests = figures["requests"]
    errors = sum(figures[k] for k in figures if k.startswith("err_"))
    return {
        "requests": requests,
        "errors": errors,
        "rps": round(requests / (figures["duration_us"] / 1e6), 1),
        "cpu_s": round(used, 3),
        "cpu_us": round(used * 1e6 / max(requests, 1) / divisor, 1),
    }


def olla_config(
    directory: Path, port: int, backend: str, store: str | None, queue: bool = True
) -> Path:
    """olla at its defaults, one endpoint, info logging; rate limits as shipped except the
    global bucket (1000/min would refuse the load: it is off only when per-IP is off, which
    is the default). ``queue=False``: ``proxy.queue.enabled: false`` (every request sent at
    once, as the floor does)."""
    document: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "discovery": {
            "static": {"endpoints": [{"name": "bench", "url": backend, "type": "ollama"}]}
        },
        "logging": {"level": "info", "format": "json"},
        # the Ollama profile speaks Anthropic natively; off, the anthropic scenario measures
        # the translation (the shared fake backend has no /v1/messages)
        "translators": {"anthropic": {"passthrough_enabled": False}},
    }
    if not queue:
        document["proxy"] = {"queue": {"enabled": False}}
    if store is not None:
        document["state"] = {"backend": "redis", "url": store}
    path = directory / f"olla-{port}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def olla_cmd(config: Path, *extra: str) -> list[str]:
    twistd = str(Path(sys.executable).with_name("twistd"))
    return [twistd, "--nodaemon", "--pidfile=", *extra, "olla", "--config", str(config)]


def run_target(name: str, cmd: list[str], port: int, wanted: list[str], seconds: float,
               log: Path, tree: Path = REPO) -> dict[str, Any]:  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(tree))
    out: dict[str, Any] = {}
    with log.open("ab") as sink, process(cmd, cpu=0, env=env, output=sink) as proc:
        wait_http(f"{base}{PREFIX}/api/tags")
        time.sleep(1)
        settle(proc.pid)
        out["idle_rss_mb"] = rss_mb(proc.pid)
        for label, conns, olla_path, floor_path, body, divisor in SCENARIOS:
            if label not in wanted:
                continue
            path = floor_path if name.startswith("floor") else olla_path
            out[label] = scenario(proc.pid, base, path, conns, body, seconds, divisor)
            print(f"  {name:<10} {label:<10} {out[label]}", flush=True)
        out["rss_after_mb"] = rss_mb(proc.pid)
    return out


def slow_streams(cmd: list[str], port: int, backend: str, work: Path, name: str) -> dict[str, Any]:
    """Idle RSS, then the shared runner's S7 (1,000 slow streams, one connection each)."""
    base = f"http://127.0.0.1:{port}"
    out = work / f"s7-{name}.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with process(cmd, cpu=0, env=env) as proc:
        wait_http(f"{base}{PREFIX}/api/tags")
        time.sleep(2)
        settle(proc.pid)
        idle = rss_mb(proc.pid)
        subprocess.run(
            [sys.executable, str(BENCH / "loadrun.py"), "--name", name, "--base", base,
             "--prefix", PREFIX, "--pid", str(proc.pid), "--backend", backend, "--pin-cpu", "1",
             "--out", str(out), "--scenarios", "S7"],
            check=True,
        )  # fmt: skip
        s7 = json.loads(out.read_text())["scenarios"]["S7"]
    return {
        "idle_rss_mb": idle,
        "s7_ok": s7.get("ok"),
        "s7_planned": s7.get("planned"),
        "s7_rss_peak_mb": s7.get("proxy_rss_peak_mb"),
        "s7_per_stream_kb": round((s7["proxy_rss_peak_mb"] - idle) * 1024 / max(s7["ok"], 1), 1)
        if s7.get("proxy_rss_peak_mb") and s7.get("ok")
        else None,
    }


#: the frames of ``floor+log+tokens`` that are olla's: its log line and its token reading
_OLLA_PARTS = {
    "log line": ("RequestLog.request_finished", "record_for"),
    "token reading": ("read_usage",),
}

#: a py-spy sample: its frames (``function (file:line)``, outermost first) and its count
Sample = tuple[list[str], int]


def spy_samples(cmd: list[str], port: int, out: Path, seconds: float) -> list[Sample] | str:
    """``py-spy`` samples of ``cmd`` under S2 c=32 (500 a second, without stopping it), or why
    there are none. Shares within one process do not move with the VM's swings."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "no py-spy (pip install '.[bench]')"
    url = f"http://127.0.0.1:{port}{PREFIX}/api/chat"
    with process(cmd, cpu=0, env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
        wait_http(f"http://127.0.0.1:{port}{PREFIX}/api/tags")
        wrk(url, 32, 1, CHAT)
        record = [spy, "record", "-p", str(proc.pid), "-r", "500", "-d", str(round(seconds))]
        record += ["-f", "raw", "-o", str(out), "--nonblocking"]
        sampler = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wrk(url, 32, seconds + 2, CHAT)
            sampler.wait(timeout=seconds + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
    if not out.exists():
        return "py-spy recorded nothing (is ptrace allowed?)"
    samples: list[Sample] = []
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples.append((stack.split(";"), int(count)))
    return samples


def floor_plus_parts(samples: list[Sample]) -> dict[str, Any]:
    """``floor+log+tokens``'s samples: each olla part's share, and its cost as a fraction of
    the rest (the floor's own work)."""
    total = sum(count for _, count in samples)
    in_part = dict.fromkeys(_OLLA_PARTS, 0)
    for frames, count in samples:
        functions = {frame.split(" (", 1)[0] for frame in frames}
        for part, names in _OLLA_PARTS.items():
            if not functions.isdisjoint(names):
                in_part[part] += count
    floor_work = total - sum(in_part.values())
    return {
        "samples": total,
        "parts": {
            part: {
                "share_pct": round(100 * n / total, 1) if total else None,
                "of_floor": round(n / floor_work, 3) if floor_work > 0 else None,
            }
            for part, n in in_part.items()
        },
    }


def own_share(samples: list[Sample], top: int = 12) -> dict[str, Any]:
    """olla's samples: the share whose innermost frame outside the standard library is
    olla's own (its code, and the ``json``, ``re``... it calls), the rest being Twisted's; and
    the modules of ``olla/`` with the largest shares."""
    total = 0
    modules: dict[str, int] = {}
    for frames, count in samples:
        total += count
        for frame in reversed(frames):
            where = frame.rpartition("(")[2].rpartition(":")[0]
            module = where.partition("/olla/")[2] if "/olla/" in where else None
            if where.startswith("olla/"):
                module = where.removeprefix("olla/")
            if module is not None and "site-packages" not in where:
                modules[module] = modules.get(module, 0) + count
                break
            if "twisted" in where:
                break
    own = sum(modules.values())
    ranked = sorted(modules.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": total,
        "own_pct": round(100 * own / total, 1) if total else None,
        "modules_pct": {name: round(100 * n / total, 1) for name, n in ranked},
    }


def profile(config: Path, port: int, seconds: float, work: Path, top: int) -> dict[str, Any]:
    """cProfile of olla under S2 c=32; the top frames of ``olla/`` by own time."""
    stats_file = work / "olla.prof"
    cmd = olla_cmd(config, f"--profile={stats_file}", "--profiler=cprofile", "--savestats")
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with process(cmd, cpu=0, env=env) as proc:
        wait_http(f"{base}{PREFIX}/api/tags")
        wrk(f"{base}{PREFIX}/api/chat", 32, seconds, CHAT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    stats = pstats.Stats(str(stats_file))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    olla_dir = str(REPO / "olla")
    own = [
        (tt, ct, nc, f"{Path(file).relative_to(REPO)}:{line}({func})")
        for (file, line, func), (_cc, nc, tt, ct, _callers) in entries.items()
        if file.startswith(olla_dir)
    ]
    own.sort(reverse=True)
    return {
        "total_s": round(total, 3),
        "olla_share_pct": round(100 * sum(o[0] for o in own) / total, 1) if total else None,
        "top": [
            {
                "own_pct": round(100 * tt / total, 2),
                "cum_pct": round(100 * ct / total, 2),
                "calls": nc,
                "frame": frame,
            }  # fmt: skip
            for tt, ct, nc, frame in own[:top]
        ],
    }


def median_ratios(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, *_ in SCENARIOS:
        pairs = [
            (r[name][label]["cpu_us"], r["floor"][label]["cpu_us"])
            for r in rounds
            if label in r.get(name, {}) and label in r.get("floor", {})
        ]
        if not pairs:
            continue
        ratios = [a / b for a, b in pairs]
        out[label] = {
            "olla_us": statistics.median(a for a, _ in pairs),
            "floor_us": statistics.median(b for _, b in pairs),
            "ratio": round(statistics.median(ratios), 3),
            "round_ratios": [round(x, 3) for x in ratios],
        }
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario and target")
    parser.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS))
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-rss", action="store_true", help="skip idle and 1,000-stream RSS")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the olla of another checkout (e.g. `git archive` of a commit) as target "
        "`before`, same config, in every round",
    )
    parser.add_argument(
        "--queue-off",
        action="store_true",
        help="also run olla with proxy.queue.enabled: false as target `olla-queue-off` (what the "
        "admission queue costs where it holds requests: at the default 4 slots, S2 c=32 holds 28)",
    )
    parser.add_argument(
        "--floor-plus",
        action="store_true",
        help="also run the floor in a process that imported olla's daemon, then with olla's "
        "request log line, then with its token reading too (targets "
        f"{', '.join(FLOOR_PLUS)}; {' and '.join(FLOOR_PLUS_SCENARIOS)}): what each alone costs "
        "above the floor",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for tool in ("node", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is needed", file=sys.stderr)
            return 2
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    redis = None
    if not args.no_redis:
        from tests.e2e.redis import RedisServer, available

        if available():
            redis = RedisServer()
        else:
            print("no redis-server: the shared-store run is skipped", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="olla-bench-cpu-"))
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    floor_script = BENCH / "anchors" / "twisted_floor.py"
    rounds: list[dict[str, Any]] = []
    result: dict[str, Any] = {"rounds": rounds, "seconds": args.seconds, "work": str(work)}
    try:
        if redis is not None:
            redis.start()
        with process(["node", str(BENCH / "fake_backend.js"), str(backend_port)], cpu=1):
            wait_http(f"{backend}/api/tags")
            for round_ in range(args.rounds):
                targets: list[tuple[str, str | None]] = [("floor", None), ("olla", None)]
                if redis is not None:
                    targets.append(("olla-redis", redis.url))
                if args.against is not None:
                    targets.append(("before", None))
                if args.queue_off:
                    targets.append(("olla-queue-off", None))
                if args.floor_plus:
                    targets += [(name, None) for name in FLOOR_PLUS]
                if round_ % 2:
                    targets.reverse()
                figures: dict[str, Any] = {}
                for name, store in targets:
                    port = free_port()
                    if name == "floor":
                        cmd = [sys.executable, str(floor_script), str(port), backend, PREFIX]
                        scenarios = wanted
                    elif name in FLOOR_PLUS:
                        plus = REPO / "benchmarks" / "floor_plus.py"
                        cmd = [sys.executable, str(plus), str(port), backend, PREFIX]
                        cmd += FLOOR_PLUS[name]
                        scenarios = [s for s in wanted if s in FLOOR_PLUS_SCENARIOS]
                    else:
                        queue = name != "olla-queue-off"
                        cmd = olla_cmd(olla_config(work, port, backend, store, queue=queue))
                        scenarios = wanted if store is None else [
                            s for s in wanted if s in REDIS_SCENARIOS
                        ]  # fmt: skip
                    log = work / f"{name}-{round_ + 1}.log"
                    tree = args.against.resolve() if name == "before" else REPO
                    figures[name] = run_target(name, cmd, port, scenarios, args.seconds, log, tree)
                rounds.append(figures)
            if not args.no_rss:
                port = free_port()
                # what a stream costs: the admission queue would hold all but the endpoint's
                # slots (4, or the profile's cap for the model), and the runner time them out
                cmd = olla_cmd(olla_config(work, port, backend, None, queue=False))
                result["rss"] = {"olla": slow_streams(cmd, port, backend, work, "olla")}
                port = free_port()
                floor = [sys.executable, str(floor_script), str(port), backend, PREFIX]
                result["rss"]["floor"] = slow_streams(floor, port, backend, work, "floor")
            if args.floor_plus:
                sampled = args.seconds + 4
                port = free_port()
                plus = [sys.executable, str(REPO / "benchmarks" / "floor_plus.py"), str(port)]
                plus += [backend, PREFIX, *FLOOR_PLUS["floor+log+tokens"]]
                samples = spy_samples(plus, port, work / "floor-plus.spy", sampled)
                result["floor_plus_shares"] = (
                    floor_plus_parts(samples) if isinstance(samples, list) else {"skipped": samples}
                )
                port = free_port()
                mine = olla_cmd(olla_config(work, port, backend, None))
                samples = spy_samples(mine, port, work / "olla.spy", sampled)
                result["olla_own_share"] = (
                    own_share(samples) if isinstance(samples, list) else {"skipped": samples}
                )
            if not args.no_profile:
                port = free_port()
                config = olla_config(work, port, backend, None)
                result["profile"] = profile(config, port, max(args.seconds, 6), work, args.top)
    finally:
        if redis is not None:
            redis.stop()

    result["olla"] = median_ratios(rounds, "olla")
    if redis is not None:
        result["olla-redis"] = median_ratios(rounds, "olla-redis")
    if args.against is not None:
        result["before"] = median_ratios(rounds, "before")
    if args.queue_off:
        result["olla-queue-off"] = median_ratios(rounds, "olla-queue-off")
    for name in FLOOR_PLUS if args.floor_plus else ():
        result[name] = median_ratios(rounds, name)
    print()
    print(
        "| scenario | floor µs | olla µs | olla/floor | round ratios | olla+redis µs "
        "| +redis/floor |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for label in result["olla"]:
        mine = result["olla"][label]
        shared = result.get("olla-redis", {}).get(label)
        unit = " (per chunk)" if label == "SSE" else ""
        print(
            f"| {label}{unit} | {mine['floor_us']:.1f} | {mine['olla_us']:.1f} | "
            f"{mine['ratio']:.3f} | {', '.join(map(str, mine['round_ratios']))} | "
            + (f"{shared['olla_us']:.1f} | {shared['ratio']:.3f} |" if shared else "- | - |")
        )
    if "before" in result:
        print("\n| scenario | before µs | before/floor | this/before (median of rounds) |")
        print("|---|---:|---:|---:|")
        for label, theirs in result["before"].items():
            ratios = [
                r["olla"][label]["cpu_us"] / r["before"][label]["cpu_us"]
                for r in rounds
                if label in r.get("olla", {}) and label in r.get("before", {})
            ]
            print(
                f"| {label} | {theirs['olla_us']:.1f} | {theirs['ratio']:.3f} | "
                f"{statistics.median(ratios):.3f} |"
            )
    if "olla-queue-off" in result:
        print("\n| scenario | queue off µs | queue off/floor | round ratios |")
        print("|---|---:|---:|---|")
        for label, off in result["olla-queue-off"].items():
            print(
                f"| {label} | {off['olla_us']:.1f} | {off['ratio']:.3f} | "
                f"{', '.join(map(str, off['round_ratios']))} |"
            )
    if args.floor_plus:
        print(
            "\n| target | scenario | µs | /floor | round ratios | of the budget above the floor "
            f"({TARGET}x) |"
        )
        print("|---|---|---:|---:|---|---:|")
        for name in FLOOR_PLUS:
            for label, plus in result[name].items():
                used = (plus["ratio"] - 1) / (TARGET - 1)
                print(
                    f"| {name} | {label} | {plus['olla_us']:.1f} | {plus['ratio']:.3f} | "
                    f"{', '.join(map(str, plus['round_ratios']))} | {used:.0%} |"
                )
        shares = result.get("floor_plus_shares", {})
        if "parts" in shares:
            print(
                f"\nfloor+log+tokens under S2 c=32, {shares['samples']} py-spy samples (one "
                "process: the VM's swings do not enter):"
            )
            print("| olla's part | share of the samples | × the floor's own work |")
            print("|---|---:|---:|")
            for part, figures in shares["parts"].items():
                print(f"| {part} | {figures['share_pct']} % | {figures['of_floor']} |")
        elif shares:
            print(f"\nfloor+log+tokens samples: {shares['skipped']}")
        own = result.get("olla_own_share", {})
        s2_ratio = result["olla"].get("S2_c32", {}).get("ratio")
        if own.get("own_pct") is not None and s2_ratio:
            print(
                f"olla at its defaults, {own['samples']} py-spy samples under S2 c=32: its own "
                f"code (and the standard library it calls) {own['own_pct']} % of them, about "
                f"{own['own_pct'] / 100 * s2_ratio:.2f}x the floor at this run's "
                f"{s2_ratio}x (the budget for all olla adds: {TARGET - 1:.2f}x). By module:"
            )
            print("| module of olla/ | share of olla's samples | × the floor |\n|---|---:|---:|")
            for module, pct in own["modules_pct"].items():
                print(f"| {module} | {pct} % | {pct / 100 * s2_ratio:.3f} |")
    s2 = result["olla"].get("S2_c32")
    if s2:
        verdict = "PASS" if s2["ratio"] <= TARGET else "FAIL"
        print(f"\n{verdict}  S2 c=32 CPU/request within {TARGET}x of the floor ({s2['ratio']}x)")
    idle = [r[n]["idle_rss_mb"] for r in rounds for n in r if n == "olla"]
    if idle:
        print(f"olla idle RSS after start (per round): {idle} MB")
    for name, rss in result.get("rss", {}).items():
        print(
            f"{name}: idle RSS {rss['idle_rss_mb']} MB; 1,000 slow streams: {rss['s7_ok']}/"
            f"{rss['s7_planned']} ok, peak RSS {rss['s7_rss_peak_mb']} MB "
            f"({rss['s7_per_stream_kb']} KB per stream)"
        )
    prof = result.get("profile")
    if prof:
        print(
            f"\ncProfile under S2 c=32: {prof['total_s']} s profiled, olla's own frames "
            f"{prof['olla_share_pct']} % of it; top {len(prof['top'])} by own time:"
        )
        print("| own % | cum % | calls | frame |\n|---:|---:|---:|---|")
        for row in prof["top"]:
            print(f"| {row['own_pct']} | {row['cum_pct']} | {row['calls']} | {row['frame']} |")
    out = args.out or REPO / "benchmarks" / "results" / f"cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    shown = ("olla", "olla-redis", "before", "olla-queue-off", *FLOOR_PLUS)
    print(json.dumps({k: v for k, v in result.items() if k in shown}))
    print(f"\nJSON: {out}")
    return 0
