# -*- test-case-name: tests.test_failures -*-
"""Answers olla writes itself as JSON (the error dialects are ``olla.util.errors``)."""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

JSON_UTF8 = b"application/json; charset=utf-8"


def json_response(
    request: IRequest,
    payload: object,
    status: int = 200,
    *,
    content_type: bytes = JSON_UTF8,
    compact: bool = False,
) -> bytes:
    """Set ``status`` and the JSON content type on ``request``; the body to return.

    ``payload`` already encoded (bytes) is returned as it is.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    if isinstance(payload, bytes):
        return payload
    if compact:
        return json.dumps(payload, separators=(",", ":")).encode()
    return json.dumps(payload).encode()
