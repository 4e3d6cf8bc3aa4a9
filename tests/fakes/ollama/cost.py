"""The cost model: capacity slots, the FIFO queue, model loads and LRU eviction
(``_Scheduler``), the prompt cache (``PromptCache``: prompt time for what this host has not
seen), and ``CostMixin._admit`` where a generation handler enters it."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from twisted.web.server import NOT_DONE_YET

from .wire import BUSY_MESSAGE, FakeModel, _Call, _tokens

if TYPE_CHECKING:
    from .server import FakeOllama


@dataclass(eq=False)  # compared by identity: a job is removed from the queue it sits in
class _Job:
    """One generation request in the cost model."""

    call: _Call
    model: str
    slot: bool = False  # holds one of the ``capacity`` slots
    using: bool = False  # counted in its model's in-use count (so the model is not evicted)
    since: float = 0.0  # when it got its slot and began waiting for its model
    done: bool = False  # the request is over: out of every list, slot given back


Admission = Literal["run", "wait", "busy"]


class _Scheduler:
    """What makes the fake cost like a real Ollama under load, after ``FakeState``'s knobs.

    A generation request takes one of ``capacity`` slots or waits in a FIFO queue (at most
    ``max_queue`` long: the next one is refused as busy). With a slot it needs its model loaded:
    already loaded, joining a load under way, or loading it (``load_ms``) after evicting the
    least recently used idle model when ``max_loaded`` are loaded. When every loaded model is in
    use, it waits, slot held, until one goes idle (as Ollama waits for a runner to unload). Then
    its handler runs again from the start (``_Call.start`` moved to now) and the slot is held
    until the request is over, however it ends. Everything is synchronous when nothing waits,
    so with every knob at 0 the fake answers exactly as it does without the cost model.
    """

    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake
        self.running = 0  # requests holding a slot
        self.queue: deque[_Job] = deque()
        self.loading: dict[str, list[_Job]] = {}  # model -> jobs waiting for that load
        self.memory: list[_Job] = []  # jobs whose load waits for a loaded model to go idle
        self.in_use: dict[str, int] = {}
        self.used_at: dict[str, float] = {}  # for LRU eviction
        self.reset()

    def reset(self) -> None:
        self.loads = 0
        self.evictions = 0
        self.busy_rejections = 0
        self.peak_running = self.running
        self.peak_queued = len(self.queue)

    def describe(self) -> dict[str, int]:
        return {
            "running": self.running,
            "queued": len(self.queue),
            "loads": self.loads,
            "evictions": self.evictions,
            "busy_rejections": self.busy_rejections,
            "peak_running": self.peak_running,
            "peak_queued": self.peak_queued,
        }

    def admit(self, call: _Call, model: str) -> Admission:
        """``run``: go on now; ``wait``: ``call.handler`` is run again when it may go on;
        ``busy``: refuse it."""
        state = self.fake.state
        full = bool(self.queue) or 0 < state.capacity <= self.running
        if full and 0 < state.max_queue <= len(self.queue):
            self.busy_rejections += 1
            return "busy"
        job = _Job(call, model)
        call.job = job
        call.knobs.delay += state.token_ms / 1000
        call.exchange.on_settle = lambda: self.leave(job)
        if full:
            self.queue.append(job)
            self.peak_queued = max(self.peak_queued, len(self.queue))
            return "wait"
        self._take_slot(job)
        return "run" if self._ensure_loaded(job) else "wait"

    def leave(self, job: _Job) -> None:
        """The request is over (answered, cut, or its client left): free what it held."""
        if job.done:
            return
        job.done = True
        if not job.slot:
            self.queue.remove(job)
            return
        self.running -= 1
        if job.using:
            self.used_at[job.model] = self.fake.clock.seconds()
            self.in_use[job.model] -= 1
            if not self.in_use[job.model]:
                del self.in_use[job.model]
        else:  # left while waiting for its model; a load under way goes on without it
            waiters = self.loading.get(job.model, [])
            for waiting in (waiters, self.memory):
                if job in waiting:
                    waiting.remove(job)
        self.retry_memory()  # jobs with a slot come before the queue
        self.pump()

    def pump(self) -> None:
        """Give free slots to the queue's head (also after ``capacity`` grew)."""
        capacity = self.fake.state.capacity
        while self.queue and (not capacity or self.running < capacity):
            job = self.queue.popleft()
            self._take_slot(job)
            if self._ensure_loaded(job):
                self._resume(job)

    def retry_memory(self) -> None:
        """Jobs waiting for room to load their model try again (a model may be idle now)."""
        if not self.memory:
            return
        waiting, self.memory = self.memory, []
        ready = [job for job in waiting if self._ensure_loaded(job)]
        for job in ready:
            self._resume(job)

    def _take_slot(self, job: _Job) -> None:
        job.slot = True
        job.since = self.fake.clock.seconds()
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)

    def _ensure_loaded(self, job: _Job) -> bool:
        """True when ``job``'s model is loaded and counted in use; else ``job`` waits in
        ``loading`` or ``memory`` and is resumed from there."""
        state = self.fake.state
        name = job.model
        if name in self.loading:  # one load, however many ask during it
            self.loading[name].append(job)
            return False
        if name in state.loaded:
            self._use(job)
            return True
        while state.max_loaded and len(state.loaded) + len(self.loading) >= state.max_loaded:
            idle = [m for m in state.loaded if not self.in_use.get(m)]
            if not idle:
                self.memory.append(job)
                return False
            victim = min(idle, key=lambda m: self.used_at.get(m, 0.0))
            self.fake.unload(victim)
            self.evictions += 1
        self.loads += 1
        if state.load_ms <= 0:
            self.fake.load(name)
            self._use(job)
            return True
        self.loading[name] = [job]
        self.fake.clock.callLater(state.load_ms / 1000, self._loaded, name)
        return False

    def _loaded(self, name: str) -> None:
        self.fake.load(name)
        ready = [job for job in self.loading.pop(name, []) if not job.done]
        for job in ready:  # all in use before any runs, so none can evict it
            self._use(job)
        for job in ready:
            self._resume(job)
        self.retry_memory()  # nobody left waiting for it: it is idle

    def _use(self, job: _Job) -> None:
        now = self.fake.clock.seconds()
        job.using = True
        job.call.load_wait = now - job.since
        self.in_use[job.model] = self.in_use.get(job.model, 0) + 1
        self.used_at[job.model] = now

    def _resume(self, job: _Job) -> None:
        """Run the handler again, as if the request had arrived now."""
        call = job.call
        if job.done or call.handler is None:
            return
        call.start = self.fake.clock.seconds()
        body = call.handler(call)
        if isinstance(body, bytes):  # what Request.render does with a body returned at once
            call.request.setHeader(b"content-length", b"%d" % len(body))
            call.request.write(body)
            call.request.finish()


#: the prompt cache matches prefixes in blocks of this many characters (as KV caches do in blocks)
PROMPT_BLOCK = 64


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt a model would read, in order: the system prompt, then each message (role and
    text) or the ``prompt``; Ollama, OpenAI and Anthropic shapes."""
    parts: list[str] = []

    def text(content: object) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(text(block) for block in content)
        if isinstance(content, dict) and isinstance(content.get("text"), str):
            return str(content["text"])
        return json.dumps(content, sort_keys=True) if content is not None else ""

    if body.get("system"):
        parts.append("system: " + text(body["system"]))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"{message.get('role')}: {text(message.get('content'))}")
    elif body.get("prompt"):
        parts.append(text(body["prompt"]))
    return "\n".join(parts)


class PromptCache:
    """What one host keeps of the prompts it has read: the last ``prompt_cache`` conversations'
    prompts, least recently used out first, as chains of block hashes.

    A request reads the longest cached prefix of its prompt for free and pays ``prompt_ms``
    per token of the rest; then its prompt replaces the conversation it continued (or takes a
    new place). With ``prompt_ms`` 0 (the default) nothing is charged or kept.
    """

    def __init__(self) -> None:
        self.sequences: list[tuple[bytes, ...]] = []  # least recently used first
        self.reset()

    def reset(self) -> None:
        self.prompt_tokens = 0  # read (paid for)
        self.cached_tokens = 0  # found in the cache

    def describe(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens}

    def charge(self, body: dict[str, Any], prompt_ms: float, size: int) -> float:
        """Seconds of prompt reading for ``body`` on this host; remembers its prompt."""
        text = prompt_text(body)
        if not text:
            return 0.0
        chain: list[bytes] = []
        digest = b""
        for start in range(0, len(text), PROMPT_BLOCK):
            block = text[start : start + PROMPT_BLOCK].encode()
            digest = hashlib.blake2b(digest + block, digest_size=8).digest()
            chain.append(digest)
        best, index = 0, -1
        for i, cached in enumerate(self.sequences):
            same = 0
            for a, b in zip(cached, chain, strict=False):
                if a != b:
                    break
                same += 1
            if same > best:
                best, index = same, i
        if index >= 0:
            del self.sequences[index]  # the conversation goes on: its newest prompt replaces it
        if size > 0:
            self.sequences.append(tuple(chain))
            del self.sequences[:-size]
        cut = best * PROMPT_BLOCK
        fresh = _tokens(text[cut:]) if cut < len(text) else 0
        self.prompt_tokens += fresh
        self.cached_tokens += _tokens(text[:cut]) if cut else 0
        return fresh * prompt_ms / 1000


class CostMixin:
    """Where a generation handler enters the cost model."""

    def _admit(self, call: _Call, model: FakeModel) -> bytes | int | None:
        """Where a handler starts to use ``model``: None to go on, or what the handler answers
        instead (``NOT_DONE_YET`` while the cost model makes it wait, or the busy 503)."""
        if call.job is None:  # not yet admitted (a handler run again after a wait is)
            verdict = self.scheduler.admit(call, model.name)
            if verdict == "busy":
                return self._fail(call, 503, BUSY_MESSAGE)
            if verdict == "wait":
                return NOT_DONE_YET
        self.load(model.name)
        state = self.state
        if state.prompt_ms > 0 and not call.prompt_charged:
            call.prompt_charged = True
            cache = self.prompt_cache
            call.knobs.ttft += cache.charge(call.body, state.prompt_ms, state.prompt_cache)
        return None
