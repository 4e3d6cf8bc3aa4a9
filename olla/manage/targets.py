# -*- test-case-name: tests.test_manage_targets -*-
"""Which machines a model-management call goes to (pure: endpoints and facts in, a choice out).

1. The eligible endpoints: Ollama ones (``auto`` ones once detected as Ollama), among
   ``model_management.targets`` when it names some.
2. A client may narrow them with ``X-Olla-Endpoints: a, b``: a name that is no endpoint, or not
   an eligible one, is a 400; a named one that is not healthy a 503 (it was asked for by name).
   Without the header, the healthy eligible endpoints are the targets and the others are
   skipped (and said so).
3. ``copy``, ``delete`` and ``push`` go only where the model is (when olla knows it), ``push``
   to the first of those; none left is a 404.
4. No target at all is a 503.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from olla.fleet.endpoints import Endpoint
from olla.proxy.routing import Rejection

#: the request header that narrows a management call to some endpoints, by name
ENDPOINTS_HEADER = b"X-Olla-Endpoints"


@dataclass(frozen=True)
class Selection:
    targets: tuple[Endpoint, ...]
    #: eligible endpoints left out because they are not healthy (name, status)
    skipped: tuple[tuple[str, str], ...] = ()


def named(header: bytes | None) -> tuple[str, ...] | None:
    """The endpoint names an ``X-Olla-Endpoints`` value lists (None: no header)."""
    if header is None:
        return None
    return tuple(n.strip() for n in header.decode("utf-8", "replace").split(",") if n.strip())


def select(
    operation: str,
    endpoints: Sequence[Endpoint],
    *,
    healthy: Callable[[Endpoint], str | None],
    configured: tuple[str, ...] | None,
    asked: tuple[str, ...] | None,
    has_model: Callable[[Endpoint], bool] | None = None,
    missing: str = "model not found",
    one: bool = False,
) -> Selection | Rejection:
    """The targets of one call.

    Args:
        operation: ``pull``, ``create``... (for messages).
        endpoints: every configured endpoint, in config order.
        healthy: None for a healthy endpoint, else its status (``offline``...).
        configured: ``model_management.targets`` (None: every Ollama endpoint).
        asked: the names in ``X-Olla-Endpoints`` (None: no header).
        has_model: whether an endpoint has the model the call names (None: not asked).
        missing: the 404 message when no target has the model.
        one: only the first target (``push``).
    """
    eligible = [
        e for e in endpoints if e.type == "ollama" and (configured is None or e.name in configured)
    ]
    skipped: list[tuple[str, str]] = []
    if asked is not None:
        if not asked:
            return Rejection(400, f"{ENDPOINTS_HEADER.decode()} names no endpoint")
        names = {e.name for e in endpoints}
        unknown = [n for n in asked if n not in names]
        if unknown:
            known = ", ".join(e.name for e in eligible) or "none"
            return Rejection(
                400,
                f"{ENDPOINTS_HEADER.decode()}: no endpoint named {', '.join(unknown)} "
                f"(model management targets: {known})",
            )
        outside = [n for n in asked if n not in {e.name for e in eligible}]
        if outside:
            return Rejection(
                400,
                f"{ENDPOINTS_HEADER.decode()}: {', '.join(outside)} is not a model management "
                "target (an Ollama endpoint listed in model_management.targets)",
            )
        chosen = [e for e in eligible if e.name in asked]
        down = [(e.name, status) for e in chosen if (status := healthy(e)) is not None]
        if down:
            states = ", ".join(f"{name} is {status}" for name, status in down)
            return Rejection(503, f"{ENDPOINTS_HEADER.decode()}: {states}")
    else:
        chosen = []
        for endpoint in eligible:
            status = healthy(endpoint)
            if status is None:
                chosen.append(endpoint)
            else:
                skipped.append((endpoint.name, status))
    if not chosen:
        return Rejection(503, f"no healthy Ollama endpoint to {operation} on")
    if has_model is not None:
        chosen = [e for e in chosen if has_model(e)]
        if not chosen:
            return Rejection(404, missing)
    if one:
        chosen = chosen[:1]
    return Selection(tuple(chosen), tuple(skipped))


def name_forms(name: str) -> tuple[str, ...]:
    """The spellings one Ollama model name has, lower-cased: ``x`` is ``x:latest``."""
    lowered = name.strip().lower()
    if ":" in lowered.rsplit("/", 1)[-1]:
        if lowered.endswith(":latest"):
            return (lowered, lowered[: -len(":latest")])
        return (lowered,)
    return (lowered, lowered + ":latest")
