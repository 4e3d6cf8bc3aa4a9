"""Every seam in olla, as zope interfaces. Implementations say ``@implementer(I...)``.

A seam names values only (``olla.fleet.values``, ``olla.telemetry.records``, the config): never
an implementation, so either side can be replaced (a test's fake, a store shared by several
processes) without the other knowing. ``tests/test_layers.py`` holds this module to that.

The three stores (load, sessions, rate buckets) are in memory by default and shaped so that a
store shared across processes can stand behind them: reads that routing needs at once answer
from the store's current view, everything else returns a ``Deferred``, and writes are applied
to the local view at once and reach a shared store later, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from olla.config.root import OllaConfig
    from olla.fleet.values import Detection, Endpoint, ModelInfo, ProbeResult, SessionPin
    from olla.telemetry.records import AttemptRecord, AttemptStart, RequestRecord


class ILoadView(Interface):
    """What routing and the balancers read about each endpoint's load: synchronous, because
    routing is one pure step over a snapshot (a shared store answers from its current view)."""

    def in_flight(endpoint: Endpoint) -> int:
        """Attempts running on ``endpoint`` now."""

    def slots(endpoint: Endpoint) -> int:
        """Requests ``endpoint`` serves in parallel before it counts as full."""

    def expected_service_time(endpoint: Endpoint, now: float) -> float:
        """How long an attempt there takes: the moving average of finished ones, or longer
        while the ones in flight have already been running longer than that."""

    def busy_until(endpoint: Endpoint) -> float:
        """Until when ``endpoint`` said it is full (429/503); 0 when it did not."""


class ILoadStore(ILoadView):
    """Per-endpoint load, written as attempts start and end.

    Writes return nothing and never fail: they change this process's view at once, and a
    store shared by several processes sends them on later, in order (each process's attempts
    held under its own lease, so a process that dies takes its counts with it). A store that
    cannot reach its backend keeps counting locally.
    """

    def started(endpoint: Endpoint, at: float) -> None:
        """An attempt on ``endpoint`` began at ``at``."""

    def ended(endpoint: Endpoint, started: float, served: float | None) -> None:
        """The attempt that began at ``started`` ended; ``served``: how long it took when
        the backend answered it in full (the service time learns from it), else None."""

    def busy(endpoint: Endpoint, until: float) -> None:
        """``endpoint`` said it is full: others go first until ``until``."""

    def forget(endpoint: Endpoint) -> None:
        """``endpoint`` left the config and its last attempt ended: drop what is kept."""

    def own_in_flight(endpoint: Endpoint) -> int:
        """This process's attempts on ``endpoint`` alone (``in_flight`` of a store shared by
        several processes counts theirs too): whether a removed endpoint has drained here."""


class ISessionStore(Interface):
    """Sticky sessions: session key -> the name of the endpoint that last served it.

    Bounded and expiring (how is the store's business). ``lookup`` may complete later (a
    shared store asks over the network; the in-memory one answers at once, already fired);
    ``pin`` and ``unpin`` apply locally at once and are sent on later. A store that cannot
    answer fires None (no pin): a pin only orders candidates, so failing open is safe.
    """

    def lookup(key: str) -> Deferred[SessionPin | None]:
        """``key``'s session (its idle time starts again), or None when it is not known."""

    def pin(key: str, endpoint: str, model: str = "") -> None:
        """``key``'s session (scoped by ``model``, lower-cased) was served by ``endpoint``: its
        next request goes there first."""

    def unpin(endpoint: str) -> int:
        """``endpoint`` left rotation: the sessions pinned there keep no pin; how many."""

    def model_removed(names: Collection[str], endpoints: Collection[str]) -> int:
        """A model (by each of its lower-cased ``names``) was deleted from ``endpoints``: the
        sessions of that model pinned there are forgotten; how many were."""

    def stats() -> dict[str, int]:
        """``active_sessions``, ``insertions`` and ``evictions`` as this store sees them."""


class IRateStore(Interface):
    """Token buckets by key: each holds up to ``capacity`` tokens and gains ``rate`` a second.

    ``take`` may complete later (a shared store runs it as one atomic script); the in-memory
    store answers at once. A store that cannot answer fires as if every bucket were full (a
    limit fails open rather than refusing everyone).
    """

    def take(
        buckets: Sequence[tuple[str, float, float]], now: float
    ) -> Deferred[tuple[bool, list[float]]]:
        """Take one token from each of ``buckets`` (``(key, rate, capacity)``), all or none.

        Fires with ``(taken, levels)``: ``taken`` when every bucket had a whole token and one
        was taken from each (otherwise none was: the buckets below 1 refused), and each
        bucket's tokens afterwards, in order. A key never seen (or forgotten once full again)
        is a full bucket.
        """


class IPollShare(Interface):
    """Who polls an endpoint this interval when several olla processes share a store: one
    health prober and one model discovery per endpoint per interval, the others hear what
    it found; and what one process learns about an endpoint that the others should know at
    once (a model load begun, done or failed there). Without a shared store there is no
    ``IPollShare`` (every process polls, and learns alone).

    ``kind`` names the poll or the news (``health``, ``models``, ``loaded``, ``loads``); a
    result is a JSON-able dict.
    """

    def claim(kind: str, endpoint: Endpoint, ttl: float) -> Deferred[bool]:
        """Whether this process polls ``endpoint`` now: True when it holds the lease for the
        next ``ttl`` seconds (taken, or renewed because it held it), False when another process
        does; True when the store cannot answer (each process polls for itself then)."""

    def publish(kind: str, endpoint: Endpoint, result: dict[str, object]) -> None:
        """Tell the other processes what this process's poll of ``endpoint`` found."""

    def subscribe(kind: str, listener: Callable[[str, dict[str, object]], object]) -> None:
        """Call ``listener(endpoint id, result)`` for every result another process publishes."""


class IOutcomeListener(Interface):
    """Hears how requests and their upstream attempts end.

    The request path publishes; ``build_app`` registers the listeners (statistics, metrics,
    the failover log, sticky pins, load learning, the endpoint registry, the log line), so a
    new consumer of outcomes touches no request-path code. Called synchronously, in the order
    registered; a listener must not raise (one that does is logged and skipped).
    """

    def attempt_started(start: AttemptStart) -> None:
        """An upstream attempt is on its way (``start.after``: the attempt it takes over from,
        when it is a failover)."""

    def attempt_answered(start: AttemptStart, status: int) -> None:
        """The backend's status line arrived for the attempt ``start`` began."""

    def attempt_finished(record: AttemptRecord) -> None:
        """One upstream attempt ended (exactly once per ``attempt_started``)."""

    def request_finished(record: RequestRecord) -> None:
        """One client request ended: answered, refused, failed or abandoned (exactly once
        per request, also for the answers olla makes itself)."""


class IReconfigurable(Interface):
    """A component that owns some settings and applies a reloaded config to itself."""

    reconfigures = Attribute(
        "The config key paths it applies (``section.`` for a whole section): a reload that "
        "changes only these needs no restart."
    )

    def reconfigure(config: OllaConfig) -> None:
        """Apply ``config`` (already validated) to new requests; never raises."""


class IBalancer(Interface):
    """Orders the candidates of one request: the order among endpoints routing finds equal."""

    name = Attribute("The ``proxy.load_balancer`` value this balancer implements.")

    def order(candidates: Sequence[Endpoint], load: ILoadView) -> list[Endpoint]:
        """Every one of ``candidates`` (never empty), best first, reading their ``load``.
        Called once per request (round-robin advances once)."""

    def tier(endpoint: Endpoint) -> int:
        """Lower tiers go first whatever else routing prefers (0 for balancers without)."""

    def choose(candidates: Sequence[Endpoint], load: ILoadView) -> Endpoint:
        """The first of ``order(candidates, load)``."""


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
