"""``FakeOllama``, the root resource that composes the API mixins and dispatches requests;
``FakeSite`` and the ``main()`` entry point of ``python -m tests.fakes.ollama``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .anthropic import AnthropicMixin
from .bulk import BulkMixin
from .control import ControlMixin
from .cost import CostMixin, PromptCache, _Scheduler
from .llamacpp import LlamaCpp, LlamaCppMixin
from .lmstudio import LMStudioMixin
from .manage import BLOB_PREFIX, ManageMixin
from .native import NativeMixin
from .openai import OpenAIMixin
from .wire import (
    ANTHROPIC_MIN_VERSION,
    COST_KEYS,
    DEFAULT_MODELS,
    DEFAULT_VERSION,
    DELETE,
    GET,
    GET_HEAD,
    HEALTH_MODES,
    HEALTH_PATHS,
    JSON_PLAIN,
    JSON_UTF8,
    MESSAGES_PATH,
    POST,
    SHOW_INFO_MODES,
    TEXT_PLAIN,
    TEXT_UTF8,
    FakeModel,
    FakeState,
    KnobError,
    RecordedRequest,
    WireMixin,
    _Call,
    _Exchange,
    _Route,
    parse_go_json,
    version_tuple,
)


class FakeOllama(
    ControlMixin,
    NativeMixin,
    OpenAIMixin,
    AnthropicMixin,
    LMStudioMixin,
    ManageMixin,
    LlamaCppMixin,
    BulkMixin,
    CostMixin,
    WireMixin,
    Resource,
):
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
        llamacpp: LlamaCpp | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.name = name
        self.version = version
        self.openai_only = openai_only
        #: in OpenAI-only mode, also LM Studio's /api/v0/models (off: a plain OpenAI server)
        self.lmstudio_api = lmstudio_api
        #: llama.cpp's server instead: OpenAI-only, plus /props and /slots (see ``LlamaCpp``)
        self.llama = llamacpp
        if llamacpp is not None:
            self.openai_only, self.lmstudio_api = True, False
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
        #: blobs uploaded (``POST /api/blobs/<digest>``): digest -> size
        self.blobs: dict[str, int] = {}
        self._sequence = 0  # numbers the generated message and tool call ids
        self._routes = self._build_routes()
        self.scheduler = _Scheduler(self)
        self.prompt_cache = PromptCache()

    @property
    def resource(self) -> FakeOllama:
        return self

    @property
    def speaks_anthropic(self) -> bool:
        """Whether ``/v1/messages`` is served: Ollama 0.14.0 and later."""
        return version_tuple(self.version) >= ANTHROPIC_MIN_VERSION

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
            if self.llama is not None:
                routes["/props"] = _Route(GET, self._props)
                routes["/slots"] = _Route(GET, self._slots)
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
                    "/api/pull": _Route(POST, self._pull, "api.PullRequest"),
                    "/api/push": _Route(POST, self._push, "api.PushRequest"),
                    "/api/create": _Route(POST, self._create, "api.CreateRequest"),
                    "/api/copy": _Route(POST, self._copy, "api.CopyRequest"),
                    "/api/delete": _Route(DELETE, self._delete, "api.DeleteRequest"),
                }
            )
        return routes

    def _route(self, method: bytes, path: str) -> _Route | None:
        route = self._routes.get(path)
        if route is None and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            route = _Route(GET, self._v1_model)
        if route is None and path.startswith(BLOB_PREFIX) and not self.openai_only:
            route = _Route(frozenset({b"HEAD", b"POST"}), self._blob)
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
    parser.add_argument(
        "--llamacpp",
        action="store_true",
        help="llama.cpp's server: OpenAI-only, /props (total_slots: --capacity), /v1/models meta",
    )
    parser.add_argument("--llamacpp-slots", action="store_true", help="with --llamacpp: /slots")
    parser.add_argument("--require-token", default=None, help="401 unless 'Bearer <token>'")
    parser.add_argument("--chunks", type=int, default=None, help="default chunk count")
    parser.add_argument("--delay-ms", type=float, default=None, help="default chunk spacing")
    parser.add_argument("--ttft-ms", type=float, default=None, help="default time to first")
    parser.add_argument("--health", choices=HEALTH_MODES, default="ok")
    parser.add_argument(
        "--show-info",
        choices=SHOW_INFO_MODES,
        default="full",
        help="/api/show with capabilities and context_length (full), or neither (bare)",
    )
    cost = parser.add_argument_group("cost model (0: off)")
    cost.add_argument("--capacity", type=int, default=0, help="parallel generation slots")
    cost.add_argument("--max-queue", type=int, default=0, help="queued requests before a 503")
    cost.add_argument("--load-ms", type=float, default=0, help="time to load a model")
    cost.add_argument("--max-loaded", type=int, default=0, help="models loaded at once (LRU)")
    cost.add_argument("--token-ms", type=float, default=0, help="extra time per chunk")
    cost.add_argument(
        "--prompt-ms", type=float, default=0, help="time per prompt token not cached on the host"
    )
    cost.add_argument(
        "--prompt-cache", type=int, default=0, help="conversation prefixes cached per host (LRU)"
    )
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
        llamacpp=LlamaCpp(slots_endpoint=args.llamacpp_slots) if args.llamacpp else None,
    )
    update: dict[str, Any] = {
        "loaded": [n for n in args.loaded.split(",") if n],
        "health": args.health,
        "show_info": args.show_info,
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
