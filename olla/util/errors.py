# -*- test-case-name: tests.test_errors -*-
"""One place that turns an error into a status and a body, in the caller's API dialect.

Ollama clients expect ``{"error": "..."}`` and nothing more (the real server sends exactly that);
OpenAI clients ``{"error": {"message", "type", "param", "code"}}``. The proxy and the Klein
routes both answer through here.
"""

from __future__ import annotations

import enum
import json

from twisted.web.server import Request


class Dialect(enum.Enum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"

    @classmethod
    def for_path(cls, path: bytes) -> Dialect:
        """The one rule for the dialect of a request path (the whole path, or the part below
        a route's prefix): Anthropic's under ``/olla/anthropic``, OpenAI's for any ``/v1``
        path, Ollama's for the rest."""
        path = path.split(b"?", 1)[0]
        if path.startswith(b"/olla/anthropic/") or path == b"/olla/anthropic":
            return cls.ANTHROPIC
        if b"/v1/" in path or path.endswith(b"/v1"):
            return cls.OPENAI
        return cls.OLLAMA


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "api_error"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error")


def error_body(
    dialect: Dialect,
    status: int,
    message: str,
    code: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """The JSON error body for ``status`` in ``dialect``."""
    if dialect is Dialect.ANTHROPIC:
        payload: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
            "request_id": request_id,
        }
    elif dialect is Dialect.OPENAI:
        payload = {
            "error": {
                "message": message,
                "type": _openai_type(status),
                "param": None,
                "code": code,
            }
        }
    else:
        payload = {"error": message}
    return json.dumps(payload).encode()


def write_error(
    request: Request,
    status: int,
    message: str,
    *,
    dialect: Dialect = Dialect.OLLAMA,
    code: str | None = None,
    request_id: str | None = None,
) -> None:
    """Answer ``request`` with a JSON error (naming ``request_id``, Anthropic's way) and
    finish it."""
    body = error_body(dialect, status, message, code, request_id)
    if dialect is Dialect.ANTHROPIC and request_id is not None:
        request.setHeader(b"request-id", request_id.encode())
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()
