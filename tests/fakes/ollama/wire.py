"""The wire format shared by every API: constants, the model and state records, Go-JSON
encoding, request recording and knobs, the per-request objects (``_Exchange``, ``_Call``) and
``WireMixin``, the ``FakeOllama`` methods that write answers (JSON, errors, streams)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

if TYPE_CHECKING:
    from .cost import _Job
    from .server import FakeOllama

#: request bodies above this are recorded as size and sha256 only
BIG_BODY_RECORD = 1024 * 1024
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
DELETE = frozenset({b"DELETE"})


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
    #: what /api/show lists (None: ["embedding"] or ["completion"])
    capabilities: list[str] | None = None
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
    prompt_ms: float = 0.0  # time per prompt token not in this host's prompt cache
    prompt_cache: int = 0  # conversations whose prompt prefix this host keeps (LRU)
    # model management (see manage.py): how a pull goes
    pull_speed: float = 0.0  # bytes per second of the weights layer (0: at once)
    pull_tick_ms: float = 100.0  # one progress line per layer this often (Ollama's ticker)
    pull_size: int = 0  # bytes of a pulled model's weights (0: the model's default size)
    pull_fail_after: int | None = None  # bytes after which an error line ends the pull
    pull_die_after: int | None = None  # bytes after which the connection is cut
    #: what /api/show tells: "full" (capabilities and context_length, as newer Ollama), or
    #: "bare" (neither, as an Ollama from before capabilities that reports no context)
    show_info: str = "full"


#: the cost model's state keys (``FakeState`` fields) and their types
COST_KEYS: dict[str, type[int] | type[float]] = {
    "capacity": int,
    "max_queue": int,
    "load_ms": float,
    "max_loaded": int,
    "token_ms": float,
    "prompt_ms": float,
    "prompt_cache": int,
}


#: the pull knobs' state keys (``FakeState`` fields) and their types (None: unset)
PULL_KEYS: dict[str, type[int] | type[float]] = {
    "pull_speed": float,
    "pull_tick_ms": float,
    "pull_size": int,
    "pull_fail_after": int,
    "pull_die_after": int,
}

#: request bodies recorded as size and sha256 only, whatever their size (uploads)
STREAMED_PATHS = ("/upload", "/api/blobs/")

#: what ``show_info`` may be
SHOW_INFO_MODES = ("full", "bare")


class KnobError(ValueError):
    pass


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
    prompt_charged: bool = False  # the prompt cache model has charged its prompt time

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


class WireMixin:
    """Recording, knobs and the writers every handler answers with."""

    def _record(self, request: Request, path: str) -> bytes:
        """Record the request; return its body (``b""`` for big uploads, hashed as they stream)."""
        content = request.content
        assert content is not None
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        digest = hashlib.sha256()
        pieces: list[bytes] = []
        keep = size <= BIG_BODY_RECORD or not path.startswith(STREAMED_PATHS)
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

    def _inputs(self, value: object) -> list[str] | None:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        return None
