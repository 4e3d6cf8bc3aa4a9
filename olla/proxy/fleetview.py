# -*- test-case-name: tests.test_gate -*-
"""What the admission gate reads about the fleet: ``IFleetView``, and ``RouterView``, which
answers from the router's registry, its load view and catalogue (the figures routing orders
candidates by)."""

from __future__ import annotations

from zope.interface import Interface, implementer

from olla.fleet.endpoints import Endpoint
from olla.proxy.routing import Router


class IFleetView(Interface):
    """What the gate reads about the fleet (``RouterView``: the router's registry and catalogue)."""

    def usable(endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` may take a request now (configured, healthy, circuit closed)."""

    def slots(endpoint: Endpoint) -> int:
        """Requests ``endpoint`` serves at once: its cap (``ILoadView.slots``: configured
        ``max_concurrency``, else what the backend reports, else the profile's default)."""

    def load_cost(endpoint: Endpoint, model: str) -> float:
        """Seconds before ``endpoint`` could start ``model`` in a free slot: 0 where it is in
        memory, what is left of a load under way, else the model's expected load time."""

    def hosting(endpoint: Endpoint, model: str) -> bool:
        """Whether ``model`` is in memory on ``endpoint`` or a load of it is under way there."""

    def expected_service(endpoint: Endpoint) -> float:
        """How long a request there takes (``ILoadView.expected_service_time``: the moving
        average of finished ones, or longer while those in flight have run longer)."""

    def busy(endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` said it is full (429/503) and its back-off has not passed: it
        carries no traffic now, so it is nobody's home meanwhile."""

    def loaded(endpoint: Endpoint) -> frozenset[str]:
        """The lower-cased names of the models in memory on ``endpoint``, or being loaded there
        (empty: none, or the backend never says)."""

    def tier(endpoint: Endpoint) -> int:
        """The balancer's tier (lower first, ``IBalancer.tier``): a host the operator ranks
        above every home of a model is where its requests go, loaded or not."""

    def homes(model: str) -> list[Endpoint]:
        """The usable endpoints, not busy, that have ``model`` in memory or are loading it."""


@implementer(IFleetView)
class RouterView:
    """The fleet as routing sees it: the registry's health and circuits, the catalogue's loads.

    ``load_cost`` is ``Router.load_wait``, the load part of routing's expected wait (none, the
    rest of one under way, or a whole one), so the gate and routing weigh loads with the same
    figures; ``slots`` is the registry's load view's (``ILoadView.slots``).
    """

    def __init__(self, router: Router) -> None:
        self._router = router

    def usable(self, endpoint: Endpoint) -> bool:
        registry = self._router.registry
        return (
            endpoint in registry
            and registry.state(endpoint).status.routable
            and registry.breakers.allows(endpoint)
        )

    def slots(self, endpoint: Endpoint) -> int:
        # the registry's figure, which the load views answer too, asked without their layers
        # (the gate asks several times a request)
        return self._router.registry.slots(endpoint)

    def load_cost(self, endpoint: Endpoint, model: str) -> float:
        if not model or not self._router.warm.enabled:
            return 0.0
        return self._router.load_wait(endpoint, model)

    def hosting(self, endpoint: Endpoint, model: str) -> bool:
        catalogue = self._router.catalogue
        return (
            not model
            or not self._router.warm.enabled
            or catalogue.warm(endpoint, model)
            or catalogue.loading_since(endpoint, model) is not None
        )

    def expected_service(self, endpoint: Endpoint) -> float:
        load = self._router.registry.load
        return load.expected_service_time(endpoint, self._router.clock.seconds())

    def busy(self, endpoint: Endpoint) -> bool:
        return self._router.registry.load.busy_until(endpoint) > self._router.clock.seconds()

    def loaded(self, endpoint: Endpoint) -> frozenset[str]:
        return frozenset(self._router.catalogue.resident(endpoint))

    def tier(self, endpoint: Endpoint) -> int:
        return self._router.balancer.tier(endpoint)

    def homes(self, model: str) -> list[Endpoint]:
        registry = self._router.registry
        return [
            ep
            for ep in registry.routable()
            if registry.breakers.allows(ep) and not self.busy(ep) and self.hosting(ep, model)
        ]
