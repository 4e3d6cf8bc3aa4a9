# -*- test-case-name: tests.test_models -*-
"""``/olla/models`` and the cross-provider ``/v1/models`` lists, answered from the catalogue."""

from __future__ import annotations

from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from olla.fleet.endpoints import EndpointRegistry
from olla.fleet.listings import (
    lmstudio_models,
    model_detail,
    ollama_tags,
    openai_models,
    unified_models,
)
from olla.fleet.models import ModelCatalogue
from olla.util.errors import Dialect, error_body
from olla.util.responses import json_response

#: the formats of §1.3; the OpenAI-shaped servers' lists are OpenAI lists
FORMATS = (
    "unified",
    "openai",
    "ollama",
    "lmstudio",
    "lemonade",
    "lmdeploy",
    "sglang",
    "vllm",
    "vllm-mlx",
    "llamacpp",
    "docker-model-runner",
)
CAPABILITY_TYPES = {
    "vision": "vlm",
    "multimodal": "vlm",
    "embedding": "embeddings",
    "embeddings": "embeddings",
    "vector_search": "embeddings",
    "chat": "llm",
    "text_generation": "llm",
    "completion": "llm",
}


def _answer(request: Request, status: int, payload: object) -> bytes:
    return json_response(request, payload, status)


class _CatalogueResource(Resource):
    """A leaf that answers from the live catalogue."""

    isLeaf = True

    def __init__(
        self, registry: EndpointRegistry, catalogue: ModelCatalogue, clock: IReactorTime
    ) -> None:
        super().__init__()
        self._registry = registry
        self._catalogue = catalogue
        self._clock = clock


class ModelsResource(_CatalogueResource):
    """``/olla/models[?format=&endpoint=&family=&available=]`` and ``/olla/models/{id}``."""

    def render(self, request: Request) -> bytes:
        args = {
            k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace")
            for k, v in (request.args or {}).items()
        }
        everywhere = args.get("include_unavailable") == "true"
        endpoints = list(self._registry) if everywhere else self._registry.routable()
        if args.get("endpoint"):
            endpoints = [ep for ep in endpoints if ep.name == args["endpoint"]]
        assert request.postpath is not None
        model_id = unquote(b"/".join(request.postpath).decode("utf-8", "replace")).strip("/")
        if model_id:
            detail = model_detail(self._catalogue, endpoints, model_id)
            if detail is None:
                body = error_body(Dialect.OPENAI, 404, f"model {model_id!r} not found")
                return _answer(request, 404, body)
            return _answer(request, 200, detail)
        fmt = args.get("format", "unified")
        if fmt not in FORMATS:
            message = f"invalid query parameter format={fmt} (one of {', '.join(FORMATS)})"
            return _answer(request, 400, error_body(Dialect.OPENAI, 400, message))
        if fmt == "ollama":
            return _answer(request, 200, ollama_tags(self._catalogue, endpoints))
        if fmt == "lmstudio":
            return _answer(request, 200, lmstudio_models(self._catalogue, endpoints))
        if fmt != "unified":
            return _answer(request, 200, openai_models(self._catalogue, endpoints, self._now()))
        payload = unified_models(self._catalogue, endpoints, self._now())
        family = args.get("family")
        if family:
            payload["data"] = [m for m in payload["data"] if m["olla"]["family"] == family]
        kind = args.get("type")
        capability = args.get("capability")
        if capability is not None:
            kind = CAPABILITY_TYPES.get(capability)
            if kind is None:
                message = f"invalid query parameter capability={capability}"
                return _answer(request, 400, error_body(Dialect.OPENAI, 400, message))
        if kind is not None:
            if kind not in ("llm", "vlm", "embeddings"):
                message = f"invalid query parameter type={kind} (llm, vlm or embeddings)"
                return _answer(request, 400, error_body(Dialect.OPENAI, 400, message))
            payload["data"] = [m for m in payload["data"] if m["olla"]["type"] == kind]
        available = args.get("available")
        if available is not None:
            if available not in ("true", "false"):
                message = f"invalid query parameter available={available}"
                return _answer(request, 400, error_body(Dialect.OPENAI, 400, message))
            want = available == "true"
            payload["data"] = [
                m
                for m in payload["data"]
                if any(a["state"] == "loaded" for a in m["olla"]["availability"]) is want
            ]
        return _answer(request, 200, payload)

    def _now(self) -> float:
        return self._clock.seconds()
