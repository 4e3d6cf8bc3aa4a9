"""``StreamBody``: what it relays and what it keeps of a body's end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from olla.proxy.forward import TAIL_SIZE, StreamBody


class Sink:
    """A client request as ``StreamBody`` writes to it."""

    channel: object | None = object()

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)


@given(st.lists(st.binary(max_size=3 * TAIL_SIZE), max_size=40))
def test_tail_is_the_last_bytes_whatever_the_chunks(chunks: list[bytes]) -> None:
    """If a body arrives in chunks of any sizes, then every byte is relayed in order and the
    tail is always the body's last TAIL_SIZE bytes (all of it when shorter)."""
    sink = Sink()
    ended: list[Failure | None] = []
    stream = StreamBody(sink, Clock(), 0.0, ended.append)
    stream.transport = None
    stream.connectionMade()
    body = b""
    for chunk in chunks:
        stream.dataReceived(chunk)
        body += chunk
        assert stream.tail == body[-TAIL_SIZE:]
    stream.connectionLost(Failure(ResponseDone()))
    assert b"".join(sink.written) == body
    assert stream.relayed == len(body) and ended == [None]
