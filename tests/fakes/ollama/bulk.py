"""Bulk test routes (``BulkMixin``): ``POST|PUT /upload`` (size and sha256 of the body) and
``GET /big?bytes=N`` (a body written under back-pressure by ``BigBody``)."""

from __future__ import annotations

from urllib.parse import parse_qs

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from .wire import _Call

#: ``GET /big`` writes this much at a time
BIG_WRITE = 64 * 1024


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


class BulkMixin:
    """The ``/upload`` and ``/big`` handlers."""

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
