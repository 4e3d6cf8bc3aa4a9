"""Target selection of model management: pure, over built endpoints."""

from __future__ import annotations

import pytest

from olla.config import EndpointConfig
from olla.fleet.endpoints import endpoints_from_config
from olla.manage.targets import Selection, name_forms, named, select
from olla.proxy.routing import Rejection

ENDPOINTS = endpoints_from_config(
    [
        EndpointConfig(url="http://a:1", name="a", type="ollama"),
        EndpointConfig(url="http://b:1", name="b", type="ollama"),
        EndpointConfig(url="http://c:1", name="c", type="ollama"),
        EndpointConfig(url="http://v:1", name="v", type="vllm"),
    ]
)


def names(result: Selection | Rejection) -> list[str]:
    assert isinstance(result, Selection), result
    return [e.name for e in result.targets]


def pick(
    operation: str = "pull",
    *,
    down: tuple[str, ...] = (),
    configured: tuple[str, ...] | None = None,
    asked: tuple[str, ...] | None = None,
    has: set[str] | None = None,
    one: bool = False,
) -> Selection | Rejection:
    return select(
        operation,
        ENDPOINTS,
        healthy=lambda e: "offline" if e.name in down else None,
        configured=configured,
        asked=asked,
        has_model=None if has is None else (lambda e: e.name in has),
        missing="model 'x' not found",
        one=one,
    )


def test_every_healthy_ollama_endpoint_by_default() -> None:
    """If nothing narrows a pull, then every healthy Ollama endpoint is a target; the others
    are skipped and said so, and a vLLM endpoint is never one."""
    result = pick(down=("b",))
    assert names(result) == ["a", "c"]
    assert isinstance(result, Selection) and result.skipped == (("b", "offline"),)


def test_configured_targets_and_the_header_narrow() -> None:
    """If model_management.targets lists some endpoints, then only those; X-Olla-Endpoints
    narrows further, in config order whatever order the header names them in."""
    assert names(pick(configured=("a", "c"))) == ["a", "c"]
    assert names(pick(asked=("c", "a"))) == ["a", "c"]
    assert names(pick(configured=("a", "c"), asked=("c",))) == ["c"]


@pytest.mark.parametrize(
    ("asked", "configured", "status", "fragment"),
    [
        ((), None, 400, "names no endpoint"),
        (("x",), None, 400, "no endpoint named x"),
        (("v",), None, 400, "v is not a model management target"),
        (("b",), ("a",), 400, "b is not a model management target"),
        (("a", "b"), None, 503, "b is offline"),
    ],
)
def test_header_refusals(
    asked: tuple[str, ...], configured: tuple[str, ...] | None, status: int, fragment: str
) -> None:
    """If X-Olla-Endpoints names nothing, an unknown endpoint or one that is not a target,
    then 400; a named one that is down is 503, not silently skipped."""
    result = pick(down=("b",), configured=configured, asked=asked)
    assert isinstance(result, Rejection)
    assert result.status == status and fragment in result.message


def test_no_healthy_target_is_503() -> None:
    """If every eligible endpoint is down, then 503."""
    assert pick(down=("a", "b", "c")) == Rejection(503, "no healthy Ollama endpoint to pull on")


def test_only_where_the_model_is() -> None:
    """If a delete names a model, then only the endpoints that have it; none is a 404; a push
    goes to the first of them."""
    assert names(pick("delete", has={"b", "c"})) == ["b", "c"]
    assert names(pick("push", has={"b", "c"}, one=True)) == ["b"]
    assert pick("delete", has=set()) == Rejection(404, "model 'x' not found")
    assert pick("delete", has={"a"}, down=("a",)) == Rejection(404, "model 'x' not found")


def test_header_parsing() -> None:
    """If the header lists names with spaces and empty items, then the names alone."""
    assert named(None) is None
    assert named(b" a, b ,,") == ("a", "b")
    assert named(b"") == ()


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("Llama3", ("llama3", "llama3:latest")),
        ("llama3:latest", ("llama3:latest", "llama3")),
        ("llama3:8b", ("llama3:8b",)),
        ("host:5000/lib/m", ("host:5000/lib/m", "host:5000/lib/m:latest")),
    ],
)
def test_name_forms(name: str, forms: tuple[str, ...]) -> None:
    """If a name has no tag, then it is also its ``:latest`` (as Ollama reads it)."""
    assert name_forms(name) == forms
