"""The in-memory slot store: the contract the admission gate relies on."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from olla.proxy.slots import ISlotStore, MemorySlotStore


class MemorySlotStoreTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """The memory store implements ISlotStore."""
        verifyObject(ISlotStore, MemorySlotStore())

    def test_endpoint_cap(self) -> None:
        """If an endpoint holds its cap, then one more acquire answers None, whatever model."""
        store = MemorySlotStore()
        self.assertIsNotNone(self.successResultOf(store.acquire("a", "m", 2, 2)))
        self.assertIsNotNone(self.successResultOf(store.acquire("a", "n", 2, 2)))
        self.assertIsNone(self.successResultOf(store.acquire("a", "o", 2, 2)))
        self.assertEqual(store.held("a"), 2)
        self.assertIsNotNone(self.successResultOf(store.acquire("b", "m", 2, 2)))

    def test_model_cap(self) -> None:
        """If a model holds its cap on an endpoint, then it gets no more there while another
        model still does."""
        store = MemorySlotStore()
        self.assertIsNotNone(self.successResultOf(store.acquire("a", "big", 4, 1)))
        self.assertIsNone(self.successResultOf(store.acquire("a", "big", 4, 1)))
        self.assertIsNotNone(self.successResultOf(store.acquire("a", "small", 4, 4)))
        self.assertEqual((store.held_by_model("a", "big"), store.held("a")), (1, 2))

    def test_release_once_and_announce(self) -> None:
        """If a lease is released, then its slot frees and listeners hear the endpoint; a
        second release of it changes nothing and says nothing."""
        store = MemorySlotStore()
        heard: list[str] = []
        store.add_listener(heard.append)
        lease = self.successResultOf(store.acquire("a", "m", 1, 1))
        assert lease is not None
        self.successResultOf(store.release(lease))
        self.successResultOf(store.release(lease))
        self.assertEqual(heard, ["a"])
        self.assertEqual((store.held("a"), store.held_by_model("a", "m")), (0, 0))
        self.assertEqual((store._held, store._by_model), ({}, {}))  # nothing left behind

    def test_leases_are_distinct(self) -> None:
        """If two slots are held for the same model, then each lease frees exactly one."""
        store = MemorySlotStore()
        first = self.successResultOf(store.acquire("a", "m", 2, 2))
        second = self.successResultOf(store.acquire("a", "m", 2, 2))
        assert first is not None and second is not None
        self.assertNotEqual(first, second)
        store.release(first)
        self.assertEqual(store.held("a"), 1)
