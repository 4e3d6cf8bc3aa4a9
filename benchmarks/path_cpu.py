"""``python -m benchmarks path-cpu --against DIR``: CPU per small request through olla's whole
request path, in memory, for this checkout and another one, alternating, in one table.

The load benchmark (``--against``) measures the real daemons, but on a shared 2-core VM its
rounds spread by far more than the few percent a refactor must be judged on. This one runs
each checkout's own in-memory olla (its ``tests/proxyharness.py``: the real ``OllaSite`` and
channel, the guard, routing, the exchange, an in-memory backend, all on a ``Clock``) in a
fresh process with that checkout on ``PYTHONPATH``, and counts process CPU time
(``time.process_time``: other processes' load does not add to it) for a batch of small
``POST /olla/ollama/api/chat`` requests, one connection each, after a warm-up. The checkouts
alternate batch by batch, each going first in every other round, so both see the same machine;
the verdict is the median of the per-round ratios. Prints a table and the JSON.

``--instructions`` counts instructions instead (valgrind's callgrind, when installed): the
worker runs once with a warm-up only and once with the batch after it, and the difference
over the batch is the instructions per request. Slow (a few minutes), but the same number on
a busy machine as on an idle one. ``--level warn`` runs both with ``logging.level: warn`` (the
load benchmark's), where a request line nobody reads may cost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: run inside each checkout: its own harness, its own olla
WORKER = """
import gc, sys, time
from dataclasses import replace
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from tests.proxyharness import Harness, http_request

class Backend(Resource):
    isLeaf = True
    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"message": {"role": "assistant", "content": "hi"}, "done": true}'

level = sys.argv[3]
h = Harness(
    {"a:1": Backend()},
    adjust=lambda c: replace(c, logging=replace(c.logging, level=level)),
)
raw = http_request(
    "POST",
    "/olla/ollama/api/chat",
    b'{"model": "llama3.2:latest", "messages": [], "stream": false}',
)

def batch(n):
    gc.collect()
    started = time.process_time()
    for _ in range(n):
        client = h.send(raw)
        response = client.response()
        assert response is not None and response.status == 200, response
        client.disconnect()
    return (time.process_time() - started) / max(n, 1) * 1e6

batch(int(sys.argv[2]))  # warm-up: imports, caches
if sys.argv[4] == "time":
    print(min(batch(int(sys.argv[1])) for _ in range(3)))
else:
    batch(int(sys.argv[1]))
"""


def run(tree: Path, requests: int, warmup: int, level: str) -> float:
    """CPU microseconds per request in ``tree`` (the best of three batches in one process)."""
    out = _worker(tree, [str(requests), str(warmup), level, "time"])
    return float(out.stdout.strip().splitlines()[-1])


def instructions(tree: Path, requests: int, warmup: int, level: str) -> float:
    """Instructions per request in ``tree``: a run with the batch, less one without."""
    counts = []
    for batch in (0, requests):
        out = _worker(
            tree,
            [str(batch), str(warmup), level, "count"],
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"],
        )
        found = re.search(r"Collected : (\d+)", out.stderr)
        assert found is not None, out.stderr[-2000:]
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / requests


def _worker(
    tree: Path, args: list[str], wrapper: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(
        [*(wrapper or []), sys.executable, "-c", WORKER, *args],
        cwd=str(tree),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks path-cpu", description=__doc__)
    parser.add_argument("--against", type=Path, required=True, metavar="DIR")
    parser.add_argument("--requests", type=int, default=1000, help="per batch")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--level", default="info", help="logging.level of both (info, warn)")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind), not time"
    )
    args = parser.parse_args(argv)
    trees = {"this": REPO, "against": args.against.resolve()}
    if args.instructions:
        if not shutil.which("valgrind"):
            print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
            return 2
        counted = {
            name: instructions(tree, args.requests, args.requests // 2, args.level)
            for name, tree in trees.items()
        }
        ratio = counted["this"] / counted["against"]
        print("| checkout | instructions/request |")
        print("|---|---|")
        for name, value in counted.items():
            print(f"| {name} | {value:,.0f} |")
        print(f"\n{'PASS' if ratio <= 1.03 else 'FAIL'}  instructions within 1.03x ({ratio:.3f}x)")
        print(json.dumps({"instructions": counted, "ratio": ratio, "level": args.level}))
        return 0
    samples: dict[str, list[float]] = {name: [] for name in trees}
    names = list(trees)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples[name].append(run(trees[name], args.requests, args.requests // 2, args.level))
    ratios = [a / b for a, b in zip(samples["this"], samples["against"], strict=True)]
    ratio = statistics.median(ratios)
    print("| checkout | CPU us/request (median) | min | max |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        print(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |"
        )
    print(f"\nper-round ratios this/against: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"{'PASS' if ratio <= 1.03 else 'FAIL'}  CPU/request within 1.03x ({ratio:.3f}x)")
    result = {"samples_us": samples, "ratios": ratios, "ratio": ratio}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
