# -*- test-case-name: tests.test_models -*-
"""Model-list parsers: one ``IModelSource`` per profile ``response_format``, and Ollama's
loaded-model list. Pure: documents in, ``ModelInfo`` out. Discovery and platform detection
both read lists through these.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from olla.fleet.endpoints import Endpoint
from olla.fleet.models import normalise_quantization
from olla.fleet.values import ModelInfo
from olla.interfaces import IModelSource
from olla.profiles.patterns import BackendFacts

#: the largest model list olla reads
BODY_LIMIT = 10 * 1024 * 1024


class DiscoveryError(Exception):
    """A model list could not be fetched or understood."""


def parse_ollama_tags(document: Any) -> list[ModelInfo]:
    """``GET /api/tags``: ``{"models": [{"name", "size", "digest", "details": {...}}]}``."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise DiscoveryError("not an Ollama model list (no 'models' array)")
    out = []
    for item in document["models"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        raw_details = item.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        out.append(
            ModelInfo(
                name=item["name"],
                size=item.get("size") if isinstance(item.get("size"), int) else None,
                digest=item.get("digest") if isinstance(item.get("digest"), str) else None,
                family=details.get("family"),
                parameter_size=details.get("parameter_size"),
                quantization=normalise_quantization(details.get("quantization_level")),
                format=details.get("format"),
                modified_at=item.get("modified_at"),
                native=item,
            )
        )
    return out


def parse_openai_models(document: Any) -> list[ModelInfo]:
    """``GET /v1/models``: ``{"data": [{"id": ...}]}`` (``data: null`` is an empty list).

    The servers that copy OpenAI's shape add fields of their own; the ones that help are read:
    LM Studio's ``quantization`` and ``arch``, vLLM/SGLang's ``max_model_len`` (as
    ``context``), llama.cpp's ``models[].details``.
    """
    if not isinstance(document, dict) or "data" not in document:
        raise DiscoveryError("not an OpenAI model list (no 'data')")
    items = document["data"] or []
    if not isinstance(items, list):
        raise DiscoveryError("'data' is not a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        quantization = item.get("quantization")
        context = item.get("max_model_len")
        out.append(
            ModelInfo(
                name=item["id"],
                family=item.get("arch") if isinstance(item.get("arch"), str) else None,
                quantization=normalise_quantization(quantization)
                if isinstance(quantization, str)
                else None,
                format=item.get("compatibility_type")
                if isinstance(item.get("compatibility_type"), str)
                else None,
                context_length=context
                if isinstance(context, int) and not isinstance(context, bool) and context > 0
                else None,
            )
        )
    return out


def parse_loaded_from_list(document: Any) -> list[str]:
    """LM Studio's ``/api/v0/models`` says which models are loaded (``state``)."""
    items = document.get("data") if isinstance(document, dict) else None
    return [
        item["id"]
        for item in items or []
        if isinstance(item, dict) and item.get("state") == "loaded" and "id" in item
    ]


def parse_ollama_ps(document: Any) -> list[dict[str, Any]]:
    """``GET /api/ps``: the rows of the models loaded now, as the backend sent them."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise DiscoveryError("not an Ollama process list")
    return [m for m in document["models"] if isinstance(m, dict) and isinstance(m.get("name"), str)]


def parse_ollama_show(document: Any) -> BackendFacts:
    """``POST /api/show``: what the model says it can do (``capabilities``, newer Ollama) and
    its context window (``model_info["<arch>.context_length"]``); either may be missing."""
    if not isinstance(document, dict):
        raise DiscoveryError("not an Ollama model description")
    raw_caps = document.get("capabilities")
    caps: tuple[str, ...] | None = None
    if isinstance(raw_caps, list):
        caps = tuple(c.lower() for c in raw_caps if isinstance(c, str) and c)
    info = document.get("model_info")
    context: int | None = None
    if isinstance(info, dict):
        arch = info.get("general.architecture")
        keys = [f"{arch}.context_length"] if isinstance(arch, str) else []
        keys += [k for k in info if isinstance(k, str) and k.endswith(".context_length")]
        for key in keys:
            value = info.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                context = value
                break
    return BackendFacts(capabilities=caps, context_length=context)


@implementer(IModelSource)
class OllamaModelSource:
    response_format = "ollama"

    def parse(self, document: object) -> list[ModelInfo]:
        return parse_ollama_tags(document)


@implementer(IModelSource)
class OpenAIModelSource:
    """``{"data": [{"id": ...}]}`` lists: OpenAI's, and every server that copies its shape
    (vLLM, SGLang, llama.cpp, LM Studio's ``/api/v0``, Lemonade, LMDeploy, Docker Model
    Runner); their extra fields are not needed to route."""

    def __init__(self, response_format: str = "openai") -> None:
        self.response_format = response_format

    def parse(self, document: object) -> list[ModelInfo]:
        return parse_openai_models(document)


#: response_format -> parser
MODEL_SOURCES: dict[str, IModelSource] = {
    "ollama": OllamaModelSource(),
    **{
        name: OpenAIModelSource(name)
        for name in (
            "openai",
            "lmstudio",
            "vllm",
            "vllm-mlx",
            "sglang",
            "llamacpp",
            "lemonade",
            "lmdeploy",
            "docker-model-runner",
        )
    },
}


def source_for(endpoint: Endpoint) -> IModelSource:
    """The parser for an endpoint's model list (unknown formats read as OpenAI's)."""
    return MODEL_SOURCES.get(endpoint.response_format, MODEL_SOURCES["openai"])
