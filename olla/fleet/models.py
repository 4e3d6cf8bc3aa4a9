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

from zope.interface import implementer

from olla.config import FilterConfig, OllaConfig, RoutingStrategyConfig
from olla.fleet.endpoints import Endpoint
from olla.fleet.values import ModelInfo
from olla.interfaces import IReconfigurable
from olla.profiles.patterns import BackendFacts, capabilities, context_length, model_kind
from olla.profiles.sizing import Sizing, size_model

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


_FAMILY = re.compile(r"^(?:[\w.-]+/)?([a-z]+(?:-[a-z]+)*?)-?(\d+(?:\.\d+)?)?(?=[:\-_.]|$)")


def family_and_variant(name: str) -> tuple[str, str | None]:
    """``llama3.2:latest`` -> (``llama``, ``3.2``); ``phi4`` -> (``phi``, ``4``)."""
    match = _FAMILY.match(name.lower())
    if match is None or not match.group(1):
        return "unknown", None
    return match.group(1), match.group(2)


def name_variants(name: str) -> tuple[str, ...]:
    """The other spellings Ollama accepts for ``name`` (lower-cased), most likely first:
    ``library/llama3.2:latest`` and ``llama3.2`` both mean ``llama3.2:latest``."""
    lowered = name.lower()
    bare = lowered.removeprefix("registry.ollama.ai/").removeprefix("library/")
    tagged = bare if ":" in bare.rsplit("/", 1)[-1] else f"{bare}:latest"
    return tuple(v for v in dict.fromkeys((bare, tagged)) if v != lowered)


def canonical_name(name: str) -> str:
    """One key for all of a model's Ollama spellings (``llama3.2:latest``)."""
    variants = name_variants(name)
    return variants[-1] if variants else name.lower()


@dataclass(frozen=True)
class ModelFacts:
    """What olla tells about one model: its kind, what it can do, its context window."""

    kind: str  # llm | vlm | embeddings
    capabilities: tuple[str, ...]
    context_length: int | None


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
    #: lower-cased name -> its size class on this endpoint's platform (reset with the list)
    sizes: dict[str, Sizing] = field(default_factory=dict)

    def key(self, name: str) -> str:
        """The listed key ``name`` means here: itself, else an Ollama spelling of it."""
        lowered = name.lower()
        if lowered in self.models:
            return lowered
        return next((v for v in name_variants(lowered) if v in self.models), lowered)


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


@implementer(IReconfigurable)
class ModelCatalogue:
    """Per-endpoint model lists and loaded sets, with the merged views built on demand."""

    reconfigures = ("model_aliases", "model_registry.enable_unifier")

    def __init__(self, aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        self._by_endpoint: dict[Endpoint, _EndpointModels] = {}
        self._aliases = {k.lower(): tuple(v) for k, v in (aliases or {}).items()}
        self._load_times: dict[str, float] = {}
        #: (canonical name, digest) -> what the backend said about the model (``/api/show``)
        self._shown: dict[tuple[str, str], BackendFacts] = {}
        #: ``model_registry.enable_unifier``: one entry per model across endpoints (else one
        #: per endpoint and model in the merged views)
        self.unify = True

    # ------------------------------------------------------------------ writes (discovery)

    def set_aliases(self, aliases: Mapping[str, Sequence[str]]) -> None:
        """``model_aliases`` after a reload: requests routed from now on use these."""
        self._aliases = {k.lower(): tuple(v) for k, v in aliases.items()}

    def reconfigure(self, config: OllaConfig) -> None:
        """At startup and after a reload: the aliases (``model_aliases``), for new requests,
        and whether the merged views unify models across endpoints (``enable_unifier``)."""
        self.set_aliases(config.model_aliases)
        self.unify = config.model_registry.enable_unifier

    def adopt(self, endpoint: Endpoint, previous: Endpoint) -> None:
        """``endpoint`` replaces ``previous`` (a reload changed its config, not its
        address): it starts with what was known about ``previous``'s models."""
        entry = self._by_endpoint.get(previous)
        if entry is not None:
            self._by_endpoint[endpoint] = replace(
                entry, models=dict(entry.models), loaded=set(entry.loaded), loading={}, sizes={}
            )

    def forget(self, endpoint: Endpoint) -> None:
        """``endpoint`` is gone (removed by a reload, its last request done)."""
        self._by_endpoint.pop(endpoint, None)

    def model_removed(self, endpoint: Endpoint, name: str) -> None:
        """``name`` was deleted from ``endpoint`` (model management): out of its list, its
        loaded set and its loads under way; the learnt load time goes once no endpoint lists
        the model, so warm routing starts afresh for a model of that name pulled later."""
        entry = self._by_endpoint.get(endpoint)
        if entry is not None:
            key = entry.key(name)
            entry.models.pop(key, None)
            entry.loaded.discard(key)
            entry.loading.pop(key, None)
            entry.sizes.pop(key, None)
            entry.running = tuple(
                row for row in entry.running if str(row.get("name", "")).lower() != key
            )
        if not self.hosts(name):
            self._load_times.pop(canonical_name(name), None)

    def set_models(self, endpoint: Endpoint, models: Iterable[ModelInfo], now: float) -> None:
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.models = {m.name.lower(): m for m in models}
        entry.sizes = {}
        entry.synced_at = now
        self._prune_shown()

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
        for name in list(entry.loading):
            if entry.key(name) in entry.loaded or name in entry.loaded:
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
        key = entry.key(name)
        entry.loaded.add(key)
        entry.loading.pop(key, None)

    def mark_loading(self, endpoint: Endpoint, name: str, now: float) -> None:
        """A request for ``name`` went to ``endpoint`` where it is not loaded: the load is
        under way, so the next request for it there waits only for the rest of it."""
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        entry.loading.setdefault(entry.key(name), now)

    def resident(self, endpoint: Endpoint) -> set[str]:
        """What takes memory on ``endpoint``: the models it has loaded, and those olla sent it
        while they were not (their load is under way)."""
        entry = self._by_endpoint.get(endpoint)
        return entry.loaded | entry.loading.keys() if entry else set()

    def loading_since(self, endpoint: Endpoint, name: str) -> float | None:
        entry = self._by_endpoint.get(endpoint)
        return entry.loading.get(entry.key(name)) if entry else None

    def load_failed(self, endpoint: Endpoint, name: str) -> None:
        """The request that was loading ``name`` on ``endpoint`` got no answer."""
        entry = self._by_endpoint.get(endpoint)
        if entry is not None:
            entry.loading.pop(entry.key(name), None)

    def observe_load(self, name: str, seconds: float) -> None:
        """A backend took ``seconds`` to load ``name`` (Ollama's ``load_duration``)."""
        key = canonical_name(name)
        known = self._load_times.get(key)
        self._load_times[key] = seconds if known is None else known + 0.3 * (seconds - known)

    def learned_load_time(self, name: str) -> float | None:
        """What loading ``name`` took lately (Ollama's ``load_duration``), if seen."""
        return self._load_times.get(canonical_name(name))

    def expected_load(self, endpoint: Endpoint, name: str, default: float) -> float:
        """The expected time to load ``name`` on ``endpoint`` when it is not in memory there:
        what it took lately, else its size class's ``estimated_load_time_ms`` on that
        platform (``resources.model_sizes``, else ``resources.defaults``), else ``default``."""
        learned = self.learned_load_time(name)
        if learned is not None:
            return learned
        sizing = self.sizing(endpoint, name)
        if sizing is not None and sizing.load_seconds is not None:
            return sizing.load_seconds
        return default

    def set_shown(self, info: ModelInfo, facts: BackendFacts) -> None:
        """What the backend said about ``info`` itself (Ollama's ``/api/show``)."""
        self._shown[(canonical_name(info.name), info.digest or "")] = facts

    def shown(self, info: ModelInfo) -> BackendFacts | None:
        return self._shown.get((canonical_name(info.name), info.digest or ""))

    def _prune_shown(self) -> None:
        """Forget what was shown about models no endpoint lists any more."""
        listed = {
            (canonical_name(info.name), info.digest or "")
            for entry in self._by_endpoint.values()
            for info in entry.models.values()
        }
        for key in [k for k in self._shown if k not in listed]:
            del self._shown[key]

    # ------------------------------------------------------------------ what a model is

    def info(self, endpoint: Endpoint, name: str) -> ModelInfo | None:
        """``name`` as ``endpoint`` listed it (any Ollama spelling of it)."""
        entry = self._by_endpoint.get(endpoint)
        return entry.models.get(entry.key(name)) if entry else None

    def sizing(self, endpoint: Endpoint, name: str) -> Sizing | None:
        """``name``'s size class on ``endpoint``'s platform (None: no profile yet)."""
        profile = endpoint.profile
        if profile is None:
            return None
        entry = self._by_endpoint.setdefault(endpoint, _EndpointModels())
        key = entry.key(name)
        found = entry.sizes.get(key)
        if found is None:
            info = entry.models.get(key)
            found = size_model(
                profile.resources,
                profile.characteristics,
                info.name if info else name,
                info.parameter_size if info else None,
                info.quantization if info else None,
            )
            entry.sizes[key] = found
        return found

    def cap_for(self, endpoint: Endpoint, model: str) -> int | None:
        """How many requests for ``model`` ``endpoint`` runs at once by its profile: the size
        class's ``max_concurrent``, else ``resources.concurrency_limits`` by the memory the
        model needs, else ``characteristics.max_concurrent_requests`` (None: no cap). The
        endpoint's own ``max_concurrency`` is separate; the stricter of the two holds."""
        sizing = self.sizing(endpoint, model)
        return sizing.max_concurrent if sizing is not None else None

    def facts(self, info: ModelInfo, hosts: Sequence[Endpoint]) -> ModelFacts:
        """Kind, capabilities and context of ``info``: the backend's own word where it gave
        one, else its hosts' profile patterns."""
        rules = list(dict.fromkeys(ep.profile.models for ep in hosts if ep.profile is not None))
        backend = self.shown(info) or BackendFacts(context_length=info.context_length)
        if backend.context_length is None and info.context_length:
            backend = BackendFacts(backend.capabilities, info.context_length)
        caps = capabilities(info.name, rules, backend)
        streams = [ep.profile for ep in hosts if ep.profile is not None]
        if streams and all(
            p.characteristics.streaming_support and p.request.supports_streaming for p in streams
        ):
            caps.append("streaming")
        return ModelFacts(
            kind=model_kind(info.name, rules, backend),
            capabilities=tuple(caps),
            context_length=context_length(info.name, rules, backend),
        )

    def capabilities_of(self, endpoint: Endpoint, info: ModelInfo) -> frozenset[str]:
        """What ``info`` can do as ``endpoint`` serves it."""
        return frozenset(self.facts(info, [endpoint]).capabilities)

    # ------------------------------------------------------------------ reads

    def models_of(self, endpoint: Endpoint) -> list[ModelInfo]:
        entry = self._by_endpoint.get(endpoint)
        return list(entry.models.values()) if entry else []

    def loaded_on(self, endpoint: Endpoint) -> set[str]:
        entry = self._by_endpoint.get(endpoint)
        return set(entry.loaded) if entry else set()

    def in_memory(self, endpoint: Endpoint, name: str) -> bool:
        """Whether ``endpoint`` is known to hold ``name`` in memory now: it said so, or it is a
        single-model server (``characteristics.single_model_server``)."""
        profile = endpoint.profile
        if profile is not None and profile.characteristics.single_model_server:
            return self.info(endpoint, name) is not None
        entry = self._by_endpoint.get(endpoint)
        return entry is not None and entry.key(name) in entry.loaded

    def warm(self, endpoint: Endpoint, name: str) -> bool:
        """Whether ``name`` is in memory on ``endpoint``. A backend that never says what it
        has loaded (vLLM, llama.cpp...) serves what it lists without loading: warm."""
        entry = self._by_endpoint.get(endpoint)
        if entry is None or not entry.reports_loaded:
            return True
        profile = endpoint.profile
        if profile is not None and profile.characteristics.single_model_server:
            return True
        return entry.key(name) in entry.loaded

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
        return [ep for ep, entry in self._by_endpoint.items() if entry.key(name) in entry.models]

    def native_name(self, endpoint: Endpoint, name: str) -> str | None:
        info = self.info(endpoint, name)
        return info.name if info else None

    def merged(self, endpoints: Iterable[Endpoint]) -> list[tuple[ModelInfo, list[Endpoint]]]:
        """Each model once across ``endpoints`` (same name without conflicting digests, else
        same digest on another endpoint), with its hosts; with the unifier off, each endpoint's
        models apart."""
        if not self.unify:
            return [
                (info, [endpoint])
                for endpoint in endpoints
                if (entry := self._by_endpoint.get(endpoint)) is not None
                for info in entry.models.values()
            ]
        groups: list[tuple[ModelInfo, list[Endpoint]]] = []
        by_digest: dict[str, int] = {}
        by_name: dict[str, int] = {}
        for endpoint in endpoints:
            entry = self._by_endpoint.get(endpoint)
            if entry is None:
                continue
            for key, info in entry.models.items():
                index = by_name.get(key)
                if index is not None:
                    other = groups[index][0].digest
                    if other and info.digest and other != info.digest:
                        index = None  # same name, different weights: two models
                if index is None and info.digest:
                    # the same weights under another name elsewhere are one model; two names
                    # on one endpoint are two (an ``ollama cp`` is listed under both)
                    same = by_digest.get(info.digest)
                    if same is not None and endpoint not in groups[same][1]:
                        index = same
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

    def aliases_of(self, name: str) -> set[str]:
        """The configured aliases (``model_aliases``) that name ``name`` among their models."""
        key = canonical_name(name)
        return {
            alias
            for alias, targets in self._aliases.items()
            if any(canonical_name(t) == key for t in targets)
        }

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
