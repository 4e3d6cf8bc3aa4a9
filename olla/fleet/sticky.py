# -*- test-case-name: tests.test_sticky -*-
"""Sticky sessions: keep a conversation on the endpoint that holds its KV cache.

An agent sends the same growing conversation again and again; the machine that served the last
turn has its prefix in memory, any other recomputes it. Each request gets a session key (the
first of ``proxy.sticky_sessions.key_sources`` that gives one, always scoped by the model):

- ``session_header``: the client's ``X-Olla-Session-ID``;
- ``prefix_hash``: the conversation's prefix, the system prompt and the first user message
  (Ollama, OpenAI and Anthropic shapes; the first ``prefix_hash_bytes`` of each), stable while
  the conversation grows turn by turn;
- ``auth_header``: the ``Authorization`` header;
- ``ip``: the client's address.

An ``ISessionStore`` maps keys to the endpoint that last served them (``MemorySessionStore``:
an LRU of at most ``max_sessions`` with a sliding idle TTL on the injected clock). Routing
(``olla.proxy.routing``) puts the pinned endpoint first while it can serve; wherever the
request is served becomes the pin (``StickySessions`` hears each request's record). A pin
never causes an error: it only orders candidates.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from olla.config import StickySessionsConfig
from olla.fleet.values import SessionPin
from olla.interfaces import IOutcomeListener, ISessionStore
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import RequestRecord

if TYPE_CHECKING:
    from olla.fleet.endpoints import Endpoint, EndpointStatus

#: the request header that names a session explicitly (echoed back on the answer)
SESSION_HEADER = b"X-Olla-Session-ID"


#: a hit is pinned again at its end only when it took this share of the idle TTL or more
#: (shorter, its lookup's restart of the idle time stands; a shared store: a round trip saved)
REPIN_SHARE = 0.01


class StickyOutcome(Enum):
    """``X-Olla-Sticky-Session``: what the session's pin did for this request."""

    HIT = "hit"  # served where the session was pinned
    MISS = "miss"  # a new session: pinned where it was served
    REPIN = "repin"  # pinned elsewhere (gone, full or failed): the pin moved
    DISABLED = "disabled"  # no key source gave a key


@dataclass(frozen=True)
class SessionKey:
    """One request's session key and where it came from."""

    key: str
    source: str  # session_header | prefix_hash | auth_header | ip
    #: the client's ``X-Olla-Session-ID``, echoed back (``session_header`` only)
    session_id: bytes | None = None
    #: the model the session is scoped by, lower-cased
    model: str = ""


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def session_key(
    config: StickySessionsConfig,
    *,
    model: str | None,
    session_id: bytes | None,
    authorization: bytes | None,
    client_ip: str | None,
    document: Callable[[], object],
) -> SessionKey | None:
    """The first key ``config.key_sources`` gives, scoped by the (lower-cased) model; None
    when no source gives one. ``document`` (the parsed body) is only asked for by
    ``prefix_hash``."""
    scope = (model or "").strip().lower()
    for source in config.key_sources:
        if source == "session_header" and session_id:
            return SessionKey(f"s:{scope}:{_digest(session_id)}", source, session_id, scope)
        if source == "prefix_hash":
            prefix = conversation_prefix(document(), config.prefix_hash_bytes)
            if prefix is not None:
                return SessionKey(f"p:{scope}:{_digest(prefix)}", source, model=scope)
        if source == "auth_header" and authorization:
            return SessionKey(f"a:{scope}:{_digest(authorization)}", source, model=scope)
        if source == "ip" and client_ip:
            return SessionKey(f"i:{scope}:{client_ip}", source, model=scope)
    return None


def conversation_prefix(document: object, limit: int) -> bytes | None:
    """What stays the same while a conversation grows: its system prompt and first user
    message (the first ``limit`` bytes of each), or its ``prompt`` when it has no messages.

    Read the same way from every shape: Ollama and OpenAI ``messages`` (system and developer
    messages before the first user message), Anthropic's top-level ``system``, Ollama's
    ``/api/generate`` ``system`` and ``prompt``, OpenAI's completions ``prompt``. Only the
    text counts, so Anthropic ``cache_control`` marks that move from turn to turn do not
    change the key. None when the body has none of these.
    """
    if not isinstance(document, dict):
        return None
    system = [_text(document.get("system"))]
    first: str | None = None
    messages = document.get("messages")
    if isinstance(messages, list) and messages:
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            text = _text(message.get("content"))
            if role in ("system", "developer"):
                system.append(text)
            elif role == "user":
                first = text
                break
        if first is None:  # no user message: the first message of any role
            head = messages[0]
            first = _text(head.get("content") if isinstance(head, dict) else head)
    elif "prompt" in document:
        first = _text(document.get("prompt"))
    if first is None or not (first or any(system)):
        return None
    parts = ("\n".join(s for s in system if s), first)
    return b"\x00".join(part.encode("utf-8", "replace")[:limit] for part in parts)


def _text(content: Any) -> str:
    """A message's text: a string as it is, content blocks by their text (other blocks as
    compact JSON without their ``cache_control``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text(block) for block in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return str(content["text"])
        content = {k: v for k, v in content.items() if k != "cache_control"}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_body(body: bytes | None) -> object:
    """A JSON body for ``prefix_hash``, or None (not JSON, or not kept for inspection)."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


@dataclass
class _Entry:
    #: where the session was last served (an endpoint name); None once that endpoint left
    #: rotation (the session is still known, so its next request is a ``repin``, not a ``miss``)
    endpoint: str | None
    expires: float
    #: the model the session is scoped by, lower-cased
    model: str = ""


@implementer(ISessionStore)
class MemorySessionStore:
    """Sessions in this process: an LRU of at most ``max_sessions`` with a sliding idle TTL
    (``idle_ttl_seconds``, 0: none) on the injected clock."""

    def __init__(self, config: StickySessionsConfig, clock: IReactorTime) -> None:
        self._max = config.max_sessions
        self._ttl = config.idle_ttl_seconds
        self._clock = clock
        #: least recently used first; with one TTL for all, also soonest to expire first
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.insertions = 0
        self.evictions = 0

    def __len__(self) -> int:
        """Sessions remembered now (expired ones may remain until the next sweep)."""
        return len(self._entries)

    def _expires(self) -> float:
        return self._clock.seconds() + self._ttl if self._ttl > 0 else float("inf")

    def _sweep(self) -> None:
        """Drop expired sessions (all at the front: the LRU order is the expiry order)."""
        now = self._clock.seconds()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[key]
            self.evictions += 1

    def lookup(self, key: str) -> Deferred[SessionPin | None]:
        self._sweep()
        entry = self._entries.get(key)
        if entry is None:
            return succeed(None)
        entry.expires = self._expires()
        self._entries.move_to_end(key)
        return succeed(SessionPin(entry.endpoint))

    def pin(self, key: str, endpoint: str, model: str = "") -> None:
        self._sweep()
        entry = self._entries.get(key)
        if entry is not None:
            entry.endpoint = endpoint
            entry.expires = self._expires()
            self._entries.move_to_end(key)
            return
        self._entries[key] = _Entry(endpoint, self._expires(), model)
        self.insertions += 1
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def unpin(self, endpoint: str) -> int:
        purged = 0
        for entry in self._entries.values():
            if entry.endpoint == endpoint:
                entry.endpoint = None
                purged += 1
        return purged

    def model_removed(self, names: Collection[str], endpoints: Collection[str]) -> int:
        gone = [
            key
            for key, entry in self._entries.items()
            if entry.model in names and entry.endpoint in endpoints
        ]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def stats(self) -> dict[str, int]:
        self._sweep()
        return {
            "active_sessions": len(self._entries),
            "insertions": self.insertions,
            "evictions": self.evictions,
        }


@implementer(IOutcomeListener)
class StickySessions(OutcomeListener):
    """Sticky sessions: each request's session (``for_request``), and, as an outcome listener,
    the pin moved to wherever a request was served and the outcome counted.

    Where sessions are kept is the ``ISessionStore``'s business (in memory by default);
    ``endpoints`` turns a stored endpoint name back into the configured endpoint.
    """

    _log = Logger()

    def __init__(
        self,
        config: StickySessionsConfig,
        store: ISessionStore,
        endpoints: Callable[[str], Endpoint | None],
    ) -> None:
        self.config = config
        self.store = store
        self._endpoints = endpoints
        self.hits = 0
        self.misses = 0
        if config.idle_ttl_seconds == 0:
            self._log.warn(
                "proxy.sticky_sessions.idle_ttl_seconds is 0: sessions never expire, "
                "only the max_sessions LRU bounds them"
            )

    def for_request(
        self,
        model: str | None,
        header: Callable[[bytes], bytes | None],
        client_ip: str,
        document: Callable[[], object],
    ) -> Deferred[Affinity]:
        """The session of one request: ``header`` reads its headers, ``document`` its parsed
        body (only asked for by ``prefix_hash``)."""
        key = session_key(
            self.config,
            model=model,
            session_id=header(SESSION_HEADER),
            authorization=header(b"authorization"),
            client_ip=client_ip or None,
            document=document,
        )
        return self.lookup(key)

    def lookup(self, key: SessionKey | None) -> Deferred[Affinity]:
        """This request's view of its session; a known session's idle time starts again."""
        if key is None:
            return succeed(Affinity(None))
        return self.store.lookup(key.key).addCallback(self._affinity, key)

    def _affinity(self, pin: SessionPin | None, key: SessionKey) -> Affinity:
        if pin is None:
            return Affinity(key)
        pinned = self._endpoints(pin.endpoint) if pin.endpoint is not None else None
        return Affinity(key, known=True, pinned=pinned)

    def request_finished(self, record: RequestRecord) -> None:
        """A request was served: its session's pin moves there, and the outcome is counted."""
        if record.sticky is None or record.sticky == StickyOutcome.DISABLED.value:
            return
        if record.session is not None and record.endpoint is not None and self._repin(record):
            self.store.pin(record.session, record.endpoint, record.session_model or "")
        if record.sticky == StickyOutcome.HIT.value:
            self.hits += 1
        else:
            self.misses += 1

    def _repin(self, record: RequestRecord) -> bool:
        """Whether the pin must be written. Not for a hit that ended soon: its lookup found it
        pinned there (the key is scoped by the model, so the pin is the same) and restarted its
        idle time, which pinning again would only move by the request's duration."""
        if record.sticky != StickyOutcome.HIT.value:
            return True
        ttl = self.config.idle_ttl_seconds
        return ttl > 0 and record.duration >= ttl * REPIN_SHARE

    def model_removed(self, names: Collection[str], endpoints: Collection[Endpoint]) -> int:
        """A model (by each of its lower-cased ``names``) was deleted from ``endpoints``: the
        sessions of that model pinned there are forgotten; how many were."""
        return self.store.model_removed(names, {endpoint.name for endpoint in endpoints})

    def status_changed(self, endpoint: Endpoint, old: EndpointStatus, new: EndpointStatus) -> None:
        """The registry's listener: a demoted endpoint's sessions lose their pin at once
        (its cache may be gone by the time it returns)."""
        if old.routable and not new.routable:
            purged = self.store.unpin(endpoint.name)
            if purged:
                self._log.info(
                    "sticky sessions: {count} pinned to {endpoint} unpinned ({status})",
                    count=purged,
                    endpoint=endpoint.name,
                    status=new.value,
                )

    def stats(self) -> dict[str, Any]:
        """``/internal/stats/sticky`` (Olla's fields): ``hits`` are requests served where
        their session was pinned; ``misses`` new sessions and pins that moved; ``evictions``
        sessions dropped by the LRU or the idle TTL."""
        kept = self.store.stats()
        return {
            "enabled": True,
            "active_sessions": kept["active_sessions"],
            "insertions": kept["insertions"],
            "hits": self.hits,
            "misses": self.misses,
            "evictions": kept["evictions"],
            "max_sessions": self.config.max_sessions,
            "idle_ttl_seconds": self.config.idle_ttl_seconds,
        }


@dataclass
class Affinity:
    """One request's session: its key, where it is pinned, and (once served) the outcome.

    Deciding the outcome writes nothing: the request's record carries it, and the sessions'
    outcome listener moves the pin once the request is over.
    """

    key: SessionKey | None
    known: bool = False
    pinned: Endpoint | None = None
    outcome: StickyOutcome | None = field(default=None, init=False)

    def served(self, endpoint: Endpoint) -> StickyOutcome:
        """The request is answered by ``endpoint``: the outcome (decided once per request)."""
        if self.outcome is not None:
            return self.outcome
        if self.key is None:
            outcome = StickyOutcome.DISABLED
        elif self.pinned is endpoint:
            outcome = StickyOutcome.HIT
        else:
            outcome = StickyOutcome.REPIN if self.known else StickyOutcome.MISS
        self.outcome = outcome
        return outcome

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``X-Olla-Sticky-Session`` (once served), ``X-Olla-Sticky-Key-Source`` and
        ``X-Olla-Session-ID`` (an explicit session's id, echoed)."""
        out: list[tuple[bytes, bytes]] = []
        if self.outcome is not None:
            out.append((b"X-Olla-Sticky-Session", self.outcome.value.encode()))
        if self.key is not None:
            out.append((b"X-Olla-Sticky-Key-Source", self.key.source.encode()))
            if self.key.session_id is not None:
                out.append((SESSION_HEADER, self.key.session_id))
        return out
