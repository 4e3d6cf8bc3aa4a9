# -*- test-case-name: tests.test_logging -*-
"""Log observers for ``logging.format`` (json or text) filtered at ``logging.level``.

Events keep their structured fields: the JSON observer writes them as keys next to the
rendered message, one object per line, so a log shipper needs no parsing.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}

_SCALARS = (str, int, float, bool, type(None))
_LEGACY_KEYS = frozenset({"format", "message", "isError", "system", "time"})


def _timestamp(event: LogEvent) -> str:
    when = event.get("log_time") or time.time()
    whole = int(when)
    millis = int((when - whole) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{millis:03d}Z"


def _message(event: LogEvent) -> str:
    """The rendered message; the common case (plain ``{name}`` fields) without Twisted's
    general formatter, which costs more than the rest of a log line together."""
    fmt = event.get("log_format")
    if isinstance(fmt, str):
        try:
            return fmt.format_map(event)
        except (KeyError, IndexError, ValueError, AttributeError):
            pass
    return formatEvent(event)


def _fields(event: LogEvent) -> dict[str, Any]:
    """The event's own structured fields (not Twisted's ``log_*`` bookkeeping)."""
    return {
        key: value if isinstance(value, _SCALARS) else str(value)
        for key, value in event.items()
        if not key.startswith("log_") and not key.startswith("_") and key not in _LEGACY_KEYS
    }


def _level(event: LogEvent) -> str:
    level = event.get("log_level", LogLevel.info)
    return "warn" if level is LogLevel.warn else getattr(level, "name", "info")


@implementer(ILogObserver)
class JSONLogObserver:
    """One JSON object per line: time, level, namespace, msg, then the event's fields."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        record: dict[str, Any] = {
            "time": _timestamp(event),
            "level": _level(event),
            "namespace": event.get("log_namespace", ""),
            "msg": _message(event),
        }
        record.update(_fields(event))
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            record["error"] = failure.getErrorMessage()
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()


@implementer(ILogObserver)
class TextLogObserver:
    """``2026-11-23T10:00:00.000Z INFO  [olla.proxy] message``, for a terminal."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        namespace = str(event.get("log_namespace", "")).removeprefix("olla.")
        line = f"{_timestamp(event)} {_level(event).upper():5} [{namespace}] {_message(event)}"
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            line += "\n" + failure.getTraceback()
        self._out.write(line + "\n")
        self._out.flush()


def make_observer(fmt: str, level: str, out: IO[str]) -> ILogObserver:
    """The observer for ``logging.format`` / ``logging.level``."""
    inner: ILogObserver = JSONLogObserver(out) if fmt == "json" else TextLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))
    return FilteringLogObserver(inner, [predicate])
