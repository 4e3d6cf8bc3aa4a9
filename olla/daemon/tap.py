# -*- test-case-name: tests.test_tap -*-
"""``twistd olla``: the composition root.

The only module that touches the global reactor. Everything else receives its clock, agent and
cooperator from here, which is what lets the rest be tested on a ``Clock``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    _StandardEndpointFactory,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from olla import __version__
from olla.config import (
    ConfigError,
    OllaConfig,
    ProxyConfig,
    check_endpoint_types,
    load_config,
    no_effect_warnings,
    profiles_dir,
)
from olla.daemon.app import App, build_app
from olla.daemon.connect import TunedEndpoint
from olla.daemon.logging import (
    LogSink,
    ReopenOnHangup,
    StreamSink,
    SwitchableObserver,
    make_observer,
    open_sink,
)
from olla.daemon.reload import ConfigWatcher, Reloader
from olla.daemon.supervisor import supervise
from olla.daemon.workers import (
    LISTEN_FD,
    AdoptedPortService,
    ParentWatch,
    WorkerIdentity,
    WorkerTaggedObserver,
    address_family,
    parse_worker,
    parse_worker_count,
)
from olla.fleet.endpoints import EndpointRegistry
from olla.profiles import ProfileRegistry, builtin_profiles, load_profiles
from olla.profiles.checks import check_endpoints
from olla.web.site import OllaSite
from olla.web.status import process_payload


# Two private Twisted names, on purpose, and only here: Agent offers no public way to build a
# connection factory that does not log "Starting factory" per backend connection
# (``_HTTP11ClientFactory``, set as ``pool._factory``), nor to wrap its default endpoint
# factory (``_StandardEndpointFactory``) so host names are IDNA-encoded once per backend
# instead of once per request. Both are stable since Twisted 14; tests cover the pool's use.
class _QuietClientFactory(_HTTP11ClientFactory):
    """No "Starting factory" log line for every new backend connection."""

    noisy = False


@implementer(IAgentEndpointFactory)
class _CachedEndpoints:
    """One client endpoint per backend origin, built once.

    Agent builds a HostnameEndpoint for every request, and each one IDNA-encodes the host
    again: measurable CPU per request for an answer that never changes. Each connection gets
    ``proxy.connection_keep_alive`` and, over TLS, ``proxy.tls_handshake_timeout``.
    """

    def __init__(self, reactor: Any, proxy: ProxyConfig) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._factory = _StandardEndpointFactory(
            reactor, BrowserLikePolicyForHTTPS(), proxy.connection_timeout or None, None
        )
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._cache[key] = TunedEndpoint(
                self._factory.endpointForURI(uri),
                self._reactor,
                keep_alive=self._proxy.connection_keep_alive,
                tls=uri.scheme == b"https",
                handshake_timeout=self._proxy.tls_handshake_timeout,
            )
        return endpoint


class Options(usage.Options):
    """``twistd olla [--config PATH]``; ``OLLA_CONFIG_FILE`` is used when it is not given."""

    optParameters = [
        ["config", "c", None, "Path to the olla YAML config file."],
        ["watch-interval", None, 1.0, "Seconds between --watch-config looks at the file.", float],
        ["workers", "w", "1", "Worker processes on one listening socket: N, or auto (one a core)."],
        ["worker", None, None, "Internal: set by the supervisor on each worker it starts."],
    ]
    optFlags = [
        ["watch-config", None, "Reload the config when its file changes (SIGHUP does too)."]
    ]

    config: OllaConfig
    profiles: ProfileRegistry
    log_sink: LogSink
    worker_count: int
    worker: WorkerIdentity | None

    def postOptions(self) -> None:
        if self["watch-interval"] <= 0:
            raise usage.UsageError("--watch-interval must be a positive number of seconds")
        try:
            self.worker_count = parse_worker_count(self["workers"])
            self.worker = WorkerIdentity(*parse_worker(self["worker"])) if self["worker"] else None
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        try:
            self.config, self.profiles = load_all(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration: {e}") from e
        # Here, not in makeService: twistd's own flags are parsed by now (self.parent), a log
        # file that cannot be opened is a usage error, and sys.stdout is still the real one.
        try:
            self.log_sink = open_sink(self.config.logging, self.parent, sys.stdout)
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"cannot open the log: {e}") from e


def load_all(path: str | None) -> tuple[OllaConfig, ProfileRegistry]:
    """The config and the profiles it points at, checked against each other."""
    config = load_config(path)
    profiles = load_profiles(profiles_dir(config), config.proxy.profile_filter)
    check_endpoint_types(config, (p.name for p in profiles), profiles.excluded)
    return config, profiles


class OllaService(MultiService):
    """The whole daemon. Hands twistd its log observer (twistd asks the application for an
    ``ILogObserver`` component after ``makeService``, and uses it instead of its own)."""

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.log_observer = observer
        self.reloader: Reloader | None = None

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)


class _PoolService(Service):
    """Closes the backend connection pool and the body cooperator when olla stops."""

    def __init__(self, pool: HTTPConnectionPool, cooperator: Cooperator) -> None:
        self._pool = pool
        self._cooperator = cooperator

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cooperator.stop()
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d


class _DrainService(Service):
    """On stop, waits for in-flight requests (the listener stops accepting at the same time)."""

    def __init__(self, site: OllaSite, timeout: float) -> None:
        self._site = site
        self._timeout = timeout

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._site.drain(self._timeout)


class _StartupLog(Service):
    _log = Logger()

    def __init__(
        self,
        config: OllaConfig,
        registry: EndpointRegistry,
        log_where: str,
        profiles: ProfileRegistry | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._log_where = log_where
        self._profiles = profiles

    def startService(self) -> None:
        super().startService()
        server = self._config.server
        self._log.info(
            "olla {version} listening on http://{host}:{port} ({count} endpoint(s), "
            "balancer {balancer})",
            version=__version__,
            host=server.host,
            port=server.port,
            count=len(self._registry),
            balancer=self._config.proxy.load_balancer,
        )
        self._log.info("logging to {where}", where=self._log_where)
        for warning in (*self._config.warnings, *no_effect_warnings(self._config)):
            self._log.warn("config: {warning}", warning=warning)
        for note in self._config.notes:
            self._log.info("config: {note}", note=note)
        if self._profiles is not None:
            endpoint_warnings, endpoint_notes = check_endpoints(self._config, self._profiles)
            for warning in (*self._profiles.warnings, *endpoint_warnings):
                self._log.warn("profiles: {warning}", warning=warning)
            for note in (*self._profiles.notes, *endpoint_notes):
                self._log.info("profiles: {note}", note=note)
            for profile in self._profiles:
                if profile.customised:
                    self._log.info(
                        "profile {profile} from {sources}",
                        profile=profile.name,
                        sources=profile.source,
                    )
        for endpoint in self._registry:
            self._log.info(
                "endpoint {endpoint}: {type} at {url} (priority {priority}, "
                "checked every {interval:g}s)",
                endpoint=endpoint.name,
                type=endpoint.type,
                url=endpoint.display_url,
                priority=endpoint.priority,
                interval=endpoint.check_interval,
            )


class _NerdStats(Service):
    """``engineering.show_nerdstats``: this process's figures in the log when olla stops, as
    the Go original prints its runtime's (memory, CPU, garbage collection, uptime)."""

    _log = Logger()

    def __init__(self, app: App, clock: Any) -> None:
        self._app = app
        self._clock = clock
        self._started = clock.seconds()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        figures = process_payload(
            now=self._clock.seconds(),
            started=self._started,
            active_connections=len(self._app.site.channels),
        )
        self._log.info(
            "process stats: rss {rss} (peak {peak} bytes), cpu {user:.2f}s user "
            "{system:.2f}s system, {fds} open files, gc collections {collections}, "
            "uptime {uptime}",
            rss=figures["memory"]["rss_human"],
            peak=figures["memory"]["rss_peak_bytes"],
            user=figures["cpu"]["user_seconds"],
            system=figures["cpu"]["system_seconds"],
            fds=figures["open_file_descriptors"],
            collections=figures["garbage_collection"]["collections"],
            uptime=figures["runtime"]["uptime"],
            nerdstats=figures,
        )
        return succeed(None)


def build_service(
    config: OllaConfig,
    reactor: Any,
    profiles: ProfileRegistry | None = None,
    log_sink: LogSink | None = None,
    watch_config: float = 0.0,
    worker: WorkerIdentity | None = None,
) -> OllaService:
    """The daemon for ``config`` on ``reactor``, logging to ``log_sink`` (stdout): the
    reactor-facing parts (connection pool, agent, listener, log observer) around ``build_app``.
    SIGHUP reloads the config file; so does a change to it every ``watch_config`` seconds.
    A ``worker`` of the supervisor serves the listening socket it inherited instead of binding.
    """
    profiles = profiles or builtin_profiles()
    log_sink = log_sink or StreamSink(sys.stdout)
    observer = SwitchableObserver(_observer(config, log_sink))
    service = OllaService(observer if worker is None else WorkerTaggedObserver(observer, worker.id))

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    # Twisted keeps 2 idle connections per backend by default: far too few for a proxy.
    pool.maxPersistentPerHost = 256
    pool.cachedConnectionTimeout = 60  # below common backend keep-alive timeouts
    endpoints = _CachedEndpoints(reactor, config.proxy)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    app = build_app(
        config, profiles, clock=reactor, agent=agent, cooperator=cooperator, worker=worker
    )

    host = config.server.host
    listener: IService
    if worker is not None:
        listener = AdoptedPortService(reactor, LISTEN_FD, address_family(host), app.site)
        ParentWatch(reactor, reactor.stop).setServiceParent(service)
    else:
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        listener = StreamServerEndpointService(
            endpoint_type(reactor, config.server.port, interface=host), app.site
        )
        listener._raiseSynchronously = True  # a port in use stops startup with the reason

    reloader = Reloader(
        app, load_all, clock=reactor, profiles=profiles, observer=observer, sink=log_sink
    )
    service.reloader = reloader

    # Children stop in reverse order: the listener first, the pool last (then the figures).
    if config.engineering.show_nerdstats:
        _NerdStats(app, reactor).setServiceParent(service)
    ReopenOnHangup(log_sink, reactor, then=reloader.reload).setServiceParent(service)
    if watch_config > 0 and reloader.path is not None:
        ConfigWatcher(reloader.path, reloader.reload, reactor, watch_config).setServiceParent(
            service
        )
    _PoolService(pool, cooperator).setServiceParent(service)
    _DrainService(app.site, config.server.shutdown_timeout).setServiceParent(service)
    for poller in app.services:
        poller.setServiceParent(service)
    _StartupLog(config, app.registry, log_sink.where, profiles).setServiceParent(service)
    listener.setServiceParent(service)
    return service


def _observer(config: OllaConfig, log_sink: LogSink) -> ILogObserver:
    return make_observer(
        config.logging.format,
        config.logging.level,
        log_sink,
        request_logging=config.server.request_logging,
    )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    watch = options["watch-interval"] if options["watch-config"] else 0.0
    if options.worker_count > 1 and options.worker is None:
        # The supervisor: binds the socket, runs the workers (each a twistd olla --worker).
        service = OllaService(_observer(options.config, options.log_sink))
        supervise(
            options.config,
            options.worker_count,
            reactor,
            options.log_sink,
            options.parent,
            watch_config=watch,
        ).setServiceParent(service)
        return service
    return build_service(
        options.config,
        reactor,
        options.profiles,
        options.log_sink,
        watch_config=watch,
        worker=options.worker,
    )
