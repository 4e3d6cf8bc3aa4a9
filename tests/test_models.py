"""The model catalogue, routing decisions, parsers and listings (pure, no I/O)."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from olla.config import EndpointConfig, FilterConfig, RoutingStrategyConfig
from olla.fleet.endpoints import endpoints_from_config
from olla.fleet.listings import ollama_tags, openai_models
from olla.fleet.models import (
    ModelCatalogue,
    ModelInfo,
    denormalise_quantization,
    matches_filter,
    normalise_quantization,
)
from olla.fleet.modelsources import (
    DiscoveryError,
    parse_ollama_ps,
    parse_ollama_tags,
    parse_openai_models,
)
from olla.proxy.inspect import rewrite_model

A, B, C = endpoints_from_config(
    [EndpointConfig(url=f"http://{n}:1", name=n, type="ollama") for n in "abc"]
)


def _catalogue(aliases: dict[str, list[str]] | None = None) -> ModelCatalogue:
    catalogue = ModelCatalogue(aliases)
    catalogue.set_models(A, [ModelInfo("llama3.2:latest", digest="d1"), ModelInfo("Shared:7b")], 0)
    catalogue.set_models(B, [ModelInfo("shared:7b"), ModelInfo("qwen2.5:7b")], 0)
    return catalogue


@pytest.mark.parametrize(
    ("raw", "norm", "back"),
    [("Q4_K_M", "q4km", "Q4_K_M"), ("Q4_0", "q4", "Q4_0"), ("Q8_0", "q8", "Q8_0"),
     ("F16", "f16", "F16"), ("FP16", "f16", "F16"), ("BF16", "bf16", "BF16")],
)  # fmt: skip
def test_quantization(raw: str, norm: str, back: str) -> None:
    """If a quantisation level is normalised and back, then Olla's spellings result."""
    assert normalise_quantization(raw) == norm
    assert denormalise_quantization(norm) == back


def test_filters() -> None:
    """If include/exclude globs are set, then matching is case-insensitive, exclude last."""
    f = FilterConfig(include=("llama*", "*embed*"), exclude=("*70b*",))
    assert matches_filter("Llama3:8b", f)
    assert matches_filter("nomic-embed-text", f)
    assert not matches_filter("llama3:70b", f)
    assert not matches_filter("qwen", f)
    assert matches_filter("anything", None)


def test_model_removed() -> None:
    """If a model is deleted from an endpoint, then it leaves that endpoint's list, loaded set
    and running rows; its learnt load time goes only once no endpoint lists it."""
    catalogue = _catalogue()
    catalogue.set_loaded(A, ["shared:7b"], [{"name": "Shared:7b"}])
    catalogue.observe_load("shared:7b", 4.0)
    catalogue.model_removed(A, "shared:7b")
    assert [m.name for m in catalogue.models_of(A)] == ["llama3.2:latest"]
    assert catalogue.loaded_on(A) == set() and catalogue.running_on(A) == ()
    assert catalogue.learned_load_time("shared:7b") == 4.0  # B still has it
    catalogue.model_removed(B, "SHARED:7b")
    assert catalogue.hosts("shared:7b") == []
    assert catalogue.learned_load_time("shared:7b") is None


def test_merged_each_model_once() -> None:
    """If two endpoints report a model (by name, any case), then it is listed once with both."""
    merged = {info.name.lower(): [ep.name for ep in hosts] for info, hosts in
              _catalogue().merged([A, B])}  # fmt: skip
    assert merged == {"llama3.2:latest": ["a"], "shared:7b": ["a", "b"], "qwen2.5:7b": ["b"]}


def test_copies_listed_under_both_names() -> None:
    """If one endpoint lists the same weights under two names (an ``ollama cp``), then both
    names are listed, on every endpoint that has them; the same weights under another name on
    another endpoint are still one model."""
    catalogue = ModelCatalogue()
    catalogue.set_models(A, [ModelInfo("base:1", digest="x"), ModelInfo("copy:1", digest="x")], 0)
    catalogue.set_models(B, [ModelInfo("base:1", digest="x"), ModelInfo("copy:1", digest="x")], 0)
    catalogue.set_models(C, [ModelInfo("other-name:1", digest="x")], 0)
    merged = {info.name: [ep.name for ep in hosts] for info, hosts in catalogue.merged([A, B, C])}
    assert merged == {"base:1": ["a", "b", "c"], "copy:1": ["a", "b"]}


def test_different_digests_not_merged() -> None:
    """If the same name has different digests, then they stay two models."""
    catalogue = ModelCatalogue()
    catalogue.set_models(A, [ModelInfo("m", digest="x")], 0)
    catalogue.set_models(B, [ModelInfo("m", digest="y")], 0)
    assert len(catalogue.merged([A, B])) == 2


def _route(model: str, healthy: list, **strategy: object) -> tuple:  # type: ignore[type-arg]
    decision = _catalogue().route(model, healthy, RoutingStrategyConfig(**strategy))  # type: ignore[arg-type]
    return (
        decision.strategy,
        decision.decision,
        decision.reason,
        decision.status,
        [ep.name for ep in decision.endpoints],
    )


def test_strict() -> None:
    """If strict, then a hosted model routes to its hosts, unknown is 404, unhealthy 503."""
    assert _route("LLAMA3.2:latest", [A, B]) == ("strict", "routed", "model_found", 200, ["a"])
    assert _route("shared:7b", [A, B])[4] == ["a", "b"]
    assert _route("nope", [A, B])[1:4] == ("rejected", "model_not_found", 404)
    assert _route("llama3.2:latest", [B])[1:4] == ("rejected", "model_unavailable", 503)


def test_optimistic() -> None:
    """If optimistic, then fallback_behavior decides between rejecting and any endpoint."""
    assert _route("nope", [A, B], type="optimistic")[2:4] == ("model_not_found", 404)
    assert _route("nope", [A, B], type="optimistic", fallback_behavior="all")[1:3] == (
        "fallback",
        "model_not_found_fallback",
    )
    assert _route("llama3.2:latest", [B], type="optimistic")[2] == (
        "model_unavailable_compatible_only"
    )
    assert _route("llama3.2:latest", [B], type="optimistic", fallback_behavior="all")[4] == ["b"]


def test_discovery_strategy() -> None:
    """If the discovery strategy misses, then without refresh it is 503; after a refresh the
    outcome names the refresh."""
    assert _route("nope", [A], type="discovery")[2] == "model_unavailable_no_refresh"
    assert _route("llama3.2:latest", [A], type="discovery")[2] == "model_found_no_refresh"
    catalogue = _catalogue()
    strategy = RoutingStrategyConfig(type="discovery")
    after = catalogue.route("nope", [A], strategy, refreshed=True)
    assert (after.reason, after.status) == ("model_unavailable_after_discovery", 503)
    failed = catalogue.route("nope", [A], strategy, refresh_failed=True)
    assert failed.reason == "discovery_failed_compatible_only"


def test_alias() -> None:
    """If an alias names models known under different names, then each endpoint gets its own."""
    catalogue = _catalogue({"Fast": ["qwen2.5:7b", "llama3.2:latest"]})
    decision = catalogue.route("fast", [A, B], RoutingStrategyConfig())
    assert (decision.strategy, decision.decision) == ("alias", "routed")
    assert dict(decision.rewrite) == {B: "qwen2.5:7b", A: "llama3.2:latest"}
    assert "resolved to 2 endpoint(s)" in decision.reason
    unknown = catalogue.route("slow", [A, B], RoutingStrategyConfig())
    assert unknown.reason == "model_not_found"


def test_rewrite_model_only_top_level() -> None:
    """If the model is rewritten, then only the top-level value changes, byte for byte."""
    body = b'{"messages":[{"model":"fast"}],  "model" : "fast", "x": 1}'
    out = rewrite_model(body, "qwen2.5:7b")
    assert out == b'{"messages":[{"model":"fast"}],  "model" : "qwen2.5:7b", "x": 1}'
    assert json.loads(out)["messages"][0]["model"] == "fast"


def test_parsers() -> None:
    """If backends answer their model lists, then names and details are read; junk fails."""
    tags = parse_ollama_tags(
        {"models": [{"name": "m:1", "size": 5, "digest": "d",
                     "details": {"family": "llama", "quantization_level": "Q4_K_M"}}, {"x": 1}]}
    )  # fmt: skip
    assert tags == [ModelInfo("m:1", 5, "d", "llama", None, "q4km", None, None)]
    assert parse_openai_models({"object": "list", "data": None}) == []
    assert [m.name for m in parse_openai_models({"data": [{"id": "t"}]})] == ["t"]
    assert parse_ollama_ps({"models": [{"name": "m:1"}, {"x": 1}]}) == [{"name": "m:1"}]
    with pytest.raises(DiscoveryError):
        parse_ollama_tags({"data": []})


def test_listings() -> None:
    """If models are listed, then the Ollama shape has name and model, OpenAI the ids."""
    catalogue = _catalogue()
    tags = ollama_tags(catalogue, [A, B])["models"]
    assert [(m["name"], m["model"]) for m in tags][0] == ("llama3.2:latest", "llama3.2:latest")
    assert len(tags) == 3
    ids = [m["id"] for m in openai_models(catalogue, [B], Clock().seconds())["data"]]
    assert ids == ["shared:7b", "qwen2.5:7b"]


@pytest.mark.parametrize(
    ("name", "kind", "has", "context"),
    [
        ("llama3.2:latest", "llm", "chat", 8192),
        ("llava:13b", "vlm", "vision", None),
        ("nomic-embed-text:latest", "embeddings", "embeddings", None),
        ("qwen2.5-coder:7b", "llm", "code-generation", None),
        ("mistral-32k:7b", "llm", "extended-context", 32768),
        ("deepseek-r1:8b", "llm", "reasoning", None),
    ],
)
def test_capabilities(name: str, kind: str, has: str, context: int | None) -> None:
    """If a model name follows a pattern of the Ollama profile, then its type, capabilities
    and context length follow (nothing said by the backend itself)."""
    catalogue = ModelCatalogue()
    info = ModelInfo(name)
    catalogue.set_models(A, [info], 0)
    facts = catalogue.facts(info, [A])
    assert facts.kind == kind
    assert has in facts.capabilities
    assert facts.context_length == context


# Model lists as each server sends them (shapes from their docs and from the servers run here:
# llama-server answers both "models" and "data"; Ollama answers data: null when empty).
SAMPLES = {
    "lmstudio": {
        "object": "list",
        "data": [
            {"id": "qwen2.5-7b-instruct", "object": "model", "type": "llm",
             "publisher": "lmstudio-community", "arch": "qwen2", "compatibility_type": "gguf",
             "quantization": "Q4_K_M", "state": "loaded", "max_context_length": 32768},
            {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model",
             "type": "embeddings", "state": "not-loaded"},
        ],
    },
    "vllm": {"object": "list", "data": [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model", "owned_by": "vllm",
         "root": "Qwen/Qwen2.5-7B-Instruct", "parent": None, "max_model_len": 32768}]},
    "llamacpp": {
        "models": [{"name": "smollm2", "model": "smollm2", "type": "model"}],
        "object": "list",
        "data": [{"id": "smollm2", "object": "model", "owned_by": "llamacpp",
                  "meta": {"n_ctx_train": 8192}}],
    },
    "lemonade": {"object": "list", "data": [
        {"id": "Qwen2.5-0.5B-Instruct-CPU", "object": "model", "owned_by": "lemonade",
         "checkpoint": "amd/Qwen2.5-0.5B", "recipe": "oga-cpu"}]},
    "docker-model-runner": {"object": "list", "data": [
        {"id": "ai/smollm2", "object": "model", "created": 1742816981, "owned_by": "docker"}]},
    "sglang": {"object": "list", "data": [
        {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "sglang",
         "max_model_len": 131072}]},
    "lmdeploy": {"object": "list", "data": [
        {"id": "internlm2_5-7b-chat", "object": "model", "owned_by": "lmdeploy"}]},
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_format_parses(fmt: str) -> None:
    """If a server of each response_format lists its models, then olla reads every id."""
    from olla.fleet.modelsources import MODEL_SOURCES

    models = MODEL_SOURCES[fmt].parse(SAMPLES[fmt])
    assert [m.name for m in models] == [item["id"] for item in SAMPLES[fmt]["data"]]


def test_lmstudio_details_and_loaded() -> None:
    """If LM Studio lists models, then quantisation, arch and load state are kept."""
    from olla.fleet.modelsources import parse_loaded_from_list

    (qwen, _) = parse_openai_models(SAMPLES["lmstudio"])
    assert (qwen.family, qwen.quantization, qwen.format) == ("qwen2", "q4km", "gguf")
    assert parse_loaded_from_list(SAMPLES["lmstudio"]) == ["qwen2.5-7b-instruct"]


def test_family_and_variant() -> None:
    """If a name carries family and version, then both are read."""
    from olla.fleet.models import family_and_variant

    assert family_and_variant("llama3.2:latest") == ("llama", "3.2")
    assert family_and_variant("Qwen/Qwen2.5-7B") == ("qwen", "2.5")


def test_unifier_off_lists_each_endpoint_apart() -> None:
    """If model_registry.enable_unifier is false, then the merged views keep each endpoint's
    models apart (a shared model is listed once per host)."""
    catalogue = _catalogue()
    assert len(catalogue.merged([A, B])) == 3
    catalogue.unify = False
    groups = catalogue.merged([A, B])
    assert len(groups) == 4
    assert all(len(hosts) == 1 for _, hosts in groups)
