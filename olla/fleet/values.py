# -*- test-case-name: tests.test_health -*-
"""Value types that cross olla's seams (named in ``olla.interfaces``): what a model list
entry, a health probe and a platform detection tell. Plain frozen data, no behaviour beyond
reading it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from olla.fleet.endpoints import EndpointStatus
from olla.profiles import Profile


@dataclass(frozen=True)
class ModelInfo:
    """One model as one endpoint reported it."""

    name: str
    size: int | None = None
    digest: str | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    format: str | None = None
    modified_at: str | None = None
    #: the context window the list itself states (vLLM's and SGLang's ``max_model_len``)
    context_length: int | None = None
    #: the entry exactly as an Ollama backend listed it, replayed by ``/api/tags`` so that the
    #: merged list reads like the backend's own (``Q4_1``, ``parent_model`` and all)
    native: Mapping[str, object] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class ProbeResult:
    status: EndpointStatus
    latency: float
    reason: str = ""
    retry_after: float | None = None
    #: a refused/unreachable socket: cheap to re-check, says nothing about server load
    unreachable: bool = False
    #: ``type: auto``: the platform this probe found (it then probed that platform's health)
    detected: Profile | None = None

    @property
    def ok(self) -> bool:
        return self.status in (EndpointStatus.HEALTHY, EndpointStatus.BUSY)


@dataclass(frozen=True)
class Detection:
    """One detection run: the platform found, or why none was."""

    profile: Profile | None
    latency: float
    reason: str = ""
