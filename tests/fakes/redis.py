"""The shared stores' commands in memory, for unit tests: fakeredis (with Lua) behind the
``Commands`` shape ``SharedState`` sends through, every call answered at once.

    server = FakeStore()
    a, b = server.process("a", clock), server.process("b", clock)   # two SharedStates
    server.down = True        # no connection: every call fails at once (StoreUnavailable)

Published messages (``PUBLISH``, also from inside a script) reach every process's
``SharedState.deliver`` right after the command that published them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fakeredis
from redis.exceptions import NoScriptError, ResponseError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from olla.state.client import Script, StoreUnavailable
from olla.state.protocol import RoundTrips
from olla.state.resp import Arg, Reply, ReplyError
from olla.state.shared import SharedState

PREFIX = "test:"


class FakeCommands:
    """One process's connection to the fake server."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.trips = RoundTrips()
        self.sent: list[tuple[Arg, ...]] = []

    @property
    def ready(self) -> bool:
        return not self._store.down

    def execute(self, *args: Arg) -> Deferred[Reply]:
        self.sent.append(args)
        if self._store.down:
            return fail(StoreUnavailable("the fake store is down"))
        try:
            reply = self._store.redis.execute_command(*args)
        except NoScriptError as e:  # redis-py takes the error's kind off its message
            return fail(ReplyError(f"NOSCRIPT {e}"))
        except ResponseError as e:
            return fail(ReplyError(str(e)))
        finally:
            self._store.pump()
        self.trips.answered(0.0)
        return succeed(reply)

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred[Reply]:
        result: Deferred[Reply] = Deferred()

        def unknown(failure: Any) -> None:
            if isinstance(failure.value, ReplyError) and failure.value.kind == "NOSCRIPT":
                self.execute("EVAL", script.source, len(keys), *keys, *args).chainDeferred(result)
            else:
                result.errback(failure)

        self.execute("EVALSHA", script.sha, len(keys), *keys, *args).addCallbacks(
            result.callback, unknown
        )
        return result


class FakeStore:
    """One fake server and the processes that share it."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeStrictRedis(server=self.server)
        self.redis.response_callbacks.clear()  # raw replies, as RESP gives them
        self.down = False
        self._listening: list[tuple[Any, SharedState]] = []
        self._connections: list[FakeCommands] = []

    @property
    def commands(self) -> int:
        """Commands every process has sent so far (each a round trip to a real server)."""
        return sum(len(connection.sent) for connection in self._connections)

    def process(self, name: str, clock: IReactorTime) -> SharedState:
        """A process sharing this store (its lease taken, its events subscribed)."""
        connection = FakeCommands(self)
        self._connections.append(connection)
        shared = SharedState(connection, clock, prefix=PREFIX, where="fake", process=name)
        pubsub = fakeredis.FakeStrictRedis(server=self.server).pubsub()
        pubsub.subscribe(shared.channel)
        pubsub.get_message(timeout=0)  # the subscribe confirmation
        self._listening.append((pubsub, shared))
        shared.answered()  # connected: its lease is renewed at once
        return shared

    def pump(self) -> None:
        """Deliver what was published to every process."""
        for pubsub, shared in self._listening:
            while True:
                message = pubsub.get_message(timeout=0)
                if message is None:
                    break
                if message["type"] == "message":
                    shared.deliver(message["channel"], message["data"])

    def kill_process(self, shared: SharedState) -> None:
        """``shared``'s process died: its lease is gone (as when its TTL runs out)."""
        self.redis.execute_command("DEL", shared.procs + shared.process)
