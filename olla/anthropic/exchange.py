# -*- test-case-name: tests.test_anthropic -*-
"""Anthropic requests through the proxy machinery: passed through as they are, or translated.

Both are shapes (``olla.proxy.shape.IExchangeShape``) of an ordinary ``Exchange``, so routing,
health, aliases, balancing, failover and timeouts are exactly those of every other request;
the shapes only say what to ask each backend and what the client gets back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from olla.anthropic.stats import Fallback, TranslatorStats
from olla.fleet.endpoints import Endpoint
from olla.interfaces import IStreamTranslator, ITranslator
from olla.proxy.forward import BytesProducer
from olla.proxy.shape import IExchangeShape, Reply, Verbatim
from olla.util.failures import CUT, describe

#: the most of a non-streamed answer (or an error body) olla holds to translate it
ANSWER_LIMIT = 16 * 1024 * 1024
_ERROR_BODY_LIMIT = 64 * 1024

#: request headers that only make sense between an Anthropic client and an Anthropic server
_ANTHROPIC_ONLY = (b"anthropic-version", b"anthropic-beta", b"accept-encoding", b"content-type")


class _Sink:
    """A body sink in front of the client's request: bytes go through ``transform`` first."""

    def __init__(self, request: Request, transform: Callable[[bytes], bytes]) -> None:
        self._request = request
        self._transform = transform

    @property
    def channel(self) -> object | None:
        return self._request.channel

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        out = self._transform(data)
        if out:
            self._request.write(out)


class Tally:
    """One Anthropic request in the translator's stats, counted once as it ends: as a
    passthrough or a translation by the shape of the attempt that answered (or was tried
    last), ``fallback`` saying why a translation was not passed through."""

    def __init__(
        self,
        stats: TranslatorStats,
        clock: IReactorTime,
        *,
        streaming: bool,
        fallback: Fallback | None,
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._since = clock.seconds()
        self._streaming = streaming
        self._fallback = fallback
        self._counted = False

    def count(self, ok: bool, passthrough: bool) -> None:
        if self._counted:
            return
        self._counted = True
        fallback = None if passthrough else self._fallback or Fallback.CANNOT_PASSTHROUGH
        self._stats.started(passthrough=passthrough, streaming=self._streaming, fallback=fallback)
        self._stats.ended(ok=ok, latency=self._clock.seconds() - self._since)


@implementer(IExchangeShape)
class Passthrough(Verbatim):
    """The body goes unchanged to each backend's messages path; the answer comes back
    verbatim."""

    mode = b"passthrough"

    def __init__(self, tally: Tally, paths: Mapping[Endpoint, bytes]) -> None:
        self._tally = tally
        self._paths = paths

    def upstream_path(self, endpoint: Endpoint, target: bytes) -> bytes:
        return self._paths[endpoint]

    def finished(self, status: int | None, complete: bool) -> None:
        self._tally.count(ok=complete and (status or 500) < 400, passthrough=True)


@implementer(IExchangeShape)
class Translation:
    """An OpenAI chat completion is asked for; its answer is rewritten as an Anthropic one."""

    mode = b"translation"

    def __init__(
        self,
        tally: Tally,
        *,
        translator: ITranslator,
        openai_body: dict[str, Any],
        input_tokens: int,
        paths: Callable[[Endpoint], str],
    ) -> None:
        self._tally = tally
        self._translation = translator
        self._openai_body = openai_body
        self._input_tokens = input_tokens
        self._paths = paths  # each endpoint's chat completions path
        self._streaming = bool(openai_body.get("stream"))
        self._translator: IStreamTranslator | None = None
        self._collected: list[bytes] = []
        self._collected_size = 0
        self._upstream_status = 200
        self._endpoint: Endpoint | None = None

    # ------------------------------------------------------------------ the request

    def upstream_path(self, endpoint: Endpoint, target: bytes) -> bytes:
        return self._paths(endpoint).encode()

    def upstream_headers(
        self, endpoint: Endpoint, headers: list[tuple[bytes, list[bytes]]]
    ) -> list[tuple[bytes, list[bytes]]]:
        kept = [(name, values) for name, values in headers if name.lower() not in _ANTHROPIC_ONLY]
        # identity encoding: olla has to read the answer to translate it
        return [*kept, (b"Content-Type", [b"application/json"])]

    def upstream_body(self, endpoint: Endpoint, native_model: str | None) -> IBodyProducer:
        body = self._openai_body
        if native_model is not None:  # an alias: this endpoint knows the model by its own name
            body = {**body, "model": native_model}
        return BytesProducer(json.dumps(body).encode())

    # ------------------------------------------------------------------ the answer

    def response_sink(self, response: IResponse, endpoint: Endpoint, reply: Reply) -> _Sink:
        request = reply.request
        self._endpoint = endpoint
        self._upstream_status = response.code
        if self._streaming and response.code < 400:
            reply.answered(response.code)
            self._translator = self._translation.stream(reply.model, self._input_tokens)
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.setHeader(b"Cache-Control", b"no-cache")
            reply.olla_headers(endpoint)
            request.write(b"")  # headers now; events follow as the backend's chunks arrive
            return _Sink(request, self._translator.feed)
        return _Sink(request, self._collect)

    def _collect(self, data: bytes) -> bytes:
        limit = ANSWER_LIMIT if self._upstream_status < 400 else _ERROR_BODY_LIMIT
        if self._collected_size + len(data) <= limit:
            self._collected.append(data)
        self._collected_size += len(data)
        return b""

    def body_ended(self, reply: Reply) -> None:
        request = reply.request
        if self._translator is not None:
            tail = self._translator.finish()
            if tail:
                request.write(tail)
            self.count(ok=not self._translator.failed)
            request.finish()
            return
        body = b"".join(self._collected)
        if self._upstream_status >= 400:
            self._answer_error(reply, self._upstream_status, _upstream_message(body))
            return
        if self._collected_size > ANSWER_LIMIT:
            message = "proxy error: the backend's answer is too large to translate"
            self._answer_error(reply, 502, message)
            return
        try:
            answer = self._translation.translate_answer(json.loads(body), reply.model)
        except ValueError as e:
            self._answer_error(
                reply, 502, f"proxy error: the backend's answer is not a completion: {e}"
            )
            return
        self.count(ok=True)
        reply.answered(200)
        payload = json.dumps(answer).encode()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(payload))
        assert self._endpoint is not None
        reply.olla_headers(self._endpoint)
        request.write(payload)
        request.finish()

    def _answer_error(self, reply: Reply, status: int, message: str) -> None:
        self.count(ok=False)
        reply.error(status, message, self._endpoint)

    def body_broke(self, reply: Reply, reason: Failure) -> None:
        if self._translator is None:  # nothing sent yet: a clean error answer
            message = f"proxy error: the backend's answer broke off: {describe(reason, cut=CUT)}"
            self._answer_error(reply, 502, message)
            return
        self.count(ok=False)
        tail = self._translator.fail(f"the backend's stream broke off: {describe(reason, cut=CUT)}")
        if tail:
            reply.request.write(tail)
        reply.request.finish()

    def finished(self, status: int | None, complete: bool) -> None:
        self.count(ok=False)  # only reached uncounted when olla refused or the stream broke

    def count(self, ok: bool) -> None:
        self._tally.count(ok=ok, passthrough=False)


def _upstream_message(body: bytes) -> str:
    """The backend's error message, from an OpenAI or Ollama error body."""
    try:
        document = json.loads(body)
    except ValueError:
        return "Backend error"
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    return "Backend error"
