# -*- test-case-name: tests.test_manage -*-
"""Ollama's model-management routes, answered once for the fleet (``model_management``).

``ManagementResource`` stands in front of a provider route's ``ProxyResource`` (``/olla/ollama/``
and ``/olla/proxy/``): it answers ``POST /api/pull``, ``/api/push``, ``/api/create``,
``/api/copy``, ``DELETE /api/delete`` and ``HEAD|POST /api/blobs/<digest>`` and hands every
other request to the proxy. For each call, in order:

1. who may (``FleetManager.refusal``); anyone else gets a 403;
2. the body, checked as Ollama checks it (400 in Ollama's words);
3. the targets (``olla.manage.targets``); for ``copy``, ``delete`` and ``push`` the endpoints'
   model lists are read again first, so "where the model is" is true now;
4. the call itself (``olla.manage.calls``).

Each call leaves one record and one log line, as every answer olla makes itself: the front's
(``OllaSite.report``), from what the call writes in its ``RequestContext`` (the operation,
the model, the endpoints asked, why it was refused or failed).
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.fleet.endpoints import Endpoint
from olla.front.context import answer_error, context_of
from olla.manage.calls import Asked, BlobCheck, BlobUpload, Call, ProgressCall, ReplyCall
from olla.manage.createshape import ShapeError, for_version, is_new_style, is_old_style
from olla.manage.manager import FleetManager
from olla.manage.targets import ENDPOINTS_HEADER, Selection
from olla.manage.upstream import HostFailed
from olla.proxy.headers import request_headers_for_upstream
from olla.proxy.resource import BadTarget, remove_dot_segments
from olla.proxy.routing import Rejection

#: path -> (operation, method)
ROUTES: dict[bytes, tuple[str, bytes]] = {
    b"/api/pull": ("pull", b"POST"),
    b"/api/push": ("push", b"POST"),
    b"/api/create": ("create", b"POST"),
    b"/api/copy": ("copy", b"POST"),
    b"/api/delete": ("delete", b"DELETE"),
}
BLOBS = b"/api/blobs/"
_DIGEST = re.compile(r"\Asha256[:-][0-9a-fA-F]{64}\Z")
#: the largest management request body read as JSON (a create's template and messages)
JSON_LIMIT = 4 * 1024 * 1024


class BadRequest(ValueError):
    """A management request olla refuses before any target sees it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ManagementResource(Resource):
    """The management routes in front of ``inner`` (the provider route ``route``'s
    ``ProxyResource``)."""

    isLeaf = True

    def __init__(self, inner: IResource, manager: FleetManager, route: str) -> None:
        super().__init__()
        self._inner = inner
        self._manager = manager
        self._route = route

    def render(self, request: Request) -> int | bytes:
        path = _management_path(request)
        if path is None:
            answer: int | bytes = self._inner.render(request)
            return answer
        context = context_of(request)
        context.route = self._route
        context.operation = ROUTES.get(path, ("blob",))[0]
        why = self._manager.refusal(context, request.getHeader(b"host"))
        if why is not None:
            self._refused(request, 403, why)
            return NOT_DONE_YET
        try:
            if path.startswith(BLOBS):
                self._blob(request, path)
            else:
                self._operation(request, path)
        except BadRequest as e:
            if e.status == 405:
                allowed = str(e).rpartition(" takes ")[2].replace(" or ", ", ")
                request.setHeader(b"Allow", allowed.encode())
            self._refused(request, e.status, str(e))
        return NOT_DONE_YET

    @staticmethod
    def _refused(request: Request, status: int, why: str) -> None:
        """A call answered before any target was asked (its record says why)."""
        answer_error(request, status, why)

    # ------------------------------------------------------------------ the operations

    def _operation(self, request: Request, path: bytes) -> None:
        operation, method = ROUTES[path]
        _allow(request, method)
        document = _json_body(request)
        if operation == "copy":
            source = _text(document, "source")
            destination = _text(document, "destination")
            if not source or not destination:
                raise BadRequest("source and destination are required")
            self._where_model_is(
                request, operation, source, f'model "{source}" not found', document
            )
            return
        model = _text(document, "model") or _text(document, "name")
        if not model:
            raise BadRequest("invalid model name")
        stream = document.get("stream")
        if operation != "delete" and stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        if operation == "delete":
            self._where_model_is(request, operation, model, f"model '{model}' not found", document)
        elif operation == "push":
            self._where_model_is(request, operation, model, f"model '{model}' not found", document)
        else:
            if operation == "create" and not (is_old_style(document) or is_new_style(document)):
                raise BadRequest("neither 'from' or 'files' was specified (nor a 'modelfile')")
            chosen = self._manager.select(request, operation)
            if isinstance(chosen, Rejection):
                raise BadRequest(chosen.message, chosen.status)
            self._progress(request, operation, model, chosen, document)

    def _where_model_is(
        self, request: Request, operation: str, model: str, missing: str, document: Any
    ) -> None:
        """``copy``, ``delete``, ``push``: the candidates' lists read again, then the call goes
        where the model is."""
        manager = self._manager
        candidates = manager.select(request, operation)
        if isinstance(candidates, Rejection):
            raise BadRequest(candidates.message, candidates.status)

        context = context_of(request)

        def chosen(_: object) -> None:
            if request.finished or context.gone:
                return
            targets = manager.select(
                request,
                operation,
                has_model=manager.has_model(model),
                missing=missing,
                one=operation == "push",
            )
            if isinstance(targets, Rejection):
                self._refused(request, targets.status, targets.message)
                return
            if operation == "push":
                self._progress(request, operation, model, targets, document)
                return
            label = model if operation == "delete" else f"{model} -> {document['destination']}"
            asked = Asked(
                operation,
                label,
                targets.targets,
                ROUTE_PATHS[operation],
                _headers(request, b"application/json"),
            )
            call: Call = ReplyCall(
                manager.fleet,
                request,
                asked,
                method=request.method,
                body=json.dumps(document).encode(),
            )
            call.start()

        manager.reread(candidates.targets).addCallback(chosen)

    def _progress(
        self, request: Request, operation: str, model: str, chosen: Selection, document: Any
    ) -> None:
        upstream_document = {**document, "stream": True}
        registry = self._manager.registry

        def body(endpoint: Endpoint) -> bytes:
            sent = upstream_document
            if operation == "create":
                try:
                    sent = for_version(sent, registry.state(endpoint).version)
                except ShapeError as e:
                    raise HostFailed(str(e), 400) from None
            return json.dumps(sent).encode()

        headers = _headers(request, b"application/json")
        ProgressCall(
            self._manager.fleet,
            request,
            Asked(operation, model, chosen.targets, ROUTE_PATHS[operation], headers),
            bodies=body,
            stream=document.get("stream") is not False,
            skipped=chosen.skipped,
        ).start()

    def _blob(self, request: Request, path: bytes) -> None:
        digest = path[len(BLOBS) :].decode("utf-8", "replace")
        if request.method not in (b"HEAD", b"POST"):
            raise BadRequest(f"{path.decode()} takes HEAD or POST", 405)
        if not _DIGEST.match(digest):
            raise BadRequest("invalid digest format")
        chosen = self._manager.select(request, "upload a blob to")
        if isinstance(chosen, Rejection):
            raise BadRequest(chosen.message, chosen.status)
        fleet = self._manager.fleet
        upstream_path = BLOBS + digest.encode()
        if request.method == b"HEAD":
            asked = Asked(
                "check blob", digest, chosen.targets, upstream_path, _headers(request, None)
            )
            BlobCheck(fleet, request, asked, method=b"HEAD", body=None).start()
            return
        content = request.content
        if content is None:
            raise BadRequest("missing request body")
        headers = _headers(request, b"application/octet-stream")
        BlobUpload(
            fleet,
            request,
            Asked("upload blob", digest, chosen.targets, upstream_path, headers),
            content=content,
            size=context_of(request).body_size,
        ).start()


#: operation -> the path asked of each target
ROUTE_PATHS = {operation: path for path, (operation, _) in ROUTES.items()}


def _management_path(request: Request) -> bytes | None:
    """The management route ``request`` asks for (dot segments removed), or None."""
    try:
        path = remove_dot_segments(list(request.postpath or [])).rstrip(b"/")
    except BadTarget:
        return None  # the proxy refuses it in its own words
    if path in ROUTES or (path.startswith(BLOBS) and len(path) > len(BLOBS)):
        return path
    return None


def _allow(request: Request, method: bytes) -> None:
    if request.method != method:
        raise BadRequest(f"{request.path.decode('latin-1')} takes {method.decode()}", 405)


def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or ``BadRequest`` in Ollama's words."""
    size = context_of(request).body_size
    if size > JSON_LIMIT:
        raise BadRequest(f"request body too large for a management call ({size} bytes)", 413)
    content = request.content
    raw = b""
    if content is not None:
        content.seek(0)
        raw = content.read(size)
        content.seek(0)
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"invalid JSON body: {e}") from None
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object")
    return document


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return (value or "").strip()


def _headers(request: Request, content_type: bytes | None) -> Headers:
    """What every target is sent: the client's headers as the proxy forwards them (no
    credentials, forwarding headers added), with ``content_type``."""
    context = context_of(request)
    headers = Headers()
    for name, values in request_headers_for_upstream(
        list(request.requestHeaders.getAllRawHeaders()),
        client_ip=context.client_ip.encode(),
        peer_ip=context.peer.encode(),
        scheme=b"https" if request.isSecure() else b"http",
        host=request.getHeader(b"host"),
        model=None,
    ):
        if name.lower() not in (b"content-type", ENDPOINTS_HEADER.lower()):
            headers.setRawHeaders(name, values)
    if content_type is not None:
        given = request.getHeader(b"content-type")
        keep = content_type == b"application/octet-stream" and given is not None
        headers.setRawHeaders(b"Content-Type", [given if keep and given else content_type])
    return headers
