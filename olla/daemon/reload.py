# -*- test-case-name: tests.test_reload -*-
"""Hot reload: apply an edited config file to the running daemon, without a restart.

``Reloader.reload`` reads the file with the daemon's own loader (so a bad one is refused with
its key path and the running config stays), diffs it against the running config and
reconciles the live graph ``build_app`` made instead of rebuilding it:

- endpoints are added, removed or changed in the registry (the one writer of their state);
  an endpoint whose config did not change keeps its object, health, traffic, circuit and model
  list, so routing neither resets nor waits for the startup gate again. The health service
  starts and stops pollers to follow; discovery stops asking removed endpoints. A request in
  flight holds the endpoint object it started on: its stream finishes there, and a removed
  endpoint is counted until its last attempt ends;
- every other setting belongs to one component (the router, the catalogue, the planner, the
  proxy, discovery, the site, the rate limiter, the guard, the dashboard, the log), which
  applies it to itself in ``reconfigure(config)`` and says which keys it applies
  (``reconfigures``); nothing here reaches into another object's attributes;
- keys no component applies (the listen address, the log destination...) need a restart:
  they are logged as such, on every reload until the daemon is restarted.

Each reload that changes something is a new *generation*, shown on ``/internal/status``.
``ConfigWatcher`` (``twistd olla --watch-config``) reloads when the file changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from olla.config import NO_EFFECT_YET, ConfigError, OllaConfig, no_effect_warnings
from olla.daemon.app import App
from olla.daemon.logging import SwitchableObserver
from olla.fleet.endpoints import Endpoint, endpoints_from_config
from olla.interfaces import IReconfigurable
from olla.profiles import ProfileRegistry
from olla.util.services import Repeating

#: Reads and checks a config file (``None``: the daemon's default search); raises ConfigError.
Loader = Callable[[str | None], tuple[OllaConfig, ProfileRegistry]]

#: Not settings: where the config came from and what the loader noticed.
_NOT_KEYS = frozenset({"source", "warnings", "notes"})


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every setting of a config as ``(key.path, value)``; endpoint lists stay one value."""
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if path or f.name not in _NOT_KEYS:
                key = f"{path}.{f.name}" if path else f.name
                if key == "discovery.endpoints":
                    yield key, getattr(value, f.name)
                else:
                    yield from _leaves(getattr(value, f.name), key)
    else:
        yield path, value


def changed_keys(old: OllaConfig, new: OllaConfig) -> list[str]:
    """The key paths whose values differ between ``old`` and ``new``, in config order."""
    before = dict(_leaves(old))
    return [key for key, value in _leaves(new) if before.get(key) != value]


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(
        key == p
        or (p.endswith(".") and key.startswith(p))
        or (p.endswith(".*") and key.startswith(p[:-1]))
        for p in patterns
    )


def is_live(key: str, applied: Sequence[str]) -> bool:
    """Whether a reload applies ``key`` (one of the ``applied`` paths, or it has no effect
    anyway, ``NO_EFFECT_YET``)."""
    return _matches(key, applied) or _matches(key, NO_EFFECT_YET)


@dataclass(frozen=True)
class EndpointChanges:
    """How the running endpoints become the ones a new config lists."""

    #: the endpoints in the new config's order: kept ones are the running objects
    order: tuple[Endpoint, ...]
    added: tuple[Endpoint, ...] = ()
    removed: tuple[Endpoint, ...] = ()
    #: (running, new, still checked the same way: keeps its health)
    changed: tuple[tuple[Endpoint, Endpoint, bool], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"+{ep.name}" for ep in self.added]
        parts += [f"-{ep.name}" for ep in self.removed]
        parts += [f"~{new.name}" for _, new, _ in self.changed]
        return ", ".join(parts) or "none"


def _keys(endpoints: Sequence[Endpoint]) -> list[tuple[str, int]]:
    """Endpoints are matched by name (the n-th of a name, should names repeat)."""
    seen: dict[str, int] = {}
    out = []
    for ep in endpoints:
        seen[ep.name] = seen.get(ep.name, -1) + 1
        out.append((ep.name, seen[ep.name]))
    return out


def _same(old: Endpoint, new: Endpoint) -> bool:
    return (
        old.config == new.config
        and old.id == new.id
        and old.configured == new.configured
        and old.candidates == new.candidates
    )


def _checked_alike(old: Endpoint, new: Endpoint) -> bool:
    """Probed at the same address the same way: what is known about its health still holds."""
    a, b = old.config, new.config
    return (
        old.id == new.id
        and old.configured.health_url == new.configured.health_url
        and (a.url, a.type, a.headers, a.auth) == (b.url, b.type, b.headers, b.auth)
    )


def _listed_alike(old: Endpoint, new: Endpoint) -> bool:
    """Asked for its models the same way: its model list still holds."""
    return (
        old.configured.model_url == new.configured.model_url
        and old.config.model_filter == new.config.model_filter
    )


def endpoint_changes(running: Sequence[Endpoint], wanted: Sequence[Endpoint]) -> EndpointChanges:
    """Match ``wanted`` (built from the new config) against ``running``, by name."""
    by_key = dict(zip(_keys(running), running, strict=True))
    order: list[Endpoint] = []
    added: list[Endpoint] = []
    changed: list[tuple[Endpoint, Endpoint, bool]] = []
    matched: set[Endpoint] = set()
    for key, new in zip(_keys(wanted), wanted, strict=True):
        old = by_key.get(key)
        if old is None:
            added.append(new)
            order.append(new)
            continue
        matched.add(old)
        if _same(old, new):
            order.append(old)
        else:
            changed.append((old, new, _checked_alike(old, new)))
            order.append(new)
    removed = tuple(ep for ep in running if ep not in matched)
    return EndpointChanges(tuple(order), tuple(added), removed, tuple(changed))


@dataclass(frozen=True)
class Generation:
    """One applied config: its number (1 at startup), when it was applied, from which file."""

    number: int
    loaded_at: float
    file: str | None


class Reloader:
    """Applies config files to the running ``app`` and counts generations."""

    _log = Logger()

    def __init__(
        self,
        app: App,
        load: Loader,
        *,
        clock: IReactorTime,
        profiles: ProfileRegistry,
        observer: SwitchableObserver | None = None,
    ) -> None:
        """
        Args:
            app: the graph ``build_app`` made, running ``app.config``.
            load: the daemon's loader (``olla.daemon.tap.load_all``): the file, checked.
            clock: stamps each generation.
            profiles: the profiles the daemon started with (its routes are built from them).
            observer: the daemon's log observer, for ``logging.level``/``format`` and
                ``server.request_logging``.
        """
        self._app = app
        self._load = load
        self._clock = clock
        self._profiles = profiles
        #: the file a reload reads again: the one the running config came from (None: the
        #: loader's default search)
        self.path = app.config.source
        #: every component a reload hands the new config to; each owns its settings
        self._components: tuple[IReconfigurable, ...] = app.reconfigurables
        if observer is not None:
            self._components += (observer,)
        #: the key paths those components apply (the endpoints are the reloader's own)
        self.applied: tuple[str, ...] = (
            "discovery.endpoints",
            *(key for component in self._components for key in component.reconfigures),
        )
        #: what the daemon started with: keys that need a restart compare against it
        self._booted = app.config
        self.config = app.config
        self.generation = Generation(1, clock.seconds(), app.config.source)
        # a removed endpoint's model list goes once its last request is done
        app.registry.on_gone.append(app.catalogue.forget)

    def is_live(self, key: str) -> bool:
        """Whether a reload applies ``key`` (no restart needed)."""
        return is_live(key, self.applied)

    def reload(self) -> bool:
        """Read the file again and apply it; False (and the running config kept) when the
        file is invalid. Never raises: a reload must not take the daemon down."""
        try:
            config, profiles = self._load(self.path)
        except ConfigError as e:
            self._log.error(
                "config reload refused, keeping generation {generation}: {error}",
                generation=self.generation.number,
                error=str(e),
                key=".".join(str(p) for p in e.path),
            )
            return False
        except Exception:
            self._log.failure(
                "config reload failed, keeping generation {generation}",
                generation=self.generation.number,
            )
            return False
        self.apply(config, profiles)
        return True

    def apply(self, config: OllaConfig, profiles: ProfileRegistry | None = None) -> Generation:
        """Reconcile the running graph with ``config`` (already validated)."""
        profiles = profiles or self._profiles
        # everything that can fail first, before anything running changes
        changes = endpoint_changes(
            list(self._app.registry),
            endpoints_from_config(config.discovery.endpoints, profiles),
        )
        live = [k for k in changed_keys(self.config, config) if self.is_live(k)]
        restart = [k for k in changed_keys(self._booted, config) if not self.is_live(k)]
        if self._profile_routes(profiles) != self._profile_routes(self._profiles):
            restart.append("profiles (routes)")

        self._apply_endpoints(changes)
        for component in self._components:
            try:
                component.reconfigure(config)
            except Exception:  # a bug in one must not leave the others on the old config
                self._log.failure("config reload: {component} failed", component=repr(component))
        if not live and not changes:
            self._log.info(
                "config reloaded: nothing changed (generation {generation})",
                generation=self.generation.number,
            )
        else:
            self.generation = Generation(
                self.generation.number + 1, self._clock.seconds(), config.source
            )
            self._log.info(
                "config reloaded (generation {generation}): endpoints {endpoints}; "
                "settings changed: {keys}",
                generation=self.generation.number,
                endpoints=changes.describe(),
                keys=", ".join(k for k in live if k != "discovery.endpoints") or "none",
            )
        for key in restart:
            self._log.warn(
                "config: {key} changed in the file; it needs a restart to take effect",
                key=key,
            )
        for warning in (*config.warnings, *no_effect_warnings(config)):
            self._log.warn("config: {warning}", warning=warning)
        self.config = config
        self._app.config = config
        self._app.internal.use_config(
            config, generation=self.generation.number, loaded_at=self.generation.loaded_at
        )
        return self.generation

    @staticmethod
    def _profile_routes(profiles: ProfileRegistry) -> tuple[object, ...]:
        return tuple(sorted(profiles.prefixes)), tuple(sorted(p.name for p in profiles))

    def _apply_endpoints(self, changes: EndpointChanges) -> None:
        app = self._app
        registry = app.registry
        for old, new, keep_health in changes.changed:
            if keep_health and _listed_alike(old, new):
                app.catalogue.adopt(new, old)
            registry.replace(old, new, keep_health=keep_health)
            app.discovery.forget(old)
        for endpoint in changes.removed:
            registry.remove(endpoint)
            app.discovery.forget(endpoint)
        for endpoint in changes.added:
            registry.add(endpoint)
        registry.arrange(changes.order)
        app.health.follow_registry()
        for _, new, keep_health in changes.changed:
            # already routable (its health was kept): no status change will ask for its models
            if keep_health and registry.state(new).status.routable:
                app.discovery.refresh(new)


class ConfigWatcher(Repeating):
    """Reloads when the config file changes (``twistd olla --watch-config``).

    Polls the file's mtime and size every ``interval`` seconds on the injected clock, and its
    hash when they moved; a change is applied once the file has stayed the same for one more
    poll, so an editor's half-written file is not read.
    """

    def __init__(
        self, path: str, reload: Callable[[], object], clock: IReactorTime, interval: float = 1.0
    ) -> None:
        super().__init__(clock, interval, self._check, what=f"config watch of {path}")
        self.path = path
        self._reload = reload
        self._stat: tuple[int, int] | None = None
        self._digest: bytes | None = None
        self._pending: bytes | None = None  # a new content seen once, waiting to settle

    def startService(self) -> None:
        self._stat, self._digest = self._look()
        super().startService()

    def _look(self) -> tuple[tuple[int, int] | None, bytes | None]:
        try:
            info = os.stat(self.path)
            with open(self.path, "rb") as f:
                digest = hashlib.sha256(f.read()).digest()
        except OSError:
            return None, None
        return (info.st_mtime_ns, info.st_size), digest

    def _check(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:
            return  # moved away mid-save: look again next time
        stat = (info.st_mtime_ns, info.st_size)
        if stat == self._stat and self._pending is None:
            return
        self._stat, digest = self._look()
        if digest is None or digest == self._digest:
            self._pending = None
            return
        if digest != self._pending:
            self._pending = digest  # changed: apply once it has settled
            return
        self._pending = None
        self._digest = digest
        self._log.info("config file {path} changed: reloading", path=self.path)
        self._reload()
