# -*- test-case-name: tests.test_profiles -*-
"""One profile YAML document -> a :class:`Profile`, every section of Olla's format.

Errors stop startup naming the file and the key path. A key olla does not read is a warning
with the file and key path; the free-text sections the Go original's profiles carry for their
readers (``features``, ``deployment``...) are notes: shown, never acted on, not a failure.

A user file laid over a built-in (:mod:`olla.profiles.overlay`) is read twice: alone with
``partial=True``, so its own mistakes name its own file (and it need not repeat what the
built-in has), then merged, for the profile olla runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from olla.config import ConfigError, SectionReader
from olla.config._base import Path_, format_path
from olla.profiles.expressions import compile_expression
from olla.profiles.spec import (
    AnthropicSupport,
    AuthHint,
    Characteristics,
    ConcurrencyLimit,
    ContextPattern,
    DetectionHints,
    FrozenMap,
    MetricsExtraction,
    ModelRules,
    ModelSize,
    Profile,
    RequestRules,
    ResourceDefaults,
    Resources,
    SlotConfiguration,
    TimeoutScaling,
)

T = TypeVar("T")


class ProfileError(ConfigError):
    """A profile file is broken; the message names the file and the key."""


#: Sections the Go original's profiles carry for people, not programs (it reads none of them)
DOCUMENTATION = ("features", "deployment", "security", "performance", "olla_integration")
#: What ``models.name_format`` may say: olla keeps names as the backend lists them
NAME_FORMAT = "{{.Name}}"
AUTH_TYPES = ("bearer", "api_key", "basic")
#: the figures ``metrics.extraction`` may name, and the calculations olla uses
FIGURES = (
    "model",
    "finish_reason",
    "is_complete",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "eval_duration_ns",
    "prompt_duration_ns",
    "total_duration_ns",
    "load_duration_ns",
    "generation_time_ms",
    "ttft_ms",
    "total_ms",
    "predicted_ms",
    "predicted_n",
    "predicted_per_second",
    "prompt_processing_ms",
    "prompt_tokens_per_second",
    "processing_time_ms",
    "total_time_ms",
    "radix_cache_hit_rate",
    "request_id",
    "created",
    "object_type",
)
CALCULATIONS = (
    "tokens_per_second",
    "ttft_ms",
    "total_ms",
    "model_load_ms",
    "is_complete",
    "is_cached",
    "new_tokens",
)


@dataclass
class Findings:
    """What reading profiles found that is worth telling but does not stop startup."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_profile(
    document: object, source: str, findings: Findings | None = None, *, partial: bool = False
) -> Profile:
    """A :class:`Profile` from one YAML document.

    Args:
        document: the decoded YAML.
        source: the file it came from, for every message.
        findings: collects warnings and notes (a fresh one when omitted).
        partial: an overlay: the keys a whole profile needs may be missing.

    Raises:
        ProfileError: naming ``source`` and the key.
    """
    findings = findings if findings is not None else Findings()
    warnings: list[str] = []
    try:
        profile = _Reader(SectionReader(document, (), warnings), findings, source, partial).read()
    except ConfigError as e:
        raise ProfileError(f"{source}: {e}") from None
    findings.warnings.extend(f"{source}: {w}" for w in warnings)
    return profile


class _Reader:
    def __init__(self, r: SectionReader, findings: Findings, source: str, partial: bool) -> None:
        self.r = r
        self.findings = findings
        self.source = source
        self.partial = partial

    def note(self, r: SectionReader, key: str, why: str) -> None:
        if key in r.data:
            r.raw(key)
            self.findings.notes.append(f"{self.source}: {format_path(r.at(key))}: {why}")

    def read(self) -> Profile:
        r = self.r
        name = r.text("name", "").strip()
        if not name:
            raise ConfigError("is required", ("name",))
        for key in DOCUMENTATION:
            self.note(r, key, "documentation only: olla (like the Go original) does not read it")
        routing = r.section("routing")
        prefixes = tuple(p.strip().lower() for p in routing.strings("prefixes", ()) if p.strip())
        routing.finish()
        if not prefixes and not self.partial:
            raise ConfigError("must list at least one prefix", ("routing", "prefixes"))
        api = r.section("api")
        paths = api.strings("paths", ())
        named = self.path_indices(r.section("path_indices"), paths)
        request = self.request(r.section("request"))
        profile = Profile(
            name=name,
            display_name=r.text("display_name", name),
            prefixes=prefixes,
            openai_compatible=api.flag("openai_compatible", False),
            paths=paths,
            health_check_path=api.text("health_check_path", named.get("health", "/")),
            model_discovery_path=api.text(
                "model_discovery_path", named.get("models", "/v1/models")
            ),
            response_format=request.response_format,
            anthropic=self.anthropic(api.section("anthropic_support")),
            sources=(self.source,),
            version=r.text("version", ""),
            description=r.text("description", ""),
            home=r.text("home", ""),
            characteristics=self.characteristics(r.section("characteristics")),
            detection=self.detection(r.section("detection")),
            models=self.models(r.section("models")),
            request=request,
            named_paths=FrozenMap(named.items()),
            resources=self.resources(r.section("resources")),
            metrics=self.metrics(r.section("metrics")),
        )
        api.finish()
        r.finish()
        return profile

    # ------------------------------------------------------------------ sections

    def anthropic(self, r: SectionReader) -> AnthropicSupport:
        result = AnthropicSupport(
            enabled=r.flag("enabled", False),
            messages_path=r.text("messages_path", "/v1/messages"),
            token_count=r.flag("token_count", False),
            min_version=r.text("min_version", "") or None,
            limitations=r.strings("limitations", ()),
        )
        r.finish()
        return result

    def path_indices(self, r: SectionReader, paths: tuple[str, ...]) -> dict[str, str]:
        """``purpose: index into api.paths`` (-1: none); out of range is an error."""
        named: dict[str, str] = {}
        for key in list(r.data):
            index = r.integer(str(key), -1, minimum=-1)
            if index < 0:
                continue
            if index >= len(paths):
                if self.partial and not paths:
                    continue  # the paths come from the profile this one is laid over
                raise ConfigError(
                    f"must be -1 or an index into api.paths (0-{len(paths) - 1}), got {index}",
                    r.at(str(key)),
                )
            named[str(key)] = paths[index]
        r.finish()
        return named

    def characteristics(self, r: SectionReader) -> Characteristics:
        auth_r = r.section("auth")
        types = auth_r.strings("types", ())
        for i, kind in enumerate(types):
            if kind not in AUTH_TYPES:
                raise ConfigError(
                    f"must be one of {', '.join(AUTH_TYPES)}, got {kind!r}",
                    (*auth_r.at("types"), i),
                )
        auth = AuthHint(
            required=auth_r.flag("required", False),
            types=types,
            default_header=auth_r.text("default_header", "").strip() or None,
        )
        auth_r.finish()
        timeout = r.duration("timeout", 0.0)
        if timeout < 0:
            raise ConfigError("must not be negative", r.at("timeout"))
        result = Characteristics(
            timeout=timeout,
            max_concurrent_requests=_optional(r, "max_concurrent_requests", r.integer, 1),
            default_priority=_optional(r, "default_priority", r.integer, 0),
            streaming_support=r.flag("streaming_support", True),
            single_model_server=r.flag("single_model_server", False),
            auth=auth,
        )
        r.finish()
        return result

    def detection(self, r: SectionReader) -> DetectionHints:
        ports = _ints(r, "default_ports", 1, 65535)
        result = DetectionHints(
            headers=(*r.strings("headers", ()), *r.strings("response_headers", ())),
            server_signatures=(
                *r.strings("server_signatures", ()),
                *r.strings("user_agent_patterns", ()),
            ),
            default_ports=ports,
            path_indicators=r.strings("path_indicators", ()),
        )
        r.finish()
        return result

    def models(self, r: SectionReader) -> ModelRules:
        name_format = r.text("name_format", NAME_FORMAT)
        if name_format != NAME_FORMAT:
            raise ConfigError(
                f"must be {NAME_FORMAT!r}: olla keeps model names as the backend lists them",
                r.at("name_format"),
            )
        caps_r = r.section("capability_patterns")
        capabilities: list[tuple[str, tuple[str, ...]]] = []
        for key in list(caps_r.data):
            capabilities.append((str(key).strip().lower(), caps_r.strings(str(key), ())))
        caps_r.finish()
        contexts: list[ContextPattern] = []
        for i, row in enumerate(_rows(r, "context_patterns")):
            row_r = SectionReader(row, (*r.at("context_patterns"), i), r.warnings)
            pattern = row_r.text("pattern", "").strip()
            if not pattern:
                raise ConfigError("is required", row_r.at("pattern"))
            contexts.append(ContextPattern(pattern, row_r.integer("context", 0, minimum=1)))
            row_r.finish()
        result = ModelRules(
            capability_patterns=FrozenMap(capabilities),
            context_patterns=tuple(contexts),
            provider_prefixes=r.strings("provider_prefixes", ()),
        )
        r.finish()
        return result

    def request(self, r: SectionReader) -> RequestRules:
        fields = list(r.strings("model_field_paths", ("model",)))
        rules = r.section("parsing_rules")
        model_paths: list[tuple[str, str]] = []
        for key in list(rules.data):
            if str(key).endswith("_path"):
                model_paths.append((str(key), rules.text(str(key), "")))
        field_name = rules.text("model_field_name", "").strip()
        if field_name and field_name not in fields:
            fields.append(field_name)
        for i, path in enumerate(fields):
            if not path.strip() or any(not part for part in path.split(".")):
                raise ConfigError(
                    f"must be a dotted JSON path like model, got {path!r}",
                    (*r.at("model_field_paths"), i),
                )
        result = RequestRules(
            model_field_paths=tuple(fields),
            response_format=r.text("response_format", "openai"),
            model_paths=FrozenMap(model_paths),
            supports_streaming=rules.flag("supports_streaming", True),
        )
        rules.finish()
        r.finish()
        return result

    def resources(self, r: SectionReader) -> Resources:
        sizes: list[ModelSize] = []
        for i, row in enumerate(_rows(r, "model_sizes")):
            row_r = SectionReader(row, (*r.at("model_sizes"), i), r.warnings)
            patterns = tuple(p.strip().lower() for p in row_r.strings("patterns", ()))
            if not patterns or not all(patterns):
                raise ConfigError("must list at least one size like 7b", row_r.at("patterns"))
            self.note(row_r, "notes", "documentation only")
            sizes.append(
                ModelSize(
                    patterns=patterns,
                    min_memory_gb=_number(row_r, "min_memory_gb"),
                    recommended_memory_gb=_number(row_r, "recommended_memory_gb"),
                    min_gpu_memory_gb=_number(row_r, "min_gpu_memory_gb"),
                    estimated_load_time_ms=row_r.integer("estimated_load_time_ms", 0, minimum=0),
                    max_concurrent=_optional(row_r, "max_concurrent", row_r.integer, 1),
                )
            )
            row_r.finish()
        quant_r = r.section("quantization")
        mult_r = quant_r.section("multipliers")
        multipliers = [
            (str(k).lower(), _number(mult_r, str(k), 1.0, positive=True)) for k in mult_r.data
        ]
        mult_r.finish()
        quant_r.finish()
        defaults_r = r.section("defaults")
        defaults = ResourceDefaults(
            min_memory_gb=_number(defaults_r, "min_memory_gb"),
            recommended_memory_gb=_number(defaults_r, "recommended_memory_gb"),
            min_gpu_memory_gb=_number(defaults_r, "min_gpu_memory_gb"),
            requires_gpu=defaults_r.flag("requires_gpu", False),
            estimated_load_time_ms=defaults_r.integer("estimated_load_time_ms", 0, minimum=0),
        )
        defaults_r.finish()
        limits: list[ConcurrencyLimit] = []
        for i, row in enumerate(_rows(r, "concurrency_limits")):
            row_r = SectionReader(row, (*r.at("concurrency_limits"), i), r.warnings)
            if not row_r.has("max_concurrent"):
                raise ConfigError("is required", row_r.at("max_concurrent"))
            limits.append(
                ConcurrencyLimit(
                    min_memory_gb=_number(row_r, "min_memory_gb"),
                    max_concurrent=row_r.integer("max_concurrent", 1, minimum=1),
                )
            )
            row_r.finish()
        scaling_r = r.section("timeout_scaling")
        scaling = TimeoutScaling(
            base_timeout_seconds=_number(scaling_r, "base_timeout_seconds"),
            load_time_buffer=scaling_r.flag("load_time_buffer", False),
            per_token_timeout_ms=_number(scaling_r, "per_token_timeout_ms"),
        )
        scaling_r.finish()
        slots_r = r.section("slot_configuration")
        slots = SlotConfiguration(
            default_slots=_optional(slots_r, "default_slots", slots_r.integer, 1),
            max_slots=_optional(slots_r, "max_slots", slots_r.integer, 1),
        )
        if slots.default_slots and slots.max_slots and slots.default_slots > slots.max_slots:
            raise ConfigError(
                f"must not be above max_slots ({slots.max_slots})", slots_r.at("default_slots")
            )
        slots_r.finish()
        result = Resources(
            model_sizes=tuple(sizes),
            quantization=FrozenMap(multipliers),
            defaults=defaults,
            concurrency_limits=tuple(limits),
            timeout_scaling=scaling,
            slots=slots,
        )
        r.finish()
        return result

    def metrics(self, r: SectionReader) -> MetricsExtraction:
        ex = r.section("extraction")
        source = ex.text("source", "response_body")
        if source != "response_body":
            raise ConfigError(
                f"must be response_body (olla reads figures from the answer), got {source!r}",
                ex.at("source"),
            )
        fmt = ex.text("format", "json")
        if fmt != "json":
            raise ConfigError(f"must be json, got {fmt!r}", ex.at("format"))
        paths = _named_texts(
            ex.section("paths"), _check_jsonpath, FIGURES, "a figure olla does not know"
        )
        calculations = _named_texts(
            ex.section("calculations"),
            compile_expression,
            CALCULATIONS,
            "a calculation olla does not use",
        )
        result = MetricsExtraction(
            enabled=ex.flag("enabled", True),
            paths=FrozenMap(paths),
            calculations=FrozenMap(calculations),
        )
        ex.finish()
        r.finish()
        return result


def _named_texts(
    r: SectionReader, check: Callable[[str], object], known: Collection[str], unknown: str
) -> list[tuple[str, str]]:
    """A map of names to texts (``metrics.extraction.paths`` / ``calculations``): each text
    ``check``ed (a ``ValueError`` it raises, an ``ExpressionError`` too, is a ``ConfigError``
    at its key), a name not ``known`` warned about and ignored."""
    entries: list[tuple[str, str]] = []
    for key in map(str, list(r.data)):
        text = r.text(key, "")
        try:
            check(text)
        except ValueError as e:
            raise ConfigError(str(e), r.at(key)) from None
        if key not in known:
            r.warnings.append(f"{format_path(r.at(key))}: {unknown}, ignored")
            continue
        entries.append((key, text))
    r.finish()
    return entries


def _check_jsonpath(text: str) -> None:
    if not text.startswith("$."):
        raise ValueError("must be a JSONPath like $.usage.prompt_tokens")


# ---------------------------------------------------------------------- value readers


def _optional(
    r: SectionReader, key: str, read: Callable[[str, int, int], int], minimum: int
) -> int | None:
    if not r.has(key):
        r.raw(key)
        return None
    return read(key, minimum, minimum)


def _number(r: SectionReader, key: str, default: float = 0.0, *, positive: bool = False) -> float:
    """A number of 0 or more (GB, seconds, milliseconds), or above 0 when ``positive``."""
    value = r.raw(key)
    if value is None:
        return default
    path: Path_ = r.at(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, got {value!r}", path)
    if positive and value <= 0:
        raise ConfigError(f"must be above 0, got {value}", path)
    if value < 0:
        raise ConfigError(f"must be at least 0, got {value}", path)
    return float(value)


def _ints(r: SectionReader, key: str, low: int, high: int) -> tuple[int, ...]:
    value = r.raw(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"must be a list of integers, got {value!r}", r.at(key))
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ConfigError(
                f"must be an integer from {low} to {high}, got {item!r}", (*r.at(key), i)
            )
    return tuple(value)


def _rows(r: SectionReader, key: str) -> list[Any]:
    value = r.raw(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"must be a list, got {type(value).__name__}", r.at(key))
    return value
