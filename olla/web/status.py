# -*- test-case-name: tests.test_status -*-
"""The read-only status API's payloads, and the conditional-GET rules they are served with.

Everything here is a pure function of the registry, the config and a ``now`` taken from the
injected clock, so the handlers in :mod:`olla.web.internal` stay thin and the tests need no
HTTP to check a format. Formats follow the Go original (``pkg/format``), so existing
dashboards and scripts read them unchanged.

Each payload builder returns two dicts: the payload itself, and its *stable* view, which drops
what moves with the wall clock alone (timestamps, "2s ago", "in 3s", per-probe times and
latencies). The weak ETag is computed over the stable view, so a polling dashboard gets ``304``
until something real changes.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import platform
import resource
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import twisted
from olla import __version__
from olla.config import OllaConfig
from olla.fleet.endpoints import (
    Endpoint,
    EndpointRegistry,
    EndpointState,
    EndpointStatus,
    effective_slots,
    sanitise_url,
)
from olla.telemetry.security import SecuritySnapshot
from olla.util.ids import base36, fnv1a

#: Bodies at or below this size are sent as they are: gzip's overhead outweighs the saving.
GZIP_MIN_SIZE = 256
#: ``If-None-Match`` / ``Accept-Encoding`` values longer than this are ignored (never parsed).
MAX_NEGOTIATION_HEADER = 1024
#: What Go prints for a zero ``time.Time``; the shape ``models.last_updated`` had when unsynced.
ZERO_TIME = "0001-01-01T00:00:00Z"
NO_TRAFFIC = "N/A"
COMMIT = "unknown"
HIGH_LATENCY_MS = 5000

_UNITS = ("KB", "MB", "GB", "TB", "PB")

# --------------------------------------------------------------------------- formats


def format_percentage(value: float) -> str:
    """A percentage as the status pages show it: ``"0%"``, ``"100%"``, else one decimal."""
    if value == 0:
        return "0%"
    if value == 100:
        return "100%"
    return f"{value:.1f}%"


def format_latency(ms: int) -> str:
    """Milliseconds as ``"0ms"``, ``"120ms"`` or, from one second, ``"1.2s"``."""
    if ms == 0:
        return "0ms"
    if ms >= 1000:
        return f"{ms / 1000:.1f}s"
    return f"{ms}ms"


def format_bytes(count: int) -> str:
    """A byte count in binary units: ``"512 B"``, ``"1.50 KB"``, ``"1.20 GB"``."""
    if count < 1024:
        return f"{count} B"
    div, exp = 1024, 0
    n = count // 1024
    while n >= 1024 and exp < len(_UNITS) - 1:
        div *= 1024
        exp += 1
        n //= 1024
    return f"{count / div:.2f} {_UNITS[exp]}"


def format_span(seconds: float) -> str:
    """A short span: whole seconds under a minute, then rounded minutes, hours or days."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def time_ago(then: float | None, now: float) -> str:
    """``"2s ago"``, or ``"never"`` for something that has not happened yet."""
    if then is None:
        return "never"
    return f"{format_span(now - then)} ago"


def time_until(then: float | None, now: float) -> str:
    """``"in 3s"``, ``"now"`` when due or overdue, ``"unknown"`` when nothing is scheduled."""
    if then is None:
        return "unknown"
    if then <= now:
        return "now"
    return f"in {format_span(then - now)}"


def format_uptime(seconds: float) -> str:
    """Uptime: ``"42s"``, ``"17m"`` (under an hour, a ``format_span``), then ``"3h 12m"``,
    ``"2d 5h"``."""
    if seconds < 3600:
        return format_span(seconds)
    hours, minutes = int(seconds // 3600), int(seconds // 60) % 60
    if hours < 24:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def rfc3339(timestamp: float) -> str:
    """A POSIX timestamp as RFC 3339 in UTC, with a fraction only when there is one."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _ms(seconds: float | None) -> int:
    """Whole milliseconds, rounded (float sums of seconds land a hair either side)."""
    return 0 if seconds is None else round(seconds * 1000)


# --------------------------------------------------------------------------- endpoints


def _sort_key(endpoint: Endpoint, state: EndpointState) -> tuple[int, bool, str, str]:
    """Priority descending, healthy first, then name and id for a stable order."""
    return (
        -endpoint.priority,
        state.status is not EndpointStatus.HEALTHY,
        endpoint.name,
        endpoint.id,
    )


def _sorted(registry: EndpointRegistry) -> list[tuple[Endpoint, EndpointState]]:
    pairs = [(ep, registry.state(ep)) for ep in registry]
    return sorted(pairs, key=lambda pair: _sort_key(*pair))


def _has_traffic(state: EndpointState) -> bool:
    return state.successes + state.failures > 0


def safe_reason(endpoint: Endpoint, reason: str) -> str:
    """A status reason with the endpoint's URLs sanitised and its secrets masked.

    Reasons come from the health checker and may quote a URL or an upstream message; the
    status pages are unauthenticated, so nothing that could be a credential goes out.
    """
    urls = {endpoint.config.url, endpoint.url, endpoint.health_url, endpoint.model_url}
    for url in sorted(urls, key=len, reverse=True):
        reason = reason.replace(url, sanitise_url(url))
    parts = urlsplit(endpoint.config.url)
    secrets: list[str] = []
    for _, raw in endpoint.extra_headers:
        value = raw.decode("latin-1")
        secrets += [value, *value.split()[1:]]  # "Bearer sk-..." also masks a bare "sk-..."
    secrets += [part for part in (parts.username, parts.password, parts.query) if part]
    secrets += [value for _, value in parse_qsl(parts.query)]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            reason = reason.replace(secret, "***")
    return reason


def _status_issues(state: EndpointState) -> str:
    """``/internal/status``: every issue that applies, comma separated."""
    issues = []
    if state.consecutive_failures > 3:
        issues.append("consecutive failures")
    rate = state.success_rate
    if rate is not None:
        if rate * 100 < 90 and state.successes + state.failures > 10:
            issues.append("low success rate")
        if _ms(state.avg_latency) > HIGH_LATENCY_MS:
            issues.append("high latency")
    if state.status in (EndpointStatus.OFFLINE, EndpointStatus.UNHEALTHY):
        issues.append("unavailable")
    return ", ".join(issues)


def _summary_issue(state: EndpointState) -> str:
    """``/internal/status/endpoints``: the first issue that applies, or ``""``."""
    if state.status is EndpointStatus.HEALTHY and state.consecutive_failures == 0:
        return ""
    if state.status in (EndpointStatus.OFFLINE, EndpointStatus.UNHEALTHY):
        return "unavailable"
    if state.consecutive_failures > 3:
        return "unstable"
    total = state.successes + state.failures
    if total > 10 and state.successes * 100 < total * 90:
        return "low success rate"
    return ""


def _without(payload: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    drop = set(keys)
    return {key: value for key, value in payload.items() if key not in drop}


#: Fields of an ``/internal/status`` endpoint that move with the clock or every probe.
_STATUS_VOLATILE = ("last_check", "health_check_at", "next_check", "next_check_at")
#: The same for ``/internal/status/endpoints``.
_SUMMARY_VOLATILE = (
    "health_check",
    "health_check_at",
    "response_time",
    "next_check_at",
    "last_model_sync",
    "last_model_sync_at",
)


def status_endpoint(
    endpoint: Endpoint, state: EndpointState, now: float, in_flight: int
) -> dict[str, Any]:
    """One entry of ``/internal/status`` ``endpoints[]``."""
    traffic = _has_traffic(state)
    rate = state.success_rate
    avg_ms = _ms(state.avg_latency)
    entry: dict[str, Any] = {
        "id": endpoint.id,
        "name": endpoint.name,
        "url": endpoint.display_url,
        "status": state.status.value,
        "priority": endpoint.priority,
        "success_rate": format_percentage(rate * 100) if rate is not None else "0%",
        "avg_latency": format_latency(avg_ms),
    }
    if traffic:
        entry["avg_latency_ms"] = avg_ms
    entry |= {
        "min_latency_ms": _ms(state.latency_min) if traffic else 0,
        "max_latency_ms": _ms(state.latency_max) if traffic else 0,
        "traffic": format_bytes(state.bytes_relayed),
        "connections": in_flight,
        "requests": state.requests,
        "last_check": time_ago(state.last_check, now),
    }
    if state.last_check is not None:
        entry["health_check_at"] = rfc3339(state.last_check)
    entry["next_check"] = time_until(state.next_check, now)
    if state.next_check is not None:
        entry["next_check_at"] = rfc3339(state.next_check)
    entry["issues"] = _status_issues(state)
    entry["models"] = {
        "last_updated": rfc3339(state.last_model_sync)
        if state.last_model_sync is not None
        else ZERO_TIME,
        "count": state.model_count,
    }
    return entry


def summary_endpoint(
    endpoint: Endpoint, state: EndpointState, now: float, in_flight: int
) -> dict[str, Any]:
    """One entry of ``/internal/status/endpoints`` ``endpoints[]``."""
    traffic = _has_traffic(state)
    rate = state.success_rate
    entry: dict[str, Any] = {
        "id": endpoint.id,
        "name": endpoint.name,
        "url": endpoint.display_url,
        "type": endpoint.type,
        "status": state.status.value,
        "priority": endpoint.priority,
        "model_count": state.model_count,
        "request_count": state.requests,
        "success_rate": format_percentage(rate * 100) if rate is not None else NO_TRAFFIC,
        "min_latency_ms": _ms(state.latency_min) if traffic else 0,
        "max_latency_ms": _ms(state.latency_max) if traffic else 0,
    }
    if traffic:
        entry["avg_latency_ms"] = _ms(state.avg_latency)
    entry["active_connections"] = in_flight
    entry["health_check"] = time_ago(state.last_check, now)
    if state.last_check is not None:
        entry["health_check_at"] = rfc3339(state.last_check)
        if state.last_probe_latency:
            entry["response_time"] = format_latency(_ms(state.last_probe_latency))
    if state.next_check is not None:
        entry["next_check_at"] = rfc3339(state.next_check)
    if state.last_model_sync is not None:
        entry["last_model_sync"] = time_ago(state.last_model_sync, now)
        entry["last_model_sync_at"] = rfc3339(state.last_model_sync)
    issue = _summary_issue(state)
    if issue:
        entry["issues"] = issue
    entry["consecutive_failures"] = state.consecutive_failures
    entry["status_reason"] = safe_reason(endpoint, state.status_reason)
    # beyond the Go original: what routing counts as full, who said so (config, backend or
    # default), and the context one request gets, where the backend says
    entry["max_concurrency"], entry["max_concurrency_source"] = effective_slots(endpoint, state)
    if state.context_length is not None:
        entry["context_length"] = state.context_length
    return entry


# --------------------------------------------------------------------------- payloads

Payloads = tuple[dict[str, Any], dict[str, Any]]


def system_status(total: int, healthy: int, successes: int, failures: int) -> str:
    """``healthy``, ``degraded`` or ``critical`` for the whole proxy.

    No endpoints is critical. With traffic, the share of healthy endpoints and the success
    rate both count; without it only the share does, so a fresh boot is not "critical".
    """
    if total == 0:
        return "critical"
    ratio = healthy / total
    requests = successes + failures
    success = successes / requests * 100 if requests else 100.0
    if ratio < 0.5 or success < 90:
        return "critical"
    if ratio < 0.8 or success < 95:
        return "degraded"
    return "healthy"


def status_payload(
    registry: EndpointRegistry,
    config: OllaConfig,
    *,
    now: float,
    started: float,
    security: SecuritySnapshot,
) -> Payloads:
    """``/internal/status``: the full snapshot, and its stable view for the ETag.

    Args:
        registry: the live endpoints and their states.
        config: for the proxy engine, profile and balancer names.
        now: the clock's current time (POSIX seconds).
        started: when olla started, for ``uptime`` and ``start_time``.
        security: what the HTTP layer and the guards refused.

    Returns:
        The payload, and the same with every clock-driven field removed.
    """
    pairs = _sorted(registry)
    states = [state for _, state in pairs]
    successes = sum(s.successes for s in states)
    failures = sum(s.failures for s in states)
    requests = successes + failures
    latency_total = sum(s.latency_total for s in states)
    healthy = sum(1 for s in states if s.status is EndpointStatus.HEALTHY)
    load = registry.load
    endpoints = [status_endpoint(ep, state, now, load.in_flight(ep)) for ep, state in pairs]
    system = {
        "status": system_status(len(states), healthy, successes, failures),
        "endpoints_up": f"{healthy}/{len(states)}",
        "success_rate": format_percentage(successes / requests * 100) if requests else NO_TRAFFIC,
        "avg_latency": format_latency(_ms(latency_total / successes) if successes else 0),
        "total_traffic": format_bytes(sum(s.bytes_relayed for s in states)),
        "uptime": format_uptime(now - started),
        "start_time": rfc3339(started),
        "version": __version__,
        "commit": COMMIT,
        "active_connections": sum(load.in_flight(ep) for ep, _ in pairs),
        "security_violations": security.violations,
        "total_requests": requests,
        "total_failures": failures,
        "has_traffic": requests > 0,
    }
    proxy = {
        "engine": config.proxy.engine,
        "profile": config.proxy.profile,
        "balancer": config.proxy.load_balancer,
    }
    security_section = {
        "status": security.status,
        "blocked_ips": security.blocked_ips,
        "violations": {
            "rate_limits": security.rate_limits,
            "size_limits": security.size_limits,
            "header_limits": security.header_limits,
            "auth_failures": security.auth_failures,
        },
    }
    payload = {
        "timestamp": rfc3339(now),
        "endpoints": endpoints,
        "proxy": proxy,
        "security": security_section,
        "system": system,
    }
    stable = {
        "endpoints": [_without(entry, _STATUS_VOLATILE) for entry in endpoints],
        "proxy": proxy,
        "security": security_section,
        "system": _without(system, ("uptime",)),
    }
    return payload, stable


def endpoints_payload(registry: EndpointRegistry, *, now: float) -> Payloads:
    """``/internal/status/endpoints``: per-endpoint detail and counts, and its stable view.

    ``healthy_count`` counts healthy endpoints; ``routable_count`` also counts busy ones
    (answering, if slowly), as the Go original does.
    """
    pairs = _sorted(registry)
    load = registry.load
    endpoints = [summary_endpoint(ep, state, now, load.in_flight(ep)) for ep, state in pairs]
    counts = {
        "total_count": len(pairs),
        "healthy_count": sum(1 for _, s in pairs if s.status is EndpointStatus.HEALTHY),
        "routable_count": sum(1 for _, s in pairs if s.status.up),
    }
    payload = {"timestamp": rfc3339(now), **counts, "endpoints": endpoints}
    stable = {**counts, "endpoints": [_without(e, _SUMMARY_VOLATILE) for e in endpoints]}
    return payload, stable


def _read_status_kib(text: str, key: str) -> int | None:
    """A ``kB`` figure from ``/proc/<pid>/status`` text, in bytes."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def process_payload(
    *,
    now: float,
    started: float,
    active_connections: int,
    proc_self: Path | None = Path("/proc/self"),
) -> dict[str, Any]:
    """``/internal/process``: this Python process's runtime figures.

    Memory comes from ``<proc_self>/status`` (``VmRSS``, ``VmHWM``); without it (not Linux, or
    ``proc_self=None``) both fall back to the peak RSS ``getrusage`` reports. File descriptors
    are the entries of ``<proc_self>/fd`` (the listing's own descriptor included), or ``None``.

    Args:
        now: the clock's current time.
        started: when olla started.
        active_connections: open client connections, from the site.
        proc_self: the ``/proc/self`` directory to read, or ``None`` to skip it.
    """
    rss = peak = None
    open_fds: int | None = None
    if proc_self is not None:
        try:
            status_text = (proc_self / "status").read_text()
        except OSError:
            status_text = ""
        rss = _read_status_kib(status_text, "VmRSS")
        peak = _read_status_kib(status_text, "VmHWM")
        try:
            open_fds = len(os.listdir(proc_self / "fd"))
        except OSError:
            open_fds = None
    if rss is None or peak is None:
        fallback = _maxrss_bytes()
        rss = fallback if rss is None else rss
        peak = fallback if peak is None else peak
    times = os.times()
    gc_stats = gc.get_stats()
    uptime = max(0.0, now - started)
    return {
        "timestamp": rfc3339(now),
        "memory": {"rss_bytes": rss, "rss_peak_bytes": peak, "rss_human": format_bytes(rss)},
        "cpu": {"user_seconds": times.user, "system_seconds": times.system},
        "open_file_descriptors": open_fds,
        "garbage_collection": {
            "enabled": gc.isenabled(),
            "counts": list(gc.get_count()),
            "collections": [gen.get("collections", 0) for gen in gc_stats],
            "collected": [gen.get("collected", 0) for gen in gc_stats],
            "uncollectable": [gen.get("uncollectable", 0) for gen in gc_stats],
        },
        "runtime": {
            "uptime": format_uptime(uptime),
            "uptime_seconds": uptime,
            "start_time": rfc3339(started),
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "twisted_version": twisted.__version__,
            "platform": f"{platform.system().lower()}/{platform.machine()}",
            "num_cpu": os.cpu_count(),
            "pid": os.getpid(),
        },
        "connections": {"active": active_connections},
    }


# --------------------------------------------------------------------------- conditional GET


def etag_for(stable: object) -> str:
    """The weak validator of a stable view: ``W/"<base36 FNV-1a-64 of its canonical JSON>"``."""
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":")).encode()
    return f'W/"{base36(fnv1a(canonical, 64))}"'


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` against the current ETag.

    ``*`` matches anything, a comma list matches if any member does, and a header over
    :data:`MAX_NEGOTIATION_HEADER` bytes is ignored rather than parsed.
    """
    if not if_none_match or len(if_none_match) > MAX_NEGOTIATION_HEADER:
        return False
    if if_none_match.strip() == "*":
        return True
    current = _opaque(etag)
    return any(_opaque(tag.strip()) == current for tag in if_none_match.split(","))


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip: listed (or ``*``) with a q-value above 0."""
    if not accept_encoding or len(accept_encoding) > MAX_NEGOTIATION_HEADER:
        return False
    gzip_q: float | None = None
    star_q: float | None = None
    for part in accept_encoding.split(","):
        token, _, params = part.partition(";")
        token = token.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    pass
        if token == "gzip":
            gzip_q = q
        elif token == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def should_gzip(accept_encoding: str | None, body: bytes) -> bool:
    return len(body) > GZIP_MIN_SIZE and accepts_gzip(accept_encoding)


def gzip_body(body: bytes) -> bytes:
    """Gzip with a fixed mtime, so equal bodies compress to equal bytes."""
    return gzip.compress(body, compresslevel=6, mtime=0)
