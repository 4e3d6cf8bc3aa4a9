# -*- test-case-name: tests.test_logging -*-
"""Log observers for ``logging.format`` (json or text) filtered at ``logging.level``, and the
sinks they write to: a stream, a file that SIGHUP reopens, or syslog.

Events keep their structured fields: the JSON observer writes them as keys next to the
rendered message, one object per line, so a log shipper needs no parsing.
"""

from __future__ import annotations

import json
import os
import signal
import syslog
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from types import FrameType
from typing import IO, Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from olla.config import LoggingConfig, OllaConfig
from olla.interfaces import IReconfigurable

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}

_SCALARS = (str, int, float, bool, type(None))
#: kept as JSON values (a request line's token figures and failovers: an object, a list); what
#: they hold that JSON has no type for is written as its ``str``
_STRUCTURED = (*_SCALARS, dict, list, tuple)
_PLAIN = frozenset(_SCALARS)
_LEGACY_KEYS = frozenset({"format", "message", "isError", "system", "time"})

# --------------------------------------------------------------------------- formatting


def _timestamp(event: LogEvent) -> str:
    when = event.get("log_time") or time.time()
    whole = int(when)
    millis = int((when - whole) * 1000)
    return f"{_second(whole)}.{millis:03d}Z"


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """``2026-11-23T10:00:00`` for a whole second: every line of the same second shares it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


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
    known = _KEPT_KEYS
    # one comprehension over the keys, each key's verdict looked up (a request line has
    # thirty fields: a loop with a test per key costs a third of its line)
    fields = {
        key: value
        for key, value in event.items()
        if known.get(key) or (key not in known and _learn(key))
    }
    odd = [key for key, value in fields.items() if type(value) not in _PLAIN]
    for key in odd:
        value = fields[key]
        if not isinstance(value, _STRUCTURED):
            fields[key] = str(value)
    return fields


#: each field name's verdict: kept as a field, or Twisted's bookkeeping (the names are the
#: code's own keyword arguments: a bounded set, capped all the same)
_KEPT_KEYS: dict[str, bool] = {}


def _learn(key: str) -> bool:
    kept = not (key.startswith("log_") or key.startswith("_") or key in _LEGACY_KEYS)
    if len(_KEPT_KEYS) < 4096:
        _KEPT_KEYS[key] = kept
    return kept


def _level(event: LogEvent) -> str:
    level = event.get("log_level", LogLevel.info)
    return "warn" if level is LogLevel.warn else getattr(level, "name", "info")


#: one encoder for every line (``json.dumps`` with ``default`` builds one per call); the
#: records are built here, and a field that holds a cycle fails the encoding, which then
#: writes that field as text
_JSON = json.JSONEncoder(default=str, check_circular=False)


def json_record(event: LogEvent) -> str:
    """One JSON object: time, level, namespace, msg, then the event's fields."""
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
    try:
        return _JSON.encode(record)
    except (TypeError, ValueError, RecursionError):  # JSON cannot hold it (bytes keys, a cycle)
        return _JSON.encode(
            {k: v if isinstance(v, _SCALARS) else str(v) for k, v in record.items()}
        )


def text_record(event: LogEvent) -> str:
    """``2026-11-23T10:00:00.000Z INFO  [proxy] message request_id=…``, for a terminal.

    An event's ``request_id`` is shown unless the message already names it, so every line of
    one request can be found with one grep (the JSON record has it as a key).
    """
    namespace = str(event.get("log_namespace", "")).removeprefix("olla.")
    message = _message(event)
    line = f"{_timestamp(event)} {_level(event).upper():5} [{namespace}] {message}"
    rid = event.get("request_id")
    if isinstance(rid, str) and rid not in ("", "-") and rid not in message:
        line += f" request_id={rid}"
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        line += "\n" + failure.getTraceback().rstrip("\n")
    return line


# --------------------------------------------------------------------------- sinks


class LogSink(Protocol):
    """Where formatted records go; ``reopen`` is what SIGHUP asks of it."""

    #: for the startup line: ``stdout``, ``file /var/log/olla.log``, ``syslog (olla)``
    where: str

    def write(self, level: LogLevel, record: str) -> None: ...

    def reopen(self) -> bool:
        """Open the destination again; False when there is nothing to reopen."""
        ...


class StreamSink:
    """An already open stream (standard output under ``twistd -n``); nothing to reopen."""

    def __init__(self, out: IO[str], where: str = "stdout") -> None:
        self._out = out
        self.where = where

    def write(self, level: LogLevel, record: str) -> None:
        self._out.write(record + "\n")
        self._out.flush()

    def reopen(self) -> bool:
        return False


class FileSink:
    """A file opened for appending; ``reopen`` opens the path again, so after logrotate moved
    the file and sent SIGHUP, records go to a new file at the same path."""

    def __init__(self, path: str, opener: Callable[[str], IO[str]] | None = None) -> None:
        # absolute: twistd may chdir (--rundir) after we open it, and reopen must find it again
        self.path = os.path.abspath(path)
        self.where = f"file {self.path}"
        self._open = opener or _append
        self._file = self._open(self.path)

    def write(self, level: LogLevel, record: str) -> None:
        self._file.write(record + "\n")
        self._file.flush()

    def reopen(self) -> bool:
        """Raises OSError (and keeps writing to the old file) if the path cannot be opened."""
        fresh = self._open(self.path)
        old, self._file = self._file, fresh
        old.close()
        return True


def _append(path: str) -> IO[str]:
    return open(path, "a", encoding="utf-8")


_PRIORITIES = {
    LogLevel.debug: syslog.LOG_DEBUG,
    LogLevel.info: syslog.LOG_INFO,
    LogLevel.warn: syslog.LOG_WARNING,
    LogLevel.error: syslog.LOG_ERR,
    LogLevel.critical: syslog.LOG_CRIT,
}


class SyslogSink:
    """``twistd --syslog [--prefix P]``: one syslog message per line, at the event's level.

    Opened as twistd's own syslog observer does (ident = prefix, ``LOG_USER``)."""

    def __init__(self, prefix: str, send: Callable[[int, str], None] | None = None) -> None:
        self.where = f"syslog ({prefix})"
        if send is None:
            syslog.openlog(prefix, 0, syslog.LOG_USER)
            send = syslog.syslog
        self._send = send

    def write(self, level: LogLevel, record: str) -> None:
        priority = _PRIORITIES.get(level, syslog.LOG_INFO)
        for line in record.splitlines():
            self._send(priority, line)

    def reopen(self) -> bool:
        return False


def open_sink(config: LoggingConfig, twistd: Mapping[str, Any] | None, stdout: IO[str]) -> LogSink:
    """Where olla logs: ``logging.output: file`` wins, else twistd's own flags.

    twistd opens its ``--logfile`` only for an application without an ``ILogObserver``, and the
    file it opens stays private to its own observer (its own format, and a 1 MB self-rotation
    that fights logrotate). So olla hands twistd its observer and opens the destination itself,
    read from the same flags twistd reads (``UnixAppLogger._getLogObserver``): ``--syslog``
    (``--prefix``), ``--logfile=-`` (standard output, only with ``-n``), ``--logfile=PATH``, and
    without ``--logfile`` standard output under ``-n``, else ``twistd.log`` as twistd does.

    Args:
        config: the ``logging:`` section.
        twistd: twistd's parsed options (``None`` outside twistd: standard output).
        stdout: the real standard output, taken before twistd redirects it into the log.

    Raises:
        ValueError: ``--logfile=-`` without ``-n`` (a daemon has no standard output).
        OSError: the file cannot be opened.
    """
    if config.output == "file" and config.file:
        return FileSink(config.file)
    if twistd is None or twistd.get("logger"):  # --logger: twistd ignores olla's observer
        return StreamSink(stdout)
    if twistd.get("syslog"):
        return SyslogSink(str(twistd.get("prefix") or "twisted"))
    logfile = str(twistd.get("logfile") or "")
    daemon = not twistd.get("nodaemon")
    if logfile == "-":
        if daemon:
            raise ValueError("daemons cannot log to stdout (--logfile=-); use -n or a path")
        return StreamSink(stdout)
    if not logfile and not daemon:
        return StreamSink(stdout)
    return FileSink(logfile or "twistd.log")


# --------------------------------------------------------------------------- observers


@implementer(ILogObserver)
class RecordObserver:
    """Formats each event into one record and hands it to a sink."""

    def __init__(self, fmt: Callable[[LogEvent], str], sink: LogSink) -> None:
        self._format = fmt
        self._sink = sink

    def __call__(self, event: LogEvent) -> None:
        self._sink.write(event.get("log_level", LogLevel.info), self._format(event))


@implementer(ILogFilterPredicate)
class _DropRequestLines:
    """``server.request_logging: false``: the events marked ``request_line=True`` go."""

    def __call__(self, event: LogEvent) -> Any:  # a PredicateResult (constantly is untyped)
        return PredicateResult.no if event.get("request_line") is True else PredicateResult.maybe


def make_observer(
    fmt: str, level: str, sink: LogSink, *, request_logging: bool = True
) -> ILogObserver:
    """The observer for ``logging.format`` / ``logging.level``; ``request_logging=False``
    (``server.request_logging: false``) drops the one line per proxied request, the events
    marked ``request_line=True``, and keeps everything else."""
    inner = RecordObserver(json_record if fmt == "json" else text_record, sink)
    predicates: list[ILogFilterPredicate] = [
        LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))
    ]
    if not request_logging:
        predicates.append(_DropRequestLines())
    return FilteringLogObserver(inner, predicates)


@implementer(ILogObserver)
@implementer(IReconfigurable)
class SwitchableObserver:
    """The daemon's one observer: twistd keeps it for good; a config reload makes it forward
    to a new observer (another level, format or ``request_logging``) on the same ``sink``."""

    reconfigures = ("logging.level", "logging.format", "server.request_logging")

    def __init__(self, inner: ILogObserver, sink: LogSink) -> None:
        self.inner = inner
        self._sink = sink

    def __call__(self, event: LogEvent) -> None:
        self.inner(event)

    def reconfigure(self, config: OllaConfig) -> None:
        self.inner = make_observer(
            config.logging.format,
            config.logging.level,
            self._sink,
            request_logging=config.server.request_logging,
        )


# --------------------------------------------------------------------------- SIGHUP

SignalHandler = Callable[[int, FrameType | None], None]


class HangupRelay(Service):
    """SIGHUP runs each action in turn (reopen the log, reload the config, pass it on to the
    workers...) on the reactor thread, never inside the signal handler: a signal can arrive
    in the middle of a sink's write (``callFromThread``, as twistd does for SIGUSR1).

    Instead of ending the process, as a SIGHUP would by default. The handler stays installed
    after ``stopService``: siblings drain in-flight requests after that, and a HUP then must
    not kill the process either.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        actions: Sequence[Callable[[], object]],
        install: Callable[[int, SignalHandler], object] = signal.signal,
    ) -> None:
        self._reactor = reactor
        self._actions = list(actions)
        self._install = install

    def startService(self) -> None:
        super().startService()
        self._install(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.fire)

    def fire(self) -> None:
        """What one SIGHUP does, on the reactor thread."""
        for action in self._actions:
            action()


class LogReopener:
    """Reopens the log's file, as twistd daemons do on SIGHUP (a no-op for other sinks)."""

    _log = Logger()

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def reopen(self) -> None:
        try:
            reopened = self._sink.reopen()
        except OSError as e:
            self._log.error(
                "SIGHUP: cannot reopen the log ({where}): {error}; still writing to the old file",
                where=self._sink.where,
                error=e.strerror or str(e),
            )
            return
        if reopened:
            self._log.info("SIGHUP: log reopened ({where})", where=self._sink.where)
        else:
            self._log.info("SIGHUP: nothing to reopen (logging to {where})", where=self._sink.where)
