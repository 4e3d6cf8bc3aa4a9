"""Per-model demand (service times with a prior, arrival counts) and the second-home rule."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from olla.proxy.demand import MAX_MODELS, RATE_WINDOW, Demand, second_home_pays


class SecondHomeTests(SynchronousTestCase):
    def test_table(self) -> None:
        """If the waiting of the held and the coming requests on the homes' slots exceeds the
        load, then a second home pays; else not; with no home it must load."""
        cases = [
            # load, held, arriving, service, home_slots -> pays
            (2.0, 1, 0.0, 0.4, 2, False),  # one unlucky request: 0.2 s of waiting
            (2.0, 1, 10.0, 0.4, 2, True),  # homes full and requests keep coming: 2.2 s
            (2.0, 10, 0.0, 0.4, 2, False),  # a backlog that drains in exactly the load
            (2.0, 11, 0.0, 0.4, 2, True),  # ... one request more
            (5.0, 20, 0.0, 3.0, 4, True),  # a burst of long requests: 15 s of backlog
            (300.0, 5, 1.0, 3.0, 4, False),  # a 5-minute load is not worth 5 requests
            (2.0, 0, 0.0, 1.0, 0, True),  # no home at all: it must load somewhere
        ]
        for load, held, arriving, service, slots, pays in cases:
            got = second_home_pays(
                load=load, held=held, arriving=arriving, service=service, home_slots=slots
            )
            self.assertEqual(got, pays, (load, held, arriving, service, slots))


class DemandTests(SynchronousTestCase):
    def test_prior_then_learnt(self) -> None:
        """If no request of a model finished, then its service time is the prior; then a
        moving average of what finished."""
        demand = Demand(lambda model: {"big": 30.0}.get(model, 5.0))
        self.assertEqual((demand.service_time("big"), demand.service_time("x")), (30.0, 5.0))
        self.assertFalse(demand.learnt("x"))
        demand.served("x", 1.0)
        self.assertEqual(demand.service_time("x"), 1.0)
        demand.served("x", 2.0)
        self.assertAlmostEqual(demand.service_time("x"), 1.2)
        self.assertEqual(demand.service_times(), {"x": 1.2})

    def test_steady_rate(self) -> None:
        """If a model's requests arrive 4 a second for a long time, then its rate reads about
        4 a second and the arrivals expected over 2 s about 8."""
        demand = Demand(lambda model: 1.0)
        now = 0.0
        for _ in range(400):
            now += 0.25
            demand.arrived("m", now)
        self.assertLess(abs(demand.rate("m", now) - 4.0), 0.2)
        self.assertLess(abs(demand.arrivals("m", now, 2.0) - 8.0), 0.4)

    def test_young_stream_read_over_its_age(self) -> None:
        """If a model was first seen 2 s ago and 5 a second arrived since, then its rate is
        about 5 a second already (not 1 over the whole window)."""
        demand = Demand(lambda model: 1.0)
        for i in range(11):  # 100.0, 100.2 ... 102.0
            demand.arrived("m", 100.0 + i * 0.2)
        self.assertLess(abs(demand.rate("m", 102.0) - 5.0), 0.8)

    def test_burst_is_not_a_stream(self) -> None:
        """If 3 requests arrive in one instant, then no more than 3 are expected over the
        next 2 s (a burst is not evidence of a stream)."""
        demand = Demand(lambda model: 1.0)
        for _ in range(3):
            demand.arrived("m", 50.0)
        self.assertAlmostEqual(demand.arrivals("m", 50.0, 2.0), 3.0)
        self.assertEqual(demand.rate("m", 50.0), 3.0)  # read over at least a second

    def test_rate_decays(self) -> None:
        """If a model stops getting requests, then its rate falls away with time."""
        demand = Demand(lambda model: 1.0)
        for i in range(100):
            demand.arrived("m", i * 0.1)
        before = demand.rate("m", 10.0)
        self.assertLess(demand.rate("m", 10.0 + 3 * RATE_WINDOW), before / 10)
        self.assertEqual(demand.rate("unknown", 10.0), 0.0)
        self.assertEqual(demand.arrivals("unknown", 10.0, 2.0), 0.0)

    def test_bounded(self) -> None:
        """If more models than the bound are seen, then the least recently seen are forgotten
        (their prior applies again)."""
        demand = Demand(lambda model: 9.0)
        demand.served("first", 1.0)
        for i in range(MAX_MODELS):
            demand.arrived(f"m{i}", 1.0)
        self.assertEqual(demand.service_time("first"), 9.0)
        self.assertEqual(len(demand._models), MAX_MODELS)
