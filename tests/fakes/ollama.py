"""A faithful fake Ollama: the wire format of Ollama 0.5.4 (read from its source and captures),
with knobs for the failures a proxy must survive.

Use it in memory (``FakeOllama(clock)`` is the root resource; every delay is on ``clock``) or as
a process: ``python -m tests.fakes.ollama --port 0 [--models a,b] [--loaded a] [--name A]
[--version V] [--openai-only] [--require-token T] [cost model flags]`` binds 127.0.0.1, prints
``LISTENING <port>`` and stops on SIGTERM/SIGINT.

Knobs per request, first match wins: headers ``X-Fake-Chunks``, ``X-Fake-Delay-Ms``,
``X-Fake-Ttft-Ms``, ``X-Fake-Status``, ``X-Fake-Hang``, ``X-Fake-Drop-After``,
``X-Fake-Malformed``; the same as query parameters (``chunks``, ``delay_ms``, ``ttft_ms``,
``status``, ``hang``, ``drop_after``, ``malformed``); the chunk count also from the body
(``options.num_predict``, ``max_tokens``, ``max_completion_tokens``; not on ``/v1/messages``);
then the server-wide defaults in ``FakeOllama.state``.

- chunks/delay/ttft: a stream writes ``chunks`` content pieces and then the final piece; piece
  ``i`` is written at ``ttft + i * delay`` after the request arrived (absolute, no drift). A
  non-streamed generation answers after ``ttft + chunks * delay``, anything else after ``ttft``.
- status: answer that status with the route's error shape (the server-wide ``state.status``
  spares the health routes ``/``, ``/api/version`` and ``/health``).
- hang: never answer (until the client goes away).
- drop_after K: a stream writes K pieces, then the TCP connection is aborted (K=0: before any
  byte); a JSON answer sends its headers and half its body, then aborts.
- malformed: 200 with a body that is not JSON.

Server-wide: ``state.health`` (``ok``/``fail``/``hang``) for the health routes, the model list and
the loaded set, default chunks/delay/ttft, a forced status, the version. Over HTTP:
``GET /_fake/requests``, ``POST /_fake/reset``, ``GET|POST /_fake/state`` (``/_fake/*`` calls are
not recorded).

Cost model, off unless set (``--capacity N --max-queue Q --load-ms MS --max-loaded K
--token-ms MS``, or the same state keys with underscores): a generation request (``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/messages``) that names a known model takes one of
``capacity`` slots or waits in a FIFO queue (a client that leaves, leaves it); with ``max_queue``
already queued the next one gets Ollama's 503 ``server busy, please try again.  maximum pending
requests exceeded``. With a slot, a model that is not loaded is loaded first (``load_ms``, once
however many wait for it; the final line's ``load_duration`` is what this request waited), evicting
the least recently used idle model when ``max_loaded`` are loaded (none idle: wait for one). Each
chunk then takes ``token_ms`` more. The state counts ``loads``, ``evictions``,
``busy_rejections``, ``peak_running``, ``peak_queued`` (``POST /_fake/reset`` zeroes them) and
shows ``running`` and ``queued``. Lowering ``max_loaded`` evicts nothing until the next load.

Newer Ollama, by version (``FakeOllama(clock, version="0.14.0")``, ``--version 0.14.0`` or the
state key ``version``): from 0.14.0 on, ``POST /v1/messages`` speaks the Anthropic Messages API
(JSON, or SSE ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta``, ``message_stop``; errors in Anthropic's envelope).
Its chunk count is the knob or the server default, cut at ``max_tokens`` (then ``stop_reason`` is
``max_tokens``, otherwise ``end_turn``). ``/v1/messages/count_tokens`` stays gin's 404, as in the
real server; below 0.14.0 so does ``/v1/messages``.

Tool calls: a request with non-empty ``tools`` (and ``tool_choice`` not none) is answered with a
call of its first tool (or the one ``tool_choice`` names) whose arguments hold the tool schema's
required properties (strings ``"x"``, numbers 1, booleans true, an enum's first value), unless
the conversation already carries a tool's answer: a last ``tool`` message on
``/v1/chat/completions`` and ``/api/chat``, a ``tool_result`` block in the last user message on
``/v1/messages``. Streamed, the arguments come in ``max(2, chunks)`` pieces on ``/v1/*``, and in
one line on ``/api/chat``.

Deliberate differences from the real server, for the tests' sake: a chat with no messages streams
(the real one answers ``done_reason: "load"``), loaded models never expire, ``/v1/embeddings``
honours ``encoding_format: base64`` (as newer Ollama and OpenAI do), and
``/api/show`` lists ``capabilities`` (as newer Ollama does). On ``/v1/messages`` the fake sends
what Anthropic's own API does where Ollama trims it: ``stop_sequence: null``, ``stop_reason: null``
in ``message_start``, a ``ping`` event, and tool arguments in several ``input_json_delta`` pieces;
its errors carry no ``request_id``. On ``/v1/chat/completions`` tool arguments stream in pieces
(Ollama sends them whole).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import re
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

#: request bodies above this are recorded as size and sha256 only
BIG_BODY_RECORD = 1024 * 1024
#: ``GET /big`` writes this much at a time
BIG_WRITE = 64 * 1024
#: timers fire up to this early, and a piece this close to due is due (float clock drift)
EPSILON = 1e-6
HEALTH_PATHS = frozenset({"/", "/api/version", "/health"})
HEALTH_MODES = ("ok", "fail", "hang")
DEFAULT_MODELS = ("llama3.2:latest", "nomic-embed-text:latest")
DEFAULT_VERSION = "0.5.4"
#: the first Ollama release that serves the Anthropic Messages API
ANTHROPIC_MIN_VERSION = (0, 14, 0)
MESSAGES_PATH = "/v1/messages"
MODIFIED_AT = datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC).timestamp()
#: Ollama 0.5.x's ErrMaxQueue text, two spaces and all
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
#: ``load_duration`` of a request that did not wait for a model load
WARM_LOAD_NS = 1_000_000

JSON_UTF8 = b"application/json; charset=utf-8"  # gin's c.JSON
JSON_PLAIN = b"application/json"  # the OpenAI middleware's writers
NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream"
TEXT_UTF8 = b"text/plain; charset=utf-8"  # gin's c.String
TEXT_PLAIN = b"text/plain"  # gin's 404

GET_HEAD = frozenset({b"GET", b"HEAD"})
GET = frozenset({b"GET"})
POST = frozenset({b"POST"})

_LLAMA_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_EMBED_TEMPLATE = "{{ .Prompt }}"


def is_embedding_name(name: str) -> bool:
    """Names that Ollama users know as embedding models (``nomic-embed-text``, ``all-minilm``)."""
    lowered = name.lower()
    return "embed" in lowered or "minilm" in lowered


@dataclass
class FakeModel:
    """One model the fake serves; everything but ``name`` has a realistic default."""

    name: str
    size: int = 0  # 0: 2019393189 for a chat model, 274302450 for an embedding model
    digest: str = ""  # "": sha256 of the name
    family: str = ""  # "": llama, or bert / nomic-bert for an embedding model
    parameter_size: str = ""  # "": 3.2B / 137M
    quantization_level: str = ""  # "": Q4_K_M / F16
    format: str = "gguf"
    embedding: bool | None = None  # None: from the name (contains "embed" or "minilm")
    context_length: int = 0  # 0: 131072 / 2048
    dimensions: int = 8  # embedding vector length
    modified_at: float = MODIFIED_AT  # unix seconds

    def __post_init__(self) -> None:
        if self.embedding is None:
            self.embedding = is_embedding_name(self.name)
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        if self.embedding:
            self.family = self.family or ("nomic-bert" if "nomic" in self.name else "bert")
            self.size = self.size or 274302450
            self.parameter_size = self.parameter_size or "137M"
            self.quantization_level = self.quantization_level or "F16"
            self.context_length = self.context_length or 2048
        else:
            self.family = self.family or "llama"
            self.size = self.size or 2019393189
            self.parameter_size = self.parameter_size or "3.2B"
            self.quantization_level = self.quantization_level or "Q4_K_M"
            self.context_length = self.context_length or 131072

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def parameter_count(self) -> int:
        text = self.parameter_size.upper()
        scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:], 1.0)
        try:
            return int(float(text.rstrip("KMBT")) * scale)
        except ValueError:
            return 0


@dataclass
class RecordedRequest:
    """What the fake received (``body`` is empty when ``body_size`` > ``BIG_BODY_RECORD``)."""

    method: str
    path: str
    query: str
    headers: dict[str, list[str]]  # lower-cased names
    body: str  # utf-8 text, or base64 when the bytes are not utf-8
    body_size: int
    body_sha256: str
    time: float  # clock seconds


Recorded = RecordedRequest


@dataclass
class Knobs:
    chunks: int
    delay: float  # seconds
    ttft: float  # seconds
    status: int | None = None
    hang: bool = False
    drop_after: int | None = None
    malformed: bool = False


@dataclass
class FakeState:
    health: str = "ok"  # ok | fail | hang
    default_chunks: int = 3
    default_delay_ms: float = 0.0
    default_ttft_ms: float = 0.0
    status: int | None = None  # force this status on every non-health route
    loaded: set[str] = field(default_factory=set)
    # the cost model (0: off, today's behaviour); see _Scheduler
    capacity: int = 0  # parallel generation slots (OLLAMA_NUM_PARALLEL)
    max_queue: int = 0  # requests waiting for a slot before a 503 (OLLAMA_MAX_QUEUE)
    load_ms: float = 0.0  # time to load a model that is not loaded
    max_loaded: int = 0  # models loaded at once (OLLAMA_MAX_LOADED_MODELS)
    token_ms: float = 0.0  # extra time per generated chunk


#: the cost model's state keys (``FakeState`` fields) and their types
COST_KEYS: dict[str, type[int] | type[float]] = {
    "capacity": int,
    "max_queue": int,
    "load_ms": float,
    "max_loaded": int,
    "token_ms": float,
}


class KnobError(ValueError):
    pass


# --------------------------------------------------------------------------- wire helpers


def go_json(payload: object) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode()


def rfc3339(seconds: float) -> str:
    """Go's time.Time JSON (RFC 3339 with trailing fractional zeros trimmed), in UTC."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def float32(value: float) -> float:
    """``value`` as a float32, written with the fewest digits that read back the same."""
    exact: float = struct.unpack("<f", struct.pack("<f", value))[0]
    for precision in range(1, 10):
        short = float(f"{exact:.{precision}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == exact:
            return short
    return exact


def embedding_vector(model: str, text: str, dimensions: int, normalize: bool = True) -> list[float]:
    """A stable vector for ``text`` (unit length, as Ollama's /api/embed normalises)."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        raw.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    raw = raw[:dimensions]
    if normalize:
        norm = math.sqrt(sum(x * x for x in raw))
        raw = [x / norm for x in raw] if norm else raw
    return [float32(x) for x in raw]


def floats_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what OpenAI (and newer Ollama) send."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"0.14.1-rc0"`` as ``(0, 14, 1)``; missing parts are 0, and so is a version that does not
    start with a number (a leading ``v`` is allowed)."""
    found = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if found is None:
        return (0, 0, 0)
    major, minor, patch = (int(part or 0) for part in found.groups())
    return (major, minor, patch)


def _hex_id(*parts: object) -> str:
    """24 stable hex digits (the length of Ollama's random message ids) from ``parts``."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


def _split(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` pieces of near-equal length (fewer when it is shorter)."""
    parts = max(1, min(parts, len(text)))
    return [text[len(text) * i // parts : len(text) * (i + 1) // parts] for i in range(parts)]


def _sample(spec: object) -> Any:
    """A value that fits the JSON schema ``spec``: its enum's first value, or one per type."""
    if not isinstance(spec, dict):
        return "x"
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    samples: dict[str, Any] = {"integer": 1, "number": 1, "boolean": True, "null": None}
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return samples.get(str(kind), "x")


def tool_arguments(schema: object) -> dict[str, Any]:
    """The arguments the fake calls a tool with: each required property of its JSON schema."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    return {name: _sample(properties.get(name)) for name in names}


def _pick_tool(tools: object, wanted: object) -> dict[str, Any] | None:
    """The tool to call: the one named ``wanted`` if there is one, else the first."""
    if not isinstance(tools, list):
        return None
    candidates = [t for t in tools if isinstance(t, dict)]
    for tool in candidates:
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else tool.get("name")
        if wanted and name == wanted:
            return tool
    return candidates[0] if candidates else None


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error envelope, typed by status as Ollama's ``anthropic.NewError`` does."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
    error = {"type": kinds.get(status, "api_error"), "message": message}
    return {"type": "error", "error": error}


def _anthropic_text(content: object) -> str:
    """The text of an Anthropic ``content`` (a string or blocks, tool results included)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_result":
                texts.append(_anthropic_text(block.get("content")))
    return " ".join(texts)


_GO_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "bool"}


def parse_go_json(raw: bytes, go_type: str) -> tuple[dict[str, Any] | None, str | None]:
    """Decode a request body; on failure, the message Go's decoder would give."""
    if not raw.strip():
        return None, "EOF"
    try:
        document = json.loads(raw)
    except UnicodeDecodeError:
        return None, "invalid character looking for beginning of value"
    except json.JSONDecodeError as e:
        text = e.doc
        if text[e.pos :].strip() == "":
            return None, "unexpected EOF"
        return None, f"invalid character {text[e.pos]!r} looking for beginning of value"
    if document is None:
        return {}, None
    if not isinstance(document, dict):
        kind = _GO_TYPES.get(type(document), "value")
        return None, f"json: cannot unmarshal {kind} into Go value of type {go_type}"
    return document, None


def _field_type_error(
    document: dict[str, Any], struct_name: str, fields: tuple[tuple[str, type, str], ...]
) -> str | None:
    """Go's decoder error for the first field of the wrong JSON type (null is fine)."""
    for key, wanted, go_type in fields:
        value = document.get(key)
        if value is None:
            continue
        if isinstance(value, wanted) and not (wanted is int and isinstance(value, bool)):
            continue
        if wanted is int and isinstance(value, float):
            kind = f"number {json.dumps(value)}"
        else:
            kind = {dict: "object"}.get(type(value)) or _GO_TYPES.get(type(value), "value")
        return (
            f"json: cannot unmarshal {kind} into Go struct field "
            f"{struct_name}.{key} of type {go_type}"
        )
    return None


# --------------------------------------------------------------------------- per request


class _Exchange:
    """One request's lifetime: its timers, and whether its client is still there."""

    def __init__(self, fake: FakeOllama, request: Request) -> None:
        self.fake = fake
        self.request = request
        self.gone = False
        self.settled = False
        self.calls: list[IDelayedCall] = []
        #: run once when the request is over, however it ends (the cost model's slot)
        self.on_settle: Callable[[], None] | None = None
        fake.in_flight += 1
        request.notifyFinish().addCallbacks(self._finished, self._lost)

    def _settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.fake.in_flight -= 1
            if self.on_settle is not None:
                self.on_settle()

    def _finished(self, _: object) -> None:
        self._settle()

    def _lost(self, _: Failure) -> None:
        if not self.gone:
            self.fake.cancelled += 1
        self.gone = True
        self._cancel()
        self._settle()

    def _cancel(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls.clear()

    def later(self, delay: float, function: Callable[..., None], *args: object) -> None:
        self.calls = [call for call in self.calls if call.active()]
        self.calls.append(self.fake.clock.callLater(max(0.0, delay), function, *args))

    def abort(self) -> None:
        """Cut the TCP connection (RST) once the bytes already written have left Twisted's
        buffer: an abort drops unsent data, and the client must see the pieces before the cut."""
        if self.gone:
            return
        self.gone = True
        self.fake.dropped += 1
        self._cancel()
        self._settle()
        transport: Any = self.request.channel.transport
        clock = self.fake.clock

        def cut(turns: int) -> None:
            # abstract.FileDescriptor's buffers; in-memory transports have none
            pending = getattr(transport, "dataBuffer", b"") or getattr(
                transport, "_tempDataBuffer", None
            )
            if pending and turns < 1000 and getattr(transport, "connected", False):
                clock.callLater(0, cut, turns + 1)
            else:
                transport.abortConnection()

        clock.callLater(0, cut, 0)


@dataclass
class _Call:
    request: Request
    path: str
    body: dict[str, Any]
    knobs: Knobs
    exchange: _Exchange
    start: float  # when generation starts: arrival, or the end of the wait for slot and model
    handler: Handler | None = None  # re-run by the cost model after a wait
    job: _Job | None = None  # the cost model's bookkeeping, once admitted
    load_wait: float = 0.0  # seconds this request waited for its model to load

    @property
    def openai(self) -> bool:
        return self.path.startswith("/v1/")

    @property
    def anthropic(self) -> bool:
        return self.path == MESSAGES_PATH


Handler = Callable[[_Call], bytes | int]


@dataclass
class _Route:
    methods: frozenset[bytes]
    handler: Handler
    go_type: str | None = None  # the request body is JSON of this Go type


# --------------------------------------------------------------------------- cost model


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


# --------------------------------------------------------------------------- the server


class FakeOllama(Resource):
    """The fake server; itself the root resource (``.resource`` is the same object)."""

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime,
        models: list[FakeModel] | None = None,
        *,
        name: str = "fake",
        version: str = DEFAULT_VERSION,
        openai_only: bool = False,
        lmstudio_api: bool = True,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.name = name
        self.version = version
        self.openai_only = openai_only
        #: in OpenAI-only mode, also LM Studio's /api/v0/models (off: a plain OpenAI server)
        self.lmstudio_api = lmstudio_api
        self.models: list[FakeModel] = (
            list(models) if models is not None else [FakeModel(n) for n in DEFAULT_MODELS]
        )
        self.state = FakeState()
        self.requests: list[RecordedRequest] = []
        self.required_token: str | None = None  # answer 401 unless "Bearer <token>"
        self.connections = 0  # TCP connections accepted (counted by FakeSite)
        self.in_flight = 0  # requests not yet answered in full
        self.cancelled = 0  # requests whose client went away before the answer was complete
        self.dropped = 0  # connections the fake cut itself (drop_after)
        self._loaded_at: dict[str, float] = {}
        self._sequence = 0  # numbers the generated message and tool call ids
        self._routes = self._build_routes()
        self.scheduler = _Scheduler(self)

    @property
    def resource(self) -> FakeOllama:
        return self

    @property
    def speaks_anthropic(self) -> bool:
        """Whether ``/v1/messages`` is served: Ollama 0.14.0 and later."""
        return version_tuple(self.version) >= ANTHROPIC_MIN_VERSION

    # ------------------------------------------------------------------ python API

    def model(self, name: object) -> FakeModel | None:
        """The model ``name`` refers to; like Ollama, a name without a tag means ``:latest``."""
        if not isinstance(name, str) or not name:
            return None
        wanted = name.lower()
        if ":" not in wanted.rsplit("/", 1)[-1]:
            wanted += ":latest"
        for candidate in self.models:
            if candidate.name.lower() in (name.lower(), wanted):
                return candidate
        return None

    def load(self, name: str) -> None:
        self.state.loaded.add(name)
        self._loaded_at[name] = self.clock.seconds()

    def unload(self, name: str) -> None:
        self.state.loaded.discard(name)

    def reset(self) -> None:
        """Forget recorded requests and the counters (not the state)."""
        self.requests.clear()
        self.cancelled = 0
        self.dropped = 0
        self.scheduler.reset()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def apply_state(self, update: dict[str, Any]) -> None:
        """Change server-wide state; keys as in ``describe_state`` (unknown keys: ValueError)."""
        known = {
            "health",
            "models",
            "loaded",
            "default_chunks",
            "default_delay_ms",
            "default_ttft_ms",
            "status",
            "version",
            *COST_KEYS,
        }
        unknown = set(update) - known
        if unknown:
            raise ValueError(f"unknown state keys: {sorted(unknown)}")
        if "health" in update:
            if update["health"] not in HEALTH_MODES:
                raise ValueError(f"health must be one of {HEALTH_MODES}")
            self.state.health = update["health"]
        if "models" in update:
            current = {m.name: m for m in self.models}
            models = []
            for item in update["models"]:
                if isinstance(item, str):
                    models.append(current.get(item) or FakeModel(item))
                elif isinstance(item, dict):
                    models.append(FakeModel(**item))
                else:
                    raise ValueError(f"a model is a name or an object, not {item!r}")
            self.models = models
        if "loaded" in update:
            self.state.loaded = set()
            for loaded in update["loaded"]:
                self.load(str(loaded))
        if "default_chunks" in update:
            self.state.default_chunks = int(update["default_chunks"])
        if "default_delay_ms" in update:
            self.state.default_delay_ms = float(update["default_delay_ms"])
        if "default_ttft_ms" in update:
            self.state.default_ttft_ms = float(update["default_ttft_ms"])
        if "status" in update:
            status = update["status"]
            self.state.status = None if status is None else int(status)
        if "version" in update:
            if not isinstance(update["version"], str):
                raise ValueError("version must be a string")
            self.version = update["version"]
        for key, kind in COST_KEYS.items():
            if key in update:
                value = kind(update[key])
                if value < 0 or math.isnan(value) or math.isinf(value):
                    raise ValueError(f"{key} must be a non-negative number")
                setattr(self.state, key, value)
        self.scheduler.pump()  # a larger capacity lets queued requests in

    def describe_state(self) -> dict[str, Any]:
        return {
            "health": self.state.health,
            "models": [m.name for m in self.models],
            "loaded": sorted(self.state.loaded),
            "default_chunks": self.state.default_chunks,
            "default_delay_ms": self.state.default_delay_ms,
            "default_ttft_ms": self.state.default_ttft_ms,
            "status": self.state.status,
            "version": self.version,
            **{key: getattr(self.state, key) for key in COST_KEYS},
            **self.scheduler.describe(),
            "connections": self.connections,
            "in_flight": self.in_flight,
            "cancelled": self.cancelled,
            "dropped": self.dropped,
            "requests": len(self.requests),
        }

    # ------------------------------------------------------------------ dispatch

    def _build_routes(self) -> dict[str, _Route]:
        routes = {
            "/v1/models": _Route(GET, self._v1_models),
            "/v1/chat/completions": _Route(POST, self._v1_chat, "openai.ChatCompletionRequest"),
            "/v1/completions": _Route(POST, self._v1_completions, "openai.CompletionRequest"),
            "/v1/embeddings": _Route(POST, self._v1_embeddings, "openai.EmbedRequest"),
            "/upload": _Route(frozenset({b"POST", b"PUT"}), self._upload),
            "/big": _Route(GET, self._big),
        }
        if self.openai_only:
            routes["/health"] = _Route(GET_HEAD, self._health)
            if self.lmstudio_api:
                routes["/api/v0/models"] = _Route(GET, self._lmstudio_models)
        else:
            routes.update(
                {
                    "/": _Route(GET_HEAD, self._root),
                    "/api/version": _Route(GET_HEAD, self._version),
                    "/api/tags": _Route(GET_HEAD, self._tags),
                    "/api/ps": _Route(GET, self._ps),
                    "/api/show": _Route(POST, self._show, "api.ShowRequest"),
                    "/api/chat": _Route(POST, self._chat, "api.ChatRequest"),
                    "/api/generate": _Route(POST, self._generate, "api.GenerateRequest"),
                    "/api/embed": _Route(POST, self._embed, "api.EmbedRequest"),
                    "/api/embeddings": _Route(POST, self._embeddings, "api.EmbeddingRequest"),
                }
            )
        return routes

    def _route(self, method: bytes, path: str) -> _Route | None:
        route = self._routes.get(path)
        if route is None and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            route = _Route(GET, self._v1_model)
        if route is None and path == MESSAGES_PATH and self.speaks_anthropic:
            route = _Route(POST, self._messages, "anthropic.MessagesRequest")
        if route is None or method not in route.methods:
            return None  # gin answers a wrong method with its plain 404 too
        return route

    def render(self, request: Request) -> bytes | int:
        request.responseHeaders.removeHeader(b"server")  # Go sends none
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/_fake/"):
            return self._control(request, path)
        raw = self._record(request, path)
        exchange = _Exchange(self, request)
        if self.required_token is not None:
            given = request.getHeader(b"authorization")
            if given != f"Bearer {self.required_token}".encode():
                request.setResponseCode(401)
                request.setHeader(b"content-type", JSON_PLAIN)
                return b'{"error":"Unauthorized"}'
        route = self._route(request.method, path)
        if route is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", TEXT_PLAIN)
            return b"404 page not found"
        try:
            knobs = self._knobs(request, raw, path)
        except KnobError as e:
            return self._plain_error(request, 400, path, str(e))
        if knobs.hang:
            return NOT_DONE_YET
        health_route = path in HEALTH_PATHS
        if health_route and self.state.health == "hang":
            return NOT_DONE_YET
        body: dict[str, Any] = {}
        call = _Call(request, path, body, knobs, exchange, self.clock.seconds(), route.handler)
        if health_route and self.state.health == "fail":
            return self._fail(call, 500, "fake: unhealthy")
        status = knobs.status
        if status is None and not health_route:
            status = self.state.status
        if status is not None:
            return self._fail(call, status, f"fake error {status}", latency=knobs.ttft)
        if knobs.malformed:
            ctype = TEXT_UTF8 if path == "/" else JSON_UTF8
            return self._send(call, 200, ctype, b'{"model":"broken","message":{"role":', 0.0)
        if route.go_type is not None:
            document, error = parse_go_json(raw, route.go_type)
            if error is not None:
                return self._bad_body(call, error)
            call.body = document or {}
        return route.handler(call)

    def _record(self, request: Request, path: str) -> bytes:
        """Record the request; return its body (``b""`` for big uploads, hashed as they stream)."""
        content = request.content
        assert content is not None
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        digest = hashlib.sha256()
        pieces: list[bytes] = []
        keep = size <= BIG_BODY_RECORD or path != "/upload"
        while True:
            piece = content.read(1024 * 1024)
            if not piece:
                break
            digest.update(piece)
            if keep:
                pieces.append(piece)
        content.seek(0)
        raw = b"".join(pieces)
        shown = raw if size <= BIG_BODY_RECORD else b""
        try:
            text = shown.decode()
        except UnicodeDecodeError:
            text = base64.b64encode(shown).decode()
        headers = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(
            RecordedRequest(
                method=request.method.decode("latin-1"),
                path=path,
                query=request.uri.decode("latin-1").partition("?")[2],
                headers=headers,
                body=text,
                body_size=size,
                body_sha256=digest.hexdigest(),
                time=self.clock.seconds(),
            )
        )
        return raw

    def _knobs(self, request: Request, raw: bytes, path: str) -> Knobs:
        query = parse_qs(request.uri.decode("latin-1").partition("?")[2])

        def knob(name: str, header: str) -> str | None:
            value = request.getHeader(header)
            if value is not None:
                return str(value).strip()
            values = query.get(name)
            return values[0].strip() if values else None

        def number(name: str, header: str) -> float | None:
            value = knob(name, header)
            if value is None or value == "":
                return None
            try:
                result = float(value)
            except ValueError:
                raise KnobError(f"fake: {header} must be a number, not {value!r}") from None
            if result < 0 or math.isnan(result) or math.isinf(result):
                raise KnobError(f"fake: {header} must be a non-negative number")
            return result

        def flag(name: str, header: str) -> bool:
            return (knob(name, header) or "").lower() in ("1", "true", "yes", "on")

        chunks = number("chunks", "x-fake-chunks")
        if chunks is None and path != MESSAGES_PATH:  # there max_tokens is a cap, see _messages
            chunks = self._body_chunks(raw)
        delay = number("delay_ms", "x-fake-delay-ms")
        ttft = number("ttft_ms", "x-fake-ttft-ms")
        status = number("status", "x-fake-status")
        drop = number("drop_after", "x-fake-drop-after")
        if status is not None and not 100 <= status <= 599:
            raise KnobError("fake: x-fake-status must be an HTTP status")
        return Knobs(
            chunks=int(chunks if chunks is not None else self.state.default_chunks),
            delay=(delay if delay is not None else self.state.default_delay_ms) / 1000,
            ttft=(ttft if ttft is not None else self.state.default_ttft_ms) / 1000,
            status=int(status) if status is not None else None,
            hang=flag("hang", "x-fake-hang"),
            drop_after=int(drop) if drop is not None else None,
            malformed=flag("malformed", "x-fake-malformed"),
        )

    @staticmethod
    def _body_chunks(raw: bytes) -> int | None:
        if not raw or len(raw) > BIG_BODY_RECORD:
            return None
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(document, dict):
            return None
        options = document.get("options")
        candidates = [
            options.get("num_predict") if isinstance(options, dict) else None,
            document.get("max_tokens"),
            document.get("max_completion_tokens"),
        ]
        for value in candidates:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    # ------------------------------------------------------------------ responses

    def _send(
        self, call: _Call, status: int, ctype: bytes, body: bytes, latency: float
    ) -> bytes | int:
        """Answer ``body`` now or after ``latency``; with drop_after, half of it, then abort."""
        request = call.request
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype)
        drop = call.knobs.drop_after
        if drop is None and latency <= 0:
            return body
        request.setHeader(b"content-length", b"%d" % len(body))
        exchange = call.exchange

        def deliver() -> None:
            if exchange.gone:
                return
            if drop is not None:
                if drop > 0:
                    request.write(body[: len(body) // 2])
                exchange.abort()
                return
            request.write(body)
            request.finish()

        if latency > 0:
            exchange.later(latency - EPSILON, deliver)
        else:
            deliver()
        return NOT_DONE_YET

    def _json(
        self, call: _Call, payload: object, status: int = 200, latency: float = 0.0
    ) -> bytes | int:
        if call.openai:  # json.NewEncoder: no charset, a trailing newline
            return self._send(call, status, JSON_PLAIN, go_json(payload) + b"\n", latency)
        return self._send(call, status, JSON_UTF8, go_json(payload), latency)

    def _fail(self, call: _Call, status: int, message: str, latency: float = 0.0) -> bytes | int:
        """A handler's error: ``{"error": msg}``, or on /v1 the OpenAI shape Ollama 0.5.4 gives
        every handler error (type ``api_error`` whatever the status)."""
        if call.path == "/":
            return self._send(call, status, TEXT_UTF8, message.encode(), latency)
        if call.anthropic:  # the middleware re-wraps every handler error
            return self._json(call, anthropic_error(status, message), status, latency)
        if call.openai:
            error = {"message": message, "type": "api_error", "param": None, "code": None}
            return self._json(call, {"error": error}, status, latency)
        return self._json(call, {"error": message}, status, latency)

    def _bad_body(self, call: _Call, error: str) -> bytes | int:
        """A body that does not decode: gin's ``AbortWithStatusJSON(400, ...)``."""
        if call.anthropic:
            payload: dict[str, Any] = anthropic_error(400, error)
        elif call.openai:
            payload = {
                "error": {
                    "message": error,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        else:
            payload = {"error": "missing request body" if error == "EOF" else error}
        return self._send(call, 400, JSON_UTF8, go_json(payload), 0.0)

    def _plain_error(self, request: Request, status: int, path: str, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON_UTF8)
        if path == MESSAGES_PATH:
            return go_json(anthropic_error(status, message))
        if path.startswith("/v1/"):
            error = {"message": message, "type": "invalid_request_error", "param": None}
            return go_json({"error": {**error, "code": None}})
        return go_json({"error": message})

    def _stream(self, call: _Call, ctype: bytes, groups: list[list[bytes]]) -> int:
        """Write ``groups`` (each a list of separate writes) one by one: group ``i`` at
        ``start + ttft + i * delay``. Headers go out with the first group, as Go's do."""
        request = call.request
        exchange = call.exchange
        knobs = call.knobs
        request.setResponseCode(200)
        request.setHeader(b"content-type", ctype)
        position = [0]

        def pump() -> None:
            while not exchange.gone:
                index = position[0]
                due = call.start + knobs.ttft + index * knobs.delay
                now = self.clock.seconds()
                if due > now + EPSILON:
                    exchange.later(due - now - EPSILON, pump)
                    return
                if knobs.drop_after is not None and index >= knobs.drop_after:
                    exchange.abort()
                    return
                for piece in groups[index]:
                    request.write(piece)
                position[0] = index + 1
                if position[0] == len(groups):
                    request.finish()
                    return

        pump()
        return NOT_DONE_YET

    # ------------------------------------------------------------------ health and lists

    def _root(self, call: _Call) -> bytes | int:
        return self._send(call, 200, TEXT_UTF8, b"Ollama is running", call.knobs.ttft)

    def _version(self, call: _Call) -> bytes | int:
        return self._json(call, {"version": self.version}, latency=call.knobs.ttft)

    def _health(self, call: _Call) -> bytes | int:
        return self._send(call, 200, JSON_UTF8, b'{"status":"ok"}', call.knobs.ttft)

    def _tag(self, model: FakeModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": rfc3339(model.modified_at),
            "size": model.size,
            "digest": model.digest,
            "details": model.details(),
        }

    def _tags(self, call: _Call) -> bytes | int:
        models = [self._tag(m) for m in self.models]
        return self._json(call, {"models": models}, latency=call.knobs.ttft)

    def _ps(self, call: _Call) -> bytes | int:
        now = self.clock.seconds()
        loaded = [m for m in self.models if m.name in self.state.loaded]
        loaded.sort(key=lambda m: -self._loaded_at.get(m.name, 0.0))
        entries = [
            {
                "name": m.name,
                "model": m.name,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
                "expires_at": rfc3339(now + 300),
                "size_vram": 0,
            }
            for m in loaded
        ]
        return self._json(call, {"models": entries}, latency=call.knobs.ttft)

    def _show(self, call: _Call) -> bytes | int:
        name = call.body.get("model") or call.body.get("name")
        if not name:
            return self._json(call, {"error": "model is required"}, 400)
        model = self.model(name)
        if model is None:
            return self._json(call, {"error": f"model '{name}' not found"}, 404)
        template = _EMBED_TEMPLATE if model.embedding else _LLAMA_TEMPLATE
        stops = [] if model.embedding else ["<|start_header_id|>", "<|end_header_id|>"]
        parameters = "\n".join(f"{'stop':<30} {json.dumps(stop)}" for stop in stops)
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {model.name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{model.digest}\n"
            f'TEMPLATE """{template}"""\n' + "".join(f"PARAMETER stop {s}\n" for s in stops)
        )
        arch = model.family
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.file_type": 1 if model.embedding else 15,
            "general.parameter_count": model.parameter_count(),
            "general.quantization_version": 2,
            f"{arch}.context_length": model.context_length,
            f"{arch}.embedding_length": model.dimensions,
        }
        if model.embedding:
            info[f"{arch}.pooling_type"] = 1
        payload: dict[str, Any] = {"modelfile": modelfile}
        if parameters:
            payload["parameters"] = parameters
        payload.update(
            {
                "template": template,
                "details": model.details(),
                "model_info": info,
                "modified_at": rfc3339(model.modified_at),
                "capabilities": ["embedding"] if model.embedding else ["completion"],
            }
        )
        return self._json(call, payload, latency=call.knobs.ttft)

    # ------------------------------------------------------------------ generation

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
        return None

    @staticmethod
    def _load_ns(call: _Call) -> int:
        """``load_duration``: the load this request waited for, as Ollama reports it."""
        return int(call.load_wait * 1e9) or WARM_LOAD_NS

    def _durations(self, call: _Call, prompt_tokens: int, eval_count: int) -> dict[str, int]:
        """Metrics for a final line; Go omits zero values (``omitempty``)."""
        knobs = call.knobs
        prompt_ns = int(knobs.ttft * 1e9) or 1_500_000
        eval_ns = int(knobs.delay * eval_count * 1e9) or 1_000_000 * max(1, eval_count)
        load_ns = self._load_ns(call)
        metrics = {
            "total_duration": load_ns + prompt_ns + eval_ns + 250_000,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count,
            "eval_duration": eval_ns,
        }
        return {k: v for k, v in metrics.items() if v}

    def _pieces(self, count: int) -> list[str]:
        return [f"{self.name}{i} " for i in range(count)]

    def _generation_latency(self, call: _Call) -> float:
        return call.knobs.ttft + call.knobs.chunks * call.knobs.delay

    def _next_id(self, prefix: str, digits: int = 24) -> str:
        """A new id, stable for a given fake name and request order (no randomness)."""
        self._sequence += 1
        return prefix + _hex_id(self.name, prefix, self._sequence)[:digits]

    @staticmethod
    def _function_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The tool call to answer an OpenAI or Ollama chat with (name, arguments), if any: not
        when the last message is a tool's answer, nor with ``tool_choice: "none"``."""
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "tool":
            return None
        choice = body.get("tool_choice")
        if choice == "none":
            return None
        function = choice.get("function") if isinstance(choice, dict) else None
        wanted = function.get("name") if isinstance(function, dict) else None
        tool = _pick_tool(body.get("tools"), wanted)
        function = tool.get("function") if tool is not None else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return None
        return function["name"], tool_arguments(function.get("parameters"))

    @staticmethod
    def _anthropic_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The tool_use to answer a Messages request with (name, input), if any: not when the
        last user message carries a ``tool_result``, nor with ``tool_choice`` type none."""
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content
        ):
            return None
        choice = body.get("tool_choice")
        choice = choice if isinstance(choice, dict) else {}
        if choice.get("type") == "none":
            return None
        tool = _pick_tool(body.get("tools"), choice.get("name") if choice.get("type") else None)
        if tool is None or not isinstance(tool.get("name"), str):
            return None
        return tool["name"], tool_arguments(tool.get("input_schema"))

    @staticmethod
    def _keep_alive_zero(body: dict[str, Any]) -> bool:
        value = body.get("keep_alive")
        return value in (0, "0", "0s", "0m")

    def _chat(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model")
        messages = body.get("messages") or []
        created = rfc3339(self.clock.seconds())
        model = self.model(name)
        if not messages and self._keep_alive_zero(body):
            if model is None:
                return self._json(call, {"error": f"model '{name}' not found"}, 404)
            self.unload(model.name)
            message = {"role": "assistant", "content": ""}
            payload = {"model": name, "created_at": created, "message": message}
            return self._json(call, {**payload, "done_reason": "unload", "done": True})
        if not name:
            return self._json(call, {"error": "model is required"}, 400)
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if model.embedding:
            return self._json(call, {"error": f'"{name}" does not support chat'}, 400)
        if (held := self._admit(call, model)) is not None:
            return held
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        prompt_tokens = _tokens(text) + 10
        tool = self._function_tool(body)
        tool_calls: list[dict[str, Any]] = []
        if tool is not None:  # Ollama's own form: arguments as an object, no id
            call.knobs.chunks = 1
            tool_calls = [{"function": {"name": tool[0], "arguments": tool[1]}}]
        pieces = self._pieces(call.knobs.chunks) if tool is None else []
        eval_count = len(pieces) if tool is None else 1

        def line(content: str, done: bool, calls: list[dict[str, Any]]) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            out: dict[str, Any] = {
                "model": name,
                "created_at": rfc3339(self.clock.seconds()),
                "message": message,
            }
            if done:
                out["done_reason"] = "stop"
            out["done"] = done
            if done:
                out.update(self._durations(call, prompt_tokens, eval_count))
            return out

        if body.get("stream") is False:
            latency = self._generation_latency(call)
            return self._json(call, line("".join(pieces), True, tool_calls), latency=latency)
        groups = [[go_json(line(p, False, [])) + b"\n"] for p in pieces]
        if tool_calls:
            groups.append([go_json(line("", False, tool_calls)) + b"\n"])
        groups.append([go_json(line("", True, [])) + b"\n"])
        return self._stream(call, NDJSON, groups)

    def _generate(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._json(call, {"error": f"model '{name}' not found"}, 404)
        created = rfc3339(self.clock.seconds())
        prompt = body.get("prompt") or ""
        if not prompt and self._keep_alive_zero(body):
            self.unload(model.name)
            out = {"model": name, "created_at": created, "response": ""}
            return self._json(call, {**out, "done": True, "done_reason": "unload"})
        if model.embedding:
            return self._json(call, {"error": f'"{name}" does not support generate'}, 400)
        if (held := self._admit(call, model)) is not None:
            return held
        if not prompt:  # the preload idiom; JSON even when a stream was asked for
            out = {"model": name, "created_at": created, "response": ""}
            return self._json(call, {**out, "done": True, "done_reason": "load"})
        prompt_tokens = _tokens(str(prompt)) + 10
        pieces = self._pieces(call.knobs.chunks)

        def line(response: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {
                "model": name,
                "created_at": rfc3339(self.clock.seconds()),
                "response": response,
                "done": done,
            }
            if done:
                out["done_reason"] = "stop"
                if not body.get("raw"):
                    out["context"] = list(range(1, prompt_tokens + len(pieces) + 1))
                out.update(self._durations(call, prompt_tokens, len(pieces)))
            return out

        if body.get("stream") is False:
            latency = self._generation_latency(call)
            return self._json(call, line("".join(pieces), True), latency=latency)
        groups = [[go_json(line(p, False)) + b"\n"] for p in pieces]
        groups.append([go_json(line("", True)) + b"\n"])
        return self._stream(call, NDJSON, groups)

    # ------------------------------------------------------------------ embeddings

    def _inputs(self, value: object) -> list[str] | None:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        return None

    def _embed(self, call: _Call) -> bytes | int:
        body = call.body
        inputs = self._inputs(body.get("input"))
        if inputs is None:
            return self._json(call, {"error": "invalid input type"}, 400)
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if (held := self._admit(call, model)) is not None:
            return held
        if not inputs:
            return self._json(call, {"model": name, "embeddings": []})
        embeddings = [embedding_vector(model.name, text, model.dimensions) for text in inputs]
        payload = {
            "model": name,
            "embeddings": embeddings,
            "total_duration": 1_500_000 + self._load_ns(call) + int(call.knobs.ttft * 1e9),
            "load_duration": self._load_ns(call),
            "prompt_eval_count": sum(_tokens(text) for text in inputs),
        }
        return self._json(call, payload, latency=call.knobs.ttft)

    def _embeddings(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model")
        if not name:
            return self._json(call, {"error": "model is required"}, 400)
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if (held := self._admit(call, model)) is not None:
            return held
        prompt = body.get("prompt") or ""
        if not prompt:
            return self._json(call, {"embedding": []})
        vector = embedding_vector(model.name, str(prompt), model.dimensions, normalize=False)
        return self._json(call, {"embedding": vector}, latency=call.knobs.ttft)

    # ------------------------------------------------------------------ OpenAI routes

    def _openai_model(self, model: FakeModel) -> dict[str, Any]:
        owner = model.name.split("/")[0] if "/" in model.name else "library"
        return {
            "id": model.name,
            "object": "model",
            "created": int(model.modified_at),
            "owned_by": owner,
        }

    def _v1_models(self, call: _Call) -> bytes | int:
        data = [self._openai_model(m) for m in self.models] or None  # Go's nil slice
        return self._json(call, {"object": "list", "data": data}, latency=call.knobs.ttft)

    def _v1_model(self, call: _Call) -> bytes | int:
        name = unquote(call.path[len("/v1/models/") :])
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        entry = {**self._openai_model(model), "id": name}
        return self._json(call, entry, latency=call.knobs.ttft)

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _v1_chat(self, call: _Call) -> bytes | int:
        body = call.body
        messages = body.get("messages")
        if not messages:
            return self._bad_body(call, "[] is too short - 'messages'")
        name = body.get("model")
        model = self.model(name)
        if not name:
            return self._fail(call, 400, "model is required")
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support chat')
        if (held := self._admit(call, model)) is not None:
            return held
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        prompt_tokens = _tokens(text) + 10
        ident = f"chatcmpl-{int(hashlib.sha256(text.encode()).hexdigest(), 16) % 999}"
        tool = self._function_tool(body)
        if tool is not None:
            return self._v1_chat_tool(call, ident, prompt_tokens, *tool)
        pieces = self._pieces(call.knobs.chunks)
        usage = self._usage(prompt_tokens, len(pieces))
        if not body.get("stream"):
            completion = {
                "id": ident,
                "object": "chat.completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            return self._v1_chat_chunk(ident, str(name), choices, extra)

        def choice(content: str, finish: str | None) -> dict[str, Any]:
            delta = {"role": "assistant", "content": content}
            return {"index": 0, "delta": delta, "finish_reason": finish}

        groups = [[chunk([choice(p, None)])] for p in pieces]
        final = [chunk([choice("", "stop")])]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            final.append(chunk([], {"usage": usage}))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_chat_chunk(
        self,
        ident: str,
        name: str,
        choices: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(self.clock.seconds()),
            "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **(extra or {}),
        }
        return b"data: " + go_json(payload) + b"\n\n"

    def _v1_chat_tool(
        self,
        call: _Call,
        ident: str,
        prompt_tokens: int,
        tool_name: str,
        arguments: dict[str, Any],
    ) -> bytes | int:
        """A chat completion that calls ``tool_name``; streamed, the call's id, type and name
        come first, then its arguments in ``max(2, chunks)`` pieces, as OpenAI streams them."""
        body = call.body
        name = str(body.get("model"))
        text = go_json(arguments).decode()
        pieces = _split(text, max(2, call.knobs.chunks))
        usage = self._usage(prompt_tokens, len(pieces))
        call_id = self._next_id("call_", 8)
        call.knobs.chunks = len(pieces) + 1  # as long as the stream takes
        if not body.get("stream"):
            function = {"name": tool_name, "arguments": text}
            tool_call = {"id": call_id, "type": "function", "function": function}
            message = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
            completion = {
                "id": ident,
                "object": "chat.completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
            return self._v1_chat_chunk(ident, name, choices)

        opening = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": tool_name, "arguments": ""},
        }
        groups = [[chunk({"role": "assistant", "content": "", "tool_calls": [opening]})]]
        for piece in pieces:
            argument = {"index": 0, "function": {"arguments": piece}}
            groups.append([chunk({"tool_calls": [argument]})])
        final = [chunk({"role": "assistant", "content": ""}, "tool_calls")]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            final.append(self._v1_chat_chunk(ident, name, [], {"usage": usage}))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_completions(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support generate')
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):  # 0.5.4 takes a single string prompt only
            kind = _GO_TYPES.get(type(prompt), "value")
            return self._bad_body(
                call,
                f"json: cannot unmarshal {kind} into Go struct field "
                "CompletionRequest.prompt of type string",
            )
        if (held := self._admit(call, model)) is not None:
            return held
        prompt_tokens = _tokens(prompt) + 10
        pieces = self._pieces(call.knobs.chunks)
        usage = self._usage(prompt_tokens, len(pieces))
        ident = f"cmpl-{int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 999}"
        if not body.get("stream"):
            completion = {
                "id": ident,
                "object": "text_completion",
                "created": int(self.clock.seconds()),
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": "".join(pieces), "index": 0, "finish_reason": "stop"}],
                "usage": usage,
            }
            return self._json(call, completion, latency=self._generation_latency(call))
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None) -> bytes:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": int(self.clock.seconds()),
                "choices": choices,
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if chunk_usage is not None:
                payload["usage"] = chunk_usage
            return b"data: " + go_json(payload) + b"\n\n"

        zero = self._usage(0, 0) if with_usage else None  # 0.5.4 puts zeros on every chunk

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "finish_reason": finish}

        groups = [[chunk([choice(p, None)], zero)] for p in pieces]
        final = [chunk([choice("", "stop")], zero)]
        if with_usage:
            final.append(chunk([], usage))
        final.append(b"data: [DONE]\n\n")
        groups.append(final)
        return self._stream(call, SSE, groups)

    def _v1_embeddings(self, call: _Call) -> bytes | int:
        body = call.body
        raw_input = body.get("input")
        if raw_input == "":
            raw_input = [""]
        if raw_input is None or raw_input == []:
            return self._bad_body(call, "invalid input")
        inputs = self._inputs(raw_input)
        if inputs is None:
            return self._fail(call, 400, "invalid input type")
        encoding = str(body.get("encoding_format") or "float").lower()
        if encoding not in ("float", "base64"):
            message = (
                f"Invalid value for 'encoding_format' = {body.get('encoding_format')}. "
                "Supported values: ['float', 'base64']."
            )
            return self._bad_body(call, message)
        name = body.get("model")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f'model "{name}" not found, try pulling it first')
        if (held := self._admit(call, model)) is not None:
            return held
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_vector(model.name, text, model.dimensions)
            embedding: Any = floats_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        tokens = sum(_tokens(text) for text in inputs)
        payload = {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._json(call, payload, latency=call.knobs.ttft)

    # ------------------------------------------------------------------ Anthropic (>= 0.14.0)

    def _messages(self, call: _Call) -> bytes | int:
        """``POST /v1/messages`` as Ollama's Anthropic middleware answers it."""
        body = call.body
        error = _field_type_error(
            body,
            "MessagesRequest",
            (
                ("model", str, "string"),
                ("max_tokens", int, "int"),
                ("messages", list, "[]anthropic.MessageParam"),
                ("stream", bool, "bool"),
            ),
        )
        if error is not None:
            return self._bad_body(call, error)
        name = body.get("model")
        if not name:
            return self._bad_body(call, "model is required")
        max_tokens = body.get("max_tokens") or 0
        if max_tokens <= 0:
            return self._bad_body(call, "max_tokens is required and must be positive")
        messages = body.get("messages") or []
        if not messages:
            return self._bad_body(call, "messages is required")
        model = self.model(name)
        if model is None:
            return self._fail(call, 404, f"model '{name}' not found")
        if model.embedding:
            return self._fail(call, 400, f'"{name}" does not support chat')
        if (held := self._admit(call, model)) is not None:
            return held
        texts = [_anthropic_text(body.get("system"))]
        texts += [_anthropic_text(m.get("content")) for m in messages if isinstance(m, dict)]
        input_tokens = _tokens(" ".join(texts)) + 10
        ident = self._next_id("msg_")
        knobs = call.knobs
        tool = self._anthropic_tool(body)
        if tool is None:
            wanted = knobs.chunks
            knobs.chunks = min(wanted, max_tokens)
            pieces = self._pieces(knobs.chunks)
            stop_reason = "max_tokens" if wanted > max_tokens else "end_turn"
            block: dict[str, Any] = {"type": "text", "text": "".join(pieces)}
            opening_block: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        else:
            tool_name, arguments = tool
            pieces = _split(go_json(arguments).decode(), max(2, knobs.chunks))
            knobs.chunks = len(pieces)
            stop_reason = "tool_use"
            tool_id = self._next_id("toolu_")
            block = {"type": "tool_use", "id": tool_id, "name": tool_name, "input": arguments}
            opening_block = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        usage = {"input_tokens": input_tokens, "output_tokens": len(pieces)}
        message: dict[str, Any] = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return self._json(call, message, latency=self._generation_latency(call))

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + go_json(payload) + b"\n\n"

        started = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        opening = [
            event("message_start", {"type": "message_start", "message": started}),
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": opening_block},
            ),
            event("ping", {"type": "ping"}),
        ]
        groups = [
            [event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})]
            for d in deltas
        ]
        closing = [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
        if groups:
            groups[0] = opening + groups[0]
        else:
            closing = opening + closing
        groups.append(closing)
        call.request.setHeader(b"cache-control", b"no-cache")
        return self._stream(call, SSE, groups)

    def _lmstudio_models(self, call: _Call) -> bytes | int:
        """LM Studio's ``/api/v0/models``: OpenAI ids plus type, arch and load state."""
        data = [
            {
                "id": m.name,
                "object": "model",
                "type": "embeddings" if m.embedding else "llm",
                "publisher": "fake",
                "arch": m.family,
                "compatibility_type": m.format,
                "quantization": m.quantization_level,
                "state": "loaded" if m.name in self.state.loaded else "not-loaded",
                "max_context_length": m.context_length,
            }
            for m in self.models
        ]
        return self._json(call, {"object": "list", "data": data}, latency=call.knobs.ttft)

    # ------------------------------------------------------------------ bulk routes

    def _upload(self, call: _Call) -> bytes | int:
        last = self.requests[-1]
        payload = {"bytes": last.body_size, "sha256": last.body_sha256}
        return self._json(call, payload, latency=call.knobs.ttft)

    def _big(self, call: _Call) -> int:
        request = call.request
        values = parse_qs(request.uri.decode("latin-1").partition("?")[2]).get("bytes", ["0"])
        try:
            size = max(0, int(values[0]))
        except ValueError:
            size = 0
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        BigBody(request, size).start()
        return NOT_DONE_YET

    # ------------------------------------------------------------------ control API

    def _control(self, request: Request, path: str) -> bytes:
        request.setHeader(b"content-type", JSON_UTF8)
        method = request.method
        if path == "/_fake/requests" and method == b"GET":
            wanted = parse_qs(request.uri.decode("latin-1").partition("?")[2]).get("path")
            recorded = [asdict(r) for r in self.requests if not wanted or r.path in wanted]
            return json.dumps(recorded).encode()
        if path == "/_fake/reset" and method == b"POST":
            self.reset()
            return b'{"ok":true}'
        if path == "/_fake/state" and method in (b"GET", b"POST"):
            if method == b"POST":
                assert request.content is not None
                raw = request.content.read()
                try:
                    update = json.loads(raw) if raw.strip() else {}
                    if not isinstance(update, dict):
                        raise ValueError("the state update must be a JSON object")
                    self.apply_state(update)
                except (ValueError, TypeError) as e:
                    request.setResponseCode(400)
                    return json.dumps({"error": str(e)}).encode()
            return json.dumps(self.describe_state()).encode()
        request.setResponseCode(404)
        return json.dumps({"error": f"no control route {method.decode()} {path}"}).encode()


@implementer(IPushProducer)
class BigBody:
    """Writes ``size`` bytes in 64 KiB pieces, pausing whenever the client's socket is full."""

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.left = size
        self.paused = False
        self.stopped = False
        self._pumping = False
        self._block = b"x" * BIG_WRITE

    def start(self) -> None:
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.left > 0 and not self.paused and not self.stopped:
                piece = min(self.left, BIG_WRITE)
                self.left -= piece
                self.request.write(self._block if piece == BIG_WRITE else self._block[:piece])
        finally:
            self._pumping = False
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.stopped = True


class FakeSite(Site):
    """A Site that counts accepted connections (to show a proxy reuses them); no access log."""

    def __init__(self, fake: FakeOllama, reactor: Any = None) -> None:
        try:  # keep form bodies out of request.args (Twisted >= 25)
            super().__init__(fake, reactor=reactor, parsePOSTFormSubmission=False)
        except TypeError:
            super().__init__(fake, reactor=reactor)
        self.fake = fake

    def buildProtocol(self, addr: Any) -> Any:
        self.fake.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    parser = argparse.ArgumentParser(description="a fake Ollama server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--loaded", default="", help="comma-separated models loaded at start")
    parser.add_argument("--name", default="fake", help="prefix of the generated text")
    parser.add_argument(
        "--version",
        default=DEFAULT_VERSION,
        help="what /api/version says; from 0.14.0 on, /v1/messages is served",
    )
    parser.add_argument(
        "--openai-only", action="store_true", help="only /v1/*, /health and /api/v0/models"
    )
    parser.add_argument(
        "--no-lmstudio-api", action="store_true", help="with --openai-only: no /api/v0/models"
    )
    parser.add_argument("--require-token", default=None, help="401 unless 'Bearer <token>'")
    parser.add_argument("--chunks", type=int, default=None, help="default chunk count")
    parser.add_argument("--delay-ms", type=float, default=None, help="default chunk spacing")
    parser.add_argument("--ttft-ms", type=float, default=None, help="default time to first")
    parser.add_argument("--health", choices=HEALTH_MODES, default="ok")
    cost = parser.add_argument_group("cost model (0: off)")
    cost.add_argument("--capacity", type=int, default=0, help="parallel generation slots")
    cost.add_argument("--max-queue", type=int, default=0, help="queued requests before a 503")
    cost.add_argument("--load-ms", type=float, default=0, help="time to load a model")
    cost.add_argument("--max-loaded", type=int, default=0, help="models loaded at once (LRU)")
    cost.add_argument("--token-ms", type=float, default=0, help="extra time per chunk")
    args = parser.parse_args(argv)
    reactor: Any = global_reactor

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    fake = FakeOllama(
        reactor,
        [FakeModel(n) for n in args.models.split(",") if n],
        name=args.name,
        version=args.version,
        openai_only=args.openai_only,
        lmstudio_api=not args.no_lmstudio_api,
    )
    update: dict[str, Any] = {
        "loaded": [n for n in args.loaded.split(",") if n],
        "health": args.health,
        **{key: getattr(args, key) for key in COST_KEYS},
    }
    if args.chunks is not None:
        update["default_chunks"] = args.chunks
    if args.delay_ms is not None:
        update["default_delay_ms"] = args.delay_ms
    if args.ttft_ms is not None:
        update["default_ttft_ms"] = args.ttft_ms
    fake.apply_state(update)
    fake.required_token = args.require_token
    try:
        port = reactor.listenTCP(args.port, FakeSite(fake), interface="127.0.0.1")
    except CannotListenError as e:
        print(f"fake ollama: cannot listen: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()  # Twisted's own SIGTERM/SIGINT handlers stop it
    return 0


if __name__ == "__main__":
    sys.exit(main())
