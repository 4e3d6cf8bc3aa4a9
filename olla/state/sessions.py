# -*- test-case-name: tests.test_state_stores -*-
"""``RedisSessionStore``: sticky pins every process and instance shares (``ISessionStore``).

A session is one hash, ``<prefix>session:<key>``, holding the pinned endpoint's name, that
endpoint's unpin generation, the session's model and that model's removal generation on the
endpoint, with the idle TTL in Redis (a lookup starts it again). Unpinning an endpoint (it left
rotation) is one ``INCR`` of its generation: every pin made before reads as "known, no pin"
from then on, without finding them. Deleting a model from endpoints (model management) is one
``INCR`` of each name's removal generation there: the sessions of that model pinned there are
forgotten (a lookup finds them unknown and drops them). The LRU bound ``max_sessions`` is this
process's fallback's; in Redis the TTL (and the server's ``maxmemory`` policy) bounds them.

Every pin is also kept in this process's ``MemorySessionStore``: while the store does not
answer, lookups are answered from there (the conversations this process served stay put).
"""

from __future__ import annotations

from collections.abc import Collection

from twisted.internet.defer import Deferred
from zope.interface import implementer

from olla.fleet.sticky import MemorySessionStore
from olla.fleet.values import SessionPin
from olla.interfaces import ISessionStore
from olla.state.resp import Arg, Reply
from olla.state.scripts import SESSION_LOOKUP, SESSION_PIN, SESSIONS_FORGET
from olla.state.shared import SharedState


def removal_key(prefix: str, endpoint: str, model: str) -> str:
    """The generation of ``model``'s sessions on ``endpoint`` (as ``SESSION_PIN`` spells it:
    the name's length in bytes first, so that no endpoint and model pair reads as another)."""
    return f"{prefix}{len(endpoint.encode())}:{endpoint}:{model}"


def _pin(reply: Reply) -> SessionPin | None:
    if reply is None:
        return None
    if not isinstance(reply, bytes):
        raise TypeError(f"a session lookup answered {reply!r}")
    return SessionPin(reply.decode() or None)


@implementer(ISessionStore)
class RedisSessionStore:
    """Sessions in the shared store, this process's memory as the fallback."""

    def __init__(self, shared: SharedState, local: MemorySessionStore, idle_ttl: float) -> None:
        self._shared = shared
        self.local = local
        self._ttl_ms = int(idle_ttl * 1000) if idle_ttl > 0 else 0
        self._generations = shared.key("unpinned", "")
        self._removals = shared.key("removed", "")

    def _key(self, key: str) -> str:
        return self._shared.key("session", key)

    def lookup(self, key: str) -> Deferred[SessionPin | None]:
        stored = self._key(key)
        return self._shared.ask(
            lambda c: c.evalsha(
                SESSION_LOOKUP, [stored], [self._ttl_ms, self._generations, self._removals]
            ),
            _pin,
            lambda: self.local.lookup(key),
        )

    def pin(self, key: str, endpoint: str, model: str = "") -> None:
        self.local.pin(key, endpoint, model)
        stored = self._key(key)
        args: list[Arg] = [endpoint, self._ttl_ms, self._generations, model, self._removals]
        self._shared.send(lambda c: c.evalsha(SESSION_PIN, [stored], args), lambda: None)

    def unpin(self, endpoint: str) -> int:
        purged = self.local.unpin(endpoint)
        generation = self._generations + endpoint
        self._shared.send(lambda c: c.execute("INCR", generation), lambda: None)
        return purged

    def model_removed(self, names: Collection[str], endpoints: Collection[str]) -> int:
        """Forgotten everywhere; the count is this process's own (the store keeps none)."""
        forgotten = self.local.model_removed(names, endpoints)
        keys: list[Arg] = [
            removal_key(self._removals, endpoint, name) for endpoint in endpoints for name in names
        ]
        if keys:
            self._shared.send(lambda c: c.evalsha(SESSIONS_FORGET, keys, []), lambda: None)
        return forgotten

    def stats(self) -> dict[str, int]:
        """This process's figures (the shared store keeps no counters of its own)."""
        return self.local.stats()
