"""A faithful fake Ollama: the real wire format (captured from Ollama 0.5.4), with knobs.

Use it in memory (``FakeOllama(clock).resource``, every delay on the given clock) or as a
process: ``python -m tests.fakes.ollama --port 0`` binds 127.0.0.1 and prints
``LISTENING <port>``.

Knobs per request, first match wins: headers ``X-Fake-Chunks``, ``X-Fake-Delay-Ms``,
``X-Fake-Ttft-Ms``, ``X-Fake-Status``, ``X-Fake-Hang``, ``X-Fake-Drop-After``,
``X-Fake-Malformed``, or the same as query parameters (``chunks``, ``delay_ms``, ``ttft_ms``,
``status``, ``hang``, ``drop_after``, ``malformed``); the chunk count also from the body's
``options.num_predict`` / ``max_tokens``. Server-wide state (health, models, loaded, defaults)
is settable from Python and over ``POST /_fake/state``; ``GET /_fake/requests`` lists what was
received (``/_fake/*`` calls are not recorded).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

BIG_BODY_RECORD = 1024 * 1024
EMBED_DIM = 8


@dataclass
class FakeModel:
    name: str
    size: int = 2019393189
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def embedding(self) -> bool:
        return "embed" in self.name or "minilm" in self.name

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "bert" if self.embedding else self.family,
            "families": ["bert" if self.embedding else self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]
    body: str
    body_size: int
    body_sha256: str
    time: float


@dataclass
class Knobs:
    chunks: int
    delay: float
    ttft: float
    status: int | None = None
    hang: bool = False
    drop_after: int | None = None
    malformed: bool = False


@dataclass
class FakeState:
    health: str = "ok"  # ok | fail | hang
    default_chunks: int = 3
    default_delay_ms: float = 0.0
    status: int | None = None
    loaded: set[str] = field(default_factory=set)


def _now_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 6) for b in digest[:EMBED_DIM]]


@implementer(IPushProducer)
class _BigBody:
    """Writes N bytes in 64 KiB pieces, pausing when the client's socket is full."""

    def __init__(self, request: Request, size: int, clock: IReactorTime) -> None:
        self.request = request
        self.left = size
        self.clock = clock
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while self.left > 0 and not self.paused and not self.stopped:
            piece = min(self.left, 65536)
            self.left -= piece
            self.request.write(b"x" * piece)
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.clock.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True


class FakeOllama(Resource):
    """The fake server; itself the root resource (``.resource`` for symmetry)."""

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime,
        models: list[FakeModel] | None = None,
        *,
        name: str = "fake",
        version: str = "0.5.4",
        openai_only: bool = False,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.name = name
        self.version = version
        self.openai_only = openai_only
        self.models: list[FakeModel] = (
            models
            if models is not None
            else [FakeModel("llama3.2:latest"), FakeModel("nomic-embed-text:latest")]
        )
        self.state = FakeState()
        self.requests: list[Recorded] = []
        self.connections = 0  # TCP connections accepted (process mode counts them)
        self.required_token: str | None = None  # answer 401 unless "Bearer <token>"

    @property
    def resource(self) -> FakeOllama:
        return self

    # ------------------------------------------------------------------ dispatch

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        assert request.content is not None
        if path.startswith("/_fake/"):
            return self._control(request, path)
        body = self._record(request, path)
        routes: dict[str, Callable[[Request, Any, Knobs], bytes | int]] = {
            "/v1/models": self._v1_models,
            "/v1/chat/completions": self._v1_chat,
            "/v1/completions": self._v1_completions,
            "/v1/embeddings": self._v1_embeddings,
            "/upload": self._upload,
            "/big": self._big,
        }
        if self.required_token is not None:
            given = request.getHeader(b"authorization")
            if given != f"Bearer {self.required_token}".encode():
                request.setResponseCode(401)
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"error":"unauthorized"}'
        if self.openai_only:
            routes["/health"] = lambda r, b, k: self._json(r, {"status": "ok"})
            routes["/api/v0/models"] = self._v1_models  # LM Studio's richer list, same ids
        else:
            routes.update(
                {
                    "/": self._root,
                    "/api/version": self._version,
                    "/api/tags": self._tags,
                    "/api/ps": self._ps,
                    "/api/show": self._show,
                    "/api/chat": self._chat,
                    "/api/generate": self._generate,
                    "/api/embed": self._embed,
                    "/api/embeddings": self._embeddings,
                }
            )
        handler = routes.get(path)
        if handler is None and path.startswith("/v1/models/"):
            handler = self._v1_model
        if handler is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"404 page not found"
        knobs = self._knobs(request, body)
        if knobs.hang:
            return NOT_DONE_YET
        if knobs.status is not None and path not in ("/", "/api/version", "/health"):
            return self._error(request, knobs.status, f"fake error {knobs.status}", path)
        if knobs.malformed:
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return b'{"model": "broken", "message": {'
        parsed: Any = None
        if request.method == b"POST" and path not in ("/upload",):
            try:
                parsed = json.loads(body) if body else {}
            except ValueError:
                return self._error(request, 400, "invalid character in request body", path)
            if not isinstance(parsed, dict):
                return self._error(request, 400, "request body must be an object", path)
        return handler(request, parsed, knobs)

    def _record(self, request: Request, path: str) -> bytes:
        assert request.content is not None
        request.content.seek(0, 2)
        size = request.content.tell()
        request.content.seek(0)
        digest = hashlib.sha256()
        kept = b""
        while True:
            piece = request.content.read(1024 * 1024)
            if not piece:
                break
            digest.update(piece)
            if size <= BIG_BODY_RECORD:
                kept += piece
        request.content.seek(0)
        try:
            text = kept.decode()
        except UnicodeDecodeError:
            text = base64.b64encode(kept).decode()
        headers = {
            k.decode().lower(): [v.decode("latin-1") for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(
            Recorded(
                method=request.method.decode(),
                path=path,
                query=request.uri.decode().partition("?")[2],
                headers=headers,
                body=text,
                body_size=size,
                body_sha256=digest.hexdigest(),
                time=self.clock.seconds(),
            )
        )
        return kept

    def _knobs(self, request: Request, body: bytes) -> Knobs:
        query = parse_qs(request.uri.decode().partition("?")[2])

        def knob(name: str, header: str) -> str | None:
            value = request.getHeader(header)
            if value is not None:
                return str(value)
            values = query.get(name)
            return values[0] if values else None

        chunks: int | None = None
        raw = knob("chunks", "x-fake-chunks")
        if raw is not None:
            chunks = int(raw)
        else:
            try:
                doc = json.loads(body) if body else {}
            except ValueError:
                doc = {}
            if isinstance(doc, dict):
                options = doc.get("options")
                if isinstance(options, dict) and isinstance(options.get("num_predict"), int):
                    chunks = options["num_predict"]
                elif isinstance(doc.get("max_tokens"), int):
                    chunks = doc["max_tokens"]
        delay = knob("delay_ms", "x-fake-delay-ms")
        ttft = knob("ttft_ms", "x-fake-ttft-ms")
        status = knob("status", "x-fake-status")
        drop = knob("drop_after", "x-fake-drop-after")
        return Knobs(
            chunks=max(1, chunks if chunks is not None else self.state.default_chunks),
            delay=float(delay) / 1000 if delay else self.state.default_delay_ms / 1000,
            ttft=float(ttft) / 1000 if ttft else 0.0,
            status=int(status) if status else self.state.status,
            hang=knob("hang", "x-fake-hang") in ("1", "true"),
            drop_after=int(drop) if drop else None,
            malformed=knob("malformed", "x-fake-malformed") in ("1", "true"),
        )

    # ------------------------------------------------------------------ helpers

    def _json(self, request: Request, payload: object, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return json.dumps(payload).encode()

    def _error(self, request: Request, status: int, message: str, path: str) -> bytes:
        if path.startswith("/v1/"):
            payload: object = {
                "error": {"message": message, "type": "api_error", "param": None, "code": None}
            }
        else:
            payload = {"error": message}
        return self._json(request, payload, status)

    def _model(self, name: object) -> FakeModel | None:
        return next((m for m in self.models if m.name == name), None)

    def _missing(self, request: Request, name: object, path: str) -> bytes:
        return self._error(request, 404, f'model "{name}" not found, try pulling it first', path)

    def _stream(
        self,
        request: Request,
        content_type: bytes,
        pieces: list[bytes],
        knobs: Knobs,
    ) -> int:
        """Write ``pieces`` one by one at ttft + i*delay from now (absolute, no drift)."""
        request.setHeader(b"Content-Type", content_type)
        start = self.clock.seconds()
        calls: list[IDelayedCall] = []
        gone = [False]

        def stop(_: object) -> None:
            gone[0] = True
            for call in calls:
                if call.active():
                    call.cancel()

        request.notifyFinish().addErrback(stop)

        def emit(i: int) -> None:
            if gone[0]:
                return
            if knobs.drop_after is not None and i == knobs.drop_after:
                gone[0] = True
                request.channel.transport.abortConnection()
                return
            request.write(pieces[i])
            if i + 1 == len(pieces):
                request.finish()
                return
            when = start + knobs.ttft + (i + 1) * knobs.delay
            calls.append(self.clock.callLater(max(0.0, when - self.clock.seconds()), emit, i + 1))

        if knobs.ttft > 0:
            calls.append(self.clock.callLater(knobs.ttft, emit, 0))
        else:
            request.write(b"")  # headers now, as Ollama does
            emit(0)
        return NOT_DONE_YET

    def _durations(self, count: int) -> dict[str, Any]:
        return {
            "total_duration": 1_000_000 * (count + 10),
            "load_duration": 1_000_000,
            "prompt_eval_count": 12,
            "prompt_eval_duration": 2_000_000,
            "eval_count": count,
            "eval_duration": 1_000_000 * count,
        }

    # ------------------------------------------------------------------ ollama routes

    def _root(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        if self.state.health == "hang":
            return NOT_DONE_YET
        if self.state.health == "fail":
            request.setResponseCode(500)
            return b"unhealthy"
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Ollama is running"

    def _version(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        if self.state.health != "ok":
            return self._root(request, body, knobs)
        return self._json(request, {"version": self.version})

    def _tag(self, model: FakeModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": "2026-11-01T10:00:00.000000000Z",
            "size": model.size,
            "digest": model.digest,
            "details": model.details(),
        }

    def _tags(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        return self._json(request, {"models": [self._tag(m) for m in self.models]})

    def _ps(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        loaded = [m for m in self.models if m.name in self.state.loaded]
        expires = _now_iso(self.clock.seconds() + 300)
        return self._json(
            request,
            {"models": [{**self._tag(m), "expires_at": expires, "size_vram": 0} for m in loaded]},
        )

    def _show(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        name = body.get("model") or body.get("name")
        model = self._model(name)
        if model is None:
            return self._json(request, {"error": f"model '{name}' not found"}, 404)
        return self._json(
            request,
            {
                "license": "",
                "modelfile": f"# Modelfile generated by fake\nFROM {model.name}\n",
                "parameters": "stop <|im_end|>",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {"general.architecture": model.details()["family"]},
                "modified_at": "2026-11-01T10:00:00.000000000Z",
                "capabilities": ["embedding"] if model.embedding else ["completion"],
            },
        )

    def _generation(self, request: Request, body: Any, knobs: Knobs, chat: bool) -> bytes | int:
        path = "/api/chat" if chat else "/api/generate"
        name = body.get("model")
        model = self._model(name)
        if model is None:
            return self._missing(request, name, path)
        if model.embedding and chat:
            return self._json(request, {"error": f'"{name}" does not support chat'}, 400)
        self.state.loaded.add(model.name)
        created = _now_iso(self.clock.seconds())
        if not chat and not body.get("prompt") and "stream" not in body:
            return self._json(
                request,
                {
                    "model": name,
                    "created_at": created,
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                },
            )

        def piece(text: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": name, "created_at": created}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            if done:
                out["done_reason"] = "stop"
                out.update(self._durations(knobs.chunks))
                if not chat:
                    out["context"] = [1, 2, 3]
            return out

        if body.get("stream") is False:
            text = "".join(f"{self.name}{i} " for i in range(knobs.chunks))
            return self._json(request, piece(text, True))
        pieces = [
            json.dumps(piece(f"{self.name}{i} ", False)).encode() + b"\n"
            for i in range(knobs.chunks)
        ]
        pieces.append(json.dumps(piece("", True)).encode() + b"\n")
        return self._stream(request, b"application/x-ndjson", pieces, knobs)

    def _chat(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        return self._generation(request, body, knobs, chat=True)

    def _generate(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        return self._generation(request, body, knobs, chat=False)

    def _embed(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        name = body.get("model")
        if self._model(name) is None:
            return self._missing(request, name, "/api/embed")
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        return self._json(
            request,
            {
                "model": name,
                "embeddings": [_vector(str(i)) for i in inputs],
                "total_duration": 1000,
                "load_duration": 100,
                "prompt_eval_count": len(inputs),
            },
        )

    def _embeddings(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        name = body.get("model")
        if self._model(name) is None:
            return self._missing(request, name, "/api/embeddings")
        return self._json(request, {"embedding": _vector(str(body.get("prompt", "")))})

    # ------------------------------------------------------------------ openai routes

    def _openai_model(self, model: FakeModel) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": 1761991200, "owned_by": "library"}

    def _v1_models(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        data = [self._openai_model(m) for m in self.models] or None
        return self._json(request, {"object": "list", "data": data})

    def _v1_model(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        name = request.path.decode()[len("/v1/models/") :]
        model = self._model(name)
        if model is None:
            return self._missing(request, name, "/v1/models")
        return self._json(request, self._openai_model(model))

    def _v1_generation(self, request: Request, body: Any, knobs: Knobs, chat: bool) -> bytes | int:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        name = body.get("model")
        model = self._model(name)
        if model is None:
            return self._missing(request, name, path)
        self.state.loaded.add(model.name)
        created = int(self.clock.seconds())
        object_name = "chat.completion" if chat else "text_completion"
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": knobs.chunks,
            "total_tokens": 12 + knobs.chunks,
        }

        def choice(text: str, finish: str | None, delta: bool) -> dict[str, Any]:
            if not chat:
                return {"text": text, "index": 0, "finish_reason": finish}
            key = "delta" if delta else "message"
            return {
                "index": 0,
                key: {"role": "assistant", "content": text},
                "finish_reason": finish,
            }

        if not body.get("stream"):
            text = "".join(f"{self.name}{i} " for i in range(knobs.chunks))
            return self._json(
                request,
                {
                    "id": "chatcmpl-1",
                    "object": object_name,
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [choice(text, "stop", False)],
                    "usage": usage,
                },
            )
        chunk_object = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[Any], extra: dict[str, Any] | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-1",
                "object": chunk_object,
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": choices,
                **(extra or {}),
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        pieces = [event([choice(f"{self.name}{i} ", None, True)]) for i in range(knobs.chunks)]
        pieces.append(event([choice("", "stop", True)]))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            pieces.append(event([], {"usage": usage}))
        pieces.append(b"data: [DONE]\n\n")
        return self._stream(request, b"text/event-stream", pieces, knobs)

    def _v1_chat(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        return self._v1_generation(request, body, knobs, chat=True)

    def _v1_completions(self, request: Request, body: Any, knobs: Knobs) -> bytes | int:
        return self._v1_generation(request, body, knobs, chat=False)

    def _v1_embeddings(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        name = body.get("model")
        if self._model(name) is None:
            return self._missing(request, name, "/v1/embeddings")
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector = _vector(str(text))
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        return self._json(
            request,
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            },
        )

    # ------------------------------------------------------------------ bulk routes

    def _upload(self, request: Request, body: Any, knobs: Knobs) -> bytes:
        last = self.requests[-1]
        return self._json(request, {"bytes": last.body_size, "sha256": last.body_sha256})

    def _big(self, request: Request, body: Any, knobs: Knobs) -> int:
        size = int(parse_qs(request.uri.decode().partition("?")[2]).get("bytes", ["0"])[0])
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % size)
        _BigBody(request, size, self.clock).start()
        return NOT_DONE_YET

    # ------------------------------------------------------------------ control API

    def _control(self, request: Request, path: str) -> bytes:
        assert request.content is not None
        if path == "/_fake/requests":
            return self._json(request, [asdict(r) for r in self.requests])
        if path == "/_fake/reset":
            self.requests.clear()
            return self._json(request, {"ok": True})
        if path == "/_fake/state":
            if request.method == b"POST":
                self.apply_state(json.loads(request.content.read() or b"{}"))
            return self._json(request, self.describe_state())
        request.setResponseCode(404)
        return b"no such control route"

    def apply_state(self, update: dict[str, Any]) -> None:
        if "health" in update:
            self.state.health = update["health"]
        if "models" in update:
            self.models = [FakeModel(name) for name in update["models"]]
        if "loaded" in update:
            self.state.loaded = set(update["loaded"])
        if "default_chunks" in update:
            self.state.default_chunks = int(update["default_chunks"])
        if "default_delay_ms" in update:
            self.state.default_delay_ms = float(update["default_delay_ms"])
        if "status" in update:
            self.state.status = update["status"]

    def describe_state(self) -> dict[str, Any]:
        return {
            "health": self.state.health,
            "models": [m.name for m in self.models],
            "loaded": sorted(self.state.loaded),
            "default_chunks": self.state.default_chunks,
            "default_delay_ms": self.state.default_delay_ms,
            "status": self.state.status,
            "connections": self.connections,
        }


class _CountingSite(Site):
    """Counts accepted connections (to show a proxy reuses them); no access log."""

    def __init__(self, fake: FakeOllama) -> None:
        super().__init__(fake)
        self.fake = fake

    def buildProtocol(self, addr: Any) -> Any:
        self.fake.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description="fake Ollama server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="llama3.2:latest,nomic-embed-text:latest")
    parser.add_argument("--loaded", default="")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--openai-only", action="store_true")
    parser.add_argument("--require-token", default=None)
    args = parser.parse_args(argv)
    fake = FakeOllama(
        reactor,  # type: ignore[arg-type]
        [FakeModel(n) for n in args.models.split(",") if n],
        name=args.name,
        openai_only=args.openai_only,
    )
    fake.state.loaded = {n for n in args.loaded.split(",") if n}
    fake.required_token = args.require_token
    site = _CountingSite(fake)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"LISTENING {port.getHost().port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: reactor.callFromThread(reactor.stop))  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    sys.exit(0)


if __name__ == "__main__":
    main()
