# -*- test-case-name: tests.test_manage -*-
"""One model-management call across its targets, from the first host call to the one answer.

A call starts a coroutine per target (:class:`olla.manage.upstream.Upstream`), follows the
client (gone: every host call is cancelled, as Ollama cancels a pull whose client left), and
once every target has ended:

1. asks the targets for their model lists again when the call changed them, so the next
   ``/api/tags`` or ``/olla/models`` shows the change (and, after a delete, drops what routing
   remembered about the model there: loaded state, load times, sticky pins);
2. answers in Ollama's shape (see each kind below).

What the call was (operation, model, targets) and why it failed go into the request's
``RequestContext``: the front's record of the request, and its one log line, carry them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from olla.fleet.endpoints import Endpoint
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import StickySessions
from olla.front.context import context_of
from olla.manage.progress import Document, HostResult, Outcomes, ProgressMerger
from olla.manage.targets import ENDPOINTS_HEADER, name_forms
from olla.manage.upstream import Reply, Upstream, failure_of
from olla.util.responses import JSON_UTF8

NDJSON = b"application/x-ndjson"


@dataclass
class Fleet:
    """What every call needs of the fleet; built once by ``olla.daemon.app``."""

    upstream: Upstream
    catalogue: ModelCatalogue
    #: re-read one endpoint's model list now (None: model discovery is off)
    rediscover: Callable[[Endpoint], Deferred[None]] | None = None
    sticky: StickySessions | None = None


@dataclass(frozen=True)
class Asked:
    """What one management call asks of each of its targets."""

    operation: str  # "pull", "copy", "check blob"...
    #: what the call is about, for its record: a model, ``a -> b`` for a copy, a digest
    model: str
    targets: tuple[Endpoint, ...]
    path: bytes
    headers: Headers


def _line(document: Document) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


class Call(ABC):
    """One management call: a host coroutine per target (each asked as ``asked`` says), then
    :meth:`answer`."""

    #: whether the call changes the targets' model lists (they are read again after it)
    changes_models = True

    def __init__(self, fleet: Fleet, request: Request, asked: Asked) -> None:
        self.fleet = fleet
        self.request = request
        operation = self.operation = asked.operation
        model = self.model = asked.model
        self.targets = asked.targets
        self.path = asked.path
        self.headers = asked.headers
        self.outcomes = Outcomes(operation, [t.name for t in self.targets])
        self.gone = False
        self._running: list[Deferred[HostResult]] = []
        # for the request's record
        self._context = context = context_of(request)
        context.operation = operation
        context.model = model or None
        context.endpoints = tuple(t.name for t in self.targets)
        request.notifyFinish().addErrback(self._client_left)

    # ------------------------------------------------------------------ subclasses say

    @abstractmethod
    async def host(self, endpoint: Endpoint) -> HostResult:
        """Do the call's part on ``endpoint``; raising is that host's failure."""

    def host_ended(self, endpoint: Endpoint, result: HostResult) -> None:
        self.outcomes.ended(result)

    @abstractmethod
    def answer(self) -> None:
        """Write the one answer (every target has ended)."""

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        for endpoint in self.targets:
            d: Deferred[HostResult] = Deferred.fromCoroutine(self._host(endpoint))
            self._running.append(d)
        DeferredList(list(self._running), consumeErrors=True).addCallback(self._all_ended)

    async def _host(self, endpoint: Endpoint) -> HostResult:
        try:
            result = await self.host(endpoint)
        except Exception:
            reason, status = failure_of(Failure())
            result = HostResult(endpoint.name, False, reason, status)
        self.host_ended(endpoint, result)
        return result

    def _client_left(self, _: Failure) -> None:
        self.gone = True
        for running in self._running:
            running.cancel()

    def _all_ended(self, _: object) -> None:
        self._after_change().addBoth(self._answer)

    def _after_change(self) -> Deferred[None]:
        rediscover = self.fleet.rediscover
        if not self.changes_models or rediscover is None:
            return succeed(None)
        runs = [rediscover(e) for e in self.targets]
        done: Deferred[None] = DeferredList(runs, consumeErrors=True).addCallback(
            lambda _: self.changed()
        )
        return done

    def changed(self) -> None:  # noqa: B027 (a hook: only a delete does more)
        """The targets' lists were read again after the call (a delete forgets more)."""

    def _answer(self, _: object) -> None:
        if self.gone or self.request.channel is None:
            return  # its record was made when the client left
        error = self.outcomes.final().get("error")
        if isinstance(error, str):
            self._context.error = error
        self.answer()

    # ------------------------------------------------------------------ answers

    def head(self, status: int, content_type: bytes | None) -> None:
        request = self.request
        request.setResponseCode(status)
        if content_type is not None:
            request.setHeader(b"Content-Type", content_type)
        names = ",".join(t.name for t in self.targets).encode()
        request.setHeader(ENDPOINTS_HEADER, names)

    def json(self, status: int, document: Document) -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        self.head(status, JSON_UTF8)
        self.request.setHeader(b"Content-Length", b"%d" % len(body))
        self.request.write(body)
        self.request.finish()

    def empty(self, status: int) -> None:
        self.head(status, None)
        self.request.setHeader(b"Content-Length", b"0")
        self.request.finish()

    def outcome(self, ok_status: int = 200) -> None:
        """Empty with ``ok_status`` when every host succeeded, else the error naming them."""
        if self.outcomes.failed:
            self.json(self.outcomes.status(), self.outcomes.final())
        else:
            self.empty(ok_status)


class ProgressCall(Call):
    """``pull``, ``push`` and ``create``: each host's progress stream merged into one.

    Streamed (the default), the answer's head goes out with the first line a host sends; a
    call whose every host refused it before that (a bad name is a 400 everywhere) is answered
    like ``stream: false``: one JSON object, with the hosts' status.
    """

    def __init__(
        self,
        fleet: Fleet,
        request: Request,
        asked: Asked,
        *,
        bodies: Callable[[Endpoint], bytes],
        stream: bool,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(fleet, request, asked)
        self.merger = ProgressMerger(self.operation, [t.name for t in self.targets])
        self.outcomes = self.merger.outcomes
        self.changes_models = self.operation != "push"
        self._bodies = bodies
        self._stream = stream
        self._committed = False
        self._pending: list[Document] = [
            {"status": f"{name}: skipped ({status})"} for name, status in skipped
        ]

    async def host(self, endpoint: Endpoint) -> HostResult:
        def on_line(document: Document) -> None:
            self._emit(self.merger.line(endpoint.name, document), commit=True)

        body = self._bodies(endpoint)
        await self.fleet.upstream.stream(endpoint, self.path, body, self.headers, on_line)
        return HostResult(endpoint.name, True)

    def host_ended(self, endpoint: Endpoint, result: HostResult) -> None:
        if result.ok:
            self._emit(self.merger.ended(endpoint.name))
        else:
            self._emit(self.merger.failed(endpoint.name, result.reason, result.status))

    def _emit(self, lines: list[Document], commit: bool = False) -> None:
        if not self._stream or self.gone:
            return
        if not self._committed:
            self._pending += lines
            if not commit:
                return
            self._committed = True
            self.head(200, NDJSON)
            lines, self._pending = self._pending, []
        for line in lines:
            self.request.write(_line(line))

    def answer(self) -> None:
        if self._committed:
            self.request.write(_line(self.merger.final()))
            self.request.finish()
        else:
            self.json(self.merger.status(), self.merger.final())


class ReplyCall(Call):
    """``copy`` and ``delete``: one short call per host; 200 with no body when every host
    answered 200, else the error naming each host that did not."""

    def __init__(
        self, fleet: Fleet, request: Request, asked: Asked, *, method: bytes, body: bytes | None
    ) -> None:
        super().__init__(fleet, request, asked)
        self._method = method
        self._body = body

    async def host(self, endpoint: Endpoint) -> HostResult:
        reply = await self.fleet.upstream.call(
            endpoint, self._method, self.path, self._body, self.headers
        )
        if reply.status == 200:
            return HostResult(endpoint.name, True)
        return HostResult(endpoint.name, False, self.why(reply), reply.status)

    def why(self, reply: Reply) -> str:
        """What a host's answer other than 200 says went wrong."""
        return reply.error

    def changed(self) -> None:
        if self.operation != "delete":
            return
        forms = name_forms(self.model)
        removed = [t for t in self.targets if t.name in self.outcomes.succeeded]
        for endpoint in removed:
            for name in forms:
                self.fleet.catalogue.model_removed(endpoint, name)
        if self.fleet.sticky is not None and removed:
            self.fleet.sticky.model_removed(forms, removed)

    def answer(self) -> None:
        self.outcome()


class BlobCheck(ReplyCall):
    """``HEAD /api/blobs/<digest>`` (the model is the digest, the method ``HEAD``): 200 only
    when every target has the blob (so a client uploads it when one lacks it), 404 when one
    does not."""

    changes_models = False

    def why(self, reply: Reply) -> str:
        return "does not have it" if reply.status == 404 else f"answered HTTP {reply.status}"

    def answer(self) -> None:
        failed = self.outcomes.failed
        lacking = failed and all(r.status == 404 for r in failed)
        self.empty(404 if lacking else self.outcomes.status())


class BlobUpload(Call):
    """``POST /api/blobs/<digest>``: the body streamed to every target that lacks the blob;
    201 when it was created somewhere, 200 when every target had it, else the error."""

    changes_models = False

    def __init__(
        self, fleet: Fleet, request: Request, asked: Asked, *, content: IO[bytes], size: int
    ) -> None:
        super().__init__(fleet, request, asked)
        self._content = content
        self._size = size
        self._created = False

    async def host(self, endpoint: Endpoint) -> HostResult:
        upstream = self.fleet.upstream
        reply = await upstream.upload(endpoint, self.path, self._content, self._size, self.headers)
        if reply.status in (200, 201):
            self._created = self._created or reply.status == 201
            return HostResult(endpoint.name, True)
        return HostResult(endpoint.name, False, reply.error, reply.status)

    def answer(self) -> None:
        self.outcome(201 if self._created else 200)
