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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: run inside each checkout: its own harness, its own olla
WORKER = """
import gc, sys, time
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from tests.proxyharness import Harness, http_request

class Backend(Resource):
    isLeaf = True
    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"message": {"role": "assistant", "content": "hi"}, "done": true}'

h = Harness({"a:1": Backend()})
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
    return (time.process_time() - started) / n * 1e6

batch(int(sys.argv[2]))  # warm-up: imports, caches
print(min(batch(int(sys.argv[1])) for _ in range(3)))
"""


def run(tree: Path, requests: int, warmup: int) -> float:
    """CPU microseconds per request in ``tree`` (the best of three batches in one process)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(requests), str(warmup)],
        cwd=str(tree),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks path-cpu", description=__doc__)
    parser.add_argument("--against", type=Path, required=True, metavar="DIR")
    parser.add_argument("--requests", type=int, default=1000, help="per batch")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    trees = {"this": REPO, "against": args.against.resolve()}
    samples: dict[str, list[float]] = {name: [] for name in trees}
    names = list(trees)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples[name].append(run(trees[name], args.requests, args.requests // 2))
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
