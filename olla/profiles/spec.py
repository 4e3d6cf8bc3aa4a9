# -*- test-case-name: tests.test_profiles -*-
"""A backend profile as typed data: one frozen dataclass per section of Olla's profile YAML.

Every field is read by :mod:`olla.profiles.parse` and has an effect somewhere in olla;
``docs/CONFIG_KEYS.md`` says which. Nothing here does I/O or knows about endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from zope.interface import implementer

from olla.interfaces import IProfile

V = TypeVar("V")


class FrozenMap(Mapping[str, V], Generic[V]):
    """A read-only, hashable mapping that keeps the order it was written in (profiles are
    frozen dataclasses, compared and hashed whole)."""

    def __init__(self, items: Iterable[tuple[str, V]] = ()) -> None:
        self._items = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


@dataclass(frozen=True)
class AnthropicSupport:
    """``api.anthropic_support``: whether the platform takes Messages requests as they are."""

    enabled: bool = False
    messages_path: str = "/v1/messages"
    token_count: bool = False
    min_version: str | None = None
    limitations: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthHint:
    """``characteristics.auth``: what the platform expects; checked against each endpoint."""

    required: bool = False
    types: tuple[str, ...] = ()
    #: the header an ``api_key`` credential goes in when the endpoint names none
    default_header: str | None = None


@dataclass(frozen=True)
class Characteristics:
    """``characteristics``: how the platform behaves."""

    #: the platform's bound on a whole response (0: only ``proxy.response_timeout``)
    timeout: float = 0.0
    #: requests of one model a host of this platform runs at once when no
    #: ``resources.concurrency_limits`` row applies (None: no platform cap)
    max_concurrent_requests: int | None = None
    #: an endpoint's priority when its config sets none
    default_priority: int | None = None
    #: whether answers stream (with ``request.parsing_rules.supports_streaming``: the
    #: ``streaming`` capability of its models)
    streaming_support: bool = True
    #: one model per server: what it lists is always in memory
    single_model_server: bool = False
    auth: AuthHint = field(default_factory=AuthHint)


@dataclass(frozen=True)
class DetectionHints:
    """``detection``: how ``type: auto`` tells this platform apart."""

    #: response header names (``X-Ollama-Version``) or ``Name: value`` pairs that mark it
    headers: tuple[str, ...] = ()
    #: substrings of a ``Server`` response header that mark it
    server_signatures: tuple[str, ...] = ()
    #: ports it listens on by default: tried first for an endpoint on one of them
    default_ports: tuple[int, ...] = ()
    #: paths only this platform serves (shown; detection reads model lists)
    path_indicators: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContextPattern:
    pattern: str
    context: int


@dataclass(frozen=True)
class ModelRules:
    """``models``: what a model can do, from its name."""

    #: capability -> name globs (``vision``, ``embeddings``, ``code``, ``chat``...)
    capability_patterns: FrozenMap[tuple[str, ...]] = field(default_factory=FrozenMap)
    #: the first matching glob gives the context window
    context_patterns: tuple[ContextPattern, ...] = ()
    #: prefixes a router puts before the model's own name (``openai/``): ignored when matching
    provider_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestRules:
    """``request``: how a request names its model, and which paths generate."""

    #: dotted JSON paths in the body that name the model, tried in order
    model_field_paths: tuple[str, ...] = ("model",)
    #: which model-list parser reads its model list
    response_format: str = "openai"
    #: ``parsing_rules.*_path``: the paths that run the model (name -> path); their answers
    #: tell how long the model took to load
    model_paths: FrozenMap[str] = field(default_factory=FrozenMap)
    supports_streaming: bool = True


@dataclass(frozen=True)
class ModelSize:
    """One ``resources.model_sizes`` row: a size class."""

    patterns: tuple[str, ...]
    min_memory_gb: float = 0.0
    recommended_memory_gb: float = 0.0
    min_gpu_memory_gb: float = 0.0
    estimated_load_time_ms: int = 0
    #: requests of a model of this class a host runs at once (beats ``concurrency_limits``)
    max_concurrent: int | None = None


@dataclass(frozen=True)
class ResourceDefaults:
    """``resources.defaults``: the class of a model no ``model_sizes`` row matches."""

    min_memory_gb: float = 0.0
    recommended_memory_gb: float = 0.0
    min_gpu_memory_gb: float = 0.0
    requires_gpu: bool = False
    estimated_load_time_ms: int = 0


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A model needing at least ``min_memory_gb`` runs at most ``max_concurrent`` at once."""

    min_memory_gb: float
    max_concurrent: int


@dataclass(frozen=True)
class TimeoutScaling:
    """``resources.timeout_scaling``: the wait for an answer's headers from a cold host."""

    base_timeout_seconds: float = 0.0
    #: add the model's expected load time to the wait
    load_time_buffer: bool = False
    #: add this per prompt token (estimated from the body's size) to the wait
    per_token_timeout_ms: float = 0.0


@dataclass(frozen=True)
class SlotConfiguration:
    """``resources.slot_configuration``: parallel slots of a platform that has them."""

    #: an endpoint's ``max_concurrency`` when its config sets none
    default_slots: int | None = None
    #: the most ``max_concurrency`` may be
    max_slots: int | None = None


@dataclass(frozen=True)
class Resources:
    """``resources``: model sizes, their memory, load time and concurrency."""

    model_sizes: tuple[ModelSize, ...] = ()
    #: quantization tag (``q4``, ``4bit``, ``f16``) -> memory multiplier
    quantization: FrozenMap[float] = field(default_factory=FrozenMap)
    defaults: ResourceDefaults = field(default_factory=ResourceDefaults)
    #: most restrictive first, as written
    concurrency_limits: tuple[ConcurrencyLimit, ...] = ()
    timeout_scaling: TimeoutScaling = field(default_factory=TimeoutScaling)
    slots: SlotConfiguration = field(default_factory=SlotConfiguration)


@dataclass(frozen=True)
class MetricsExtraction:
    """``metrics.extraction``: the figures an answer's last bytes carry, and sums over them
    (``enabled: false``: none; no paths: where each API dialect puts them)."""

    enabled: bool = True
    #: figure name (``input_tokens``, ``load_duration_ns``...) -> JSONPath (``$.eval_count``)
    paths: FrozenMap[str] = field(default_factory=FrozenMap)
    #: figure name (``tokens_per_second``...) -> expression over the figures
    calculations: FrozenMap[str] = field(default_factory=FrozenMap)


@implementer(IProfile)
@dataclass(frozen=True)
class Profile:
    """One platform: its routes, paths, checks, and what it is known to do."""

    name: str
    display_name: str
    prefixes: tuple[str, ...]
    openai_compatible: bool
    paths: tuple[str, ...]
    health_check_path: str
    model_discovery_path: str
    response_format: str
    anthropic: AnthropicSupport = field(default_factory=AnthropicSupport)
    #: the files this profile came from: a built-in, then the user files laid over it
    sources: tuple[str, ...] = ("built-in",)
    version: str = ""
    description: str = ""
    home: str = ""
    characteristics: Characteristics = field(default_factory=Characteristics)
    detection: DetectionHints = field(default_factory=DetectionHints)
    models: ModelRules = field(default_factory=ModelRules)
    request: RequestRules = field(default_factory=RequestRules)
    #: purpose (``health``, ``chat_completions``...) -> path, from ``path_indices``
    named_paths: FrozenMap[str] = field(default_factory=FrozenMap)
    resources: Resources = field(default_factory=Resources)
    metrics: MetricsExtraction = field(default_factory=MetricsExtraction)

    @property
    def source(self) -> str:
        """Where it came from, for messages: ``built-in ollama.yaml + profiles/mine.yaml``."""
        return " + ".join(self.sources)

    @property
    def customised(self) -> bool:
        """Whether a user file made or changed it (not a built-in as shipped)."""
        return len(self.sources) > 1 or not self.sources[0].startswith("built-in")

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of this platform's API paths (exactly, or ends with one)."""
        clean = path.split("?", 1)[0].rstrip("/") or "/"
        return any(clean == p or (p != "/" and clean.endswith(p)) for p in self.paths)

    def runs_model(self, path: str) -> bool:
        """Whether ``path`` is one of the paths that run the model (``request.parsing_rules``)."""
        clean = path.split("?", 1)[0].rstrip("/")
        return any(clean.endswith(p) for p in self.request.model_paths.values() if p)
