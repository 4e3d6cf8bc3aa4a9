"""What a profile says about one model: size class, load-time prior, per-host cap,
capabilities and context (pure), and how the catalogue serves them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from olla.config import EndpointConfig
from olla.fleet.endpoints import endpoints_from_config
from olla.fleet.models import ModelCatalogue, ModelInfo, canonical_name, name_variants
from olla.profiles import builtin_profiles, parse_profile
from olla.profiles.patterns import BackendFacts, capabilities, context_length, model_kind
from olla.profiles.sizing import DEFAULT_CLASS, billions, size_model
from olla.profiles.spec import ConcurrencyLimit, ModelSize, Resources

OLLAMA = builtin_profiles().get("ollama")
assert OLLAMA is not None


@pytest.mark.parametrize(
    ("name", "parameter_size", "quant", "size_class", "load_s", "cap"),
    [
        # the listed size wins over the name, by the nearest row
        ("big:latest", "70.6B", "q4km", "70b", 300.0, 2),  # 40 GB x q4 0.5 = 20 -> limit 15: 2
        ("big:latest", "70.6B", "f16", "70b", 300.0, 1),  # 40 GB, no multiplier -> 1
        ("llama3.2:latest", "3.2B", "q4km", "3b", 15.0, 8),
        ("qwen2.5:7b", "7.6B", "q4km", "8b", 30.0, 8),  # the 7b/8b row; 6 x 0.5 = 3 -> 8
        ("gemma:27b", "27.2B", "q8", "30b", 120.0, 2),  # 20 x 0.875 = 17.5 -> 2
        # nothing listed: the name, as a whole token (7b is not in 17b)
        ("llama-7b-chat", None, None, "7b", 30.0, 8),
        ("codellama:13b", None, None, "13b", 60.0, 4),  # 10 GB -> 4
        ("odd-17b", None, None, "14b", 60.0, 4),  # no 7b token; 17b is nearest the 13b/14b row
        # far from every row (135M): the defaults
        ("smollm2:135m", "134.52M", "q8", DEFAULT_CLASS, 5.0, 8),
    ],
)
def test_size_class(
    name: str,
    parameter_size: str | None,
    quant: str | None,
    size_class: str,
    load_s: float,
    cap: int,
) -> None:
    """If a model is sized under the Ollama profile, then the nearest row of model_sizes (the
    listed size first, else the name) gives its class, load-time prior and, through the
    quantization multiplier and concurrency_limits, its per-host cap."""
    sizing = size_model(OLLAMA.resources, OLLAMA.characteristics, name, parameter_size, quant)
    assert (sizing.size_class, sizing.load_seconds, sizing.max_concurrent) == (
        size_class,
        load_s,
        cap,
    )


def test_row_max_concurrent_beats_limits() -> None:
    """If a model_sizes row says max_concurrent (the Out-of-Memory recipe), then that is the
    cap for its class, whatever concurrency_limits say."""
    resources = Resources(
        model_sizes=(ModelSize(("7b",), min_memory_gb=8, max_concurrent=1),),
        concurrency_limits=(ConcurrencyLimit(0, 4),),
    )
    sizing = size_model(resources, OLLAMA.characteristics, "mistral:7b")
    assert (sizing.size_class, sizing.max_concurrent) == ("7b", 1)
    other = size_model(resources, OLLAMA.characteristics, "phi3:mini", "3.8B")
    assert (other.size_class, other.max_concurrent) == (DEFAULT_CLASS, 4)


def test_platform_cap_when_no_limit_applies() -> None:
    """If no concurrency_limits row applies, then characteristics.max_concurrent_requests is
    the cap; with neither, there is none."""
    resources = Resources(concurrency_limits=(ConcurrencyLimit(50, 2),))
    assert size_model(resources, OLLAMA.characteristics, "x").max_concurrent == 10
    chars = replace(OLLAMA.characteristics, max_concurrent_requests=None)
    assert size_model(Resources(), chars, "x").max_concurrent is None


def test_billions() -> None:
    """If a backend lists a parameter size, then it reads in billions."""
    assert billions("70.6B") == 70.6
    assert billions("134.52M") == pytest.approx(0.13452)
    assert billions("") is None and billions("lots") is None


def test_patterns_and_backend_facts() -> None:
    """If the backend says what a model can do, then that wins; else the patterns decide."""
    rules = [OLLAMA.models]
    silent = BackendFacts()
    assert model_kind("llava:7b", rules, silent) == "vlm"
    assert context_length("llama3.2:3b", rules, silent) == 8192
    said = BackendFacts(capabilities=("completion", "tools"), context_length=131072)
    assert model_kind("llava:7b", rules, said) == "llm"
    assert context_length("llama3.2:3b", rules, said) == 131072
    caps = capabilities("llama3.2:3b", rules, said)
    assert "tools" in caps and "long-context" in caps and "vision" not in caps
    embedding = BackendFacts(capabilities=("embedding",))
    assert model_kind("all-minilm:latest", rules, embedding) == "embeddings"
    assert "chat" not in capabilities("all-minilm:latest", rules, embedding)


def test_custom_capability_adds_itself() -> None:
    """If a profile names a capability olla has no expansion for, then models matching it
    list that capability as it is named."""
    profile = parse_profile(
        {
            "name": "x",
            "routing": {"prefixes": ["x"]},
            "models": {"capability_patterns": {"audio_input": ["*whisper*"]}},
        },
        "test",
    )
    assert "audio-input" in capabilities("whisper-large", [profile.models], BackendFacts())


def test_ollama_name_variants() -> None:
    """If a client names a model the way Ollama accepts it, then every spelling means the
    same listed model."""
    assert name_variants("llama3.2") == ("llama3.2:latest",)
    assert name_variants("library/llama3.2:latest") == ("llama3.2:latest",)
    assert canonical_name("Library/Llama3.2") == "llama3.2:latest"
    (ep,) = endpoints_from_config([EndpointConfig(url="http://a:1", name="a", type="ollama")])
    catalogue = ModelCatalogue()
    catalogue.set_models(ep, [ModelInfo("llama3.2:latest")], 0)
    for asked in ("llama3.2", "library/llama3.2:latest", "LLAMA3.2:latest"):
        assert catalogue.hosts(asked) == [ep]
        assert catalogue.native_name(ep, asked) == "llama3.2:latest"
    catalogue.set_loaded(ep, ["llama3.2:latest"])
    assert catalogue.warm(ep, "llama3.2")


def test_catalogue_sizing_cap_and_prior() -> None:
    """If the catalogue sizes a listed model, then it reads the listed size and quantization,
    and the prior feeds the expected load until a load time is learnt."""
    (ep,) = endpoints_from_config([EndpointConfig(url="http://a:1", name="a", type="ollama")])
    catalogue = ModelCatalogue()
    catalogue.set_models(
        ep, [ModelInfo("big:latest", parameter_size="70.6B", quantization="q4")], 0
    )
    assert catalogue.cap_for(ep, "big") == 2
    assert catalogue.expected_load(ep, "big:latest", 5.0) == 300.0
    catalogue.observe_load("big:latest", 40.0)
    assert catalogue.expected_load(ep, "big", 5.0) == 40.0
    assert catalogue.expected_load(ep, "unknown-model", 5.0) == 5.0  # defaults' 5 s


def test_ollama_spellings_through_the_proxy() -> None:
    """If a client asks for ``llama3.2`` or ``library/llama3.2:latest`` and the only host lists
    ``llama3.2:latest``, then strict routing finds it and the host answers (Ollama accepts
    both spellings itself); an unknown name is still a 404."""
    import json

    from twisted.internet.task import Clock

    from tests.fakes.ollama import FakeModel, FakeOllama
    from tests.proxyharness import Harness, http_request

    clock = Clock()
    fake = FakeOllama(clock, [FakeModel("llama3.2:latest")])
    h = Harness({"a:1": fake}, clock=clock, models={"a:1": ["llama3.2:latest"]})
    for asked, status in (("llama3.2", 200), ("library/llama3.2:latest", 200), ("nope", 404)):
        body = json.dumps({"model": asked, "messages": [], "stream": False}).encode()
        response = h.send(http_request("POST", "/olla/ollama/api/chat", body)).response()
        assert response is not None
        assert response.status == status, (asked, response.body)
