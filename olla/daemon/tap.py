# -*- test-case-name: tests.test_tap -*-
"""``twistd olla``: the composition root.

The only module that touches the global reactor. Everything else receives its clock, agent and
cooperator from here, which is what lets the rest be tested on a ``Clock``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.task import Cooperator
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.client import HTTPConnectionPool

from olla import __version__
from olla.config import (
    ConfigError,
    OllaConfig,
    check_endpoint_types,
    load_config,
    no_effect_warnings,
    profiles_dir,
)
from olla.daemon.app import App, build_app
from olla.daemon.backends import backend_agent
from olla.daemon.logging import (
    HangupRelay,
    LogReopener,
    LogSink,
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
from olla.state.connect import shared_state
from olla.util.services import Hooks
from olla.web.status import process_payload


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


_log = Logger()


def _close_pool(pool: HTTPConnectionPool, cooperator: Cooperator) -> Deferred[None]:
    """The backend connection pool and the body cooperator, closed when olla stops."""
    cooperator.stop()
    closed: Deferred[None] = pool.closeCachedConnections()
    return closed


def _log_startup(
    config: OllaConfig, registry: EndpointRegistry, log_where: str, profiles: ProfileRegistry
) -> None:
    server = config.server
    _log.info(
        "olla {version} listening on http://{host}:{port} ({count} endpoint(s), "
        "balancer {balancer})",
        version=__version__,
        host=server.host,
        port=server.port,
        count=len(registry),
        balancer=config.proxy.load_balancer,
    )
    _log.info("logging to {where}", where=log_where)
    for warning in (*config.warnings, *no_effect_warnings(config)):
        _log.warn("config: {warning}", warning=warning)
    for note in config.notes:
        _log.info("config: {note}", note=note)
    endpoint_warnings, endpoint_notes = check_endpoints(config, profiles)
    for warning in (*profiles.warnings, *endpoint_warnings):
        _log.warn("profiles: {warning}", warning=warning)
    for note in (*profiles.notes, *endpoint_notes):
        _log.info("profiles: {note}", note=note)
    for profile in profiles:
        if profile.customised:
            _log.info(
                "profile {profile} from {sources}", profile=profile.name, sources=profile.source
            )
    for endpoint in registry:
        _log.info(
            "endpoint {endpoint}: {type} at {url} (priority {priority}, "
            "checked every {interval:g}s)",
            endpoint=endpoint.name,
            type=endpoint.type,
            url=endpoint.display_url,
            priority=endpoint.priority,
            interval=endpoint.check_interval,
        )


def _log_nerdstats(app: App, clock: Any, started: float) -> Deferred[None]:
    """``engineering.show_nerdstats``: this process's figures in the log when olla stops, as
    the Go original prints its runtime's (memory, CPU, garbage collection, uptime)."""
    figures = process_payload(
        now=clock.seconds(),
        started=started,
        active_connections=len(app.site.channels),
    )
    _log.info(
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
    observer = SwitchableObserver(_observer(config, log_sink), log_sink)
    service = OllaService(observer if worker is None else WorkerTaggedObserver(observer, worker.id))

    proxy = config.proxy
    agent, pool = backend_agent(
        reactor,
        proxy.connection_timeout or None,
        keep_alive=proxy.connection_keep_alive,
        tls_handshake_timeout=proxy.tls_handshake_timeout,
    )
    cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    app = build_app(
        config,
        profiles,
        clock=reactor,
        agent=agent,
        cooperator=cooperator,
        worker=worker,
        shared=shared_state(config.state, reactor) if config.state.shared else None,
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

    reloader = Reloader(app, load_all, clock=reactor, profiles=profiles, observer=observer)
    service.reloader = reloader

    # Children stop in reverse order: the listener first, the pool last (then the figures).
    if config.engineering.show_nerdstats:
        started = reactor.seconds()
        Hooks(on_stop=lambda: _log_nerdstats(app, reactor, started)).setServiceParent(service)
    # SIGHUP: reopen the log (a rotated file), then reload the config
    reopener = LogReopener(log_sink)
    HangupRelay(reactor, [reopener.reopen, reloader.reload]).setServiceParent(service)
    if watch_config > 0 and reloader.path is not None:
        ConfigWatcher(reloader.path, reloader.reload, reactor, watch_config).setServiceParent(
            service
        )
    Hooks(on_stop=lambda: _close_pool(pool, cooperator)).setServiceParent(service)
    # on stop, wait for in-flight requests (the listener stops accepting at the same time)
    timeout = config.server.shutdown_timeout
    Hooks(on_stop=lambda: app.site.drain(timeout)).setServiceParent(service)
    for poller in app.services:
        poller.setServiceParent(service)
    Hooks(
        on_start=lambda: _log_startup(config, app.registry, log_sink.where, profiles)
    ).setServiceParent(service)
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
