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
from twisted.web.client import ResponseFailed

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


#: what a body that broke off because the backend's connection closed is called
CUT = "cut off: the backend closed the connection mid-answer"


def describe(failure: Failure, timed_out: str = "timed out", cut: str | None = None) -> str:
    """A short cause, unwrapping ``_newclient``'s wrapper exceptions (their first reason).

    ``cut``: what to call a response body that ended with data lost (the backend closed or
    lost the connection mid-answer), which Twisted reports as "Connection was closed
    cleanly" when the backend's kernel closed it for a killed process.
    """
    value = failure.value
    reasons: Sequence[Failure] = getattr(value, "reasons", ()) or ()
    if cut is not None and isinstance(value, ResponseFailed) and _lost_data(reasons):
        return cut
    if reasons and not reasons[0].check(CancelledError):
        return describe(reasons[0], timed_out)
    if isinstance(value, DeferredTimeout):
        return timed_out
    if isinstance(value, net_error.ConnectionRefusedError):
        return "connection refused"
    return str(value).strip() or type(value).__name__


def _lost_data(reasons: Sequence[Failure]) -> bool:
    """A body that failed because its connection closed or was lost before its end."""
    return any(
        reason.check(net_error.ConnectionDone, net_error.ConnectionLost) for reason in reasons
    )
