# -*- test-case-name: tests.test_status -*-
"""What olla answers itself: ``/internal/*`` and ``/version``. Read-only views of the state."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, NotFound

import twisted
from olla import __version__
from olla.anthropic.stats import TranslatorStats, translators_payload
from olla.config import OllaConfig
from olla.daemon.workers import WorkerIdentity
from olla.fleet.endpoints import EndpointRegistry
from olla.fleet.models import ModelCatalogue
from olla.fleet.sticky import StickySessions
from olla.profiles import ProfileRegistry
from olla.telemetry.failovers import FailoverLog
from olla.telemetry.security import SecurityStats
from olla.telemetry.stats import Stats
from olla.util import responses
from olla.web.dashboard import Dashboard
from olla.web.metrics import Metrics
from olla.web.modelstats import models_stats_payload
from olla.web.modelstatus import status_models
from olla.web.status import (
    endpoints_payload,
    etag_for,
    etag_matches,
    gzip_body,
    process_payload,
    rfc3339,
    should_gzip,
    status_payload,
)

SUPPORTED_BACKENDS = (
    "ollama",
    "lemonade",
    "litellm",
    "llamacpp",
    "lmdeploy",
    "lm_studio",
    "omlx",
    "sglang",
    "vllm",
    "vllm-mlx",
    "openai_compatible",
    "docker-model-runner",
)


def json_response(request: IRequest, payload: object, status: int = 200) -> bytes:
    """Internal routes answer compact JSON."""
    return responses.json_response(request, payload, status, compact=True)


def _header(request: IRequest, name: bytes) -> str | None:
    """All values of a request header joined as one list, or ``None`` when absent."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return ", ".join(value.decode("latin-1") for value in values)


def conditional_json(request: IRequest, payload: object, stable_payload: object) -> bytes:
    """Serve ``payload`` as JSON with a weak ETag over ``stable_payload``, 304 and gzip.

    Every answer carries ``ETag``, ``Cache-Control: private, no-cache`` and
    ``Vary: Accept-Encoding``. A matching ``If-None-Match`` gets a bare ``304``; otherwise a body
    over 256 bytes is gzipped when the client accepts it. No ``Content-Length`` is set, so
    twisted.web chunks the body.
    """
    etag = etag_for(stable_payload)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"ETag", etag.encode())
    request.setHeader(b"Cache-Control", b"private, no-cache")
    request.responseHeaders.addRawHeader(b"Vary", b"Accept-Encoding")
    if etag_matches(_header(request, b"if-none-match"), etag):
        request.setResponseCode(304)
        return b""
    request.setResponseCode(200)
    body = json.dumps(payload, separators=(",", ":")).encode()
    if should_gzip(_header(request, b"accept-encoding"), body):
        request.setHeader(b"Content-Encoding", b"gzip")
        return gzip_body(body)
    return body


def version_payload() -> dict[str, Any]:
    """``/version``: the Go original's shape, with olla's own values."""
    return {
        "name": "Olla",
        "version": __version__,
        "edition": "Community",
        "description": "Reverse proxy and load balancer for self-hosted LLM servers (Python)",
        "build": {
            "commit": "unknown",
            "date": "unknown",
            "python_version": platform.python_version(),
            "twisted_version": twisted.__version__,
            "platform": f"{platform.system().lower()}/{platform.machine()}",
        },
        "capabilities": ["load_balancing", "health_checking", "endpoint_discovery"],
        "capabilities_experimental": [],
        "supported_backends": list(SUPPORTED_BACKENDS),
        "api": {
            "version": "v1",
            "endpoints": {
                "health": "/internal/health",
                "metrics": "/internal/metrics",
                "status": "/internal/status",
                "process": "/internal/process",
                "version": "/version",
            },
        },
        "links": {
            "homepage": "https://github.com/thushan/olla",
            "documentation": "https://thushan.github.io/olla/",
        },
    }


def profiles_payload(profiles: ProfileRegistry) -> dict[str, Any]:
    """Each loaded profile: what it says about itself (name, version, description, home), the
    files it came from (a built-in, then the user files laid over it), its prefixes, its paths
    by purpose (``path_indices``), the paths that mark it (``detection.path_indicators``) and
    its response bound; what loading them warned about and noted; what was left out."""
    return {
        "loaded": [
            {
                "name": p.name,
                "display_name": p.display_name,
                "version": p.version,
                "description": p.description,
                "home": p.home,
                "sources": list(p.sources),
                "prefixes": list(p.prefixes),
                "paths": dict(p.named_paths),
                "path_indicators": list(p.detection.path_indicators),
                "timeout_seconds": p.characteristics.timeout,
            }
            for p in sorted(profiles, key=lambda p: p.name)
        ],
        "warnings": list(profiles.warnings),
        "notes": list(profiles.notes),
        "excluded": list(profiles.excluded),
    }


def failovers_payload(failovers: FailoverLog, now: float) -> dict[str, Any]:
    """``/internal/stats/failovers``: the recent hand-overs, newest first."""
    return {
        "timestamp": rfc3339(now),
        "total": failovers.total,
        "kept": failovers.size,
        "failovers": [
            {
                "time": rfc3339(event.at),
                "request_id": event.request_id,
                "model": event.model,
                "from": event.from_endpoint,
                "to": event.to_endpoint,
                "kind": event.kind,
                "cause": event.cause,
            }
            for event in failovers.recent()
        ],
    }


class InternalApp:
    """The Klein app for everything olla answers itself, bound to the live state."""

    app = Klein()

    def __init__(
        self,
        registry: EndpointRegistry,
        *,
        clock: IReactorTime,
        config: OllaConfig,
        active_connections: Callable[[], int] = lambda: 0,
        proc_self: Path | None = Path("/proc/self"),
        catalogue: ModelCatalogue | None = None,
        translators: Sequence[TranslatorStats] = (),
        security: SecurityStats | None = None,
        sticky: StickySessions | None = None,
        failovers: FailoverLog | None = None,
        dashboard: Dashboard | None = None,
        worker: WorkerIdentity | None = None,
        stats: Stats | None = None,
        metrics: Metrics | None = None,
        profiles: ProfileRegistry | None = None,
        queue: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None,
        state: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """Bind the routes to the live state.

        Args:
            registry: the endpoints and what is known about them.
            clock: every time on these pages comes from here; uptime counts from construction.
            config: the loaded configuration (proxy engine, profile, balancer names).
            active_connections: open client connections, for ``/internal/process``.
            proc_self: the ``/proc/self`` directory ``/internal/process`` reads, or ``None``.
            security: what the HTTP layer and the guards refused, for ``/internal/status``.
            sticky: the sticky sessions, when enabled, for ``/internal/stats/sticky``.
            failovers: the recent failovers, for ``/internal/stats/failovers``.
            dashboard: the page at ``/internal/ui/``, or ``None`` (disabled: 404).
            worker: which of the ``--workers`` processes this is (all figures are its own).
            stats: the request statistics, for ``/internal/stats/models``.
            metrics: the Prometheus page; without it ``/internal/metrics`` is a 404.
            profiles: the loaded profiles; ``/internal/status`` says where each came from.
            queue: the admission queue's section of ``/internal/status`` and its stable view.
            state: the state store's ``{backend, ok, fallbacks, ...}`` for ``/internal/status``.
        """
        self._registry = registry
        self._clock = clock
        self._config = config
        self._started = clock.seconds()
        self._active_connections = active_connections
        self._proc_self = proc_self
        self._catalogue = catalogue or ModelCatalogue()
        self._profiles = profiles
        self._translators = list(translators)
        self._security = security or SecurityStats()
        self._sticky = sticky
        self._failovers = failovers or FailoverLog()
        self._dashboard = dashboard
        self._worker = worker or WorkerIdentity()
        self._stats = stats or Stats()
        self._metrics = metrics
        self._queue = queue
        self._state = state or (lambda: {"backend": "memory", "ok": True, "fallbacks": 0})
        #: which config runs: ``use_config`` moves these on a reload
        self._generation = 1
        self._loaded_at = self._started

    def use_config(self, config: OllaConfig, *, generation: int, loaded_at: float) -> None:
        """A reload applied ``config``: the status pages show it and its generation."""
        self._config = config
        self._generation = generation
        self._loaded_at = loaded_at

    @app.route("/internal/health", branch=False)
    def health(self, request: Request) -> bytes:
        return json_response(request, {"status": "healthy"})

    @app.route("/version", branch=False)
    def version(self, request: Request) -> bytes:
        return json_response(request, version_payload())

    @app.route("/internal/status", branch=False)
    def status(self, request: Request) -> bytes:
        payload, stable = status_payload(
            self._registry,
            self._config,
            now=self._clock.seconds(),
            started=self._started,
            security=self._security.snapshot(),
        )
        # not clock-driven (it moves only when a reload applies a file): part of the ETag
        payload["config"] = stable["config"] = {
            "generation": self._generation,
            "loaded_at": rfc3339(self._loaded_at),
            "file": self._config.source,
        }
        # In both: another worker's answer differs, so its ETag must too.
        payload["worker"] = stable["worker"] = self._worker.payload()
        if self._profiles is not None:
            payload["profiles"] = stable["profiles"] = profiles_payload(self._profiles)
        if self._queue is not None:
            payload["queue"], stable["queue"] = self._queue()
        # where shared state lives and whether it answers (fallbacks: answers this process
        # took from its own memory because it did not)
        state = payload["state"] = self._state()
        stable["state"] = {"backend": state["backend"], "ok": state["ok"]}
        return conditional_json(request, payload, stable)

    @app.route("/internal/status/endpoints", branch=False)
    def status_endpoints(self, request: Request) -> bytes:
        payload, stable = endpoints_payload(self._registry, now=self._clock.seconds())
        return conditional_json(request, payload, stable)

    @app.route("/internal/status/models", branch=False)
    def status_models(self, request: Request) -> bytes:
        args = request.args or {}
        payload, stable = status_models(
            self._catalogue,
            self._registry.routable(),
            self._clock.seconds(),
            detailed=args.get(b"detailed") == [b"true"],
            group=(args.get(b"group") or [b""])[-1].decode("utf-8", "replace") or None,
        )
        return conditional_json(request, payload, stable)

    @app.route("/internal/stats/translators", branch=False)
    def stats_translators(self, request: Request) -> bytes:
        timestamp = rfc3339(self._clock.seconds())
        return json_response(request, translators_payload(self._translators, timestamp))

    @app.route("/internal/stats/models", branch=False)
    def stats_models(self, request: Request) -> bytes:
        args = request.args or {}
        payload = models_stats_payload(
            self._stats,
            self._clock.seconds(),
            include_endpoints=args.get(b"include_endpoints") == [b"true"],
            include_summary=args.get(b"include_summary") == [b"true"],
        )
        return json_response(request, payload)

    @app.route("/internal/metrics", branch=False)
    def metrics(self, request: Request) -> bytes:
        if self._metrics is None:
            raise NotFound()
        return self._metrics.render(request)

    @app.route("/internal/stats/sticky", branch=False)
    def stats_sticky(self, request: Request) -> bytes:
        """Olla's shape: ``{"enabled": false}`` when off, else the store's counters."""
        if self._sticky is None:
            return json_response(request, {"enabled": False})
        return json_response(request, self._sticky.stats())

    @app.route("/internal/stats/failovers", branch=False)
    def stats_failovers(self, request: Request) -> bytes:
        return json_response(request, failovers_payload(self._failovers, self._clock.seconds()))

    @app.route("/internal/ui", branch=False)
    def dashboard_redirect(self, request: Request) -> bytes:
        return self._ui().redirect(request)

    @app.route("/internal/ui/", branch=False)
    def dashboard_page(self, request: Request) -> bytes:
        return self._ui().page(request)

    @app.route("/internal/ui/<name>", branch=False)
    def dashboard_asset(self, request: Request, name: str) -> bytes:
        return self._ui().asset(request, name)

    def _ui(self) -> Dashboard:
        if self._dashboard is None:  # dashboard.enabled: false
            raise NotFound()
        return self._dashboard

    @app.route("/internal/process", branch=False)
    def process(self, request: Request) -> bytes:
        payload = process_payload(
            now=self._clock.seconds(),
            started=self._started,
            active_connections=self._active_connections(),
            proc_self=self._proc_self,
        )
        payload["worker"] = self._worker.payload()
        return json_response(request, payload)

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """What werkzeug's router raises (an unknown path, and whatever else a route table can
        say) as JSON; Klein would send werkzeug's HTML page. Its headers (``Allow``,
        ``Location``) are kept."""
        error = failure.value
        assert isinstance(error, HTTPException)
        if isinstance(error, NotFound):
            return json_response(request, {"error": "404 page not found"}, 404)
        for name, value in error.get_response({}).headers.items():
            if name.lower() not in ("content-type", "content-length"):
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        status = error.code or 500
        return json_response(request, {"error": error.description or error.name}, status)
