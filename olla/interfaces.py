"""Every seam in olla, as zope interfaces. Implementations say ``@implementer(I...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from olla.fleet.endpoints import Endpoint, EndpointRegistry
    from olla.fleet.values import Detection, ModelInfo, ProbeResult


class IBalancer(Interface):
    """Orders the candidates of one request: the order among endpoints routing finds equal."""

    name = Attribute("The ``proxy.load_balancer`` value this balancer implements.")

    def order(candidates: Sequence[Endpoint], registry: EndpointRegistry) -> list[Endpoint]:
        """Every one of ``candidates`` (never empty), best first, reading load from
        ``registry``. Called once per request (round-robin advances once)."""

    def tier(endpoint: Endpoint) -> int:
        """Lower tiers go first whatever else routing prefers (0 for balancers without)."""

    def choose(candidates: Sequence[Endpoint], registry: EndpointRegistry) -> Endpoint:
        """The first of ``order(candidates, registry)``."""


class IHealthChecker(Interface):
    """Probes one endpoint once."""

    def probe(endpoint: Endpoint) -> Deferred[ProbeResult]:
        """Probe ``endpoint``; never fails (errors become an offline/unhealthy result).

        An endpoint still ``detecting`` its platform is detected first: the result is
        ``detecting`` until that succeeds, and then carries the platform in ``detected``.
        """


class IPlatformDetector(Interface):
    """Learns which platform a ``type: auto`` endpoint runs."""

    def detect(endpoint: Endpoint) -> Deferred[Detection]:
        """Try ``endpoint.candidates`` in order; never fails (no match is a Detection too)."""


class IModelSource(Interface):
    """Reads one backend's model-list document (one ``response_format``)."""

    response_format = Attribute("The profile ``response_format`` this parser reads.")

    def parse(document: object) -> list[ModelInfo]:
        """The models ``document`` lists; raises ``DiscoveryError`` if it is not such a list."""


class IProfile(Interface):
    """What olla knows about one backend platform (loaded from a profile YAML)."""

    name = Attribute("The platform name; also the endpoint ``type`` it describes.")
    prefixes = Attribute("Route prefixes: ``/olla/<prefix>/`` reaches this platform.")
    openai_compatible = Attribute("Whether ``/olla/openai/`` may route to it.")
    paths = Attribute("The API paths it serves (narrows ``/olla/proxy/`` by path).")
    health_check_path = Attribute("Default health check path.")
    model_discovery_path = Attribute("Default model list path.")
    response_format = Attribute("Which IModelSource reads its model list.")

    def serves(path: str) -> bool:
        """Whether ``path`` is one of its API paths."""


class ITranslator(Interface):
    """Turns one client API into OpenAI chat completions and the answers back. Pure: no I/O,
    no reactor, so it is tested by feeding it documents and bytes."""

    name = Attribute("The translator's name on the stats page and in logs.")

    def validate(document: object) -> dict[str, object]:
        """The request as a dict; raises ``InvalidRequest`` (a ValueError) naming the field."""

    def translate_request(body: dict[str, object]) -> dict[str, object]:
        """The OpenAI ``/v1/chat/completions`` body asking what ``body`` asks."""

    def translate_answer(document: object, model: str) -> dict[str, object]:
        """The client's answer for one whole chat completion (ValueError if it is not one)."""

    def stream(model: str, input_tokens: int) -> IStreamTranslator:
        """A translator for one streamed answer."""

    def estimate_tokens(body: dict[str, object]) -> int:
        """The input token estimate for ``body``."""


class IStreamTranslator(Interface):
    """One streamed answer: backend bytes in (any split point), client bytes out."""

    failed = Attribute("Whether the stream ended in an error event.")

    def feed(data: bytes) -> bytes:
        """The client bytes ``data`` completes."""

    def finish() -> bytes:
        """The backend's body ended cleanly: the closing bytes."""

    def fail(message: str) -> bytes:
        """The backend's body broke off: the bytes that end the client's stream cleanly."""
