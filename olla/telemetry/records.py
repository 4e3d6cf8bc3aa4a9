# -*- test-case-name: tests.test_outcomes -*-
"""What the request path publishes (``olla.interfaces.IOutcomeListener``): one record per
upstream attempt and one per client request, as plain values.

The request path fills them in and hands them on; it never decides what they are used for.
Not frozen: a record is built once per request or attempt, and a frozen dataclass costs twice
as much to build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from olla.fleet.values import Endpoint, Outcome


@dataclass(slots=True)
class AttemptStart:
    """One upstream attempt on its way."""

    request_id: str
    number: int  # 1 for a request's first attempt
    endpoint: Endpoint
    #: the model by the name ``endpoint`` knows it (an alias rewritten), or None
    model: str | None
    at: float
    #: the model was not known to be loaded there (the attempt may load it)
    cold: bool = False
    #: the attempt this one takes the request over from (a failover), or None
    after: AttemptRecord | None = None
    #: the path and query asked of the endpoint (its profile says which paths run the model)
    path: bytes = b""


@dataclass(slots=True)
class AttemptRecord:
    """How one upstream attempt ended."""

    #: what was announced when it began (request, endpoint, model, time)
    start: AttemptStart
    ended: float
    outcome: Outcome
    #: the status the backend answered, when it did
    status: int | None = None
    #: body bytes relayed to the client
    relayed: int = 0
    #: why it failed or refused ("connection refused", "503"...), for logs and the failover log
    cause: str | None = None
    #: set when the request moved on to the next candidate: ``unreachable``, ``timeout`` or
    #: ``status_<code>`` (a small fixed set, for the metrics)
    failover: str | None = None
    #: it could not connect: the endpoint leaves rotation until a probe passes
    unreachable: bool = False
    #: the backend said it is full: how long it goes after the others (seconds)
    busy_for: float | None = None
    #: the load time the answer reported in its last bytes (Ollama's ``load_duration``)
    load_seconds: float | None = None


@dataclass(slots=True)
class RequestRecord:
    """One finished client request, however it ended."""

    endpoint: str | None  # the one that answered (or failed last); None: no attempt was made
    model: str | None
    route: str  # the provider route's prefix, or "none" outside them
    status: int | None
    #: ``ok`` (answered in full, status below 400), ``error`` (answered in full with an error
    #: status, the backend's or olla's own), ``failed`` (no usable answer: every attempt
    #: failed, or the stream broke), ``rejected`` (refused before any attempt: the guard,
    #: routing, an unsupported call), ``client_gone`` (the client left first: logged as 499)
    outcome: str
    attempts: int
    bytes: int
    duration: float  # request start to last byte
    ttft: float | None = None  # request start to the first body byte of a stream
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    #: every figure the endpoint's profile (``metrics.extraction``) read from the answer
    backend_metrics: Mapping[str, object] | None = None
    request_id: str = "-"
    method: str = "-"
    path: str = "-"
    client_ip: str = "-"
    ended: float = 0.0
    #: "endpoint:cause" for each attempt that handed the request over
    failovers: tuple[str, ...] = ()
    #: why olla refused or failed it (for the log line)
    error: str | None = None
    #: the name of the client key the request presented (when keys are configured)
    client_key: str | None = None
    #: what olla did with it itself instead of proxying it: a model-management call's
    #: operation (``pull``, ``copy``...), and every endpoint that call asked (``endpoint``
    #: stays None: no endpoint answered it, olla did)
    operation: str | None = None
    endpoints: tuple[str, ...] = ()
    #: how the request was shaped for its backend (``passthrough``, ``translation``), or None
    mode: str | None = None
    #: the sticky session: its key, where the key came from, the model it is scoped by, what
    #: the pin did
    session: str | None = None
    session_source: str | None = None
    session_model: str | None = None
    sticky: str | None = None
    #: seconds the admission queue held it (0: let through at once), summed over its
    #: attempts; None: it never passed the queue (no model, or answered by olla itself)
    queued: float | None = None
    #: its priority in the admission queue (``high``, ``normal``, ``low``), when it passed it
    priority: str | None = None
