"""``python -m benchmarks gate-sim``: the fleet workloads in simulated time, through olla's own
routing and admission gate, to see what the gate does before it is in the request path.

Nothing here opens a socket. A ``Clock`` runs the whole thing: simulated hosts that cost what the
fake Ollama's cost model costs (``tests/fakes/ollama/cost.py``: parallel slots, a FIFO queue
inside the host, a load per model not in memory with the slot held, at most ``max_loaded``
models, the least recently used idle one evicted, with none idle the load waits for one), and
closed-loop clients. In front of the hosts, per target:

- ``olla``: the real ``Router.plan`` (least-connections, warm routing) and the real
  ``AdmissionGate`` with ``RouterView`` and a ``MemorySlotStore``; what the exchange does around
  an attempt is played here: the registry's ``attempt_started``/``attempt_ended``, the
  catalogue's ``mark_loading``/``mark_loaded``, and after a load its ``observe_load`` and the
  host's loaded set (olla asks ``/api/ps`` after a load);
- ``olla-queue-off``: the same with ``proxy.queue.enabled: false`` (olla as it is today: every
  request to the plan's first candidate at once);
- ``least-conn``: nginx ``least_conn``: the host with the fewest open requests, ties in turn.

The workloads are ``benchmarks/fleet.py``'s (``--mix`` the same as there), with the same
definition of capacity and goodput. Simulated time has no network, no CPU and no polling delay,
so compare its columns with each other, and with the real benchmark's only for their shape.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from benchmarks.fleet import MIX, WEIGHTS, percentile
from olla.config import EndpointConfig, ProxyConfig, QueueConfig, WarmRoutingConfig
from olla.fleet.balancer import LeastConnectionsBalancer
from olla.fleet.endpoints import (
    EndpointRegistry,
    EndpointStatus,
    Outcome,
    endpoints_from_config,
)
from olla.fleet.models import ModelCatalogue
from olla.fleet.values import ModelInfo
from olla.proxy.admission import Grant, Ticket
from olla.proxy.fleetview import RouterView
from olla.proxy.gate import AdmissionGate
from olla.proxy.routing import ProviderRoute, RouteQuery, Router
from olla.proxy.slots import MemorySlotStore

TARGETS = ("olla", "olla-queue-off", "least-conn")
OLLAMA = ProviderRoute("ollama", frozenset({"ollama"}), "ollama")
#: the fake reports a load this long or longer as one (``olla.proxy.exchange._LOAD_SEEN``)
LOAD_SEEN = 0.25


@dataclass(eq=False)
class Job:
    model: str
    service: float
    done: Callable[[Job], None]
    slot: bool = False
    using: bool = False
    load_wait: float = 0.0
    since: float = 0.0


class Host:
    """One fake Ollama's cost model in simulated time (the rules of ``_Scheduler``)."""

    def __init__(self, clock: Clock, slots: int, load: float, max_loaded: int) -> None:
        self.clock = clock
        self.slots = slots
        self.load_time = load
        self.max_loaded = max_loaded
        self.running = 0
        self.queue: deque[Job] = deque()
        self.loaded: list[str] = []
        self.loading: dict[str, list[Job]] = {}
        self.memory: list[Job] = []
        self.in_use: dict[str, int] = {}
        self.used_at: dict[str, float] = {}
        self.loads = self.evictions = self.peak_running = self.peak_queued = 0

    @property
    def open(self) -> int:
        """Requests it has (running or queued): what nginx's least_conn counts."""
        return self.running + len(self.queue)

    def submit(self, job: Job) -> None:
        if self.queue or self.running >= self.slots:
            self.queue.append(job)
            self.peak_queued = max(self.peak_queued, len(self.queue))
            return
        self._start(job)

    def _start(self, job: Job) -> None:
        job.slot = True
        job.since = self.clock.seconds()
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        if self._ensure_loaded(job):
            self._run(job)

    def _ensure_loaded(self, job: Job) -> bool:
        name = job.model
        if name in self.loading:
            self.loading[name].append(job)
            return False
        if name in self.loaded:
            self._use(job)
            return True
        while self.max_loaded and len(self.loaded) + len(self.loading) >= self.max_loaded:
            idle = [m for m in self.loaded if not self.in_use.get(m)]
            if not idle:
                self.memory.append(job)
                return False
            victim = min(idle, key=lambda m: self.used_at.get(m, 0.0))
            self.loaded.remove(victim)
            self.evictions += 1
        self.loads += 1
        self.loading[name] = [job]
        self.clock.callLater(self.load_time, self._loaded, name)
        return False

    def _loaded(self, name: str) -> None:
        self.loaded.append(name)
        ready = self.loading.pop(name, [])
        for job in ready:
            self._use(job)
        for job in ready:
            self._run(job)
        self._retry_memory()

    def _use(self, job: Job) -> None:
        now = self.clock.seconds()
        job.using = True
        job.load_wait = now - job.since
        self.in_use[job.model] = self.in_use.get(job.model, 0) + 1
        self.used_at[job.model] = now

    def _run(self, job: Job) -> None:
        self.clock.callLater(job.service, self._finish, job)

    def _finish(self, job: Job) -> None:
        self.running -= 1
        self.used_at[job.model] = self.clock.seconds()
        self.in_use[job.model] -= 1
        if not self.in_use[job.model]:
            del self.in_use[job.model]
        self._retry_memory()
        while self.queue and self.running < self.slots:
            self._start(self.queue.popleft())
        job.done(job)

    def _retry_memory(self) -> None:
        waiting, self.memory = self.memory, []
        for job in waiting:
            if self._ensure_loaded(job):
                self._run(job)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_class: dict[str, list[float]] = field(default_factory=dict)
    refused: int = 0
    unfinished: int = 0
    work: float = 0.0


class Olla:
    """olla's routing and gate in front of the hosts, with the exchange's bookkeeping."""

    def __init__(
        self,
        clock: Clock,
        hosts: list[Host],
        models: list[str],
        loaded: bool,
        queue: bool,
        tell: bool = True,
    ) -> None:
        self.clock = clock
        configs = [
            EndpointConfig(
                url=f"http://h{i}:1",
                name=f"h{i}",
                type="ollama",
                max_concurrency=h.slots,
                max_loaded_models=(h.max_loaded or None) if tell else None,
            )
            for i, h in enumerate(hosts)
        ]
        self.endpoints = endpoints_from_config(configs)
        self.hosts = dict(zip(self.endpoints, hosts, strict=True))
        self.registry = EndpointRegistry(self.endpoints, clock)
        self.catalogue = ModelCatalogue()
        for ep, host in self.hosts.items():
            self.registry.set_status(ep, EndpointStatus.HEALTHY)
            self.catalogue.set_models(ep, [ModelInfo(m) for m in models], clock.seconds())
            self.catalogue.set_loaded(ep, list(host.loaded))
        self.router = Router(
            self.registry,
            self.catalogue,
            LeastConnectionsBalancer(),
            clock,
            warm=WarmRoutingConfig(default_load_time=5.0),
        )
        config = ProxyConfig(queue=QueueConfig(enabled=queue))
        self.gate = AdmissionGate(MemorySlotStore(), RouterView(self.router), clock, config)

    def send(self, model: str, service: float, answered: Callable[[bool], None]) -> None:
        plan = self.router.plan(RouteQuery(OLLAMA, "/api/chat", model))
        if plan.rejection is not None:
            answered(False)
            return
        ticket = Ticket(plan.candidates, model, native=plan.rewrite)
        admitted = self.gate.admit(ticket)
        admitted.addCallbacks(
            lambda grant: self._attempt(grant, model, service, answered),
            lambda failure: answered(False),
        )

    def _attempt(
        self, grant: Grant, model: str, service: float, answered: Callable[[bool], None]
    ) -> None:
        ep = grant.endpoint
        started = self.clock.seconds()
        self.registry.attempt_started(ep, started)
        cold = not self.catalogue.warm(ep, model)
        if cold:
            self.catalogue.mark_loading(ep, model, started)

        def done(job: Job) -> None:
            self.registry.attempt_ended(ep, Outcome.OK, started=started)
            self.catalogue.mark_loaded(ep, model)
            if job.load_wait >= LOAD_SEEN:
                self.catalogue.observe_load(model, job.load_wait)
            if job.load_wait >= LOAD_SEEN or cold:  # olla asks /api/ps after a load
                self.catalogue.set_loaded(ep, list(self.hosts[ep].loaded))
            grant.release(loaded=job.load_wait)  # Ollama's load_duration
            answered(True)

        self.hosts[ep].submit(Job(model, service, done))


class LeastConn:
    """nginx ``least_conn``: the fewest open requests, ties in turn (nginx's round robin)."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self.turn = 0

    def send(self, model: str, service: float, answered: Callable[[bool], None]) -> None:
        fewest = min(h.open for h in self.hosts)
        tied = [h for h in self.hosts if h.open == fewest]
        host = tied[self.turn % len(tied)]
        self.turn += 1
        host.submit(Job(model, service, lambda job: answered(True)))


def run(target: str, args: argparse.Namespace) -> dict[str, Any]:
    clock = Clock()
    clock.advance(1000.0)
    models = list(WEIGHTS)
    hosts = [Host(clock, args.capacity, args.load_ms / 1000, args.max_loaded) for _ in range(3)]
    if args.mix:
        for host in hosts:
            host.loaded = list(models)
            host.max_loaded = 0
    front: Olla | LeastConn
    if target == "least-conn":
        front = LeastConn(hosts)
    else:
        front = Olla(clock, hosts, models, args.mix, target == "olla", not args.untold)
    classes = (
        {k: (share, s) for k, (share, s) in MIX.items()}
        if args.mix
        else {"all": (1.0, args.tokens * args.token_ms / 1000)}
    )
    names, shares = list(classes), [c[0] for c in classes.values()]
    start = clock.seconds()
    end = start + args.duration
    tally = Tally()

    def client(index: int) -> None:
        picks = random.Random(args.seed * 1000 + index)
        # the network's few milliseconds, from draws of their own (``picks`` stays fleet.py's)
        delays = random.Random(f"{args.seed}-{index}-jitter")

        def later(ask: Callable[[], None]) -> None:
            if args.jitter_ms > 0:
                clock.callLater(delays.uniform(0, args.jitter_ms / 1000), ask)
            else:
                ask()

        def ask() -> None:
            now = clock.seconds()
            if now >= end:
                return
            model = picks.choices(models, list(WEIGHTS.values()))[0]
            kind = picks.choices(names, shares)[0]
            service = classes[kind][1]

            def answered(ok: bool) -> None:
                finished = clock.seconds()
                if finished > end:
                    tally.unfinished += 1
                    return
                if ok:
                    tally.latencies.append((finished - now) * 1000)
                    tally.by_class.setdefault(kind, []).append((finished - now) * 1000)
                    tally.work += service
                    later(ask)
                else:
                    tally.refused += 1
                    clock.callLater(0.05, ask)

            front.send(model, service, answered)

        later(ask)

    for i in range(args.clients):
        client(i)
    while clock.getDelayedCalls() and clock.seconds() < end + 600:
        nxt = min(call.getTime() for call in clock.getDelayedCalls())
        clock.advance(max(0.0, nxt - clock.seconds()))
    served = len(tally.latencies)
    result: dict[str, Any] = {
        "served": served,
        "refused": tally.refused,
        "unfinished": tally.unfinished,
        "p50_ms": percentile(tally.latencies, 0.5),
        "p95_ms": percentile(tally.latencies, 0.95),
        "p99_ms": percentile(tally.latencies, 0.99),
        "goodput_share": round(tally.work / (3 * args.capacity * args.duration), 3),
        "loads": sum(h.loads for h in hosts),
        "evictions": sum(h.evictions for h in hosts),
        "peak_running": max(h.peak_running for h in hosts),
        "peak_queued": max(h.peak_queued for h in hosts),
        # where the models ended up (which arrangement a run settled in decides its goodput)
        "in_memory": sorted("+".join(sorted(h.loaded)) for h in hosts),
    }
    for kind, values in tally.by_class.items():
        if args.mix:
            result[f"{kind}_p95_ms"] = percentile(values, 0.95)
    if isinstance(front, Olla):
        result["gate"] = front.gate.snapshot()["totals"]
    return result


def over_seeds(target: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run`` for ``--seed``, with the spread of goodput and loads over ``--seeds`` seeds: one
    seed's client draws can settle the models in a good or a bad arrangement."""
    result = run(target, args)
    if args.seeds <= 1:
        return result
    others = [
        run(target, argparse.Namespace(**{**vars(args), "seed": args.seed + i}))
        for i in range(1, args.seeds)
    ]
    shares = [r["goodput_share"] for r in (result, *others)]
    loads = [r["loads"] for r in (result, *others)]
    result["goodput_seeds"] = (
        f"{sum(shares) / len(shares):.3f} ({min(shares):.3f}-{max(shares):.3f})"
    )
    result["loads_seeds"] = f"{sum(loads) / len(loads):.1f} ({max(loads)})"
    result["goodput_by_seed"] = shares
    return result


def static_goodput(
    arrangement: tuple[frozenset[str], ...], args: argparse.Namespace, oracle: bool = False
) -> float:
    """Goodput share of closed-loop clients on hosts that hold ``arrangement``'s models for
    good (no loads). A request goes at once to the host of its model with the most free slots,
    else waits (first come, first served) for the first slot of a host of its model: the gate's
    rule, deciding one freed slot at a time. ``oracle``: all the slots that free at one instant
    are handed out together, as a maximum matching of the waiting requests (oldest first) to
    them: what a dispatcher that saw every request of the instant at once could do."""
    picks = random.Random(args.seed)
    models, weights = list(WEIGHTS), list(WEIGHTS.values())
    service = args.tokens * args.token_ms / 1000
    free = [args.capacity] * len(arrangement)
    finishing: list[tuple[float, int, int]] = []
    order = itertools.count()
    work = 0.0

    def start(model: str, host: int, now: float) -> None:
        free[host] -= 1
        heapq.heappush(finishing, (now + service, next(order), host))

    def greedy(waiting: list[str], now: float) -> list[str]:
        left = []
        for model in waiting:
            hosts = [i for i, held in enumerate(arrangement) if model in held and free[i]]
            if hosts:
                start(model, max(hosts, key=lambda i: free[i]), now)
            else:
                left.append(model)
        return left

    def matched(waiting: list[str], now: float) -> list[str]:
        slots = [i for i, n in enumerate(free) for _ in range(n)]
        owner: list[int | None] = [None] * len(slots)

        def augment(request: int, seen: set[int]) -> bool:
            for s, host in enumerate(slots):
                if s in seen or waiting[request] not in arrangement[host]:
                    continue
                seen.add(s)
                taken = owner[s]
                if taken is None or augment(taken, seen):
                    owner[s] = request
                    return True
            return False

        for request in range(len(waiting)):  # oldest first: a matched one stays matched
            augment(request, set())
        for s, request in enumerate(owner):
            if request is not None:
                start(waiting[request], slots[s], now)
        served = {r for r in owner if r is not None}
        return [m for i, m in enumerate(waiting) if i not in served]

    hand_out = matched if oracle else greedy
    waiting = hand_out(picks.choices(models, weights, k=args.clients), 0.0)
    while finishing:
        now = finishing[0][0]
        if now > args.duration:
            break
        freed = 0
        # the gate hands out each freed slot as it frees; the oracle waits for the instant's
        while finishing and finishing[0][0] == now and (oracle or not freed):
            free[heapq.heappop(finishing)[2]] += 1
            freed += 1
        work += freed * service
        waiting.extend(picks.choices(models, weights, k=freed))  # those clients ask again
        waiting = hand_out(waiting, now)
    return work / (len(arrangement) * args.capacity * args.duration)


def ceiling(args: argparse.Namespace, oracle: bool = False) -> tuple[float, list[str]]:
    """The best goodput any fixed arrangement of the models reaches (at most ``--max-loaded``
    a host, every model somewhere): what placement could reach once settled, without loads."""
    fits = [
        frozenset(c)
        for n in range(1, (args.max_loaded or len(WEIGHTS)) + 1)
        for c in itertools.combinations(WEIGHTS, n)
    ]
    best: tuple[float, list[str]] = (0.0, [])
    for arrangement in itertools.combinations_with_replacement(fits, 3):
        if set().union(*arrangement) != set(WEIGHTS):
            continue
        share = round(static_goodput(arrangement, args, oracle), 3)
        if share > best[0]:
            best = (share, sorted("+".join(sorted(held)) for held in arrangement))
    return best


def print_ceiling(args: argparse.Namespace) -> int:
    """``--ceiling``: the best fixed arrangement with the gate's dispatch and with an oracle's,
    and the bound the cold start puts on any run of ``--duration``."""
    share, arrangement = ceiling(args)
    if not arrangement:
        print(f"ceiling: no arrangement of {args.max_loaded} model(s) a host holds them all")
        return 0
    best, best_arrangement = ceiling(args, oracle=True)
    # nothing is in memory at the start and a load holds its slot: no service before it ends
    start = max(0.0, 1 - args.load_ms / 1000 / args.duration)
    print(
        f"ceiling: {args.clients} clients, 3 hosts x {args.capacity} slots, at most "
        f"{args.max_loaded} models a host, {args.duration:.0f} s, no loads:\n"
        f"  the gate's dispatch (each freed slot to the oldest request it serves, a new one to "
        f"its model's freest host): {share} with {' / '.join(arrangement)}\n"
        f"  an oracle's (every instant's free slots matched at best to the waiting requests): "
        f"{best} with {' / '.join(best_arrangement)}\n"
        f"  the cold start (no model in memory, a {args.load_ms / 1000:.1f} s load before any "
        f"service): at most {start:.3f} of a run from nothing\n"
        f"  a run from nothing, at best: {start * share:.3f} (gate), {start * best:.3f} (oracle)"
    )
    return 0


ROWS = [
    ("requests served", "served"),
    ("refused", "refused"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
    ("p99 ms", "p99_ms"),
    ("goodput / capacity", "goodput_share"),
    ("goodput over the seeds: mean (min-max)", "goodput_seeds"),
    ("loads over the seeds: mean (max)", "loads_seeds"),
    ("short p95 ms", "short_p95_ms"),
    ("long p95 ms", "long_p95_ms"),
    ("model loads", "loads"),
    ("evictions", "evictions"),
    ("peak running on a host", "peak_running"),
    ("peak queued in a host", "peak_queued"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gate-sim", description=__doc__)
    parser.add_argument("--mix", action="store_true", help="fleet.py's --mix workload")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--clients", type=int, default=None, help="12 (--mix: 16)")
    parser.add_argument("--capacity", type=int, default=None, help="slots a host: 4 (--mix: 2)")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument("--load-ms", type=float, default=2000.0)
    parser.add_argument("--max-loaded", type=int, default=2)
    parser.add_argument(
        "--untold",
        action="store_true",
        help="olla is not told the hosts' --max-loaded (endpoints[].max_loaded_models unset)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="each request leaves its client up to this much later (uniform): no lockstep",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="also run seeds seed+1... and report goodput and loads over these many",
    )
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="the best fixed arrangement's goodput with the gate's dispatch and an oracle's, "
        "and the cold start's bound (--duration 600 is steadier)",
    )
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = 16 if args.mix else 12
    if args.capacity is None:
        args.capacity = 2 if args.mix else 4
    if args.ceiling:
        return print_ceiling(args)
    targets = [t for t in args.targets.split(",") if t]
    results = {t: over_seeds(t, args) for t in targets}
    names = list(results)
    lines = [
        f"{'mix' if args.mix else 'models'} (simulated): {args.clients} clients, 3 hosts x "
        f"{args.capacity} slots, {args.duration:.0f} s",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for label, key in ROWS:
        cells = [results[n].get(key) for n in names]
        if all(c is None for c in cells):
            continue
        row = " | ".join("-" if c is None else str(c) for c in cells)
        lines.append(f"| {label} | {row} |")
    print("\n".join(lines))
    print()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
