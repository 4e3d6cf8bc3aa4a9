# -*- test-case-name: tests.test_gatedispatch -*-
"""What moving a conversation off the host its sticky session is pinned to costs.

The pinned host has the conversation's prompt in its cache (Ollama's and llama.cpp's KV cache
per slot): its next turn there reads only what is new. Any other host reads all of it first. So
moving costs the prompt's reading time: its tokens, estimated from the body's size (bytes / 4,
as ``timeout_scaling.per_token_timeout_ms`` estimates them), times the seconds one prompt token
takes for that model. That rate is learnt from the backends' own figures: every answer whose
profile's ``metrics.extraction`` gives ``input_tokens`` and ``ttft_ms`` teaches it (Ollama's
``prompt_eval_count`` and ``prompt_eval_duration``, llama.cpp's ``usage.prompt_tokens`` and
``timings.prompt_ms``). A model not seen yet borrows the mean of the models that were; with
none seen, moving is taken to cost nothing (no evidence for waiting): the request moves at
once, as it would without the gate.

The admission gate waits for a full pinned host while its expected wait there is below this
cost, and at most this long (``olla.proxy.gate``).
"""

from __future__ import annotations

from zope.interface import implementer

from olla.interfaces import IOutcomeListener
from olla.proxy.timeouts import BYTES_PER_TOKEN
from olla.telemetry.outcomes import OutcomeListener
from olla.telemetry.records import RequestRecord

#: weight of the newest answer in a model's rate
RATE_EWMA = 0.2
#: answers with fewer prompt tokens than this teach nothing (fixed costs would dominate)
MIN_TOKENS = 32
#: models remembered; the least recently taught one beyond this is forgotten
MAX_MODELS = 1000


@implementer(IOutcomeListener)
class PromptRates(OutcomeListener):
    """Seconds per prompt token, per model, learnt from finished requests' figures."""

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}

    def request_finished(self, record: RequestRecord) -> None:
        figures = record.backend_metrics
        if figures is None or record.model is None or record.outcome != "ok":
            return
        tokens, ms = figures.get("input_tokens"), figures.get("ttft_ms")
        if not isinstance(tokens, int | float) or not isinstance(ms, int | float):
            return
        if tokens < MIN_TOKENS or ms <= 0:
            return
        model = record.model.lower()
        rate = ms / 1000 / tokens
        known = self._rates.pop(model, None)
        self._rates[model] = rate if known is None else known + RATE_EWMA * (rate - known)
        if len(self._rates) > MAX_MODELS:
            del self._rates[next(iter(self._rates))]

    def rate(self, model: str | None) -> float:
        """Seconds a prompt token of ``model`` takes: learnt, else the mean of the models
        learnt, else 0."""
        known = self._rates.get(model.lower()) if model else None
        if known is not None:
            return known
        rates = self._rates.values()
        return sum(rates) / len(rates) if rates else 0.0

    def move_cost(self, model: str | None, body_size: int) -> float:
        """Seconds another host would spend reading this request's prompt again."""
        return body_size / BYTES_PER_TOKEN * self.rate(model)

    def snapshot(self) -> dict[str, float]:
        """The learnt rates (ms per prompt token), for the status page."""
        return {model: round(rate * 1000, 4) for model, rate in sorted(self._rates.items())}
