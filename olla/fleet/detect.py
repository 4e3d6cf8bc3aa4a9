# -*- test-case-name: tests.test_detect -*-
"""``type: auto``: which platform an endpoint runs, learnt from its own model lists.

The candidate platforms are tried in the §6.1 order (those whose profile lists the endpoint's
port in ``detection.default_ports`` first) and the first whose model list answers in that
platform's shape wins. Several platforms copy OpenAI's ``/v1/models``; those must also show
the owner they write into it, or answer with a header their profile names
(``detection.headers``/``response_headers``: ``X-vLLM-Version``, ``Server: llama.cpp``;
``server_signatures``/``user_agent_patterns`` in the ``Server`` header), so a vLLM is not
taken for a llama.cpp just because llama.cpp is tried first. A server that shows no such mark
is ``openai-compatible``.

Each distinct path is asked once per run, all at the same time, with the endpoint's own
headers and auth and within its ``check_timeout``; the answers are then read in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from olla.fleet.endpoints import Endpoint, resolve_url
from olla.fleet.modelsources import BODY_LIMIT, MODEL_SOURCES, DiscoveryError
from olla.fleet.values import Detection
from olla.interfaces import IPlatformDetector
from olla.profiles import Profile
from olla.util.bodies import BodyTooLarge, BoundedBody
from olla.util.deadline import with_deadline


@dataclass(frozen=True)
class Answer:
    """What one path answered: a JSON document, or why there is none."""

    document: Any = None
    problem: str = ""  # "" when ``document`` is a parsed JSON body from a 200
    #: the answer's headers, lower-cased names
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _owned_by(owner: str) -> Callable[[Any], bool]:
    def check(document: Any) -> bool:
        items = document.get("data") or []
        return any(isinstance(item, dict) and item.get("owned_by") == owner for item in items)

    return check


#: Platforms whose model list path others serve too must also show their mark.
MARKS: Mapping[str, Callable[[Any], bool]] = {
    # llama.cpp's server answers /api/tags as well, with OpenAI's "data" beside "models"
    "ollama": lambda document: "data" not in document,
    "llamacpp": _owned_by("llamacpp"),
    "vllm": _owned_by("vllm"),
    "omlx": _owned_by("omlx"),
}


def detection_url(endpoint: Endpoint, profile: Profile) -> str:
    """Where ``profile``'s platform lists its models on ``endpoint`` (a configured
    ``model_url`` is not used: it would ask every platform the same question)."""
    return resolve_url(endpoint.url, None, profile.model_discovery_path)


def recognise(profile: Profile, answer: Answer) -> bool:
    """Whether ``answer``, from ``profile``'s model list path, is that platform's own list."""
    if answer.problem:
        return False
    source = MODEL_SOURCES.get(profile.response_format, MODEL_SOURCES["openai"])
    try:
        source.parse(answer.document)
    except DiscoveryError:
        return False
    mark = MARKS.get(profile.name)
    return mark is None or mark(answer.document) or shows_headers(profile, answer.headers)


def shows_headers(profile: Profile, headers: Mapping[str, tuple[str, ...]]) -> bool:
    """Whether an answer carries a header ``profile``'s detection hints name."""
    hints = profile.detection
    for hint in hints.headers:
        name, _, value = hint.partition(":")
        values = headers.get(name.strip().lower())
        if values is not None and (not value.strip() or value.strip() in values):
            return True
    servers = headers.get("server", ())
    return any(sig.lower() in s.lower() for sig in hints.server_signatures for s in servers)


def by_port(endpoint: Endpoint, candidates: Sequence[Profile]) -> list[Profile]:
    """``candidates`` with those whose ``detection.default_ports`` hold the endpoint's port
    first (otherwise in order)."""
    port = urlsplit(endpoint.url).port
    if port is None:
        return list(candidates)
    return sorted(candidates, key=lambda p: port not in p.detection.default_ports)


def choose(asked: Sequence[tuple[Profile, Answer]]) -> Profile | None:
    """The first candidate whose own model list says the server is that platform."""
    return next((profile for profile, answer in asked if recognise(profile, answer)), None)


def explain(answers: Mapping[str, Answer]) -> str:
    """Why nothing was recognised, by path (never the full URL: it may carry secrets)."""
    problems = {
        urlsplit(url).path or "/": answer.problem or "not a known model list"
        for url, answer in answers.items()
    }
    if not problems:
        return "no platform to try"
    if len(set(problems.values())) == 1:
        return f"no known platform answered: {next(iter(problems.values()))}"
    details = ", ".join(f"{path} {problem}" for path, problem in problems.items())
    return f"no known platform answered: {details}"


def _problem(error: Exception) -> str:
    if isinstance(error, DeferredTimeout | net_error.TimeoutError):
        return "timed out"
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived and friends
    if reasons:
        return _problem(reasons[0].value)
    return str(error).strip() or type(error).__name__


@implementer(IPlatformDetector)
class PlatformDetector:
    """Asks an endpoint's candidate platforms' model list paths and picks the first match."""

    _log = Logger()

    def __init__(self, agent: IAgent, clock: IReactorTime, version: str) -> None:
        self._agent = agent
        self._clock = clock
        self._headers = Headers(
            {
                b"User-Agent": [f"olla-Discovery/{version}".encode()],
                b"Accept": [b"application/json"],
            }
        )

    def detect(self, endpoint: Endpoint) -> Deferred[Detection]:
        return Deferred.fromCoroutine(self._detect(endpoint))

    async def _detect(self, endpoint: Endpoint) -> Detection:
        started = self._clock.seconds()
        candidates = by_port(endpoint, endpoint.candidates)
        urls = list(dict.fromkeys(detection_url(endpoint, p) for p in candidates))
        runs = [Deferred.fromCoroutine(self._fetch(endpoint, url)) for url in urls]
        answers = dict(zip(urls, await gatherResults(runs), strict=True))
        latency = self._clock.seconds() - started
        profile = choose([(p, answers[detection_url(endpoint, p)]) for p in candidates])
        if profile is not None:
            return Detection(profile, latency)
        reason = explain(answers)
        self._log.debug("endpoint {endpoint}: {reason}", endpoint=endpoint.name, reason=reason)
        return Detection(None, latency, reason)

    async def _fetch(self, endpoint: Endpoint, url: str) -> Answer:
        headers = self._headers.copy()
        for name, value in endpoint.extra_headers:
            headers.setRawHeaders(name, [value])
        timeout = endpoint.check_timeout
        try:
            request = self._agent.request(b"GET", url.encode(), headers)
            response: IResponse = await with_deadline(request, timeout, self._clock)
            body = await with_deadline(_read(response), timeout, self._clock)
        except CancelledError:
            raise
        except Exception as e:
            return Answer(problem=_problem(e))
        if response.code != 200:
            hint = " (check auth)" if response.code in (401, 403) else ""
            return Answer(problem=f"HTTP {response.code}{hint}")
        shown = {
            name.decode("latin-1").lower(): tuple(v.decode("latin-1") for v in values)
            for name, values in response.headers.getAllRawHeaders()
        }
        try:
            return Answer(json.loads(body), headers=shown)
        except ValueError:
            return Answer(problem="not JSON")


def _read(response: IResponse) -> Deferred[bytes]:
    """The body, at most ``BODY_LIMIT`` bytes (a bigger one is cut off and fails)."""
    reader = BoundedBody(BODY_LIMIT, keep=True)
    response.deliverBody(reader)

    def too_large(failure: Failure) -> bytes:
        failure.trap(BodyTooLarge)
        raise DiscoveryError(str(failure.value))

    return reader.done.addErrback(too_large)
