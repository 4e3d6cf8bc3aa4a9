"""The shared stores' Lua scripts on a real ``redis-server`` (the unit tests run them on
fakeredis): slots against both caps, a release published as the JSON event every process reads,
a dead process's slots and counts dropped, poll leases, rate buckets, session generations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from twisted.internet.task import Clock

from olla.state.client import Script
from olla.state.scripts import (
    LEASE_CLAIM,
    LOAD_SYNC,
    RATE_TAKE,
    SESSION_LOOKUP,
    SESSION_PIN,
    SESSIONS_FORGET,
    SLOT_ACQUIRE,
    SLOT_RELEASE,
    SLOT_VIEW,
)
from olla.state.shared import SharedState
from tests.e2e.redis import redis_server
from tests.fakes.redis import FakeCommands, FakeStore

pytestmark = pytest.mark.e2e

PROCS = "t:proc:"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        connection = redis.Redis(port=server.port)
        connection.set(PROCS + "a", "1")
        connection.set(PROCS + "b", "1")
        yield connection
        connection.close()


def run(client: redis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    return client.eval(script.source, len(keys), *keys, *args)


def test_slots(client: redis.Redis) -> None:
    """If a and b share an endpoint's cap of 2, then the third acquire is refused, a release is
    published as the event SharedState reads, and a dead process's slot frees."""
    key = "t:slots:e1"
    assert run(client, SLOT_ACQUIRE, [key], ["a#1", "m", 2, 2, PROCS]) == [1, 1, 1]
    assert run(client, SLOT_ACQUIRE, [key], ["b#1", "n", 2, 2, PROCS]) == [1, 2, 1]
    assert run(client, SLOT_ACQUIRE, [key], ["b#2", "m", 2, 2, PROCS]) == [0, 2, 1]
    assert run(client, SLOT_ACQUIRE, [key], ["b#2", "m", 9, 1, PROCS]) == [0, 2, 1]
    pubsub = client.pubsub()
    pubsub.subscribe("t:events")
    pubsub.get_message(timeout=1)
    shared = SharedState(FakeCommands(FakeStore()), Clock(), prefix="t:", where="x", process="b")
    start = shared.message_start("slot", "e1", "m")
    assert run(client, SLOT_RELEASE, [key], ["a#1", "m", "t:events", start]) == [1, 1, 0]
    assert run(client, SLOT_RELEASE, [key], ["a#1", "m", "t:events", start]) == [0, -1, -1]
    message = pubsub.get_message(timeout=2)
    assert message is not None and json.loads(message["data"]) == ["slot", "b", "e1", "m", 1, 0]
    client.delete(PROCS + "b")  # b died
    assert run(client, SLOT_VIEW, [key], [PROCS]) == [[0]]
    assert run(client, SLOT_ACQUIRE, [key], ["a#2", "m", 1, 1, PROCS]) == [1, 1, 1]


def test_load_and_leases(client: redis.Redis) -> None:
    """If a and b count attempts on an endpoint, then each reads the other's; a dead process's
    count goes. A poll lease is held by one process, and renewed by it."""
    key = "t:load:e1"
    assert run(client, LOAD_SYNC, [key], ["a", PROCS, 3]) == [0]
    assert run(client, LOAD_SYNC, [key], ["b", PROCS, 1]) == [3]
    client.delete(PROCS + "a")
    assert run(client, LOAD_SYNC, [key], ["b", PROCS, 1]) == [0]
    lease = "t:lease:health:e1"
    assert run(client, LEASE_CLAIM, [lease], ["a", 1000]) == 1
    assert run(client, LEASE_CLAIM, [lease], ["b", 1000]) == 0
    assert run(client, LEASE_CLAIM, [lease], ["a", 1000]) == 1


def test_rates_and_sessions(client: redis.Redis) -> None:
    """A bucket of 3 gives 3 tokens and refuses the 4th (levels as strings); a pin made before
    its endpoint was unpinned reads as known and unpinned."""
    bucket = ["t:rate:ip:x"]
    taken = [run(client, RATE_TAKE, bucket, [1e-6, 3.0])[0] for _ in range(4)]
    assert taken == [1, 1, 1, 0]
    assert float(run(client, RATE_TAKE, bucket, [1e-6, 3.0])[1]) < 1
    pin = ["fake-a", 600000, "t:unpinned:", "llama3", "t:removed:"]
    look = [600000, "t:unpinned:", "t:removed:"]
    run(client, SESSION_PIN, ["t:session:k"], pin)
    assert run(client, SESSION_LOOKUP, ["t:session:k"], look) == b"fake-a"
    assert 590000 < client.pttl("t:session:k") <= 600000
    client.incr("t:unpinned:fake-a")
    assert run(client, SESSION_LOOKUP, ["t:session:k"], look) == b""
    assert run(client, SESSION_LOOKUP, ["t:session:nope"], look) is None
    # a model deleted from the endpoint forgets the sessions of it pinned there
    run(client, SESSION_PIN, ["t:session:k"], pin)
    run(client, SESSION_PIN, ["t:session:q"], [*pin[:3], "qwen", "t:removed:"])
    assert run(client, SESSIONS_FORGET, ["t:removed:6:fake-a:llama3"], []) == 1
    assert run(client, SESSION_LOOKUP, ["t:session:k"], look) is None
    assert not client.exists("t:session:k")
    assert run(client, SESSION_LOOKUP, ["t:session:q"], look) == b"fake-a"
