"""The fake's own controls (``ControlMixin``): the Python API (models, loaded set, state,
recorded requests) and its HTTP form, ``/_fake/requests``, ``/_fake/reset``, ``/_fake/state``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

from twisted.web.server import Request

from .wire import (
    COST_KEYS,
    HEALTH_MODES,
    JSON_UTF8,
    PULL_KEYS,
    SHOW_INFO_MODES,
    FakeModel,
    RecordedRequest,
)


class ControlMixin:
    """The Python and HTTP control API."""

    def model(self, name: object) -> FakeModel | None:
        """The model ``name`` refers to; like Ollama, a name without a tag means ``:latest``
        and ``library/`` (Ollama's default namespace) may be written or not."""
        if not isinstance(name, str) or not name:
            return None
        wanted = name.lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
        if ":" not in wanted.rsplit("/", 1)[-1]:
            wanted += ":latest"
        for candidate in self.models:
            if candidate.name.lower() in (name.lower(), wanted):
                return candidate
        return None

    def load(self, name: str) -> None:
        self.state.loaded.add(name)
        self._loaded_at[name] = self.clock.seconds()

    def unload(self, name: str) -> None:
        self.state.loaded.discard(name)

    def reset(self) -> None:
        """Forget recorded requests and the counters (not the state)."""
        self.requests.clear()
        self.cancelled = 0
        self.dropped = 0
        self.scheduler.reset()
        self.prompt_cache.reset()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def apply_state(self, update: dict[str, Any]) -> None:
        """Change server-wide state; keys as in ``describe_state`` (unknown keys: ValueError)."""
        known = {
            "health",
            "models",
            "loaded",
            "default_chunks",
            "default_delay_ms",
            "default_ttft_ms",
            "status",
            "version",
            "show_info",
            *COST_KEYS,
            *PULL_KEYS,
        }
        unknown = set(update) - known
        if unknown:
            raise ValueError(f"unknown state keys: {sorted(unknown)}")
        if "health" in update:
            if update["health"] not in HEALTH_MODES:
                raise ValueError(f"health must be one of {HEALTH_MODES}")
            self.state.health = update["health"]
        if "models" in update:
            current = {m.name: m for m in self.models}
            models = []
            for item in update["models"]:
                if isinstance(item, str):
                    models.append(current.get(item) or FakeModel(item))
                elif isinstance(item, dict):
                    models.append(FakeModel(**item))
                else:
                    raise ValueError(f"a model is a name or an object, not {item!r}")
            self.models = models
        if "loaded" in update:
            self.state.loaded = set()
            for loaded in update["loaded"]:
                self.load(str(loaded))
        if "default_chunks" in update:
            self.state.default_chunks = int(update["default_chunks"])
        if "default_delay_ms" in update:
            self.state.default_delay_ms = float(update["default_delay_ms"])
        if "default_ttft_ms" in update:
            self.state.default_ttft_ms = float(update["default_ttft_ms"])
        if "status" in update:
            status = update["status"]
            self.state.status = None if status is None else int(status)
        if "show_info" in update:
            if update["show_info"] not in SHOW_INFO_MODES:
                raise ValueError(f"show_info must be one of {SHOW_INFO_MODES}")
            self.state.show_info = update["show_info"]
        if "version" in update:
            if not isinstance(update["version"], str):
                raise ValueError("version must be a string")
            self.version = update["version"]
        for key, kind in COST_KEYS.items():
            if key in update:
                value = kind(update[key])
                if value < 0 or math.isnan(value) or math.isinf(value):
                    raise ValueError(f"{key} must be a non-negative number")
                setattr(self.state, key, value)
        for key, kind in PULL_KEYS.items():
            if key in update:
                value = None if update[key] is None else kind(update[key])
                if value is not None and (value < 0 or math.isnan(value) or math.isinf(value)):
                    raise ValueError(f"{key} must be a non-negative number")
                setattr(self.state, key, value)
        self.scheduler.pump()  # a larger capacity lets queued requests in

    def describe_state(self) -> dict[str, Any]:
        return {
            "health": self.state.health,
            "models": [m.name for m in self.models],
            "loaded": sorted(self.state.loaded),
            "default_chunks": self.state.default_chunks,
            "default_delay_ms": self.state.default_delay_ms,
            "default_ttft_ms": self.state.default_ttft_ms,
            "status": self.state.status,
            "version": self.version,
            "show_info": self.state.show_info,
            **{key: getattr(self.state, key) for key in COST_KEYS},
            **{key: getattr(self.state, key) for key in PULL_KEYS},
            "blobs": sorted(self.blobs),
            **self.scheduler.describe(),
            **self.prompt_cache.describe(),
            "connections": self.connections,
            "in_flight": self.in_flight,
            "cancelled": self.cancelled,
            "dropped": self.dropped,
            "requests": len(self.requests),
        }

    def _control(self, request: Request, path: str) -> bytes:
        request.setHeader(b"content-type", JSON_UTF8)
        method = request.method
        if path == "/_fake/requests" and method == b"GET":
            wanted = parse_qs(request.uri.decode("latin-1").partition("?")[2]).get("path")
            recorded = [asdict(r) for r in self.requests if not wanted or r.path in wanted]
            return json.dumps(recorded).encode()
        if path == "/_fake/reset" and method == b"POST":
            self.reset()
            return b'{"ok":true}'
        if path == "/_fake/state" and method in (b"GET", b"POST"):
            if method == b"POST":
                assert request.content is not None
                raw = request.content.read()
                try:
                    update = json.loads(raw) if raw.strip() else {}
                    if not isinstance(update, dict):
                        raise ValueError("the state update must be a JSON object")
                    self.apply_state(update)
                except (ValueError, TypeError) as e:
                    request.setResponseCode(400)
                    return json.dumps({"error": str(e)}).encode()
            return json.dumps(self.describe_state()).encode()
        request.setResponseCode(404)
        return json.dumps({"error": f"no control route {method.decode()} {path}"}).encode()
