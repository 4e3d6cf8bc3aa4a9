# -*- test-case-name: tests.test_anthropic_translate -*-
"""The Anthropic Messages translator behind the ``ITranslator`` seam."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from olla.anthropic import request, response
from olla.interfaces import IStreamTranslator, ITranslator


@implementer(ITranslator)
class AnthropicTranslator:
    name = "anthropic"

    def validate(self, document: object) -> dict[str, Any]:
        return request.validate(document)

    def translate_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return request.to_openai(body)

    def translate_answer(self, document: object, model: str) -> dict[str, Any]:
        return response.to_message(document, model)

    def stream(self, model: str, input_tokens: int) -> IStreamTranslator:
        return response.StreamTranslator(model, input_tokens)

    def estimate_tokens(self, body: dict[str, Any]) -> int:
        return request.estimate_input_tokens(body)
