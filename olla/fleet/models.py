# -*- test-case-name: tests.test_models -*-
"""The model catalogue: which endpoint hosts (and has loaded) which model, and routing by model.

Discovery writes per-endpoint lists; everything else reads. Names compare case-insensitively.
``route()`` is a pure decision over the catalogue, the healthy candidates and the config.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from olla.config import FilterConfig, RoutingStrategyConfig
from olla.fleet.endpoints import Endpoint
from olla.fleet.values import ModelInfo

_QUANT = re.compile(r"[^a-z0-9]")


def normalise_quantization(value: str | None) -> str | None:
    """``Q4_K_M`` -> ``q4km``, ``Q4_0`` -> ``q4``, ``F16``/``FP16`` -> ``f16`` (Olla's scheme)."""
    if not value:
        return None
    q = _QUANT.sub("", value.lower())
    if q.startswith("fp"):
        q = "f" + q[2:]
    return q[:-1] if re.fullmatch(r"q\d0", q) else q


def denormalise_quantization(value: str | None) -> str | None:
    """The Ollama spelling back: ``q4km`` -> ``Q4_K_M``, ``q4`` -> ``Q4_0``, ``f16`` -> ``F16``."""
    if not value:
        return None
    if re.fullmatch(r"q\d", value):
        return f"Q{value[1]}_0"
    match = re.fullmatch(r"q(\d)k([sml])?", value)
    if match:
        return f"Q{match.group(1)}_K" + (f"_{match.group(2).upper()}" if match.group(2) else "")
    return value.upper()


def matches_filter(name: str, model_filter: FilterConfig | None) -> bool:
    """Case-insensitive include/exclude globs; an empty include list admits everything."""
    if model_filter is None:
        return True
    lowered = name.lower()
    include = [p.lower() for p in model_filter.include]
    if include and "*" not in include and not any(fnmatch.fnmatchcase(lowered, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(lowered, p.lower()) for p in model_filter.exclude)


_VISION = ("*llava*", "*vision*", "*bakllava*", "*-vl*", "*vlm*")
_EMBEDDINGS = ("*embed*", "*minilm*", "nomic-embed-text*", "mxbai-embed-large*", "*bge-*")
_CODE = ("*code*", "codellama*", "deepseek-coder*", "qwen*coder*", "*starcoder*", "*codegen*")
_CONTEXT = (
    (("*-32k*", "*:32k*"), 32768),
    (("*-16k*", "*:16k*"), 16384),
    (("*-8k*", "*:8k*", "llama3*", "llama-3*"), 8192),
)
_NAME_RULES = (
    (("*instruct*", "*chat*", "*assistant*"), ("instruction-following", "chat")),
    (("*reasoning*", "*think*", "*r1*"), ("reasoning", "logic")),
    (("*math*", "*mathstral*"), ("mathematics", "problem-solving")),
)


def _any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_FAMILY = re.compile(r"^(?:[\w.-]+/)?([a-z]+(?:-[a-z]+)*?)-?(\d+(?:\.\d+)?)?(?=[:\-_.]|$)")


def family_and_variant(name: str) -> tuple[str, str | None]:
    """``llama3.2:latest`` -> (``llama``, ``3.2``); ``phi4`` -> (``phi``, ``4``)."""
    match = _FAMILY.match(name.lower())
    if match is None or not match.group(1):
        return "unknown", None
    return match.group(1), match.group(2)


def model_type(name: str, family: str | None = None) -> str:
    """``embeddings``, ``vlm`` or ``llm``, from the name (and Ollama's family)."""
    lowered = name.lower()
    if _any(lowered, _EMBEDDINGS) or (family or "").lower() in ("bert", "nomic-bert"):
        return "embeddings"
    if _any(lowered, _VISION):
        return "vlm"
    return "llm"


def context_length(name: str) -> int | None:
    """A context length the name implies (the Ollama profile's context patterns)."""
    lowered = name.lower()
    return next((size for patterns, size in _CONTEXT if _any(lowered, patterns)), None)


def capabilities(name: str, family: str | None = None) -> list[str]:
    """What a model can do, by its type and name (Olla's rules, §6.2)."""
    lowered = name.lower()
    kind = model_type(name, family)
    out: list[str] = []
    if kind == "embeddings":
        out += ["embeddings", "similarity", "vector-search"]
    else:
        out += ["text-generation", "chat", "completion"]
        if kind == "vlm":
            out += ["vision", "multimodal", "image-understanding"]
        if _any(lowered, _CODE):
            out += ["code-generation", "programming", "code-completion"]
        for patterns, caps in _NAME_RULES:
            if _any(lowered, patterns):
                out += [c for c in caps if c not in out]
    context = context_length(name) or 0
    if context >= 32000:
        out.append("extended-context")
    return out


@dataclass
class _EndpointModels:
    models: dict[str, ModelInfo] = field(default_factory=dict)  # lower-cased name -> info
    loaded: set[str] = field(default_factory=set)  # lower-cased names
    #: the backend says what it has in memory (Ollama's /api/ps, LM Studio's state)
    reports_loaded: bool = False
    #: lower-cased name -> when olla sent it to this endpoint while it was not loaded there
    loading: dict[str, float] = field(default_factory=dict)
    running: tuple[Mapping[str, object], ...] = ()  # Ollama /api/ps rows, as sent
    synced_at: float | None = None


@dataclass(frozen=True)
class RoutingDecision:
    """What model routing decided for one request."""

    strategy: str  # strict | optimistic | discovery | alias
    decision: str  # routed | fallback | rejected
    reason: str
    endpoints: tuple[Endpoint, ...] = ()
    status: int = 200  # for rejections: 404 or 503
    #: per chosen endpoint, the model name to write into the body (aliases only)
    rewrite: Mapping[Endpoint, str] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.decision == "rejected"


class ModelCatalogue:
    """Per-endpoint model lists and loaded sets, with the merged views built on demand."""

    def __init__(self, aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        self._by_endpoint: dict[Endpoint, _EndpointModels] = {}
        self._aliases = {k.lower(): tuple(v) for k, v in (aliases or {}).items()}
        self._load_times: dict[str, float] = {}

    # ------------------------------------------------------------------ writes (discovery)

    def set_aliases(self, aliases: Mapping[str, Sequence[str]]) -> None:
        """``model_aliases`` after a reload: requests routed from now on use these."""
        self._aliases = {k.lower(): tuple(v) for k, v in aliases.items()}

    def adopt(self, endpoint: Endpoint, previous: Endpoint) -> None:
        """``endpoint`` replaces ``previous`` (a reload changed its config, not its
        address): it starts with what was known about ``previous``'s models."""
        entry = self._by_endpoint.get(previous)
        if entry is not None:
            self._by_endpoint[endpoint] = replace(
                entry, models=dict(entry.models), loaded=set(entry.loaded), loading={}
            )

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` is gone (removed by a reload, its last request done)."""
        self._by_endpoint.pop(endpoint, None)

    def set_models(self, endpoint: Endpoint, models: Iterable[ModelInfo], now: float) -> None:
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.models = {m.name.lower(): m for m in models}
        entry.synced_at = now

    def set_loaded(
        self,
        endpoint: Endpoint,
        names: Iterable[str],
        entries: Sequence[Mapping[str, object]] = (),
    ) -> None:
        """Which models ``endpoint`` has in memory; ``entries`` are Ollama's ``/api/ps`` rows."""
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.loaded = {n.lower() for n in names}
        entry.running = tuple(entries)
        entry.reports_loaded = True
        for name in entry.loaded & entry.loading.keys():
            del entry.loading[name]

    def drop_stale(self, before: float) -> list[Endpoint]:
        """Forget model lists last refreshed before ``before``; returns those endpoints."""
        stale = [
            ep
            for ep, entry in self._by_endpoint.items()
            if entry.synced_at is not None and entry.synced_at < before and entry.models
        ]
        for endpoint in stale:
            self._by_endpoint[endpoint].models = {}
            self._by_endpoint[endpoint].loaded = set()
            self._by_endpoint[endpoint].loading = {}
        return stale

    def mark_loaded(self, endpoint: Endpoint, name: str) -> None:
        """``endpoint`` answered a request for ``name``: it is warm there now."""
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.loaded.add(name.lower())
        entry.loading.pop(name.lower(), None)

    def mark_loading(self, endpoint: Endpoint, name: str, now: float) -> None:
        """A request for ``name`` went to ``endpoint`` where it is not loaded: the load is
        under way, so the next request for it there waits only for the rest of it."""
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.loading.setdefault(name.lower(), now)

    def resident(self, endpoint: Endpoint) -> set[str]:
        """What takes memory on ``endpoint``: the models it has loaded, and those olla sent it
        while they were not (their load is under way)."""
        entry = self._by_endpoint.get(endpoint)
        return entry.loaded | entry.loading.keys() if entry else set()

    def loading_since(self, endpoint: Endpoint, name: str) -> float | None:
        entry = self._by_endpoint.get(endpoint)
        return entry.loading.get(name.lower()) if entry else None

    def load_failed(self, endpoint: Endpoint, name: str) -> None:
        """The request that was loading ``name`` on ``endpoint`` got no answer."""
        entry = self._by_endpoint.get(endpoint)
        if entry is not None:
            entry.loading.pop(name.lower(), None)

    def observe_load(self, name: str, seconds: float) -> None:
        """A backend took ``seconds`` to load ``name`` (Ollama's ``load_duration``)."""
        key = name.lower()
        known = self._load_times.get(key)
        self._load_times[key] = seconds if known is None else known + 0.3 * (seconds - known)

    def load_time(self, name: str, default: float) -> float:
        """The expected time to load ``name`` on a machine that does not have it in memory."""
        return self._load_times.get(name.lower(), default)

    # ------------------------------------------------------------------ reads

    def models_of(self, endpoint: Endpoint) -> list[ModelInfo]:
        entry = self._by_endpoint.get(endpoint)
        return list(entry.models.values()) if entry else []

    def loaded_on(self, endpoint: Endpoint) -> set[str]:
        entry = self._by_endpoint.get(endpoint)
        return set(entry.loaded) if entry else set()

    def warm(self, endpoint: Endpoint, name: str) -> bool:
        """Whether ``name`` is in memory on ``endpoint``. A backend that never says what it
        has loaded (vLLM, llama.cpp...) serves what it lists without loading: warm."""
        entry = self._by_endpoint.get(endpoint)
        if entry is None or not entry.reports_loaded:
            return True
        return name.lower() in entry.loaded

    def listed(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint``'s model list has been read (it may be empty)."""
        entry = self._by_endpoint.get(endpoint)
        return entry is not None and entry.synced_at is not None

    def running_on(self, endpoint: Endpoint) -> tuple[Mapping[str, object], ...]:
        """The ``/api/ps`` rows ``endpoint`` last reported (empty for non-Ollama backends)."""
        entry = self._by_endpoint.get(endpoint)
        return entry.running if entry else ()

    def synced_at(self, endpoint: Endpoint) -> float | None:
        entry = self._by_endpoint.get(endpoint)
        return entry.synced_at if entry else None

    def hosts(self, name: str) -> list[Endpoint]:
        """Endpoints that host ``name`` (any health), in no particular order."""
        key = name.lower()
        return [ep for ep, entry in self._by_endpoint.items() if key in entry.models]

    def native_name(self, endpoint: Endpoint, name: str) -> str | None:
        entry = self._by_endpoint.get(endpoint)
        info = entry.models.get(name.lower()) if entry else None
        return info.name if info else None

    def merged(self, endpoints: Iterable[Endpoint]) -> list[tuple[ModelInfo, list[Endpoint]]]:
        """Each model once across ``endpoints`` (same digest, else same name), with its hosts."""
        groups: list[tuple[ModelInfo, list[Endpoint]]] = []
        by_digest: dict[str, int] = {}
        by_name: dict[str, int] = {}
        for endpoint in endpoints:
            entry = self._by_endpoint.get(endpoint)
            if entry is None:
                continue
            for key, info in entry.models.items():
                index = by_digest.get(info.digest) if info.digest else None
                if index is None:
                    index = by_name.get(key)
                    if index is not None:
                        other = groups[index][0].digest
                        if other and info.digest and other != info.digest:
                            index = None  # same name, different weights: two models
                if index is None:
                    index = len(groups)
                    groups.append((info, []))
                    by_name.setdefault(key, index)
                    if info.digest:
                        by_digest.setdefault(info.digest, index)
                if endpoint not in groups[index][1]:
                    groups[index][1].append(endpoint)
        return groups

    # ------------------------------------------------------------------ routing

    def alias_targets(self, model: str) -> tuple[str, ...] | None:
        return self._aliases.get(model.lower())

    def route(
        self,
        model: str,
        healthy: Sequence[Endpoint],
        strategy: RoutingStrategyConfig,
        *,
        refreshed: bool = False,
        refresh_failed: bool = False,
    ) -> RoutingDecision:
        """Decide the candidates for ``model`` among ``healthy`` endpoints (§6.4, §6.5)."""
        targets = self.alias_targets(model)
        if targets is not None:
            rewrite: dict[Endpoint, str] = {}
            for target in targets:
                for endpoint in self.hosts(target):
                    if endpoint in healthy and endpoint not in rewrite:
                        rewrite[endpoint] = self.native_name(endpoint, target) or target
            if rewrite:
                chosen = tuple(ep for ep in healthy if ep in rewrite)
                return RoutingDecision(
                    "alias",
                    "routed",
                    f'alias "{model}" resolved to {len(chosen)} endpoint(s)',
                    chosen,
                    rewrite=rewrite,
                )
        hosts = self.hosts(model)
        on_healthy = tuple(ep for ep in healthy if ep in hosts)
        kind = strategy.type
        if on_healthy:
            reason = (
                "model_found_no_refresh"
                if kind == "discovery" and not refreshed
                else ("model_found")
            )
            return RoutingDecision(kind, "routed", reason, on_healthy)
        fallback = strategy.fallback_behavior
        everyone = tuple(healthy)
        if kind == "optimistic":
            if not hosts:
                if fallback == "all":
                    return RoutingDecision(
                        kind, "fallback", "model_not_found_fallback", tuple(healthy)
                    )
                return RoutingDecision(kind, "rejected", "model_not_found", status=404)
            if fallback == "all":
                return RoutingDecision(kind, "fallback", "all_healthy_fallback", everyone)
            reason = (
                "model_unavailable_no_fallback"
                if fallback == "none"
                else "model_unavailable_compatible_only"
            )
            return RoutingDecision(kind, "rejected", reason, status=503)
        if kind == "discovery":
            if refresh_failed:
                if fallback == "all":
                    return RoutingDecision(
                        kind, "fallback", "discovery_failed_all_fallback", tuple(healthy)
                    )
                suffix = "no_fallback" if fallback == "none" else "compatible_only"
                return RoutingDecision(kind, "rejected", f"discovery_failed_{suffix}", status=503)
            if not refreshed:
                return RoutingDecision(kind, "rejected", "model_unavailable_no_refresh", status=503)
            if not healthy:
                return RoutingDecision(kind, "rejected", "no_healthy_after_discovery", status=503)
            if fallback == "all":
                return RoutingDecision(
                    kind, "fallback", "all_healthy_after_discovery", tuple(healthy)
                )
            return RoutingDecision(
                kind, "rejected", "model_unavailable_after_discovery", status=503
            )
        if not hosts:
            return RoutingDecision("strict", "rejected", "model_not_found", status=404)
        return RoutingDecision("strict", "rejected", "model_unavailable", status=503)
