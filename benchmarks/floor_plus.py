"""The bare Twisted floor in a process the size of olla's, plus, one at a time, what olla's
defaults do at every request's end: its request log line, and its token reading.
``python -m benchmarks cpu --floor-plus`` runs it beside the floor and olla, to show what part of
the 1.15x budget each alone takes.

``python benchmarks/floor_plus.py PORT BACKEND PREFIX [--log] [--tokens]``: the shared bench's
floor (``shared/bench/anchors/twisted_floor.py``, imported unchanged) in a process that has
imported the whole daemon (``olla.daemon.tap``, as ``twistd olla`` does) and frozen its heap
after startup, as olla does. With ``--log`` its relay, when an answer ends, hands olla's own
``RequestLog`` a ``RequestRecord`` like olla's for that request; the line goes through olla's
JSON observer at ``info`` to standard output, as ``twistd -n olla`` writes it. With
``--tokens`` the relay also keeps the answer's last 2 KB and reads its figures with
``olla.proxy.tokens.read_usage`` and the Ollama profile's extraction, as olla does.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.__main__ import BENCH  # noqa: E402

sys.path.insert(0, str(BENCH / "anchors"))

import twisted_floor  # type: ignore[import-not-found]  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

import olla.daemon.tap  # noqa: E402, F401  (the daemon's code, loaded as twistd olla loads it)
from olla.config import OllaConfig  # noqa: E402
from olla.daemon.logging import StreamSink, make_observer  # noqa: E402
from olla.profiles.registry import builtin_profiles  # noqa: E402
from olla.proxy.forward import TAIL_SIZE  # noqa: E402
from olla.proxy.tokens import TokenUsage, read_usage  # noqa: E402
from olla.telemetry.records import RequestRecord  # noqa: E402
from olla.telemetry.requestlog import RequestLog  # noqa: E402


def record_for(request: Any, relayed: int, usage: TokenUsage | None, serial: int) -> RequestRecord:
    """What olla's exchange records for a plain chat answered by its one endpoint."""
    now = time.time()
    started: float = request.olla_started
    return RequestRecord(
        endpoint="bench",
        model="llama3.2:latest",
        route="ollama",
        status=200,
        outcome="ok",
        attempts=1,
        bytes=relayed,
        duration=now - started,
        prompt_tokens=usage.prompt if usage is not None else None,
        completion_tokens=usage.completion if usage is not None else None,
        tokens_per_second=usage.tokens_per_second(now - started) if usage is not None else None,
        backend_metrics=usage.figures if usage is not None and usage.figures else None,
        request_id=f"amber-asks-{serial & 0xFFFF:04x}",
        method=request.method.decode("ascii", "replace"),
        path=request.path[:200].decode("utf-8", "replace"),
        client_ip="127.0.0.1",
        ended=now,
        queued=0.0,
        priority="normal",
    )


def main(argv: list[str]) -> None:
    logged, tokens = "--log" in argv, "--tokens" in argv
    port, backend, prefix = (a for a in argv if not a.startswith("--"))
    observer = make_observer("json", "info", StreamSink(sys.stdout))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log = RequestLog(OllaConfig())
    ollama = builtin_profiles().get("ollama")
    assert ollama is not None
    extraction = ollama.metrics
    serial = [0]

    class Relay(twisted_floor.Relay):  # type: ignore[misc]
        relayed = 0
        tail = b""

        def dataReceived(self, data: bytes) -> None:
            self.relayed += len(data)
            if tokens:
                self.tail = (self.tail + data)[-TAIL_SIZE:]
            super().dataReceived(data)

        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            usage = read_usage(self.tail, extraction) if tokens else None
            serial[0] += 1
            if logged:
                log.request_finished(record_for(self.request, self.relayed, usage, serial[0]))

    floor_render = twisted_floor.Proxy.render

    def render(self: Any, request: Any) -> Any:
        request.olla_started = time.time()
        return floor_render(self, request)

    twisted_floor.Relay = Relay
    twisted_floor.Proxy.render = render
    sys.argv = [sys.argv[0], port, backend, prefix]
    # what olla's daemon does once it is built: the imported olla would otherwise be walked
    # by every full collection the floor's per-request cycles set off
    gc.collect()
    gc.freeze()
    twisted_floor.main()


if __name__ == "__main__":
    main(sys.argv[1:])
