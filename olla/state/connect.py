# -*- test-case-name: tests.test_state_client -*-
"""``shared_state``: the store ``state:`` names, as one service for the daemon to run (a pool
of command connections and one subscriber connection, under a ``SharedState``)."""

from __future__ import annotations

from typing import Any

from olla.config import StateConfig, redis_address
from olla.state.client import RedisClient, handshake, store_endpoint
from olla.state.shared import SharedState


def shared_state(config: StateConfig, reactor: Any) -> SharedState:
    """The shared store of ``config`` (``backend: redis``), connecting once started."""
    address = redis_address(config)
    endpoint = store_endpoint(reactor, address, config.connect_timeout)
    setup = handshake(address)
    commands = RedisClient(
        endpoint,
        reactor,
        command_timeout=config.command_timeout,
        pool_size=config.pool_size,
        setup=setup,
    )
    shared = SharedState(
        commands,
        reactor,
        prefix=config.key_prefix,
        where=address.display,
        grace=config.connect_timeout,
    )
    subscriber = RedisClient(
        endpoint,
        reactor,
        command_timeout=config.command_timeout,
        setup=[*setup, ["SUBSCRIBE", shared.channel]],
        on_message=shared.deliver,
    )
    commands.on_ready.append(shared.answered)
    subscriber.on_ready.append(shared.resynced)
    commands.setServiceParent(shared)
    subscriber.setServiceParent(shared)
    return shared
