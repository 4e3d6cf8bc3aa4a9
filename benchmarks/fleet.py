"""``python -m benchmarks fleet``: fleet latency and goodput, olla against nginx.

Three fake Ollama hosts with the fake's cost model (4 parallel slots each, a 2 s model load, at
most two models loaded, time per token), four models that every host has and none has loaded,
and a dozen closed-loop clients that each ``POST /api/chat`` (not streamed) a model drawn with
fixed weights from a seeded generator. The same workload runs for a bounded time through each
target, each on fresh hosts: olla (least-connections, its model-aware routing), olla with its
admission queue off (when the olla under test knows ``proxy.queue``), and nginx ``least_conn``
(connection-aware); ``--targets`` also offers nginx round robin and olla round robin with warm
routing off. Reported per target: served, errors, latency percentiles, goodput as a share of
the fleet's capacity, and the hosts' own counters (model loads, evictions, busy answers).
Everything binds 127.0.0.1 and every process started is stopped by its PID, also on errors.

The fleet's capacity is what its slots complete when every slot is always busy with a warm
model: ``hosts x slots`` slot-seconds per second, or ``hosts x slots / mean service time``
requests a second, the service time being the fake's time per answer (``chunks x token_ms``,
averaged over the workload's mix). Goodput is the work of the requests answered 200 (the sum of
their service times); its share of the capacity (``goodput / capacity``: that sum over
``hosts x slots x duration``) is the headline figure. Counting work rather than requests keeps
the share exact when the run happens to draw more long requests than the mix's 30 %.

``--mix`` (``--scenario mix``) is a workload without loads: every host has every model loaded
and 2 slots, 16 closed-loop clients, 70 % of the requests take 0.3 s on the host and 30 % take
3 s (their ``num_predict``, the fake's chunk count, at ``--token-ms`` per chunk): what a
connection counter does with mixed lengths, against holding requests until a slot frees.

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
#: ``--mix``: request class -> (share of the requests, seconds on the host)
MIX = {"short": (0.7, 0.3), "long": (0.3, 3.0)}
#: every target ``--targets`` may name; the default is the first three
TARGETS = ("olla", "olla-queue-off", "nginx-lc", "nginx-rr", "olla-blind", "olla-untold")
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
    by_class: dict[str, list[float]] = field(default_factory=dict)  # --mix: latencies per class
    work_s: float = 0.0  # the service seconds of the requests answered 200
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


def chunks_for(seconds: float, args: argparse.Namespace) -> int:
    """The chunk count (``num_predict``) that keeps the fake busy ``seconds``."""
    return max(1, round(seconds * 1000 / args.token_ms))


def workload(args: argparse.Namespace) -> dict[str, tuple[float, int]]:
    """Request class -> (share, chunks): the models workload is one class of ``--tokens``."""
    if args.scenario == "mix":
        return {name: (share, chunks_for(s, args)) for name, (share, s) in MIX.items()}
    return {"all": (1.0, args.tokens)}


def capacity(args: argparse.Namespace) -> dict[str, float]:
    """The fleet's capacity: every slot always busy with a warm model, so
    ``hosts x slots / mean service time`` requests a second (see the module docstring)."""
    mean = sum(share * chunks * args.token_ms / 1000 for share, chunks in workload(args).values())
    slots = args.hosts * args.capacity
    return {"slots": slots, "mean_service_s": round(mean, 4), "rps": round(slots / mean, 3)}


def client(base: str, index: int, args: argparse.Namespace, deadline: float, tally: Tally) -> None:
    """One closed-loop client: the next request as soon as the last one is answered."""
    picks = random.Random(args.seed * 1000 + index)  # the same sequence for every target
    models, weights = list(WEIGHTS), list(WEIGHTS.values())
    classes = workload(args)
    names, shares = list(classes), [share for share, _ in classes.values()]
    with httpx.Client(base_url=base) as http:
        sequence = 0
        while (left := deadline - time.monotonic()) > 0:
            model = picks.choices(models, weights)[0]
            kind = picks.choices(names, shares)[0]
            sequence += 1
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"client {index} question {sequence}"}],
                "stream": False,
                "options": {"num_predict": classes[kind][1]},  # the fake's chunk count
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
                    tally.by_class.setdefault(kind, []).append(elapsed)
                    tally.work_s += classes[kind][1] * args.token_ms / 1000
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
    work: Path,
    name: str,
    port: int,
    hosts: list[str],
    blind: bool,
    sticky: bool = False,
    queue: bool | None = None,
    slots: int | None = None,
    max_loaded: int | None = None,
) -> Path:
    """``queue``: None leaves ``proxy.queue`` out (an olla that does not know it), else sets
    ``proxy.queue.enabled``; ``slots`` sets every endpoint's ``max_concurrency`` (the fakes'),
    ``max_loaded`` its ``max_loaded_models`` (the fakes' ``--max-loaded``)."""
    proxy: dict[str, Any] = {"load_balancer": "least-connections"}
    if blind:
        proxy = {"load_balancer": "round-robin", "warm_routing": {"enabled": False}}
    if sticky:
        proxy["sticky_sessions"] = {"enabled": True}
    if queue is not None:
        proxy["queue"] = {"enabled": queue}
    endpoint: dict[str, Any] = {"type": "ollama", "check_interval": "1s", "check_timeout": "500ms"}
    if slots is not None:
        endpoint["max_concurrency"] = slots
    if max_loaded is not None:
        endpoint["max_loaded_models"] = max_loaded
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


def knows_key(olla_dir: Path, work: Path, key: str, **options: Any) -> bool:
    """Whether that olla accepts the config ``olla_config(**options)`` writes without an
    unknown-key warning for ``key`` (``warm_routing``, ``queue``)."""
    config = olla_config(work, "probe", free_port(), ["http://127.0.0.1:9"], **options)
    done = subprocess.run(
        [sys.executable, "-m", "olla", "validate-config", str(config)],
        cwd=olla_dir,
        env=dict(os.environ, PYTHONPATH=str(olla_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    return "[OK] loaded" in out and f"{key}: unknown key" not in out


@contextmanager
def olla(
    olla_dir: Path,
    work: Path,
    name: str,
    hosts: list[str],
    blind: bool,
    sticky: bool = False,
    models: tuple[str, ...] = tuple(WEIGHTS),
    queue: bool | None = None,
    slots: int | None = None,
    max_loaded: int | None = None,
) -> Iterator[str]:
    port = free_port()
    config = olla_config(work, name, port, hosts, blind, sticky, queue, slots, max_loaded)
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
{balance}{servers}
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
def nginx(binary: str, work: Path, hosts: list[str], least_conn: bool = False) -> Iterator[str]:
    """nginx over ``hosts``: round robin, or ``least_conn`` (fewest active connections; one
    worker process, so it sees every connection)."""
    port = free_port()
    servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in hosts)
    balance = "        least_conn;\n" if least_conn else ""
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, servers=servers, port=port, balance=balance))
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
    if args.scenario == "mix":  # every model loaded everywhere: no loads, no evictions
        return [
            "--models", ",".join(WEIGHTS), "--loaded", ",".join(WEIGHTS),
            "--capacity", str(args.capacity), "--max-queue", str(args.max_queue),
            "--token-ms", str(args.token_ms),
        ]  # fmt: skip
    preloaded = ["--loaded", ",".join(WEIGHTS)] if args.preloaded else []
    return [
        "--models", ",".join(WEIGHTS), *preloaded, "--capacity", str(args.capacity),
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
        if target in ("nginx-rr", "nginx-lc"):
            least_conn = target == "nginx-lc"
            base = stack.enter_context(nginx(args.nginx, work, hosts, least_conn))
        elif args.scenario == "multi-turn":
            sticky = target == "olla-sticky"
            models = (CHAT_MODEL,)
            base = stack.enter_context(
                olla(args.olla_dir, work, target, hosts, False, sticky, models)
            )
        else:
            blind = target == "olla-blind"
            queue = False if target == "olla-queue-off" else None
            # olla is told what the fakes hold at once (olla-untold: as before the key)
            told = args.scenario == "models" and args.max_loaded and target != "olla-untold"
            base = stack.enter_context(
                olla(
                    args.olla_dir,
                    work,
                    target,
                    hosts,
                    blind,
                    queue=queue,
                    slots=args.capacity,
                    max_loaded=args.max_loaded if told else None,
                )
            )
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
        "goodput_share": round(tally.work_s / (capacity(args)["slots"] * args.duration), 3),
        **{key: sum(int(s[key]) for s in states) for key in SUMMED},
        **{key: max(int(s[key]) for s in states) for key in PEAKS},
        "loads_per_host": [int(s["loads"]) for s in states],
        # where the models ended up: the arrangement a run settles in decides its goodput
        "in_memory": " / ".join(sorted("+".join(sorted(s["loaded"])) or "-" for s in states)),
        "served_by_model": dict(sorted(tally.by_model.items())),
    }
    if args.scenario == "mix":
        for kind in MIX:
            values = tally.by_class.get(kind, [])
            result[f"{kind}_served"] = len(values)
            result[f"{kind}_p50_ms"] = percentile(values, 0.50)
            result[f"{kind}_p95_ms"] = percentile(values, 0.95)
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
    ("goodput / capacity", "goodput_share"),
    ("model loads (all hosts)", "loads"),
    ("evictions", "evictions"),
    ("busy rejections (503)", "busy_rejections"),
    ("peak queued on a host", "peak_queued"),
    ("in memory at the end", "in_memory"),
]

#: (label, key) rows of the --mix table
MIX_ROWS = [
    *ROWS[:8],
    ("goodput / capacity", "goodput_share"),
    ("short (0.3 s) served", "short_served"),
    ("short p50 ms", "short_p50_ms"),
    ("short p95 ms", "short_p95_ms"),
    ("long (3 s) served", "long_served"),
    ("long p50 ms", "long_p50_ms"),
    ("long p95 ms", "long_p95_ms"),
    ("peak running on a host", "peak_running"),
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
    parser.add_argument("--clients", type=int, default=None, help="12 (--mix: 16)")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20, help="chunks per answer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="the fakes' parallel slots and olla's max_concurrency: 4 (--mix: 2)",
    )
    parser.add_argument("--max-queue", type=int, default=0, help="the fakes' queue (0: none)")
    parser.add_argument("--load-ms", type=float, default=2000)
    parser.add_argument("--max-loaded", type=int, default=2)
    parser.add_argument("--token-ms", type=float, default=20)
    parser.add_argument(
        "--scenario",
        choices=("models", "mix", "multi-turn"),
        default="models",
        help="models: model loads; mix: 0.3 s and 3 s requests, every model loaded; "
        "multi-turn: sticky sessions on vs off",
    )
    parser.add_argument("--mix", action="store_true", help="the same as --scenario mix")
    parser.add_argument(
        "--preloaded",
        action="store_true",
        help="models: every model in memory on every host from the start (room for all): no "
        "placement to get right and no cold start, what the harness itself leaves",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS[:3]),
        help=f"comma-separated, of {', '.join(TARGETS)} (models and mix)",
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
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--out", type=Path, default=None, help="JSON (also benchmarks/results/)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 20.0
    if args.mix:
        args.scenario = "mix"
    if args.preloaded:  # the hosts hold every model (and olla is told so)
        args.max_loaded = max(args.max_loaded, len(WEIGHTS))
    if args.clients is None:
        args.clients = 16 if args.scenario == "mix" else 12
    if args.capacity is None:
        args.capacity = 2 if args.scenario == "mix" else 4
    args.olla_dir = args.olla_dir.resolve()
    if not (args.olla_dir / "olla" / "__init__.py").exists():  # tap.py moved to olla/daemon/
        print(f"no olla checkout at {args.olla_dir}", file=sys.stderr)
        return 2

    if args.scenario == "multi-turn":
        return multi_turn(args)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        print(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="olla-fleet-"))
    work.chmod(0o755)  # nginx workers (nobody, when run as root) read under it
    skipped: dict[str, str] = {}
    try:
        warm_key = knows_key(args.olla_dir, work, "warm_routing", blind=True)
        queue_key = knows_key(args.olla_dir, work, "queue", blind=False, queue=False)
        have_nginx = os.access(args.nginx, os.X_OK)
        if not warm_key:
            skipped["olla-blind"] = "this olla has no proxy.warm_routing"
        if not queue_key:
            skipped["olla-queue-off"] = "this olla has no proxy.queue (it is olla as it is)"
        if not have_nginx:
            skipped["nginx-lc"] = skipped["nginx-rr"] = f"no nginx at {args.nginx}"
        for target, why in skipped.items():
            if target in targets:
                print(f"skipping {target}: {why}", file=sys.stderr)
        chosen = [t for t in targets if t not in skipped]
        results = {target: measure(target, args, work) for target in chosen}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios: dict[str, Any] = {}
    if "olla" in results:
        mine = results["olla"]
        for name, other in results.items():
            if name != "olla":
                ratios[f"p95 olla / {name}"] = ratio(mine["p95_ms"], other["p95_ms"])
                ratios[f"goodput olla / {name}"] = ratio(mine["served"], other["served"])
                if args.scenario == "models":
                    ratios[f"loads olla / {name}"] = ratio(mine["loads"], other["loads"])
    fleet = capacity(args)
    print(
        f"capacity: {fleet['slots']} slots / {fleet['mean_service_s']} s mean service time"
        f" = {fleet['rps']} requests/s ({fleet['rps'] * args.duration:.0f} in"
        f" {args.duration:.0f} s)",
        file=sys.stderr,
    )
    setup = {
        "scenario": args.scenario,
        "olla_dir": str(args.olla_dir),
        "olla_knows_warm_routing": warm_key,
        "olla_knows_queue": queue_key,
        "skipped": {t: why for t, why in skipped.items() if t in targets},
        "capacity": fleet,
        "workload": {k: {"share": v[0], "chunks": v[1]} for k, v in workload(args).items()},
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
            "preloaded": args.preloaded,
            "token_ms": args.token_ms,
        },
    }
    rows = MIX_ROWS if args.scenario == "mix" else ROWS
    report = {"setup": setup, "targets": results, "ratios": ratios}
    head = (
        f"{args.scenario}: capacity {fleet['rps']} requests/s = {fleet['slots']} slots /"
        f" {fleet['mean_service_s']} s mean service time; {args.clients} clients,"
        f" {args.duration:.0f} s per target"
    )
    return publish(report, rows, args, head)


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


def publish(
    report: dict[str, Any], rows: list[tuple[str, str]], args: argparse.Namespace, head: str = ""
) -> int:
    """Print the table and the JSON; write the JSON to benchmarks/results/ (and --out)."""
    text = table(report["targets"], report["ratios"], rows)
    if head:
        text = f"{head}\n\n{text}"
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
