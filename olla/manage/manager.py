# -*- test-case-name: tests.test_manage -*-
"""``FleetManager``: model management for one olla, the parts every call shares.

It knows the fleet (the upstream calls, the catalogue, how to read a model list again), the
targets (``model_management.targets``) and who may: a client key with ``manage_models: true``
when client keys are configured (the guard leaves the matched key in the request's
``RequestContext``), else a client ``dashboard.access_policy`` admits (loopback by default).
``reconfigure`` follows a reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, DeferredList
from twisted.web.server import Request
from zope.interface import implementer

from olla.config import OllaConfig
from olla.fleet.endpoints import Endpoint, EndpointRegistry
from olla.fleet.sticky import StickySessions
from olla.front.context import RequestContext
from olla.interfaces import IReconfigurable
from olla.manage.calls import Fleet
from olla.manage.targets import ENDPOINTS_HEADER, Selection, name_forms, named, select
from olla.manage.upstream import Upstream
from olla.proxy.exchange import ProxyDeps
from olla.proxy.routing import Rejection
from olla.util.access import AccessPolicy


@implementer(IReconfigurable)
@dataclass
class FleetManager:
    """Model management for one olla: the fleet, the targets and who may."""

    reconfigures = ("model_management.targets", "dashboard.access_policy.")

    fleet: Fleet
    registry: EndpointRegistry
    #: ``model_management.targets`` (None: every Ollama endpoint)
    targets: tuple[str, ...] | None
    #: who may without a key (``dashboard.access_policy``)
    policy: AccessPolicy

    @classmethod
    def build(
        cls,
        config: OllaConfig,
        deps: ProxyDeps,
        rediscover: Callable[[Endpoint], Deferred[None]],
        sticky: StickySessions | None,
    ) -> FleetManager | None:
        """Model management over the proxy's agent, or None when it is off (the routes then
        answer 501, as the Go original's)."""
        if not config.model_management.enabled:
            return None
        upstream = Upstream(
            deps.agent,
            deps.clock,
            deps.cooperator,
            answer_timeout=config.proxy.response_header_timeout,
            idle_timeout=config.proxy.read_timeout,
        )
        lists_models = config.discovery.model_discovery.enabled
        fleet = Fleet(
            upstream,
            deps.catalogue,
            rediscover=rediscover if lists_models else None,
            sticky=sticky,
        )
        return cls.from_config(config, fleet, deps.registry)

    @classmethod
    def from_config(
        cls, config: OllaConfig, fleet: Fleet, registry: EndpointRegistry
    ) -> FleetManager:
        manager = cls(fleet, registry, None, AccessPolicy((), ()))
        manager.reconfigure(config)
        return manager

    def reconfigure(self, config: OllaConfig) -> None:
        """After a reload: the targets and the access policy (keys are the guard's)."""
        self.targets = config.model_management.targets
        self.policy = AccessPolicy.from_config(config.dashboard.access_policy)

    def refusal(self, context: RequestContext, host: bytes | None) -> str | None:
        """Why the request of ``context`` (sent to ``host``) may not manage models, or None
        when it may."""
        key = context.key
        if key is not None:
            if key.manage_models:
                return None
            return f"API key {key.name!r} may not manage models (it needs manage_models: true)"
        why = self.policy.refusal(context.peer, None if host is None else host.decode("latin-1"))
        if why is None:
            return None
        return f"model management is not allowed from here: {why}"

    def select(
        self,
        request: Request,
        operation: str,
        *,
        has_model: Callable[[Endpoint], bool] | None = None,
        missing: str = "",
        one: bool = False,
    ) -> Selection | Rejection:
        registry = self.registry

        def healthy(endpoint: Endpoint) -> str | None:
            status = registry.state(endpoint).status
            return None if status.routable else status.value

        return select(
            operation,
            list(registry),
            healthy=healthy,
            configured=self.targets,
            asked=named(request.getHeader(ENDPOINTS_HEADER)),
            has_model=has_model,
            missing=missing,
            one=one,
        )

    def has_model(self, model: str) -> Callable[[Endpoint], bool] | None:
        """Whether an endpoint lists ``model`` (None when olla does not read model lists)."""
        if self.fleet.rediscover is None:
            return None
        catalogue = self.fleet.catalogue
        hosts = {e for form in name_forms(model) for e in catalogue.hosts(form)}
        return lambda endpoint: endpoint in hosts

    def reread(self, targets: tuple[Endpoint, ...]) -> Deferred[None]:
        """Every target's model list read again (at once when olla reads none)."""
        rediscover = self.fleet.rediscover
        runs = [rediscover(e) for e in targets] if rediscover is not None else []
        done: Deferred[None] = DeferredList(runs, consumeErrors=True).addCallback(lambda _: None)
        return done
