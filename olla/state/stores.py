# -*- test-case-name: tests.test_state_stores -*-
"""``Stores``: the state stores of one app, in this process's memory (``state.backend:
memory``) or shared through the store (``redis``), for ``build_app`` to hand out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime

from olla.config import StickySessionsConfig
from olla.fleet.load import MemoryLoadStore, configured_slots
from olla.fleet.sticky import MemorySessionStore
from olla.fleet.values import Endpoint
from olla.guard.ratelimit import MemoryRateStore
from olla.interfaces import ILoadStore, IPollShare, IRateStore, ISessionStore
from olla.proxy.slots import ISlotStore, MemorySlotStore
from olla.state.load import RedisLoadStore
from olla.state.polls import SharedPolls
from olla.state.rates import RedisRateStore
from olla.state.sessions import RedisSessionStore
from olla.state.shared import SharedState
from olla.state.slots import RedisSlotStore


@dataclass
class Stores:
    """Where sessions, rate buckets, load, slots and poll leases live for one app."""

    clock: IReactorTime
    shared: SharedState | None = None
    slots: ISlotStore = field(default_factory=MemorySlotStore)
    #: who polls an endpoint this interval (None: this process polls every one)
    polls: IPollShare | None = None
    #: the load store, once the registry made it (``load``)
    made_load: ILoadStore | None = None

    def load(self, slots: Callable[[Endpoint], int] = configured_slots) -> ILoadStore:
        """The endpoints' load, answering ``ILoadView.slots`` with ``slots``: the registry
        makes it with its own rule (configured, else what the backend reports, else the
        profile's default), which every process applies to what its discovery read."""
        if self.shared is None:
            self.made_load = MemoryLoadStore(slots)
        else:
            self.made_load = RedisLoadStore(self.shared, self.clock, slots)
        return self.made_load

    @property
    def services(self) -> Sequence[IService]:
        """What must run for the shared stores: the connections first, so they are up
        before the stores sync."""
        if self.shared is None:
            return ()
        load = (self.made_load,) if isinstance(self.made_load, RedisLoadStore) else ()
        slots = (self.slots,) if isinstance(self.slots, RedisSlotStore) else ()
        return (self.shared, *load, *slots)

    def sessions(self, config: StickySessionsConfig) -> ISessionStore:
        """The sticky sessions' store."""
        local = MemorySessionStore(config, self.clock)
        if self.shared is None:
            return local
        return RedisSessionStore(self.shared, local, config.idle_ttl_seconds)

    def rates(self, local: MemoryRateStore) -> IRateStore:
        """The rate limiter's buckets (``local`` answers while the store does not)."""
        return local if self.shared is None else RedisRateStore(self.shared, local)

    def status(self) -> dict[str, object]:
        """``/internal/status`` ``state``: the backend, whether it answers, fallbacks."""
        if self.shared is None:
            return {"backend": "memory", "ok": True, "fallbacks": 0}
        return self.shared.status()


def stores_for(shared: SharedState | None, clock: IReactorTime) -> Stores:
    """In memory without ``shared``; else every store through it."""
    if shared is None:
        return Stores(clock)
    return Stores(
        clock, shared=shared, slots=RedisSlotStore(shared, clock), polls=SharedPolls(shared)
    )
