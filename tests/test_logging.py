"""Log observers: structured JSON lines and readable text, filtered by level."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher

from olla.logging import make_observer


def _emit(fmt: str, level: str) -> list[str]:
    out = io.StringIO()
    publisher = LogPublisher(make_observer(fmt, level, out))
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


def test_text_lines() -> None:
    """If the format is text, then events are readable lines with level and namespace."""
    lines = _emit("text", "debug")
    assert "DEBUG [test] quiet 1" in lines[0]
    assert "INFO  [test] request abc -> a" in lines[1]


def test_level_filter() -> None:
    """If the level is error, then info events are dropped."""
    out = io.StringIO()
    publisher = LogPublisher(make_observer("json", "error", out))
    Logger(observer=publisher).info("nope")
    Logger(observer=publisher).emit(LogLevel.error, "yes")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["yes"]
