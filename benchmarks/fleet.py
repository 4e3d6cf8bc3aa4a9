"""``python -m benchmarks fleet``: fleet latency with model loads, olla against a model-blind proxy.

Three fake Ollama hosts with the fake's cost model (parallel slots, a 2 s model load, at most
two models loaded, time per token), four models that every host has and none has loaded, and a
dozen closed-loop clients that each ``POST /api/chat`` (not streamed) a model drawn with fixed
weights from a seeded generator. The same workload runs for a bounded time through each target,
each on fresh hosts: olla (least-connections, its model-aware routing), nginx round robin (or,
without nginx, olla round robin with warm routing off), and, when the olla under test knows
``proxy.warm_routing``, olla round robin with warm routing off. Reported per target: served,
errors, latency percentiles, and the hosts' own counters (model loads, evictions, busy answers).
Everything binds 127.0.0.1 and every process started is stopped by its PID, also on errors.

``--scenario multi-turn`` measures sticky sessions instead: every host has one model loaded and
the fake's prompt cache (``--prompt-ms`` per prompt token the host has not cached, the last
``--prompt-cache`` conversations kept per host); each client holds conversations of
``--turns`` turns that grow by ``--turn-words`` words a turn, streamed, and the time to the
first answer line (TTFT) is measured through olla with ``proxy.sticky_sessions`` on and off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.__main__ import free_port
from tests.fakes.process import FakeProcess

REPO = Path(__file__).resolve().parents[1]
TWISTD = str(Path(sys.executable).with_name("twistd"))
#: model -> share of the requests
WEIGHTS = {"hot-a": 0.4, "hot-b": 0.4, "cold-c": 0.1, "cold-d": 0.1}
#: the multi-turn scenario's one model (loaded on every host: only the prompt cache differs)
CHAT_MODEL = "chat"
#: per-host counters of the fake summed (or maxed) over the fleet
SUMMED = ("loads", "evictions", "busy_rejections", "prompt_tokens", "cached_tokens")
PEAKS = ("peak_running", "peak_queued")


@dataclass
class Tally:
    """What the clients saw of one target."""

    latencies_ms: list[float] = field(default_factory=list)  # served requests only
    errors: Counter[str] = field(default_factory=Counter)  # by status or exception name
    unfinished: int = 0  # still running when the time was up
    by_model: Counter[str] = field(default_factory=Counter)  # served, per model
    ttfts_ms: list[float] = field(default_factory=list)  # multi-turn: to the first line
    sticky: Counter[str] = field(default_factory=Counter)  # multi-turn: X-Olla-Sticky-Session
    lock: threading.Lock = field(default_factory=threading.Lock)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * share))
    return round(ordered[rank - 1], 1)


def client(base: str, index: int, args: argparse.Namespace, deadline: float, tally: Tally) -> None:
    """One closed-loop client: the next request as soon as the last one is answered."""
    picks = random.Random(args.seed * 1000 + index)  # the same sequence for every target
    models, weights = list(WEIGHTS), list(WEIGHTS.values())
    with httpx.Client(base_url=base) as http:
        sequence = 0
        while (left := deadline - time.monotonic()) > 0:
            model = picks.choices(models, weights)[0]
            sequence += 1
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"client {index} question {sequence}"}],
                "stream": False,
                "options": {"num_predict": args.tokens},  # the fake's chunk count
            }
            started = time.monotonic()
            try:
                response = http.post("/api/chat", json=body, timeout=max(left, 0.05))
            except httpx.TimeoutException:
                if time.monotonic() >= deadline:  # cut by the end of the run, not a failure
                    with tally.lock:
                        tally.unfinished += 1
                    return
                outcome = "timeout"
            except httpx.HTTPError as e:
                outcome = type(e).__name__
            else:
                outcome = "ok" if response.status_code == 200 else str(response.status_code)
            elapsed = (time.monotonic() - started) * 1000
            with tally.lock:
                if outcome == "ok":
                    tally.latencies_ms.append(elapsed)
                    tally.by_model[model] += 1
                else:
                    tally.errors[outcome] += 1
            if outcome != "ok":
                time.sleep(0.05)  # no hot loop against a refusing target


def conversation_client(
    base: str, index: int, args: argparse.Namespace, deadline: float, tally: Tally
) -> None:
    """One agent: conversations of ``args.turns`` turns, each resending the whole history plus
    ``args.turn_words`` new words, streamed; TTFT is the time to the first answer line."""
    words = random.Random(args.seed * 1000 + index)
    vocabulary = [f"w{n}" for n in range(500)]
    with httpx.Client(base_url=base) as http:
        conversation = 0
        while deadline - time.monotonic() > 0:
            conversation += 1
            messages = [{"role": "system", "content": f"agent {index}.{conversation}"}]
            for _ in range(args.turns):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                text = " ".join(words.choices(vocabulary, k=args.turn_words))
                messages.append({"role": "user", "content": text})
                body = {
                    "model": CHAT_MODEL,
                    "messages": messages,
                    "options": {"num_predict": args.tokens},
                }
                outcome, answer = _stream_turn(http, body, left, tally)
                if outcome == "cut":
                    return
                if outcome != "ok":
                    with tally.lock:
                        tally.errors[outcome] += 1
                    time.sleep(0.05)
                    break  # the conversation is lost: start another
                messages.append({"role": "assistant", "content": answer})


def _stream_turn(
    http: httpx.Client, body: dict[str, Any], left: float, tally: Tally
) -> tuple[str, str]:
    """One streamed turn: ("ok", answer), ("cut", "") at the end of the run, or (error, "")."""
    started = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    try:
        with http.stream("POST", "/api/chat", json=body, timeout=max(left, 0.05)) as response:
            if response.status_code != 200:
                response.read()
                return str(response.status_code), ""
            outcome = response.headers.get("x-olla-sticky-session", "-")
            for line in response.iter_lines():
                if not line:
                    continue
                if first is None:
                    first = time.monotonic()
                pieces.append(json.loads(line).get("message", {}).get("content", ""))
    except httpx.TimeoutException:
        if time.monotonic() - started >= left:
            with tally.lock:
                tally.unfinished += 1
            return "cut", ""
        return "timeout", ""
    except httpx.HTTPError as e:
        return type(e).__name__, ""
    if first is None:
        return "empty", ""
    with tally.lock:
        tally.ttfts_ms.append((first - started) * 1000)
        tally.latencies_ms.append((time.monotonic() - started) * 1000)
        tally.by_model[CHAT_MODEL] += 1
        tally.sticky[outcome] += 1
    return "ok", "".join(pieces)


@contextmanager
def spawn(cmd: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own session, output to ``log``; stopped by its PID afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group led by this PID (nginx's workers)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_until(ready: Any, what: str, proc: subprocess.Popen[bytes], timeout: float = 45) -> None:
    """Poll ``ready()`` until it is true; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def olla_config(
    work: Path, name: str, port: int, hosts: list[str], blind: bool, sticky: bool = False
) -> Path:
    proxy: dict[str, Any] = {"load_balancer": "least-connections"}
    if blind:
        proxy = {"load_balancer": "round-robin", "warm_routing": {"enabled": False}}
    if sticky:
        proxy["sticky_sessions"] = {"enabled": True}
    endpoint = {"type": "ollama", "check_interval": "1s", "check_timeout": "500ms"}
    config = {
        # limits off: 12 closed-loop clients on one address would pass the Go defaults
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "rate_limits": {"per_ip_requests_per_minute": 0},
        },
        "proxy": proxy,
        "discovery": {
            "static": {
                "endpoints": [
                    {"name": f"h{i + 1}", "url": url, **endpoint} for i, url in enumerate(hosts)
                ]
            }
        },
        "logging": {"level": "warn", "format": "json"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def knows_warm_routing(olla_dir: Path, work: Path) -> bool:
    """Whether that olla accepts ``proxy.warm_routing`` (validate-config warns on unknown keys)."""
    config = olla_config(work, "probe", free_port(), ["http://127.0.0.1:9"], blind=True)
    done = subprocess.run(
        [sys.executable, "-m", "olla", "validate-config", str(config)],
        cwd=olla_dir,
        env=dict(os.environ, PYTHONPATH=str(olla_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    return "[OK] loaded" in out and "warm_routing: unknown key" not in out


@contextmanager
def olla(
    olla_dir: Path,
    work: Path,
    name: str,
    hosts: list[str],
    blind: bool,
    sticky: bool = False,
    models: tuple[str, ...] = tuple(WEIGHTS),
) -> Iterator[str]:
    port = free_port()
    config = olla_config(work, name, port, hosts, blind, sticky)
    cmd = [TWISTD, "--nodaemon", "--pidfile=", "olla", "--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(olla_dir))
    base = f"http://127.0.0.1:{port}"
    with spawn(cmd, work / f"{name}.log", cwd=work, env=env) as proc:

        def ready() -> bool:  # every host healthy, and the models discovered
            status = get_json(f"{base}/internal/status/endpoints")
            tags = get_json(f"{base}/olla/ollama/api/tags")
            names = {m["name"].split(":")[0] for m in tags["models"]}
            return bool(status["healthy_count"] == len(hosts) and set(models) <= names)

        wait_until(ready, name, proc)
        yield f"{base}/olla/ollama"


NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    upstream fleet {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


@contextmanager
def nginx(binary: str, work: Path, hosts: list[str]) -> Iterator[str]:
    port = free_port()
    servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in hosts)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, servers=servers, port=port))
    cmd = [binary, "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)]
    base = f"http://127.0.0.1:{port}"
    with spawn([*cmd, "-g", "daemon off;"], work / "nginx.log") as proc:
        wait_until(lambda: bool(get_json(f"{base}/api/tags")["models"]), "nginx", proc)
        yield base


def fleet_flags(args: argparse.Namespace) -> list[str]:
    if args.scenario == "multi-turn":
        return [
            "--models", CHAT_MODEL, "--loaded", CHAT_MODEL, "--capacity", str(args.capacity),
            "--max-queue", str(args.max_queue), "--token-ms", str(args.token_ms),
            "--prompt-ms", str(args.prompt_ms), "--prompt-cache", str(args.prompt_cache),
        ]  # fmt: skip
    return [
        "--models", ",".join(WEIGHTS), "--capacity", str(args.capacity),
        "--max-queue", str(args.max_queue), "--load-ms", str(args.load_ms),
        "--max-loaded", str(args.max_loaded), "--token-ms", str(args.token_ms),
    ]  # fmt: skip


def measure(target: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Fresh hosts, the target in front of them, the clients for ``args.duration`` seconds."""
    print(f"-- {target}: {args.duration:.0f} s, {args.clients} clients", file=sys.stderr)
    with ExitStack() as stack:
        fakes = [
            stack.enter_context(FakeProcess(*fleet_flags(args), "--name", f"h{i + 1}-"))
            for i in range(args.hosts)
        ]
        hosts = [fake.url for fake in fakes]
        if target == "nginx-rr":
            base = stack.enter_context(nginx(args.nginx, work, hosts))
        elif args.scenario == "multi-turn":
            sticky = target == "olla-sticky"
            models = (CHAT_MODEL,)
            base = stack.enter_context(
                olla(args.olla_dir, work, target, hosts, False, sticky, models)
            )
        else:
            blind = target != "olla"
            base = stack.enter_context(olla(args.olla_dir, work, target, hosts, blind))
        tally = Tally()
        deadline = time.monotonic() + args.duration
        run = conversation_client if args.scenario == "multi-turn" else client
        threads = [
            threading.Thread(target=run, args=(base, i, args, deadline, tally), daemon=True)
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.duration + 30)
        states = [fake.state() for fake in fakes]
    latencies = tally.latencies_ms
    result: dict[str, Any] = {
        "served": len(latencies),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "unfinished": tally.unfinished,
        "rps": round(len(latencies) / args.duration, 2),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 1) if latencies else None,
        **{key: sum(int(s[key]) for s in states) for key in SUMMED},
        **{key: max(int(s[key]) for s in states) for key in PEAKS},
        "loads_per_host": [int(s["loads"]) for s in states],
        "served_by_model": dict(sorted(tally.by_model.items())),
    }
    if args.scenario == "multi-turn":
        ttfts = tally.ttfts_ms
        read, cached = result["prompt_tokens"], result["cached_tokens"]
        result.update(
            {
                "ttft_p50_ms": percentile(ttfts, 0.50),
                "ttft_p95_ms": percentile(ttfts, 0.95),
                "ttft_p99_ms": percentile(ttfts, 0.99),
                "cached_share": round(cached / (read + cached), 3) if read + cached else None,
                "sticky_outcomes": dict(sorted(tally.sticky.items())),
            }
        )
    return result


def ratio(mine: Any, base: Any) -> float | None:
    return round(mine / base, 2) if mine is not None and base else None


#: (label, key) rows of the table
ROWS = [
    ("requests served", "served"),
    ("errors", "errors"),
    ("unfinished at the end", "unfinished"),
    ("served / s", "rps"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("model loads (all hosts)", "loads"),
    ("evictions", "evictions"),
    ("busy rejections (503)", "busy_rejections"),
    ("peak queued on a host", "peak_queued"),
]


#: (label, key) rows of the multi-turn table
TURN_ROWS = [
    ("turns served", "served"),
    ("errors", "errors"),
    ("unfinished at the end", "unfinished"),
    ("TTFT p50 ms", "ttft_p50_ms"),
    ("TTFT p95 ms", "ttft_p95_ms"),
    ("TTFT p99 ms", "ttft_p99_ms"),
    ("turn p95 ms", "p95_ms"),
    ("prompt tokens read (all hosts)", "prompt_tokens"),
    ("prompt tokens from cache", "cached_tokens"),
    ("share from cache", "cached_share"),
    ("busy rejections (503)", "busy_rejections"),
]


def table(
    results: dict[str, dict[str, Any]], ratios: dict[str, Any], rows: list[tuple[str, str]] = ROWS
) -> str:
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in rows:
        cells = ["-" if results[n].get(key) is None else str(results[n][key]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ratios:
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {'-' if v is None else v} |" for k, v in ratios.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fleet", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per target")
    parser.add_argument("--quick", action="store_true", help="20 s per target")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20, help="chunks per answer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=4, help="the fakes' parallel slots")
    parser.add_argument("--max-queue", type=int, default=0, help="the fakes' queue (0: none)")
    parser.add_argument("--load-ms", type=float, default=2000)
    parser.add_argument("--max-loaded", type=int, default=2)
    parser.add_argument("--token-ms", type=float, default=20)
    parser.add_argument(
        "--scenario",
        choices=("models", "multi-turn"),
        default="models",
        help="models: model loads, olla vs round robin; multi-turn: sticky sessions on vs off",
    )
    parser.add_argument("--turns", type=int, default=8, help="multi-turn: turns a conversation")
    parser.add_argument("--turn-words", type=int, default=120, help="multi-turn: words a turn")
    parser.add_argument(
        "--prompt-ms", type=float, default=1.0, help="multi-turn: ms per uncached prompt token"
    )
    parser.add_argument(
        "--prompt-cache", type=int, default=4, help="multi-turn: conversations cached per host"
    )
    parser.add_argument("--olla-dir", type=Path, default=REPO, help="the olla checkout to run")
    parser.add_argument(
        "--olla-blind",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also olla round robin, warm routing off (default: if that olla knows the key)",
    )
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--out", type=Path, default=None, help="JSON (also benchmarks/results/)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 20.0
    args.olla_dir = args.olla_dir.resolve()
    if not (args.olla_dir / "olla" / "daemon" / "tap.py").exists():
        print(f"no olla checkout at {args.olla_dir}", file=sys.stderr)
        return 2

    if args.scenario == "multi-turn":
        return multi_turn(args)
    work = Path(tempfile.mkdtemp(prefix="olla-fleet-"))
    work.chmod(0o755)  # nginx workers (nobody, when run as root) read under it
    try:
        warm_key = knows_warm_routing(args.olla_dir, work)
        blind = warm_key if args.olla_blind is None else args.olla_blind
        have_nginx = os.access(args.nginx, os.X_OK)
        baseline = "nginx-rr" if have_nginx else "olla-rr-fallback"
        targets = ["olla", baseline] + (["olla-blind"] if blind and have_nginx else [])
        if not have_nginx:
            print("nginx not found: round robin is olla with warm routing off", file=sys.stderr)
        results = {target: measure(target, args, work) for target in targets}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = {
        f"p95 olla / {baseline}": ratio(results["olla"]["p95_ms"], results[baseline]["p95_ms"]),
        f"served olla / {baseline}": ratio(results["olla"]["served"], results[baseline]["served"]),
        f"loads olla / {baseline}": ratio(results["olla"]["loads"], results[baseline]["loads"]),
    }
    setup = {
        "olla_dir": str(args.olla_dir),
        "olla_knows_warm_routing": warm_key,
        "duration_s": args.duration,
        "clients": args.clients,
        "hosts": args.hosts,
        "tokens": args.tokens,
        "seed": args.seed,
        "weights": WEIGHTS,
        "fake": {
            "capacity": args.capacity,
            "max_queue": args.max_queue,
            "load_ms": args.load_ms,
            "max_loaded": args.max_loaded,
            "token_ms": args.token_ms,
        },
    }
    return publish({"setup": setup, "targets": results, "ratios": ratios}, ROWS, args)


def multi_turn(args: argparse.Namespace) -> int:
    """The multi-turn scenario: the same conversations through olla, sticky sessions on, then
    off (each on fresh hosts)."""
    work = Path(tempfile.mkdtemp(prefix="olla-fleet-"))
    try:
        targets = ("olla-sticky", "olla-no-sticky")
        results = {target: measure(target, args, work) for target in targets}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on, off = results["olla-sticky"], results["olla-no-sticky"]
    ratios = {
        "TTFT p95 sticky / no sticky": ratio(on["ttft_p95_ms"], off["ttft_p95_ms"]),
        "TTFT p50 sticky / no sticky": ratio(on["ttft_p50_ms"], off["ttft_p50_ms"]),
        "turns served sticky / no sticky": ratio(on["served"], off["served"]),
    }
    setup = {
        "scenario": "multi-turn",
        "olla_dir": str(args.olla_dir),
        "duration_s": args.duration,
        "clients": args.clients,
        "hosts": args.hosts,
        "turns": args.turns,
        "turn_words": args.turn_words,
        "tokens": args.tokens,
        "seed": args.seed,
        "fake": {
            "capacity": args.capacity,
            "max_queue": args.max_queue,
            "token_ms": args.token_ms,
            "prompt_ms": args.prompt_ms,
            "prompt_cache": args.prompt_cache,
        },
    }
    return publish({"setup": setup, "targets": results, "ratios": ratios}, TURN_ROWS, args)


def publish(report: dict[str, Any], rows: list[tuple[str, str]], args: argparse.Namespace) -> int:
    """Print the table and the JSON; write the JSON to benchmarks/results/ (and --out)."""
    text = table(report["targets"], report["ratios"], rows)
    print(text)
    print()
    print(json.dumps(report, indent=1))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outs = [REPO / "benchmarks" / "results" / f"fleet-{stamp}.json"] + (
        [args.out] if args.out else []
    )
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    print(f"\nJSON: {', '.join(map(str, outs))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
