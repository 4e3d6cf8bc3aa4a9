"""llama.cpp's server (``LlamaCppMixin``), served when the fake runs as ``llamacpp``: its
``/props`` and ``/slots`` and the ``meta`` it adds to ``/v1/models`` (``owned_by: llamacpp``).

Shapes as the real ``llama-server`` of ``bigdl-core-cpp==2.6.0`` (build ``b1-6ecf5e8``) answers
them, trimmed to the fields a client reads: ``total_slots`` is the cost model's ``capacity``
(``-np``; 1 when the cost model is off), each slot's ``n_ctx`` is ``n_ctx`` over the slots
(``-c`` is shared), and ``/slots`` answers 501 unless ``slots_endpoint`` (``--slots``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import JSON_UTF8, FakeModel, _Call, go_json


@dataclass
class LlamaCpp:
    """How the ``llamacpp`` flavour was started."""

    n_ctx: int = 4096  # -c: the context all slots share
    build_info: str = "b1-6ecf5e8"
    slots_endpoint: bool = False  # --slots
    props_slots: bool = True  # False: an older server whose /props has no total_slots


#: llama.cpp's 501 for a monitoring endpoint it was not started with
SLOTS_DISABLED = {
    "error": {
        "code": 501,
        "message": "This server does not support slots endpoint. Start it with `--slots`",
        "type": "not_supported_error",
    }
}


class LlamaCppMixin:
    """The ``llamacpp`` flavour's own routes."""

    def _llama_slots(self) -> int:
        return max(1, self.state.capacity)

    def _llama_slot(self, index: int) -> dict[str, Any]:
        return {
            "id": index,
            "id_task": -1,
            "n_ctx": self.llama.n_ctx // self._llama_slots(),
            "speculative": False,
            "is_processing": False,
        }

    def _props(self, call: _Call) -> bytes | int:
        document: dict[str, Any] = {"default_generation_settings": self._llama_slot(0)}
        if self.llama.props_slots:
            document["total_slots"] = self._llama_slots()
        document["model_path"] = f"/models/{self.models[0].name}.gguf" if self.models else ""
        document["build_info"] = self.llama.build_info
        return self._send(call, 200, JSON_UTF8, go_json(document), call.knobs.ttft)

    def _slots(self, call: _Call) -> bytes | int:
        if not self.llama.slots_endpoint:
            return self._send(call, 501, JSON_UTF8, go_json(SLOTS_DISABLED), call.knobs.ttft)
        document = [self._llama_slot(i) for i in range(self._llama_slots())]
        return self._send(call, 200, JSON_UTF8, go_json(document), call.knobs.ttft)

    def _llama_model(self, model: FakeModel) -> dict[str, Any]:
        return {
            "id": model.name,
            "object": "model",
            "created": int(model.modified_at),
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 2,
                "n_vocab": 49152,
                "n_ctx_train": model.context_length,
                "n_embd": model.dimensions,
                "n_params": 134515008,
                "size": model.size,
            },
        }
