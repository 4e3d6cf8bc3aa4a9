# -*- test-case-name: tests.test_anthropic -*-
"""``/olla/anthropic/v1/{messages,messages/count_tokens,models}``: the Messages API front door.

Each request is validated here and routed once; the plan's candidates decide passthrough or
translation (``olla.anthropic.exchange``), and an ordinary ``Exchange`` with that shape walks
them like every other proxied request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.anthropic.exchange import Passthrough, Translation
from olla.anthropic.passthrough import chat_completions_path, passthrough_endpoints
from olla.anthropic.request import InvalidRequest
from olla.anthropic.stats import Fallback, TranslatorStats
from olla.anthropic.translator import AnthropicTranslator
from olla.config import AnthropicTranslatorConfig
from olla.fleet.endpoints import Endpoint
from olla.profiles import ProfileRegistry
from olla.proxy.exchange import Exchange, ProxyDeps, request_size
from olla.proxy.routing import ProviderRoute, RoutePlan, RouteQuery
from olla.proxy.shape import IExchangeShape
from olla.util.errors import Dialect, write_error
from olla.util.responses import json_response

MESSAGES = b"/v1/messages"
COUNT_TOKENS = b"/v1/messages/count_tokens"
MODELS = b"/v1/models"


class AnthropicResource(Resource):
    """Serves ``/olla/anthropic/...`` (registered only when the translator is enabled)."""

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        deps: ProxyDeps,
        profiles: ProfileRegistry,
        config: AnthropicTranslatorConfig,
        stats: TranslatorStats,
    ) -> None:
        super().__init__()
        self._deps = deps
        self._profiles = profiles
        self._config = config
        self._stats = stats
        self._translator = AnthropicTranslator()
        self._route = ProviderRoute(
            prefix="anthropic", types=frozenset(p.name for p in profiles), label="anthropic"
        )
        self._started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deps.clock.seconds()))

    def render(self, request: Request) -> int | bytes:
        assert request.postpath is not None
        path = b"/" + b"/".join(request.postpath).rstrip(b"/")
        method = request.method
        if path == MODELS and method in (b"GET", b"HEAD"):
            return self._models(request)
        if path in (MESSAGES, COUNT_TOKENS):
            if method != b"POST":
                request.setHeader(b"Allow", b"POST")
                return self._error(request, 405, f"method {method.decode('latin-1')} not allowed")
            read = self._read_body(request)
            if read is None:
                return NOT_DONE_YET
            raw, body = read
            if path == COUNT_TOKENS:
                return self._count_tokens(request, raw, body)
            self._messages(request, raw, body)
            return NOT_DONE_YET
        return self._error(
            request, 404, f"not found: /olla/anthropic{path.decode('utf-8', 'replace')}"
        )

    # ------------------------------------------------------------------ helpers

    def _error(self, request: Request, status: int, message: str) -> int:
        write_error(request, status, message, dialect=Dialect.ANTHROPIC)
        return NOT_DONE_YET

    def _read_body(self, request: Request) -> tuple[bytes, Any] | None:
        """The body and its JSON, or None after answering 413/400."""
        limit = self._config.max_message_size
        if request_size(request) > limit:
            self._error(request, 413, f"request body exceeds {limit} bytes")
            return None
        assert request.content is not None
        request.content.seek(0)
        raw: bytes = request.content.read()
        request.content.seek(0)
        try:
            return raw, json.loads(raw)
        except RecursionError:
            self._error(request, 400, "invalid JSON body: nested too deeply")
        except (ValueError, UnicodeDecodeError) as e:
            self._error(request, 400, f"invalid JSON body: {e}")
        return None

    def _json(self, request: Request, payload: object) -> bytes:
        return json_response(request, payload, request.code, content_type=b"application/json")

    # ------------------------------------------------------------------ routes

    def _models(self, request: Request) -> bytes:
        deps = self._deps
        names = [info.name for info, _ in deps.catalogue.merged(deps.registry.routable())]
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": self._started_at}
            for n in names
        ]
        return self._json(
            request,
            {
                "data": data,
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            },
        )

    def _count_tokens(self, request: Request, raw: bytes, body: Any) -> int | bytes:
        """Asked of a backend that counts natively, else estimated here (§8.5)."""
        if not isinstance(body, dict):
            return self._error(request, 400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._json(request, {"input_tokens": self._translator.estimate_tokens(body)})

        def count(plan: RoutePlan) -> None:
            if _gone(request):
                return
            native, path, _ = self._passthrough(plan, body)
            counting = tuple(ep for ep in native if self._counts_tokens(ep))
            if not counting:
                estimate = {"input_tokens": self._translator.estimate_tokens(body)}
                request.write(self._json(request, estimate))
                request.finish()
                return
            shape = Passthrough(
                TranslatorStats("count_tokens"),  # not a translation: kept out of the page
                self._deps.clock,
                (path + "/count_tokens").encode(),
            )
            exchange = self._exchange(request, model, shape)
            exchange.small_body = raw
            exchange.start(RoutePlan(counting, plan.decision))

        self._routed(model).addCallback(count)
        return NOT_DONE_YET

    def _counts_tokens(self, endpoint: Endpoint) -> bool:
        profile = self._profiles.get(endpoint.type)
        return (
            profile is not None
            and profile.anthropic.token_count
            and not {"no_token_counting", "token_counting_404"} & set(profile.anthropic.limitations)
        )

    def _messages(self, request: Request, raw: bytes, document: Any) -> None:
        try:
            body = self._translator.validate(document)
            openai_body = self._translator.translate_request(body)
        except InvalidRequest as e:
            self._error(request, 400, str(e))
            return
        except RecursionError:  # a tool schema or content nested beyond reason
            self._error(request, 400, "request body is nested too deeply")
            return
        model: str = body["model"]
        sticky = self._deps.sticky
        affinity = sticky.for_request(request, model, lambda: body) if sticky is not None else None

        def send(plan: RoutePlan) -> None:
            if _gone(request):
                return
            native, path, fallback = self._passthrough(plan, body)
            self._stats.started(
                passthrough=bool(native), streaming=bool(body.get("stream")), fallback=fallback
            )
            clock = self._deps.clock
            shape: Passthrough | Translation
            if native:
                shape = Passthrough(self._stats, clock, path.encode())
                plan = RoutePlan(native, plan.decision)
            else:
                shape = Translation(
                    self._stats,
                    clock,
                    translator=self._translator,
                    openai_body=openai_body,
                    input_tokens=self._translator.estimate_tokens(body),
                    paths=lambda ep: chat_completions_path(self._profiles.get(ep.type)),
                )
            exchange = self._exchange(request, model, shape)
            exchange.small_body = raw  # for an alias, rewritten per endpoint on passthrough
            exchange.affinity = affinity
            exchange.start(plan)

        self._routed(model, affinity.pinned if affinity is not None else None).addCallback(send)

    def _exchange(self, request: Request, model: str, shape: IExchangeShape) -> Exchange:
        return Exchange(
            self._deps, self._route, request, MESSAGES, model, Dialect.ANTHROPIC, shape=shape
        )

    def _routed(self, model: str, pinned: Endpoint | None = None) -> Deferred[RoutePlan]:
        """Route once (after startup's first probes and lists, like every proxied request);
        the exchange then walks these candidates, whichever way it speaks to them. ``pinned``:
        where the request's sticky session was last served."""
        deps = self._deps
        query = RouteQuery(route=self._route, path=MESSAGES.decode(), model=model, pinned=pinned)
        return deps.registry.when_ready(deps.startup_wait).addCallback(
            lambda _: deps.router.plan(query)
        )

    def _passthrough(
        self, plan: RoutePlan, body: dict[str, Any]
    ) -> tuple[tuple[Endpoint, ...], str, Fallback | None]:
        """The candidates that take ``body`` as it is (in routing's order, with their path),
        or why none does."""
        if not self._config.passthrough_enabled:
            return (), "", Fallback.PASSTHROUGH_DISABLED
        if not plan.candidates:
            return (), "", Fallback.NO_COMPATIBLE_ENDPOINTS
        registry = self._deps.registry
        native, path = passthrough_endpoints(
            list(plan.candidates), self._profiles, lambda ep: registry.state(ep).version, body
        )
        if not native:
            return (), "", Fallback.CANNOT_PASSTHROUGH
        return tuple(native), path, None


def _gone(request: Request) -> bool:
    """The client left (or was answered) while its request waited for startup to finish."""
    return bool(request.finished or getattr(request, "_disconnected", False))
