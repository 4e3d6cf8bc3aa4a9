# -*- test-case-name: tests.test_model_facts -*-
"""A model's size class under a platform's ``resources``: memory, load time and how many
requests of it a host runs at once.

The class comes from what the backend listed when it can (Ollama's ``parameter_size``, e.g.
``70.6B``: the row whose size is nearest, within half again either way), else from the name
(a row pattern as a whole token, as the Go original matches it: ``7b`` in ``llama-7b`` but
not in ``17b``; then a size token in the name, by the same nearest rule), else
``resources.defaults``. The quantization (the listed level, else the name) scales the memory
by ``resources.quantization.multipliers``. The per-host cap is the row's ``max_concurrent``,
else the first ``concurrency_limits`` row whose ``min_memory_gb`` the model needs, else the
platform's ``characteristics.max_concurrent_requests``. Pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from olla.profiles.spec import Characteristics, ModelSize, Resources

DEFAULT_CLASS = "default"
#: how far (as a ratio, either way) a listed size may be from a row's size and still be it
_NEAR = 1.5
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmbt])$")
_NAME_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
_SCALE = {"k": 1e-6, "m": 1e-3, "b": 1.0, "t": 1e3}


@dataclass(frozen=True)
class Sizing:
    """What a platform's profile says about one model."""

    size_class: str  # the row's pattern that matched (``70b``), or ``default``
    min_memory_gb: float = 0.0
    recommended_memory_gb: float = 0.0
    min_gpu_memory_gb: float = 0.0
    requires_gpu: bool = False
    #: the prior for its load time (None: the profile gives none)
    load_seconds: float | None = None
    #: requests of it one host runs at once (None: no cap from the profile)
    max_concurrent: int | None = None
    #: the quantization multiplier that applied (``q4``), if any
    quantization: str | None = None


def billions(text: str | None) -> float | None:
    """``70.6B`` -> 70.6, ``135M`` -> 0.135 (None when it is not a size)."""
    if not text:
        return None
    match = _SIZE.match(text.strip().lower())
    if match is None:
        return None
    return float(match.group(1)) * _SCALE[match.group(2)]


def _token_in(name: str, token: str) -> bool:
    """``token`` in ``name`` bounded by non-alphanumerics (the Go original's rule)."""
    start = name.find(token)
    while start >= 0:
        end = start + len(token)
        before = start == 0 or not name[start - 1].isalnum()
        after = end == len(name) or not name[end].isalnum()
        if before and after:
            return True
        start = name.find(token, start + 1)
    return False


def _nearest(size: float, rows: tuple[ModelSize, ...]) -> tuple[ModelSize, str] | None:
    best: tuple[float, ModelSize, str] | None = None
    for row in rows:
        for pattern in row.patterns:
            value = billions(pattern)
            if value is None or value <= 0 or size <= 0:
                continue
            distance = abs(math.log(size / value))
            if distance <= math.log(_NEAR) and (best is None or distance < best[0]):
                best = (distance, row, pattern)
    return (best[1], best[2]) if best is not None else None


def _row_for(
    name: str, parameter_size: str | None, rows: tuple[ModelSize, ...]
) -> tuple[ModelSize, str] | None:
    listed = billions(parameter_size)
    if listed is not None:
        found = _nearest(listed, rows)
        if found is not None:
            return found
    lowered = name.lower()
    for row in rows:
        for pattern in row.patterns:
            if _token_in(lowered, pattern):
                return row, pattern
    for match in _NAME_SIZE.finditer(lowered):
        found = _nearest(float(match.group(1)) * _SCALE[match.group(2)], rows)
        if found is not None:
            return found
    return None


def _multiplier(
    name: str, quantization: str | None, resources: Resources
) -> tuple[str, float] | None:
    keys = sorted(resources.quantization, key=len, reverse=True)
    listed = (quantization or "").lower()
    for key in keys:
        if listed and listed.startswith(key):
            return key, resources.quantization[key]
    lowered = name.lower()
    for key in keys:
        if key in lowered:
            return key, resources.quantization[key]
    return None


def size_model(
    resources: Resources,
    characteristics: Characteristics,
    name: str,
    parameter_size: str | None = None,
    quantization: str | None = None,
) -> Sizing:
    """The size class of ``name`` on a platform with these ``resources``.

    Args:
        parameter_size: the backend's own figure (Ollama's ``details.parameter_size``).
        quantization: the listed level, normalised (``q4km``, ``f16``).
    """
    found = _row_for(name, parameter_size, resources.model_sizes)
    defaults = resources.defaults
    if found is not None:
        row, label = found
        memory = (row.min_memory_gb, row.recommended_memory_gb, row.min_gpu_memory_gb)
        load_ms, cap = row.estimated_load_time_ms, row.max_concurrent
    else:
        label = DEFAULT_CLASS
        memory = (
            defaults.min_memory_gb,
            defaults.recommended_memory_gb,
            defaults.min_gpu_memory_gb,
        )
        load_ms, cap = defaults.estimated_load_time_ms, None
    multiplier = _multiplier(name, quantization, resources)
    scale = multiplier[1] if multiplier is not None else 1.0
    min_memory, recommended, gpu = (value * scale for value in memory)
    if cap is None:
        cap = next(
            (
                limit.max_concurrent
                for limit in resources.concurrency_limits
                if min_memory >= limit.min_memory_gb
            ),
            characteristics.max_concurrent_requests,
        )
    return Sizing(
        size_class=label,
        min_memory_gb=min_memory,
        recommended_memory_gb=recommended,
        min_gpu_memory_gb=gpu,
        requires_gpu=defaults.requires_gpu,
        load_seconds=load_ms / 1000 if load_ms > 0 else None,
        max_concurrent=cap,
        quantization=multiplier[0] if multiplier is not None else None,
    )
