"""Reading the model from request bodies."""

from __future__ import annotations

import json

import pytest

from olla.proxy.inspect import PARSE_LIMIT, extract_model


@pytest.mark.parametrize(
    ("body", "path", "model"),
    [
        (b'{"model":"llama3.2:latest","messages":[]}', b"/api/chat", "llama3.2:latest"),
        (b'{"name":"llama3.2"}', b"/api/show", "llama3.2"),
        (b'{"name":"llama3.2"}', b"/api/chat", None),
        (b'{"model":"a","name":"b"}', b"/api/show", "a"),
        (b'{"model":"  spaced  "}', b"/api/chat", "spaced"),
        (b'{"model":""}', b"/api/chat", None),
        (b'{"model":42}', b"/api/chat", None),
        (b"[1,2]", b"/api/chat", None),
        (b"{not json", b"/api/chat", None),
        (b"", b"/api/chat", None),
        (b'{"messages":[{"model":"nested"}]}', b"/api/chat", None),
        (b"\xff\xfe", b"/api/chat", None),
    ],
)
def test_extract_model(body: bytes, path: bytes, model: str | None) -> None:
    """If a body names a model at top level (or ``name`` on /api/show), then it is found."""
    assert extract_model(body, path) == model


def test_large_body_scanned() -> None:
    """If a body is larger than the parse limit, then its start is scanned for the model."""
    body = json.dumps({"model": "big:1b", "prompt": "x" * (PARSE_LIMIT + 10)}).encode()
    assert extract_model(body, b"/api/generate") == "big:1b"


def test_model_field_paths() -> None:
    """If a profile names other places for the model (request.model_field_paths), then they
    are read in order, dotted paths into nested objects too."""
    from olla.proxy.inspect import extract_model

    body = b'{"params": {"model": "deep"}, "model": "top"}'
    assert extract_model(body, b"/x", ("params.model", "model")) == "deep"
    assert extract_model(body, b"/x", ("nope", "model")) == "top"
    assert extract_model(b'{"model": 5}', b"/x", ("model",)) is None
