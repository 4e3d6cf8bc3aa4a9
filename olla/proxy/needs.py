# -*- test-case-name: tests.test_needs -*-
"""What a request needs from a model (tools, vision, embeddings), and which endpoints have it.

Pure functions. ``/olla/proxy/`` narrows its candidates with them after the path (§4.2 stage 2):
to endpoints hosting a model the catalogue knows can do everything the request needs. What the
catalogue knows nothing about is not narrowed on, and if nobody fits, nothing is narrowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from olla.fleet.endpoints import Endpoint
from olla.fleet.models import ModelCatalogue
from olla.proxy.inspect import parse_json

TOOLS = "tools"
VISION = "vision"
EMBEDDINGS = "embeddings"

#: The model capabilities (as olla or a backend spells them) that satisfy each need.
SATISFIED_BY: Mapping[str, frozenset[str]] = {
    TOOLS: frozenset({"tools", "function_calling", "function-calling", "tool_use"}),
    VISION: frozenset({"vision", "image-understanding"}),
    EMBEDDINGS: frozenset({"embeddings", "embedding"}),
}

#: Paths that only an embedding model can answer (Ollama, OpenAI, llama.cpp's native ones).
_EMBEDDING_PATHS = ("/api/embed", "/api/embeddings", "/embeddings", "/embedding")
#: Message content parts that carry an image (OpenAI chat, Responses, Anthropic shapes).
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def body_needs(body: bytes | None, path: str) -> frozenset[str]:
    """What serving this request takes beyond plain text generation.

    Args:
        body: the JSON body, or None when it is too large to parse (then only the path counts).
        path: the request path below the route prefix.
    """
    needs: set[str] = set()
    clean = path.split("?", 1)[0].rstrip("/")
    if clean.endswith(_EMBEDDING_PATHS):
        needs.add(EMBEDDINGS)
    document = _parse(body)
    if isinstance(document, dict):
        if _filled(document.get("tools")) or _filled(document.get("functions")):
            needs.add(TOOLS)
        if _has_images(document):
            needs.add(VISION)
    return frozenset(needs)


def narrow_by_needs(
    candidates: Sequence[Endpoint],
    needs: frozenset[str],
    catalogue: ModelCatalogue,
    model: str | None = None,
) -> list[Endpoint]:
    """The candidates that can serve ``needs``, as far as the catalogue knows.

    A need that no candidate's models are known to meet tells nothing and is ignored. An
    endpoint hosting the requested ``model`` (or an alias target) always stays: model routing
    comes next and sends the request there whatever it needs. If nobody fits, all stay.
    """
    kept = list(candidates)
    if not needs or len(kept) < 2:
        return kept
    offered = {
        ep: [catalogue.capabilities_of(ep, m) for m in catalogue.models_of(ep)] for ep in kept
    }
    known = frozenset(
        need
        for need in needs
        if any(SATISFIED_BY[need] & caps for models in offered.values() for caps in models)
    )
    if not known:
        return kept
    asked = _names(model, catalogue)
    fitting = [
        ep
        for ep in kept
        if any(catalogue.native_name(ep, name) for name in asked)
        or any(all(SATISFIED_BY[n] & caps for n in known) for caps in offered[ep])
    ]
    return fitting or kept


def _names(model: str | None, catalogue: ModelCatalogue) -> tuple[str, ...]:
    if model is None:
        return ()
    return (model, *(catalogue.alias_targets(model) or ()))


def _parse(body: bytes | None) -> Any:
    return parse_json(body) if body else None


def _filled(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0


def _has_images(document: dict[str, Any]) -> bool:
    """Ollama's ``images`` (on the request or a message), or an image part in a message."""
    if _filled(document.get("images")):
        return True
    messages = document.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        if _filled(message.get("images")):
            return True
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                return True
    return False
