# -*- test-case-name: tests.test_anthropic -*-
"""``/olla/anthropic/v1/{messages,messages/count_tokens,models}``: the Messages API front door.

Each request is validated here and planned by the same stage as every proxied request
(``olla.proxy.plan``: readiness, sticky session, refresh-on-miss, routing). What is
Anthropic's is only the shape of each candidate (``olla.anthropic.exchange``): the hosts that
speak Messages natively first, passed through, then every other host, translated; an ordinary
``Exchange`` walks them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.anthropic.exchange import Passthrough, Tally, Translation
from olla.anthropic.passthrough import chat_completions_path, passthrough_endpoints
from olla.anthropic.request import InvalidRequest
from olla.anthropic.stats import Fallback, TranslatorStats
from olla.anthropic.translator import AnthropicTranslator
from olla.config import AnthropicTranslatorConfig
from olla.fleet.endpoints import Endpoint
from olla.front.context import answer_error, context_of
from olla.profiles import ProfileRegistry
from olla.proxy.exchange import Exchange, ProxyDeps
from olla.proxy.plan import Candidate, Plan, Planned, PlanQuery
from olla.proxy.routing import ProviderRoute, RoutePlan, RouteQuery
from olla.util.responses import json_response

MESSAGES = b"/v1/messages"
COUNT_TOKENS = b"/v1/messages/count_tokens"
MODELS = b"/v1/models"
#: the path routing sees for every Messages request
_MESSAGES_PATH = MESSAGES.decode()


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
        context_of(request).route = self._route.prefix
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
        answer_error(request, status, message)
        return NOT_DONE_YET

    def _read_body(self, request: Request) -> tuple[bytes, Any] | None:
        """The body and its JSON, or None after answering 413/400."""
        limit = self._config.max_message_size
        if context_of(request).body_size > limit:
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

        def shape(planned: Planned) -> Plan | None:
            native = self._passthrough(planned.routed, body)
            counting = {
                ep: (path + "/count_tokens").encode()
                for ep, path in native.items()
                if self._counts_tokens(ep)
            }
            if not counting:
                estimate = {"input_tokens": self._translator.estimate_tokens(body)}
                request.write(self._json(request, estimate))
                request.finish()
                return None
            # not a translation: kept out of the translators page
            stats = TranslatorStats("count_tokens")
            tally = Tally(stats, self._deps.clock, streaming=False, fallback=None)
            passthrough = Passthrough(tally, counting)
            candidates = tuple(Candidate(ep, passthrough) for ep in counting)
            return Plan.of(planned, candidates, passthrough)

        self._exchange(request, model, raw, lambda: body, COUNT_TOKENS).start(shape)
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

        def shape(planned: Planned) -> Plan:
            """Every host that can serve, natives first (passed through to their own messages
            path), then the others (translated): when the natives fail, the request is
            translated on the rest."""
            routed = planned.routed
            native = self._passthrough(routed, body)
            fallback = None
            if not self._config.passthrough_enabled:
                fallback = Fallback.PASSTHROUGH_DISABLED
            elif not routed.candidates:
                fallback = Fallback.NO_COMPATIBLE_ENDPOINTS
            elif not native:
                fallback = Fallback.CANNOT_PASSTHROUGH
            tally = Tally(
                self._stats,
                self._deps.clock,
                streaming=bool(body.get("stream")),
                fallback=fallback,
            )
            passthrough = Passthrough(tally, {ep: path.encode() for ep, path in native.items()})
            translation = Translation(
                tally,
                translator=self._translator,
                openai_body=openai_body,
                input_tokens=self._translator.estimate_tokens(body),
                paths=lambda ep: chat_completions_path(self._profiles.get(ep.type)),
            )
            candidates = [Candidate(ep, passthrough) for ep in native]
            candidates += [
                Candidate(ep, translation) for ep in routed.candidates if ep not in native
            ]
            return Plan.of(planned, tuple(candidates), translation)

        # the raw body: for an alias, rewritten per endpoint on passthrough
        self._exchange(request, model, raw, lambda: body, MESSAGES).start(shape)

    def _exchange(
        self,
        request: Request,
        model: str,
        raw: bytes,
        document: Callable[[], object],
        target: bytes,
    ) -> Exchange:
        query = PlanQuery(
            RouteQuery(self._route, _MESSAGES_PATH, model),
            header=request.getHeader,
            document=document,
        )
        return Exchange(self._deps, context_of(request), request, query, target, small_body=raw)

    def _passthrough(self, routed: RoutePlan, body: dict[str, Any]) -> dict[Endpoint, str]:
        """The candidates that take ``body`` as it is (in routing's order, with their
        path); none when passthrough is off."""
        if not self._config.passthrough_enabled or not routed.candidates:
            return {}
        registry = self._deps.registry
        return passthrough_endpoints(
            list(routed.candidates), self._profiles, lambda ep: registry.state(ep).version, body
        )
