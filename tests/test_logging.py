"""Log observers (JSON lines, readable text, level and request-line filters), their sinks (a
stream, a file SIGHUP reopens, syslog), where twistd's flags send them, and SIGHUP itself."""

from __future__ import annotations

import io
import json
import signal
import syslog
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger, LogLevel, LogPublisher, globalLogPublisher
from twisted.python import usage

from olla.config import LoggingConfig, parse_config
from olla.daemon import tap
from olla.daemon.logging import (
    FileSink,
    HangupRelay,
    LogReopener,
    StreamSink,
    SyslogSink,
    make_observer,
    open_sink,
)


def _emit(fmt: str, level: str) -> list[str]:
    out = io.StringIO()
    publisher = LogPublisher(make_observer(fmt, level, StreamSink(out)))
    log = Logger(namespace="olla.test", observer=publisher)
    log.debug("quiet {n}", n=1)
    log.info("request {request_id} -> {endpoint}", request_id="abc", endpoint="a", status=200)
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("it broke")
    return out.getvalue().splitlines()


def test_json_lines_keep_fields() -> None:
    """If the format is json, then each event is one JSON object with its fields as keys."""
    lines = _emit("json", "info")
    record = json.loads(lines[0])
    assert record["msg"] == "request abc -> a"
    assert (record["level"], record["namespace"]) == ("info", "olla.test")
    assert (record["request_id"], record["endpoint"], record["status"]) == ("abc", "a", 200)
    assert record["time"].endswith("Z")
    failure = json.loads(lines[1])
    assert failure["level"] == "critical" and failure["error"] == "boom"
    assert "Traceback" in failure["traceback"]
    assert len(lines) == 2  # debug filtered out


def test_json_lines_keep_objects_and_lists() -> None:
    """If a field is a dict or a list (a request line's token figures, its failovers), then
    the JSON line holds it as an object or a list; what JSON cannot hold becomes text."""
    out = io.StringIO()
    log = Logger(namespace="olla.test", observer=make_observer("json", "info", StreamSink(out)))
    log.info("x", figures={"input_tokens": 8.0, "done": True}, failovers=["a", "b"], odd={1, 2})
    log.info("y", figures={b"bytes-key": 1})
    cycle: list[object] = []
    cycle.append(cycle)
    log.info("z", cycle=cycle, status=200)
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["figures"] == {"input_tokens": 8.0, "done": True}
    assert first["failovers"] == ["a", "b"]
    assert first["odd"] == "{1, 2}"
    assert second["figures"] == "{b'bytes-key': 1}"
    assert (third["cycle"], third["status"]) == ("[[...]]", 200)


def test_text_lines() -> None:
    """If the format is text, then events are readable lines with level and namespace, and a
    request id the message already shows is not repeated."""
    lines = _emit("text", "debug")
    assert "DEBUG [test] quiet 1" in lines[0]
    assert lines[1].endswith("INFO  [test] request abc -> a")


def _request_line(log: Logger, rid: str = "r-123") -> None:
    """What proxy/exchange.py logs once per proxied request."""
    log.info(
        "{method} {path} -> {endpoint} status={status}",
        request_id=rid,
        method="POST",
        path="/olla/ollama/api/chat",
        endpoint="a",
        status=200,
        request_line=True,
    )


def _lines(
    fmt: str = "text", request_logging: bool = True
) -> tuple[Logger, Callable[[], list[str]]]:
    out = io.StringIO()
    observer = make_observer(fmt, "info", StreamSink(out), request_logging=request_logging)
    log = Logger(namespace="olla.proxy.exchange", observer=observer)
    return log, lambda: out.getvalue().splitlines()


def test_text_request_line_shows_request_id() -> None:
    """If a request line (or any event carrying a request_id) is written as text, then the line
    ends with request_id=<id>; events without one, or with the "-" placeholder, get none."""
    log, lines = _lines()
    _request_line(log)
    log.warn("endpoint {endpoint} unreachable", endpoint="a", request_id="r-9")
    log.info("nothing to do with a request")
    log.info("no id yet", request_id="-")
    got = lines()
    assert got[0].endswith("POST /olla/ollama/api/chat -> a status=200 request_id=r-123")
    assert got[1].endswith("WARN  [proxy.exchange] endpoint a unreachable request_id=r-9")
    assert "request_id" not in got[2] and "request_id" not in got[3]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_request_logging_off_drops_only_request_lines(fmt: str) -> None:
    """If server.request_logging is false, then the per-request line (request_line=True) is
    dropped and every other event, request id or not, is still written."""
    log, lines = _lines(fmt, request_logging=False)
    _request_line(log)
    log.warn("request {request_id}: stream broke", request_id="r-123")
    log.info("circuit for {endpoint} closed", endpoint="a", request_line=False)
    got = lines()
    assert len(got) == 2
    assert "stream broke" in got[0] and "closed" in got[1]
    on, lines_on = _lines(fmt, request_logging=True)
    _request_line(on)
    assert len(lines_on()) == 1


def test_level_filter() -> None:
    """If the level is error, then info events are dropped."""
    out = io.StringIO()
    publisher = LogPublisher(make_observer("json", "error", StreamSink(out)))
    Logger(observer=publisher).info("nope")
    Logger(observer=publisher).emit(LogLevel.error, "yes")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["yes"]


# --------------------------------------------------------------------------- sinks


def test_file_sink_reopens_at_the_same_path(tmp_path: Path) -> None:
    """If the log file is renamed (logrotate) and the sink reopened, then later records go to a
    new file at the configured path and the renamed one keeps the earlier ones."""
    path = tmp_path / "olla.log"
    sink = FileSink(str(path))
    sink.write(LogLevel.info, "before")
    path.rename(tmp_path / "olla.log.1")
    sink.write(LogLevel.info, "still the old file")
    assert sink.reopen() is True
    sink.write(LogLevel.info, "after")
    assert (tmp_path / "olla.log.1").read_text() == "before\nstill the old file\n"
    assert path.read_text() == "after\n"
    assert sink.where == f"file {path}"


def test_file_sink_keeps_old_file_when_reopen_fails(tmp_path: Path) -> None:
    """If the path cannot be opened again, then reopen raises OSError and records keep going to
    the file that was open."""
    path = tmp_path / "olla.log"
    opened: list[IO[str]] = []

    def opener(p: str) -> IO[str]:
        if opened:
            raise PermissionError(13, "Permission denied", p)
        opened.append(open(p, "a", encoding="utf-8"))
        return opened[0]

    sink = FileSink(str(path), opener)
    with pytest.raises(OSError):
        sink.reopen()
    sink.write(LogLevel.info, "kept")
    assert path.read_text() == "kept\n"
    opened[0].close()


def test_file_sink_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the log path is relative, then it is fixed at open time, so a later chdir (twistd's
    --rundir) does not move where a reopen writes."""
    monkeypatch.chdir(tmp_path)
    sink = FileSink("rel.log")
    monkeypatch.chdir("/")
    sink.reopen()
    sink.write(LogLevel.info, "x")
    assert (tmp_path / "rel.log").read_text() == "x\n"


def test_syslog_sink_maps_levels() -> None:
    """If records go to syslog, then each line is one message at the event's priority."""
    sent: list[tuple[int, str]] = []
    sink = SyslogSink("olla", lambda priority, line: sent.append((priority, line)))
    observer = make_observer("text", "debug", sink)
    log = Logger(namespace="olla.x", observer=observer)
    log.warn("careful")
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("crashed")
    assert sent[0][0] == syslog.LOG_WARNING and sent[0][1].endswith("careful")
    assert {priority for priority, _ in sent[1:]} == {syslog.LOG_CRIT}
    assert len(sent) > 3  # the traceback, line by line
    assert sink.reopen() is False and sink.where == "syslog (olla)"


# --------------------------------------------------------------------------- destinations


def test_open_sink_follows_twistd_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If olla runs under twistd with logging.output stdout, then it writes where twistd would:
    stdout under -n, --logfile's path, twistd.log when daemonised without one, syslog with
    --syslog; outside twistd or with --logger (twistd then ignores olla's observer), stdout."""
    monkeypatch.chdir(tmp_path)
    stdout = io.StringIO()
    default = LoggingConfig()

    def where(flags: dict[str, Any] | None) -> str:
        return open_sink(default, flags, stdout).where

    assert where(None) == "stdout"
    assert where({"nodaemon": True, "logfile": None}) == "stdout"
    assert where({"nodaemon": True, "logfile": "-"}) == "stdout"
    assert where({"nodaemon": True, "logfile": "a.log"}) == f"file {tmp_path / 'a.log'}"
    assert where({"nodaemon": False, "logfile": None}) == f"file {tmp_path / 'twistd.log'}"
    assert where({"nodaemon": False, "logger": object()}) == "stdout"
    opened: list[tuple[str, int, int]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: opened.append(a))
    assert where({"syslog": True, "prefix": "olla"}) == "syslog (olla)"
    assert opened == [("olla", 0, syslog.LOG_USER)]
    with pytest.raises(ValueError, match="daemons cannot log to stdout"):
        where({"nodaemon": False, "logfile": "-"})


def test_open_sink_config_file_wins(tmp_path: Path) -> None:
    """If logging.output is file, then olla writes to logging.file whatever twistd says."""
    config = LoggingConfig(output="file", file=str(tmp_path / "olla.log"))
    flags = {"nodaemon": False, "logfile": str(tmp_path / "twistd.log"), "syslog": True}
    sink = open_sink(config, flags, io.StringIO())
    assert sink.where == f"file {tmp_path / 'olla.log'}"
    assert not (tmp_path / "twistd.log").exists()


def _options(tmp_path: Path, parent: dict[str, Any], logging: str = "") -> tap.Options:
    path = tmp_path / "olla.yaml"
    path.write_text(
        "discovery: {static: {endpoints: [{url: 'http://127.0.0.1:1', type: ollama}]}}\n" + logging
    )
    options = tap.Options()
    options.parent = parent  # type: ignore[assignment]  # twistd's ServerOptions in real use
    options.parseOptions(["--config", str(path)])
    return options


def test_options_open_the_log(tmp_path: Path) -> None:
    """If twistd runs olla daemonised with --logfile, then the plugin's options open that file;
    an impossible destination is a usage error, so twistd exits before starting."""
    options = _options(tmp_path, {"nodaemon": False, "logfile": str(tmp_path / "f.log")})
    assert options.log_sink.where == f"file {tmp_path / 'f.log'}"
    assert (tmp_path / "f.log").exists()
    with pytest.raises(usage.UsageError, match="daemons cannot log to stdout"):
        _options(tmp_path, {"nodaemon": False, "logfile": "-"})
    with pytest.raises(usage.UsageError, match="cannot open the log"):
        _options(tmp_path, {"nodaemon": True, "logfile": str(tmp_path / "no" / "f.log")})


def test_service_honours_request_logging(tmp_path: Path) -> None:
    """If server.request_logging is false, then the observer olla hands twistd drops request
    lines and writes the rest to the sink it was given."""
    out = io.StringIO()
    config = parse_config({"server": {"request_logging": False}, "logging": {"format": "text"}})
    service = tap.build_service(config, MemoryReactorClock(), log_sink=StreamSink(out, "here"))
    log = Logger(namespace="olla.proxy.exchange", observer=service.log_observer)
    _request_line(log)
    log.info("kept")
    assert out.getvalue().splitlines()[-1].endswith("[proxy.exchange] kept")
    assert len(out.getvalue().splitlines()) == 1


# --------------------------------------------------------------------------- SIGHUP


class _FakeSink:
    where = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.reopened = 0
        self.fail = fail

    def write(self, level: LogLevel, record: str) -> None:
        pass

    def reopen(self) -> bool:
        if self.fail:
            raise PermissionError(13, "Permission denied")
        self.reopened += 1
        return True


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def test_sighup_reopens_on_the_reactor_thread(events: list[LogEvent]) -> None:
    """If SIGHUP arrives, then the handler does not reopen inside the signal handler: it
    schedules the reopen on the reactor thread, which then reopens the sink and logs it; the
    handler stays installed after stopService (a HUP while draining must not kill olla)."""
    sink = _FakeSink()
    calls: list[Callable[[], None]] = []
    installed: dict[int, Any] = {}

    class Reactor:
        def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
            calls.append(lambda: f(*args, **kw))

    reopener = LogReopener(sink)
    service = HangupRelay(Reactor(), [reopener.reopen], lambda s, h: installed.update({s: h}))
    service.startService()
    installed[signal.SIGHUP](signal.SIGHUP, None)
    assert sink.reopened == 0 and len(calls) == 1
    calls.pop()()
    assert sink.reopened == 1
    assert any(e.get("log_format", "").startswith("SIGHUP: log reopened") for e in events)
    service.stopService()
    assert list(installed) == [signal.SIGHUP]


def test_sighup_reopen_failure_is_logged(events: list[LogEvent]) -> None:
    """If the log cannot be reopened, then olla logs an error and keeps running."""
    LogReopener(_FakeSink(fail=True)).reopen()
    errors = [e for e in events if e.get("log_level") is LogLevel.error]
    assert errors and "Permission denied" in errors[0]["error"]
