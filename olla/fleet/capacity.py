# -*- test-case-name: tests.test_capacity -*-
"""What a backend says about its own capacity: how many requests it decodes at once, and how
long a context each one gets.

llama.cpp's server is started with a number of parallel slots (``-np``) and a context
(``-c``) shared among them; it says both in ``GET /props`` (``total_slots``,
``default_generation_settings.n_ctx``), lists its slots in ``GET /slots`` when started with
``--slots`` (501 otherwise), and gives the model's training context in ``/v1/models``
(``meta.n_ctx_train``). Olla reads them during discovery, off the request path, so routing's
free-slot checks use the server's real slot count instead of a guess. The parsers are pure;
``read_capacity`` takes discovery's own fetch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from olla.fleet.endpoints import Endpoint

#: platform -> (its properties path, its slot list path): the platforms that report capacity
REPORTING: Mapping[str, tuple[str, str]] = {"llamacpp": ("/props", "/slots")}

_log = Logger()


@dataclass(frozen=True)
class Capacity:
    """What one backend reported; None where it said nothing (usable) about it."""

    #: requests it decodes in parallel
    slots: int | None = None
    #: tokens of context one request gets
    context_length: int | None = None
    #: its build, e.g. llama.cpp's ``b4847-1a2b3c4`` (decides its Anthropic passthrough)
    build: str | None = None


def _count(value: object) -> int | None:
    """A positive integer (JSON's ``true`` is not one), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def from_props(document: Any) -> Capacity:
    """llama.cpp's ``GET /props``: ``total_slots``, ``default_generation_settings.n_ctx`` (one
    slot's context: ``-c`` divided over ``-np``) and ``build_info``."""
    if not isinstance(document, dict):
        return Capacity()
    settings = document.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    build = document.get("build_info")
    return Capacity(
        slots=_count(document.get("total_slots")),
        context_length=_count(n_ctx),
        build=build if isinstance(build, str) and build else None,
    )


def slot_count(document: Any) -> int | None:
    """llama.cpp's ``GET /slots``: one object per slot."""
    if not isinstance(document, list):
        return None
    return _count(sum(1 for slot in document if isinstance(slot, dict)))


def trained_context(models: Any) -> int | None:
    """The largest ``meta.n_ctx_train`` in a llama.cpp ``/v1/models`` list (it serves one)."""
    data = models.get("data") if isinstance(models, dict) else None
    found = [
        _count(item["meta"].get("n_ctx_train"))
        for item in data or ()
        if isinstance(item, dict) and isinstance(item.get("meta"), dict)
    ]
    return max((n for n in found if n is not None), default=None)


GetJSON = Callable[[Endpoint, str], Awaitable[Any]]


async def read_capacity(endpoint: Endpoint, models: Any, get_json: GetJSON) -> Capacity | None:
    """What ``endpoint`` says about its capacity (None: its platform says nothing).

    ``/props`` first; ``/slots`` only when that gave no slot count (it answers only on a
    server started with ``--slots``); the context falls back to the model's training context
    from ``models`` (the ``/v1/models`` document discovery just read). A path that fails
    leaves its fields unknown: capacity is a hint, never a reason to fail discovery.
    """
    paths = REPORTING.get(endpoint.type)
    if paths is None:
        return None
    props_path, slots_path = paths
    props = from_props(await _ask(endpoint, props_path, get_json))
    slots = props.slots or slot_count(await _ask(endpoint, slots_path, get_json))
    return Capacity(slots, props.context_length or trained_context(models), props.build)


async def _ask(endpoint: Endpoint, path: str, get_json: GetJSON) -> Any:
    url = endpoint.upstream_url(path.encode()).decode()
    try:
        return await get_json(endpoint, url)
    except CancelledError:
        raise
    except Exception as e:
        _log.debug("no {path} from {endpoint}: {e}", path=path, endpoint=endpoint.name, e=e)
        return None
