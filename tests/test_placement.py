"""Placement with ``endpoints[].max_loaded_models``: how many models a host holds is known, so a
second home may load beside a busy model while there is room, and a full host makes room only
by unloading an idle model, never a busy one."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from olla.config import EndpointConfig
from olla.fleet.endpoints import Endpoint, endpoints_from_config
from olla.proxy.placement import Evicts
from tests.test_gate import COLD, HOT, Harness


def harness(*hosts: tuple[int, int | None], prior: float = 5.0) -> Harness:
    """A Harness whose endpoints a, b... have these (slots, max_loaded_models)."""
    h = Harness(*(slots for slots, _ in hosts), prior=prior)
    h.eps = endpoints_from_config(
        [
            EndpointConfig(
                url=f"http://{chr(97 + i)}:1",
                name=chr(97 + i),
                type="ollama",
                max_concurrency=slots,
                max_loaded_models=room,
            )
            for i, (slots, room) in enumerate(hosts)
        ]
    )
    h.fleet.endpoints = h.eps
    return h


def crowd_hot(h: Harness, b: Endpoint, others: tuple[str, ...]) -> None:
    """HOT lives on a alone (cold on b), b runs one request of each of ``others`` (in memory
    there, busy), and six HOT requests arrive: one runs on a, five wait."""
    h.fleet.cold.add((b, HOT))
    h.fleet.in_memory[b] = frozenset(others)
    for model in others:
        h.admit(f"busy-{model}", model, candidates=[b])
    for i in range(6):
        h.admit(f"hot{i}")


class KnownRoomTests(SynchronousTestCase):
    def test_second_home_beside_a_busy_model_when_there_is_room(self) -> None:
        """If the cold host says it holds two models and has one, busy, then the hot model's
        waiting requests load it there as a second home, beside the busy one."""
        h = harness((1, 2), (2, 2))
        a, b = h.eps
        crowd_hot(h, b, (COLD,))
        self.assertEqual(h.gate.counters["second_homes"], 1)
        self.assertEqual(sorted(h.on(b)), ["busy-other", "hot1"])

    def test_unknown_room_keeps_away_from_a_busy_model(self) -> None:
        """If the same host does not say how many models it holds, then olla does not count on
        room beside the busy one: no second home (the rule before the key)."""
        h = harness((1, None), (2, None))
        a, b = h.eps
        crowd_hot(h, b, (COLD,))
        self.assertEqual(h.gate.counters["second_homes"], 0)
        self.assertEqual(h.on(b), ["busy-other"])

    def test_full_host_never_evicts_a_busy_model(self) -> None:
        """If the cold host holds as many models as it can and each is busy, then the hot model
        waits for its home; once one is idle there (and its other home carries its traffic), the
        hot model may load there, Ollama unloading the idle one."""
        h = harness((1, 1), (2, 1))
        a, b = h.eps
        crowd_hot(h, b, (COLD,))
        self.assertEqual(h.gate.counters["second_homes"], 0)
        h.clock.advance(30)  # its one request was long ago: a carries its traffic alone
        h.gate.poke()
        self.assertEqual(h.gate.counters["second_homes"], 0)  # still busy there
        h.grant(f"busy-{COLD}").release()
        self.assertEqual(h.gate.counters["second_homes"], 1)
        self.assertEqual(h.on(b), ["hot1", "hot2"])  # both its slots, on the load

    def test_room_counts_every_model_there(self) -> None:
        """If the host holds three models and has two, both busy, then there is room (a second
        home loads); with two it holds, the same host is full."""
        for room, homes in ((3, 1), (2, 0)):
            h = harness((1, room), (3, room))
            a, b = h.eps
            crowd_hot(h, b, (COLD, "x"))
            self.assertEqual(h.gate.counters["second_homes"], homes, f"room {room}")

    def test_evicts_ranks_known_room_first(self) -> None:
        """If one host says it has room beside its busy model and another is only assumed to,
        then the first ranks as pushing out nothing, the second as assumed room; so a first
        home goes where the room is known although the plan lists the other first."""
        h = harness((2, None), (2, 2))
        a, b = h.eps
        h.fleet.cold |= {(a, COLD), (b, COLD)}
        h.fleet.in_memory = {a: frozenset({HOT}), b: frozenset({"x"})}
        self.successResultOf(h.admit("hot", HOT, candidates=[a]))
        self.successResultOf(h.admit("x", "x", candidates=[b]))
        placement = h.gate._placement
        self.assertIs(placement.evicts(a, COLD), Evicts.ROOM_ASSUMED)
        self.assertIs(placement.evicts(b, COLD), Evicts.NOTHING)
        grant = self.successResultOf(h.admit("cold", COLD))
        self.assertIs(grant.endpoint, b)
        self.assertTrue(grant.cold)
