# -*- test-case-name: tests.test_anthropic -*-
"""Anthropic requests through the proxy machinery: passed through as they are, or translated.

Both are ``olla.proxy.exchange.Exchange`` subclasses, so routing, health, aliases, balancing,
failover and timeouts are exactly those of every other request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request

from olla.anthropic.stats import TranslatorStats
from olla.endpoints import Endpoint
from olla.interfaces import IStreamTranslator, ITranslator
from olla.proxy.exchange import Exchange, ProxyDeps
from olla.proxy.forward import BytesProducer, StreamBody
from olla.proxy.routing import ProviderRoute
from olla.web.errors import Dialect, write_error

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


class _Tracked(Exchange):
    """Counts each request's outcome in the translator's stats exactly once."""

    def __init__(
        self,
        deps: ProxyDeps,
        route: ProviderRoute,
        request: Request,
        model: str,
        stats: TranslatorStats,
        target: bytes,
    ) -> None:
        super().__init__(deps, route, request, target, model, Dialect.ANTHROPIC)
        self._stats = stats
        self._counted = False

    def count(self, ok: bool) -> None:
        if not self._counted:
            self._counted = True
            self._stats.ended(ok=ok, latency=self._deps.clock.seconds() - self._started)

    def end_body(self) -> None:
        self.count(ok=(self._status or 500) < 400)
        super().end_body()

    def end_broken_body(self, reason: Failure) -> None:
        self.count(ok=False)
        super().end_broken_body(reason)

    def _reject(self, status: int, message: str, code: str | None = None) -> None:
        self.count(ok=False)
        super()._reject(status, message, code)


class PassthroughExchange(_Tracked):
    """The body goes unchanged to the backend's messages path; the answer comes back verbatim."""

    def set_olla_headers(self, endpoint: Endpoint) -> None:
        super().set_olla_headers(endpoint)
        self._request.responseHeaders.setRawHeaders(b"X-Olla-Mode", [b"passthrough"])


class TranslatedExchange(_Tracked):
    """An OpenAI chat completion is asked for; its answer is rewritten as an Anthropic one."""

    def __init__(
        self,
        deps: ProxyDeps,
        route: ProviderRoute,
        request: Request,
        model: str,
        stats: TranslatorStats,
        *,
        translator: ITranslator,
        openai_body: dict[str, Any],
        input_tokens: int,
        paths: Callable[[Endpoint], str],
    ) -> None:
        # any endpoint hosting the model will do; ``paths`` names each one's completions path
        super().__init__(deps, route, request, model, stats, b"/v1/chat/completions")
        self._translation = translator
        self._openai_body = openai_body
        self._input_tokens = input_tokens
        self._paths = paths
        self._streaming = bool(openai_body.get("stream"))
        self._translator: IStreamTranslator | None = None
        self._collected: list[bytes] = []
        self._collected_size = 0
        self._upstream_status = 200

    # ------------------------------------------------------------------ the request

    def upstream_path(self, endpoint: Endpoint) -> bytes:
        return self._paths(endpoint).encode()

    def upstream_headers(self, endpoint: Endpoint) -> list[tuple[bytes, list[bytes]]]:
        headers = [
            (name, values)
            for name, values in super().upstream_headers(endpoint)
            if name.lower() not in _ANTHROPIC_ONLY
        ]
        # identity encoding: olla has to read the answer to translate it
        return [*headers, (b"Content-Type", [b"application/json"])]

    def upstream_body(self, endpoint: Endpoint) -> IBodyProducer | None:
        body = self._openai_body
        native = self.native_model(endpoint)
        if native is not None:  # an alias: this endpoint knows the model by its own name
            body = {**body, "model": native}
        return BytesProducer(json.dumps(body).encode())

    # ------------------------------------------------------------------ the answer

    def set_olla_headers(self, endpoint: Endpoint) -> None:
        super().set_olla_headers(endpoint)
        self._request.responseHeaders.setRawHeaders(b"X-Olla-Mode", [b"translation"])

    def relay_response(self, response: IResponse, endpoint: Endpoint) -> None:
        request = self._request
        self._upstream_status = response.code
        streaming = self._streaming and response.code < 400
        if streaming:
            self._status = response.code
            self._translator = self._translation.stream(self._model or "", self._input_tokens)
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.setHeader(b"Cache-Control", b"no-cache")
            self.set_olla_headers(endpoint)
            request.write(b"")  # headers now; events follow as the backend's chunks arrive
            sink = _Sink(request, self._translator.feed)
        else:
            sink = _Sink(request, self._collect)
        self._stream = StreamBody(
            sink,
            self._deps.clock,
            self._deps.config.read_timeout,
            lambda reason: self._body_done(endpoint, reason),
        )
        response.deliverBody(self._stream)

    def _collect(self, data: bytes) -> bytes:
        limit = ANSWER_LIMIT if self._upstream_status < 400 else _ERROR_BODY_LIMIT
        if self._collected_size + len(data) <= limit:
            self._collected.append(data)
        self._collected_size += len(data)
        return b""

    def end_body(self) -> None:
        request = self._request
        if self._translator is not None:
            tail = self._translator.finish()
            if tail:
                request.write(tail)
            self.count(ok=not self._translator.failed)
            request.finish()
            return
        assert self._endpoint is not None
        body = b"".join(self._collected)
        if self._upstream_status >= 400:
            self._answer_error(self._upstream_status, _upstream_message(body))
            return
        if self._collected_size > ANSWER_LIMIT:
            self._answer_error(502, "proxy error: the backend's answer is too large to translate")
            return
        try:
            message = self._translation.translate_answer(json.loads(body), self._model or "")
        except ValueError as e:
            self._answer_error(502, f"proxy error: the backend's answer is not a completion: {e}")
            return
        self.count(ok=True)
        self._status = 200
        payload = json.dumps(message).encode()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(payload))
        self.set_olla_headers(self._endpoint)
        request.write(payload)
        request.finish()

    def _answer_error(self, status: int, message: str) -> None:
        self.count(ok=False)
        self._status = status
        if self._endpoint is not None:
            self.set_olla_headers(self._endpoint)
        write_error(self._request, status, message, dialect=Dialect.ANTHROPIC)

    def end_broken_body(self, reason: Failure) -> None:
        if self._translator is None:  # nothing sent yet: a clean error answer
            self._answer_error(502, f"proxy error: the backend's answer broke off: {reason.value}")
            return
        self.count(ok=False)
        tail = self._translator.fail(f"the backend's stream broke off: {reason.value}")
        if tail:
            self._request.write(tail)
        self._request.finish()


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
