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
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from olla.config import ClientKey
from olla.fleet.endpoints import Endpoint
from olla.manage.calls import BlobCheck, BlobUpload, Call, ProgressCall, ReplyCall
from olla.manage.createshape import ShapeError, for_version, is_new_style, is_old_style
from olla.manage.manager import FleetManager
from olla.manage.targets import ENDPOINTS_HEADER, Refusal, Selection
from olla.manage.upstream import HostFailed
from olla.proxy.exchange import request_size
from olla.proxy.headers import request_headers_for_upstream
from olla.proxy.resource import BadTarget, remove_dot_segments
from olla.util.errors import Dialect, write_error

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
    """The management routes in front of ``inner`` (a provider route's ``ProxyResource``)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, inner: IResource, manager: FleetManager) -> None:
        super().__init__()
        self._inner = inner
        self._manager = manager

    def render(self, request: Request) -> int | bytes:
        path = _management_path(request)
        if path is None:
            answer: int | bytes = self._inner.render(request)
            return answer
        why = self._manager.refusal(request)
        if why is not None:
            self._refused(request, path, 403, why)
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
            self._refused(request, path, e.status, str(e))
        return NOT_DONE_YET

    def _refused(self, request: Request, path: bytes, status: int, why: str) -> None:
        """A call answered before any target was asked: logged as every call is."""
        operation = ROUTES.get(path, ("blob",))[0]
        self._log.info(
            "model management: {operation} by {client} refused {status}: {why}",
            operation=operation,
            client=_client(request),
            status=status,
            why=why,
            result=why,
            management=True,
        )
        write_error(request, status, why, dialect=Dialect.OLLAMA)

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
            if isinstance(chosen, Refusal):
                raise BadRequest(chosen.message, chosen.status)
            self._progress(request, operation, model, chosen, document)

    def _where_model_is(
        self, request: Request, operation: str, model: str, missing: str, document: Any
    ) -> None:
        """``copy``, ``delete``, ``push``: the candidates' lists read again, then the call goes
        where the model is."""
        manager = self._manager
        candidates = manager.select(request, operation)
        if isinstance(candidates, Refusal):
            raise BadRequest(candidates.message, candidates.status)

        def chosen(_: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            targets = manager.select(
                request,
                operation,
                has_model=manager.has_model(model),
                missing=missing,
                one=operation == "push",
            )
            if isinstance(targets, Refusal):
                self._refused(request, ROUTE_PATHS[operation], targets.status, targets.message)
                return
            if operation == "push":
                self._progress(request, operation, model, targets, document)
                return
            label = model if operation == "delete" else f"{model} -> {document['destination']}"
            call: Call = ReplyCall(
                manager.fleet,
                request,
                operation,
                label,
                targets.targets,
                _client(request),
                method=request.method,
                path=ROUTE_PATHS[operation],
                body=json.dumps(document).encode(),
                headers=_headers(request, b"application/json"),
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

        ProgressCall(
            self._manager.fleet,
            request,
            operation,
            model,
            chosen.targets,
            _client(request),
            path=ROUTE_PATHS[operation],
            bodies=body,
            headers=_headers(request, b"application/json"),
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
        if isinstance(chosen, Refusal):
            raise BadRequest(chosen.message, chosen.status)
        fleet = self._manager.fleet
        upstream_path = BLOBS + digest.encode()
        if request.method == b"HEAD":
            headers = _headers(request, None)
            BlobCheck(
                fleet,
                request,
                digest,
                chosen.targets,
                _client(request),
                path=upstream_path,
                headers=headers,
            ).start()
            return
        content = request.content
        if content is None:
            raise BadRequest("missing request body")
        BlobUpload(
            fleet,
            request,
            digest,
            chosen.targets,
            _client(request),
            path=upstream_path,
            headers=_headers(request, b"application/octet-stream"),
            content=content,
            size=request_size(request),
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
    size = request_size(request)
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


def _client(request: Request) -> str:
    """Who asked, for the log: the client key's name, or the client's address."""
    key = getattr(request, "client_key", None)
    address = getattr(request, "client_ip", None) or getattr(
        request.getClientAddress(), "host", "unknown"
    )
    return f"key {key.name} ({address})" if isinstance(key, ClientKey) else str(address)


def _headers(request: Request, content_type: bytes | None) -> Headers:
    """What every target is sent: the client's headers as the proxy forwards them (no
    credentials, forwarding headers added), with ``content_type``."""
    peer = getattr(request.getClientAddress(), "host", None)
    peer_ip = peer.encode() if isinstance(peer, str) else b"unknown"
    resolved = getattr(request, "client_ip", None)
    client_ip = resolved.encode() if isinstance(resolved, str) and resolved else peer_ip
    headers = Headers()
    for name, values in request_headers_for_upstream(
        list(request.requestHeaders.getAllRawHeaders()),
        client_ip=client_ip,
        peer_ip=peer_ip,
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
