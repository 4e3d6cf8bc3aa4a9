# -*- test-case-name: tests.test_state_resp -*-
"""RESP2, the Redis wire format: commands out, replies in. Pure: bytes in, values out.

A command is an array of bulk strings. A reply is a simple string (``bytes``), an error
(``ReplyError``, returned as a value: the caller decides whether it raises), an integer, a
bulk string (``bytes`` or None) or an array of replies (or None). The parser is fed whatever
the socket delivered and gives back every reply it completes, so a reply split anywhere
parses the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias


class ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``): ``kind`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.kind = message.split(" ", 1)[0]


#: what one reply can be
Reply: TypeAlias = "bytes | int | None | list[Reply] | ReplyError"

Arg: TypeAlias = bytes | str | int | float


class ProtocolError(Exception):
    """The bytes are not RESP: the connection cannot be trusted any more."""


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return repr(value).encode()
    return b"%d" % value


def encode(args: Sequence[Arg]) -> bytes:
    """One command as RESP (``SET k v`` -> ``*3\\r\\n$3\\r\\nSET\\r\\n...``)."""
    parts = [b"*%d\r\n" % len(args)]
    for value in args:
        data = _arg(value)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Parser:
    """Replies from a byte stream, however it is split."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        """Every reply ``data`` completes (the rest waits for more bytes)."""
        self._buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        buffer = self._buffer
        pos = 0
        while pos < len(buffer):
            parsed = _parse(buffer, pos)
            if parsed is None:
                break
            reply, pos = parsed
            replies.append(reply)
        self._buffer = buffer[pos:]
        return replies


def _line(buffer: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return None
    return buffer[pos:end], end + 2


def _parse(buffer: bytes, pos: int) -> tuple[Reply, int] | None:
    """The reply starting at ``pos`` and where the next one starts; None: incomplete."""
    found = _line(buffer, pos + 1)
    if found is None:
        return None
    line, after = found
    kind = buffer[pos : pos + 1]
    if kind == b"+":
        return line, after
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None  # incomplete: wait for the rest
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items: list[Reply] = []
        for _ in range(count):
            parsed = _parse(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ProtocolError(f"unexpected reply type {kind!r}")
