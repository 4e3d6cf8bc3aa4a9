# -*- test-case-name: tests.test_anthropic_translate -*-
"""Backend version strings as Ollama writes them (``0.5.4-ipexllm-20250407``) and llama.cpp's
builds (``b4847-1a2b3c4``), compared."""

from __future__ import annotations

import re

_VERSION = re.compile(r"[vb]?(\d+(?:\.\d+)*)")


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"0.5.4-ipexllm-20250407"`` -> ``(0, 5, 4)``, ``"b4847-1a2b3c4"`` -> ``(4847,)``; None
    when there is no leading version."""
    match = _VERSION.match(text.strip()) if text else None
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def version_at_least(have: str | None, need: str | None) -> bool:
    """Whether ``have`` is ``need`` or later; an unknown ``have`` is not (translation is safe)."""
    wanted = version_tuple(need)
    if wanted is None:
        return True
    got = version_tuple(have)
    if got is None:
        return False
    width = max(len(got), len(wanted))
    return got + (0,) * (width - len(got)) >= wanted + (0,) * (width - len(wanted))
