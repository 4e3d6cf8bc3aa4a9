"""Hostile input, generated: thousands of odd requests against the in-memory site.

Whatever arrives, olla answers in JSON (never a Twisted HTML page), makes no 5xx of its own,
logs no traceback, and leaves every in-flight counter at zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher

from tests.proxyharness import Harness, parse_response
from tests.test_proxy import Backend

PREFIXES = [
    b"/olla/ollama/",
    b"/olla/openai/v1/",
    b"/olla/anthropic/v1/",
    b"/olla/proxy/",
    b"/olla/models",
    b"/olla/",
    b"/olla",
    b"/internal/",
    b"/internal/status",
    b"/",
    b"/version",
]
PATHS = [
    b"api/chat",
    b"api/generate",
    b"api/tags",
    b"api/ps",
    b"api/show",
    b"api/pull",
    b"chat/completions",
    b"messages",
    b"messages/count_tokens",
    b"models",
    b"",
]
SEGMENT = st.one_of(
    st.sampled_from([b"..", b".", b"%2e%2e", b"%2E", b"%6fllama", b"ver%20sion", b"%ff", b"a"]),
    st.binary(min_size=0, max_size=6).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"")),
)
METHODS = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"BREW", b"get"]
)
HOSTS = st.one_of(
    st.sampled_from(
        [b"olla.test", b"olla.test:40114", b"[::1]:1", b"a b", b"\xff\xfe", b"::::", b"", b"x:y:z"]
    ),
    st.binary(min_size=0, max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
MODELS = st.sampled_from(["llama3.2:latest", "qwen:7b", "nope", "", "m", "fast"])
BODY = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.builds(
        lambda model, extra, stream: json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "x": extra}
            | ({"stream": stream} if stream is not None else {})
        ).encode(),
        st.one_of(MODELS, JSON_VALUE),
        JSON_VALUE,
        st.one_of(st.none(), st.booleans()),
    ),
    st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = draw(st.sampled_from(PREFIXES))
    if draw(st.booleans()):
        path += draw(st.sampled_from(PATHS))
    else:
        path += b"/".join(draw(st.lists(SEGMENT, max_size=4)))
    if draw(st.booleans()):
        path += b"?" + draw(st.sampled_from([b"format=ollama", b"a=%zz", b"x=\xff", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    lines = [method + b" " + path + b" " + version]
    if draw(st.integers(0, 9)):
        lines.append(b"Host: " + draw(HOSTS))
    body = draw(BODY)
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [b"Content-Type", b"X-Request-ID", b"Authorization", b"Accept", b"X-Fake"]
                ),
                st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
            ),
            max_size=3,
        )
    )
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@contextmanager
def captured_errors() -> Iterator[list[LogEvent]]:
    """Events at error level or carrying a traceback, logged while the block runs."""
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.error):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def _harness() -> Harness:
    clock = Clock()
    return Harness(
        {"a:1": Backend(clock, name="a"), "b:1": Backend(clock, name="b")},
        clock=clock,
        types={"a:1": "ollama", "b:1": "openai-compatible"},
    )


HARNESS = _harness()


@settings(
    max_examples=3000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=requests())
def test_any_request_gets_json_and_leaks_nothing(raw: bytes) -> None:
    """If any request at all arrives, then olla's own answers are JSON, none is a 5xx it made
    itself, nothing is logged as an error, and nothing stays in flight."""
    h = HARNESS
    with captured_errors() as errors:
        client = h.send(raw)
        h.advance(1.0)
        data = client.transport.value()
        client.disconnect()
        h.pump()
    assert errors == [], [e.get("log_format") for e in errors]
    assert all(h.registry.load.in_flight(ep) == 0 for ep in h.endpoints)
    if not data:
        return  # closed without an answer: nothing to check but the counters above
    response = parse_response(data)
    assert response is not None, data[:200]
    relayed = response.header(b"x-olla-endpoint") is not None
    ctype = response.header(b"content-type") or b""
    assert b"html" not in ctype.lower(), data[:300]
    if relayed:
        return  # the backend's own answer
    assert response.status < 500 or response.status == 501, data[:300]
    if response.body and response.status != 304:
        assert ctype.startswith(b"application/json"), data[:300]
        json.loads(response.body)
