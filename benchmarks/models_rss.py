"""``python -m benchmarks models-rss``: olla's memory over many requests naming many models.

Starts the shared fake backend (``shared/bench/fake_backend.js``) listing ``--models`` models
and ``twistd olla`` over it (pinned to CPU 0), then sends ``--requests`` non-streamed
``/api/chat`` requests on ``--concurrency`` keep-alive connections; request ``i`` names
``bench-model-<i mod models>``, and every ``--unknown-every``-th an unknown model of its own
(a 404 from olla, never seen again). Every ``--every`` requests it reads olla's RSS
(``/proc/<pid>/status``) and counts the series of ``/internal/metrics``. With the stats'
bounded labels (models past 50 are ``other``) the series stay flat and RSS settles after the
first checkpoints instead of growing with the traffic. Prints a Markdown table and the JSON
(written to ``benchmarks/results/models-rss-<time>.json``). ``--olla-dir`` runs another
checkout (an earlier commit, to compare). Never asserts: compare columns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from benchmarks.__main__ import BENCH, REPO, bench_document, free_port, process, wait_http


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _series(base: str) -> int | None:
    """Samples in ``/internal/metrics`` (``None`` for an olla that has none, to compare)."""
    try:
        with urllib.request.urlopen(f"{base}/internal/metrics", timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError:
        return None
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _worker(
    port: int, queue: asyncio.Queue[int], args: argparse.Namespace, statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            i = await queue.get()
            if i < 0:
                return
            if args.unknown_every and i % args.unknown_every == 0:
                model = f"unknown-{i}:latest"
            else:
                model = f"bench-model-{i % args.models}:latest"
            body = json.dumps(
                {"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            writer.write(
                b"POST /olla/ollama/api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            status = await _read_response(reader)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _drive(port: int, pid: int, base: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    sent = 0
    rows.append({"requests": 0, "rss_mb": round(_rss_mb(pid), 1), "series": _series(base)})
    while sent < args.requests:
        batch = min(args.every, args.requests - sent)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(sent, sent + batch):
            queue.put_nowait(i)
        for _ in range(args.concurrency):
            queue.put_nowait(-1)
        await asyncio.gather(
            *(_worker(port, queue, args, statuses) for _ in range(args.concurrency))
        )
        sent += batch
        rows.append(
            {
                "requests": sent,
                "rss_mb": round(_rss_mb(pid), 1),
                "series": _series(base),
                "elapsed_s": round(time.monotonic() - started, 1),
                "statuses": dict(sorted(statuses.items())),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks models-rss", description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=1000, help="models the backend lists")
    parser.add_argument("--unknown-every", type=int, default=10, help="0: never")
    parser.add_argument("--every", type=int, default=10_000, help="requests per checkpoint")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--olla-dir", type=Path, default=REPO, help="the olla checkout to run")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="olla-models-rss-"))
    backend_port, port = free_port(), free_port()
    backend, base = f"http://127.0.0.1:{backend_port}", f"http://127.0.0.1:{port}"
    config = bench_document(port, backend)
    path = work / "olla.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(args.olla_dir))
    backend_env = dict(os.environ, FAKE_MODELS=str(args.models), FAKE_LOADED="")
    twistd = str(Path(sys.executable).with_name("twistd"))
    cmd = [twistd, "--nodaemon", "--pidfile=", "olla", "--config", str(path)]
    node = ["node", str(BENCH / "fake_backend.js"), str(backend_port)]
    with process(node, cpu=1, env=backend_env), process(cmd, cpu=0, env=env) as olla:
        wait_http(f"{backend}/api/tags")
        wait_http(f"{base}/olla/ollama/api/tags")
        rows = asyncio.run(_drive(port, olla.pid, base, args))

    print()
    print("| requests | olla RSS MB | metric series | elapsed s |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['requests']} | {row['rss_mb']} | {row['series']} | {row.get('elapsed_s', 0)} |"
        )
    result = {
        "args": vars(args) | {"out": str(args.out), "olla_dir": str(args.olla_dir)},
        "checkpoints": rows,
    }
    print()
    print(json.dumps(result))
    out = (
        args.out
        or REPO / "benchmarks" / "results" / f"models-rss-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {out}")
    return 0
