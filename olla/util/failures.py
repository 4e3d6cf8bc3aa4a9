# -*- test-case-name: tests.test_failures -*-
"""What went wrong talking to a backend: which failures prove nothing reached it, and a short
human cause for logs, status pages and error messages. Health checks and the proxy share it."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure
from twisted.web import _newclient

#: Failures a stale pooled keep-alive connection causes (the backend had just closed it).
STALE_CONNECTION: tuple[type[BaseException], ...] = (
    _newclient.RequestNotSent,
    _newclient.RequestTransmissionFailed,
    _newclient.ResponseNeverReceived,
)

#: The backend could not be reached, or dropped the connection before answering.
UNREACHABLE: tuple[type[BaseException], ...] = (
    net_error.ConnectError,  # refused, no route, DNS, connect timeout, ...
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    *STALE_CONNECTION,
)

#: Our own deadlines: the network's timeout, or ``olla.util.deadline.with_deadline``'s.
TIMEOUTS: tuple[type[BaseException], ...] = (net_error.TimeoutError, DeferredTimeout)


def describe(failure: Failure, timed_out: str = "timed out") -> str:
    """A short cause, unwrapping ``_newclient``'s wrapper exceptions (their first reason)."""
    value = failure.value
    reasons: Sequence[Failure] = getattr(value, "reasons", ()) or ()
    if reasons and not reasons[0].check(CancelledError):
        return describe(reasons[0], timed_out)
    if isinstance(value, DeferredTimeout):
        return timed_out
    if isinstance(value, net_error.ConnectionRefusedError):
        return "connection refused"
    return str(value).strip() or type(value).__name__
