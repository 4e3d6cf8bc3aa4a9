# -*- test-case-name: tests.test_outcomes -*-
"""The request log: one line per client request, whatever happened to it.

An outcome listener: it hears every request's record (proxied, answered by olla itself,
refused by the guard, abandoned by its client) and logs it at info with ``request_line``
set, so ``server.request_logging`` can turn exactly these lines off. When the config says no
one will read them (``server.request_logging: false``, or ``logging.level`` above info) it does
not build them at all: a line costs more than the rest of a request's bookkeeping.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from olla.config import OllaConfig
from olla.interfaces import IOutcomeListener, IReconfigurable
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import RequestRecord


@implementer(IOutcomeListener, IReconfigurable)
class RequestLog(OutcomeListener):
    """Logs each finished request (``olla.request`` namespace)."""

    reconfigures = ("server.request_logging", "logging.level")

    def __init__(self, config: OllaConfig) -> None:
        self.reconfigure(config)

    def reconfigure(self, config: OllaConfig) -> None:
        #: whether the lines are wanted (the log observer would drop them otherwise)
        self.wanted = config.server.request_logging and config.logging.level in _SHOWN

    def request_finished(self, record: RequestRecord) -> None:
        if not self.wanted:
            return
        failovers = record.failovers
        ttft = record.ttft
        _log.emit(
            LogLevel.info,
            _LINE,
            # the record's fields as they are (the JSON log's keys), spelt out: a loop of
            # getattr over the names costs twice as much, on every request
            request_id=record.request_id,
            client_ip=record.client_ip,
            method=record.method,
            path=record.path,
            status=record.status,
            bytes=record.bytes,
            outcome=record.outcome,
            attempts=record.attempts,
            route=record.route,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            tokens_per_second=record.tokens_per_second,
            backend_metrics=record.backend_metrics,
            error=record.error,
            mode=record.mode,
            client_key=record.client_key,
            operation=record.operation,
            priority=record.priority,
            endpoint=record.endpoint or ",".join(record.endpoints) or "-",
            model=record.model or "-",
            duration_ms=round(record.duration * 1000),
            failovers=list(failovers),
            ttft_ms=None if ttft is None else round(ttft * 1000),
            queued_ms=None if record.queued is None else round(record.queued * 1000),
            # pieces of the message only: a leading underscore keeps them out of the JSON
            # record, which has the figures they show as its own keys
            _queue=_queue_text(record),
            _tokens=_tokens_text(record),
            _tried=f" failed_over={','.join(failovers)}" if failovers else "",
            _why=f" why={record.error!r}" if record.error else "",
            _did=f" management={record.operation}" if record.operation else "",
            _key=f" key={record.client_key}" if record.client_key else "",
            sticky_outcome=record.sticky,
            sticky_key_source=record.session_source,
            #: marks the one line per request (``server.request_logging`` filters it)
            request_line=True,
        )


#: a module's logger, not a class attribute: as one, each use would build a new Logger named
#: after the class (``Logger.__get__``), on every request and in the wrong namespace
_log = Logger(namespace="olla.request")

_LINE = (
    "{method} {path} -> {endpoint} model={model} status={status} "
    "{duration_ms}ms {bytes}B {outcome} attempts={attempts}{_queue}{_tokens}{_tried}{_why}{_did} "
    "client={client_ip}{_key}"
)

#: the ``logging.level`` values that show info lines
_SHOWN = ("debug", "info")


def _queue_text(record: RequestRecord) -> str:
    """`` queued=120ms`` (`` queued=120ms priority=low`` when not normal) for the log line,
    when the request passed the admission queue."""
    if record.queued is None:
        return ""
    text = f" queued={round(record.queued * 1000)}ms"
    if record.priority is not None and record.priority != "normal":
        text += f" priority={record.priority}"
    return text


def _tokens_text(record: RequestRecord) -> str:
    """`` tokens=12/345 ttft=80ms`` for the log line, when the backend said and it streamed."""
    text = ""
    if record.prompt_tokens is not None or record.completion_tokens is not None:
        prompt = "-" if record.prompt_tokens is None else record.prompt_tokens
        completion = "-" if record.completion_tokens is None else record.completion_tokens
        text = f" tokens={prompt}/{completion}"
    if record.ttft is not None:
        text += f" ttft={round(record.ttft * 1000)}ms"
    return text
