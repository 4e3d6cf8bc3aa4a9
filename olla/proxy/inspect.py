# -*- test-case-name: tests.test_inspect -*-
"""Reading what a request asks for (its model) without consuming or changing its body.

Pure functions: bytes in, facts out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

#: Bodies up to this size are parsed as JSON; larger ones are only scanned at their start.
PARSE_LIMIT = 1024 * 1024
#: How much of a larger body is scanned for a top-level ``"model"``.
SCAN_WINDOW = 64 * 1024

#: what decoding a client's JSON can raise: bad syntax, bad UTF-8, or nesting so deep that the
#: decoder would exhaust the stack (it raises RecursionError instead of crashing)
JSON_ERRORS = (ValueError, UnicodeDecodeError, RecursionError)


def parse_json(body: bytes) -> object | None:
    """``body`` decoded as JSON, or None when it is not JSON olla can read."""
    try:
        document: object = json.loads(body)
    except JSON_ERRORS:
        return None
    return document


_MODEL_KEY = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def extract_model(body: bytes, path: bytes, fields: Sequence[str] = ("model",)) -> str | None:
    """The model a request body names, whatever its Content-Type said.

    The first of ``fields`` (dotted JSON paths: the profiles' ``request.model_field_paths``)
    that holds a name, or for ``/api/show`` (which aider and older Ollama clients call with
    ``name``) the ``name`` field. Invalid JSON names no model: it is forwarded untouched and
    the backend answers it.

    Args:
        body: the start of the body (all of it when it is at most ``PARSE_LIMIT`` bytes).
        path: the request path below the route prefix, without the query.
        fields: where the model may be named, tried in order.
    """
    if not body:
        return None
    if len(body) > PARSE_LIMIT:
        return _scan_model(body[:SCAN_WINDOW])
    document = parse_json(body)
    if not isinstance(document, dict):
        return None
    for field in fields:
        model = _at(document, field)
        if isinstance(model, str) and model.strip():
            return model.strip()
    if path.rstrip(b"/") == b"/api/show":
        name = document.get("name")
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def _at(document: dict[str, object], path: str) -> object:
    value: object = document
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _scan_model(window: bytes) -> str | None:
    """Best effort for huge bodies: the first ``"model": "..."`` pair in the window."""
    match = _MODEL_KEY.search(window)
    if match is None:
        return None
    value = parse_json(b'"' + match.group(1) + b'"')
    return value.strip() or None if isinstance(value, str) else None


def rewrite_model(body: bytes, model: str) -> bytes:
    """``body`` with only its top-level ``model`` value replaced (an alias resolved).

    The bytes around the value stay as they were; if the value cannot be found safely, the
    document is re-serialised instead.
    """
    document = json.loads(body)
    expected = dict(document, model=model)
    replacement = json.dumps(model).encode()
    for match in _MODEL_VALUE.finditer(body):
        candidate = body[: match.start(1)] + replacement + body[match.end(1) :]
        try:
            if json.loads(candidate) == expected:
                return candidate
        except ValueError:
            continue
    return json.dumps(expected).encode()


_MODEL_VALUE = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')
