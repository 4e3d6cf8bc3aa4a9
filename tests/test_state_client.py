"""The RESP2 wire format and the Redis client, on a ``Clock`` and in-memory transports: replies
split anywhere, pipelining in order, the handshake, the command timeout (which drops every
connection), no connection -> an immediate failure, NOSCRIPT -> the script's source once."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from olla.config import RedisAddress
from olla.state.client import (
    PIPELINE,
    RedisClient,
    Script,
    StoreTimeout,
    StoreUnavailable,
    handshake,
)
from olla.state.resp import Parser, ReplyError, encode


class RespTests(SynchronousTestCase):
    def test_encode(self) -> None:
        """If a command has text, bytes and numbers, then each is a bulk string."""
        self.assertEqual(
            encode(["SET", b"k", 3, 1.5]),
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n3\r\n$3\r\n1.5\r\n",
        )

    def test_every_split(self) -> None:
        """If replies arrive split at any byte, then they parse the same."""
        wire = (
            b"+OK\r\n-ERR wrong\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n"
            b"*3\r\n:1\r\n$0\r\n\r\n*1\r\n+x\r\n"
        )
        for cut in range(len(wire) + 1):
            parser = Parser()
            replies = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
            self.assertEqual(len(replies), 7, cut)
            ok, error, number, bulk, nil, nil_array, array = replies
            self.assertEqual(
                (ok, number, bulk, nil, nil_array), (b"OK", 42, b"he\r\nl", None, None)
            )
            assert isinstance(error, ReplyError)
            self.assertEqual((error.kind, str(error)), ("ERR", "ERR wrong"))
            self.assertEqual(array, [1, b"", [b"x"]])


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects at once, each connection to an in-memory transport."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = MemoryEndpoint()
        address = RedisAddress("h", 6379, 2, False, None, "secret")
        self.client = RedisClient(
            self.endpoint, self.clock, command_timeout=0.25, pool_size=2, setup=handshake(address)
        )
        self.client.startService()
        self.addCleanup(self.client.stopService)

    def answer(self, index: int, reply: bytes) -> None:
        protocol, transport = self.endpoint.connections[index]
        transport.clear()
        protocol.dataReceived(reply)

    def ready(self) -> None:
        """Both connections through their handshake (AUTH, SELECT, PING)."""
        for index, (_, transport) in enumerate(self.endpoint.connections):
            self.assertIn(b"AUTH", transport.value())
            self.answer(index, b"+OK\r\n+OK\r\n")
            self.answer(index, b"+PONG\r\n")

    def test_handshake(self) -> None:
        """If a connection's handshake answers, then it is used; before, nothing is sent and a
        command fails at once with StoreUnavailable."""
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertIsInstance(
            self.failureResultOf(self.client.execute("GET", "k")).value, StoreUnavailable
        )
        self.ready()
        self.assertTrue(self.client.ready)
        d = self.client.execute("GET", "k")
        sent = [t.value() for _, t in self.endpoint.connections]
        self.assertIn(encode(["GET", "k"]), sent)
        index = sent.index(encode(["GET", "k"]))
        self.endpoint.connections[index][0].dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), b"v")

    def test_pipelined_in_order(self) -> None:
        """If several commands wait on one connection, then replies answer them in order, and an
        error reply fails only its own command."""
        self.ready()
        protocol, transport = self.endpoint.connections[0]
        first = self.client._timed(protocol, ["GET", "a"])
        second = self.client._timed(protocol, ["GET", "b"])
        protocol.dataReceived(b"-WRONGTYPE no\r\n:2\r\n")
        error = self.failureResultOf(first).value
        assert isinstance(error, ReplyError)
        self.assertEqual(error.kind, "WRONGTYPE")
        self.assertEqual(self.successResultOf(second), 2)

    def test_commands_share_one_connection(self) -> None:
        """If commands are sent together, then they go on the first connection (one write for
        them all) until PIPELINE of them wait there; the next goes on the other one, and when
        the first is lost, everything goes on the other."""
        self.ready()
        (first, first_out), (_, second_out) = self.endpoint.connections
        for _ in range(PIPELINE):
            self.client.execute("GET", "k")
        self.assertEqual((first.pending, second_out.value()), (PIPELINE, b""))
        self.client.execute("GET", "other")
        self.assertEqual(second_out.value(), encode(["GET", "other"]))
        first.dataReceived(b"$1\r\nv\r\n" * PIPELINE)
        cut = self.client.execute("GET", "again")
        self.assertEqual(first.pending, 1)
        first.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(cut, ConnectionLost)
        second_out.clear()
        self.client.execute("GET", "last")
        self.assertEqual(second_out.value(), encode(["GET", "last"]))

    def test_timeout_drops_connections(self) -> None:
        """If the store does not answer within the command timeout, then the command fails with
        StoreTimeout, every connection is dropped and a next command fails at once."""
        self.ready()
        d = self.client.execute("GET", "k")
        self.clock.advance(0.25)
        self.assertIsInstance(self.failureResultOf(d).value, StoreTimeout)
        self.assertFalse(self.client.ready)
        self.assertIsInstance(
            self.failureResultOf(self.client.execute("GET", "k")).value, StoreUnavailable
        )
        self.assertTrue(
            all(t.disconnecting or t.disconnected for _, t in self.endpoint.connections)
        )

    def test_noscript(self) -> None:
        """If the server does not know a script, then its source is sent once (EVAL)."""
        self.ready()
        script = Script("return 1")
        d = self.client.evalsha(script, ["k"], ["a"])
        for index, (_, transport) in enumerate(self.endpoint.connections):
            if b"EVALSHA" in transport.value():
                self.answer(index, b"-NOSCRIPT No matching script\r\n")
                break
        sent = b"".join(t.value() for _, t in self.endpoint.connections)
        self.assertIn(encode(["EVAL", "return 1", 1, "k", "a"]), sent)
        for index, (_, transport) in enumerate(self.endpoint.connections):
            if b"EVAL" in transport.value():
                self.answer(index, b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.client.trips.commands, 2)
