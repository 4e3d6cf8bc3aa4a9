"""The shared failure describer and the bounded body reader."""

from __future__ import annotations

from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _newclient
from twisted.web.client import ResponseDone

from olla.util.bodies import BodyTooLarge, BoundedBody
from olla.util.failures import STALE_CONNECTION, TIMEOUTS, UNREACHABLE, describe


class _Transport:
    stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


def _feed(reader: BoundedBody, *chunks: bytes, reason: Failure | None = None) -> _Transport:
    transport = _Transport()
    reader.makeConnection(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        reader.dataReceived(chunk)
    reader.connectionLost(reason or Failure(ResponseDone()))
    return transport


class DescribeTests(SynchronousTestCase):
    def test_causes(self) -> None:
        """If a failure is wrapped by _newclient, then its first reason is described; our own
        deadline says what timed out; a refusal says so."""
        refused = Failure(net_error.ConnectionRefusedError())
        wrapped = Failure(_newclient.ResponseNeverReceived([refused]))
        self.assertEqual(describe(wrapped), "connection refused")
        self.assertEqual(describe(Failure(DeferredTimeout()), "headers late"), "headers late")
        cancelled = Failure(_newclient.ResponseNeverReceived([Failure(CancelledError())]))
        self.assertNotEqual(describe(cancelled), "")  # the wrapper itself, not the cancel
        self.assertEqual(describe(Failure(ValueError("bad"))), "bad")

    def test_tuples(self) -> None:
        """If a pooled connection was stale, then that counts as unreachable too."""
        self.assertTrue(set(STALE_CONNECTION) <= set(UNREACHABLE))
        self.assertIn(DeferredTimeout, TIMEOUTS)


class BoundedBodyTests(SynchronousTestCase):
    def test_kept(self) -> None:
        """If a kept body stays under its limit, then ``done`` has all of it."""
        reader = BoundedBody(10, keep=True)
        _feed(reader, b"abc", b"def")
        self.assertEqual(self.successResultOf(reader.done), b"abcdef")

    def test_kept_too_large(self) -> None:
        """If a kept body goes past the limit, then reading stops and ``done`` fails."""
        reader = BoundedBody(4, keep=True)
        transport = _feed(reader, b"abc", b"def")
        self.assertTrue(transport.stopped)
        self.failureResultOf(reader.done, BodyTooLarge)

    def test_drained(self) -> None:
        """If a body is only drained, then ``done`` fires empty, also past the limit."""
        for limit in (100, 2):
            reader = BoundedBody(limit, keep=False)
            _feed(reader, b"abc")
            self.assertEqual(self.successResultOf(reader.done), b"")

    def test_broken(self) -> None:
        """If a kept body breaks off, then ``done`` fails with why."""
        reader = BoundedBody(10, keep=True)
        reason: Any = Failure(net_error.ConnectionLost())
        _feed(reader, b"ab", reason=reason)
        self.failureResultOf(reader.done, net_error.ConnectionLost)


def test_fnv1a_known_values() -> None:
    """If FNV-1a hashes the empty string and "a", then the published values come out."""
    from olla.util.ids import base36, fnv1a

    assert fnv1a(b"") == 0x811C9DC5 and fnv1a(b"a") == 0xE40C292C
    assert fnv1a(b"", 64) == 0xCBF29CE484222325 and fnv1a(b"a", 64) == 0xAF63DC4C8601EC8C
    assert base36(0) == "0" and base36(36) == "10"
