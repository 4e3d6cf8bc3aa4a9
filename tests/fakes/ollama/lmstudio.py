"""LM Studio's ``/api/v0/models`` (``LMStudioMixin``), served in OpenAI-only mode."""

from __future__ import annotations

from .wire import _Call


class LMStudioMixin:
    """LM Studio's model list."""

    def _lmstudio_models(self, call: _Call) -> bytes | int:
        """LM Studio's ``/api/v0/models``: OpenAI ids plus type, arch and load state."""
        data = [
            {
                "id": m.name,
                "object": "model",
                "type": "embeddings" if m.embedding else "llm",
                "publisher": "fake",
                "arch": m.family,
                "compatibility_type": m.format,
                "quantization": m.quantization_level,
                "state": "loaded" if m.name in self.state.loaded else "not-loaded",
                "max_context_length": m.context_length,
            }
            for m in self.models
        ]
        return self._json(call, {"object": "list", "data": data}, latency=call.knobs.ttft)
