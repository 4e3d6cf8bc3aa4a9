# -*- test-case-name: tests.test_proxy -*-
"""The provider routes ``/olla/<prefix>/<rest>``: listings olla answers itself, the rest proxied.

One ``Exchange`` (``olla.proxy.exchange``) lives per proxied request: it plans the request
(``olla.proxy.plan``), every candidate shaped ``Verbatim``, and walks the candidates, moving on
only before any response byte; once the backend's status line is relayed, the request is
committed.
"""

from __future__ import annotations

import json
import re

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.fleet.listings import ollama_ps, ollama_tags, openai_models
from olla.fleet.sticky import parse_body
from olla.front.context import RequestContext, answer_error, context_of
from olla.proxy.exchange import Exchange, ProxyDeps
from olla.proxy.inspect import PARSE_LIMIT, SCAN_WINDOW, extract_model
from olla.proxy.needs import body_needs
from olla.proxy.plan import Plan, PlanQuery
from olla.proxy.routing import ProviderRoute, RouteQuery
from olla.proxy.shape import VERBATIM
from olla.util.responses import json_response

#: Ollama's model-management calls make no sense across a fleet.
MANAGEMENT_PATHS = frozenset(
    {b"/api/pull", b"/api/push", b"/api/create", b"/api/copy", b"/api/delete"}
)

#: Model lists olla answers itself on a provider route.
_LISTINGS = frozenset({b"/v1/models", b"/api/tags", b"/api/ps"})

__all__ = ["MANAGEMENT_PATHS", "ProviderRoute", "ProxyDeps", "ProxyResource"]


class ProxyResource(Resource):
    """Serves one provider prefix: ``/olla/<prefix>/<rest>`` -> ``<endpoint>/<rest>``."""

    isLeaf = True

    def __init__(self, route: ProviderRoute, deps: ProxyDeps) -> None:
        super().__init__()
        self._route = route
        self._deps = deps

    def render(self, request: Request) -> int | bytes:
        context = context_of(request)
        context.route = self._route.prefix
        try:
            target = _target_path(request)
        except BadTarget as e:
            answer_error(request, 400, str(e))
            return NOT_DONE_YET
        if target is None:
            # "/olla/ollama" without its slash: clients expect the subtree
            request.setResponseCode(301)
            request.setHeader(b"Location", request.uri.split(b"?", 1)[0] + b"/")
            return b""
        path = target.split(b"?", 1)[0]
        if path.rstrip(b"/") in MANAGEMENT_PATHS:
            answer_error(request, 501, "model management operations not supported by proxy")
            return NOT_DONE_YET
        if self._is_live_ps(path):
            self._answer_ps(request, context)
            return NOT_DONE_YET
        listing = self._listing(path)
        if listing is not None:
            return _json(request, listing)
        body = _peek_body(request, context.body_size)
        model = extract_model(body, path, self._route.model_fields)
        small = body if len(body) <= PARSE_LIMIT else None
        route = self._route
        text_path = path.decode("utf-8", "replace")
        needs = body_needs(small, text_path) if route.by_path else frozenset()
        query = PlanQuery(
            RouteQuery(route, text_path, model, needs),
            header=request.getHeader,
            document=lambda: parse_body(small),
        )
        exchange = Exchange(self._deps, context, request, query, target, small_body=small)
        exchange.start(lambda planned: Plan.uniform(planned, VERBATIM))
        return NOT_DONE_YET

    def _is_live_ps(self, path: bytes) -> bool:
        return (
            path.rstrip(b"/") == b"/api/ps"
            and "ollama" in self._route.types
            and self._deps.refresh_loaded is not None
        )

    def _answer_ps(self, request: Request, context: RequestContext) -> None:
        """``/api/ps`` from every Ollama endpoint, asked now; one that fails keeps its last
        answer."""
        deps = self._deps
        assert deps.refresh_loaded is not None
        ollamas = deps.registry.routable(frozenset({"ollama"}))

        def answer(_: object) -> None:
            if request.finished or context.gone:
                return
            body = json.dumps(ollama_ps(deps.catalogue, ollamas)).encode()
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body)
            request.finish()

        deps.refresh_loaded(ollamas).addCallback(answer)

    def _listing(self, path: bytes) -> dict[str, object] | None:
        """Model lists olla answers from its catalogue instead of asking one backend."""
        path = path.rstrip(b"/")
        if path not in _LISTINGS:
            return None
        deps = self._deps
        if path == b"/v1/models":
            endpoints = deps.registry.routable(self._route.types)
            return openai_models(deps.catalogue, endpoints, deps.clock.seconds())
        if "ollama" not in self._route.types:
            return None  # the backend's own answer (or its 404)
        ollamas = deps.registry.routable(frozenset({"ollama"}))
        if path == b"/api/tags":
            return ollama_tags(deps.catalogue, ollamas)
        return ollama_ps(deps.catalogue, ollamas)


def _json(request: Request, payload: object) -> bytes:
    return json_response(request, payload, request.code)


class BadTarget(ValueError):
    """A request path olla will not send to any backend."""


#: what Agent accepts in a URI (``twisted.web.client``): printable ASCII, no spaces
_SAFE_TARGET = re.compile(rb"\A[\x21-\x7e]*\Z")


def _target_path(request: Request) -> bytes | None:
    """The path and query below ``/olla/<prefix>``, or None when the slash is missing.

    Built from the raw URI (the client's percent-encoding is kept as sent) with its dot
    segments removed (RFC 3986 §5.2.4, ``%2e`` counting as a dot), so it can never climb
    above the endpoint's base path. Raises ``BadTarget`` for a path that would.
    """
    assert request.prepath is not None
    raw_path, has_query, query = request.uri.partition(b"?")
    segments = raw_path.split(b"/")[1:]  # twisted.web consumed len(prepath) of them
    consumed = len(request.prepath)
    if len(segments) <= consumed:
        return None  # "/olla/ollama" without its slash
    target = remove_dot_segments(segments[consumed:])
    if has_query:
        target += b"?" + query
    if not _SAFE_TARGET.match(target):
        raise BadTarget("request path has characters that are not allowed in a URL")
    return target


def remove_dot_segments(segments: list[bytes]) -> bytes:
    """``/`` + the segments without ``.`` and ``..`` (``%2e`` is a dot); ``BadTarget`` if a
    ``..`` would climb above the start."""
    out: list[bytes] = []
    for segment in segments:
        plain = segment.replace(b"%2e", b".").replace(b"%2E", b".")
        if plain == b".":
            continue
        if plain == b"..":
            if not out:
                raise BadTarget("request path climbs above the route")
            out.pop()
            continue
        out.append(segment)
    last = segments[-1].replace(b"%2e", b".").replace(b"%2E", b".") if segments else b""
    trailing = b"/" if last in (b".", b"..") and out else b""
    return b"/" + b"/".join(out) + trailing


def _peek_body(request: Request, size: int) -> bytes:
    """The body (or its first window, when large) for inspection; leaves the file at 0."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(SCAN_WINDOW if size > PARSE_LIMIT else -1)
    content.seek(0)
    return data
