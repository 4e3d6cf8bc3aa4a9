"""A faithful fake Ollama: the wire format of Ollama 0.5.4 (read from its source and captures),
with knobs for the failures a proxy must survive.

Use it in memory (``FakeOllama(clock)`` is the root resource; every delay is on ``clock``) or as
a process: ``python -m tests.fakes.ollama --port 0 [--models a,b] [--loaded a] [--name A]
[--version V] [--openai-only] [--require-token T] [cost model flags]`` binds 127.0.0.1, prints
``LISTENING <port>`` and stops on SIGTERM/SIGINT.

Knobs per request, first match wins: headers ``X-Fake-Chunks``, ``X-Fake-Delay-Ms``,
``X-Fake-Ttft-Ms``, ``X-Fake-Status``, ``X-Fake-Hang``, ``X-Fake-Drop-After``,
``X-Fake-Malformed``; the same as query parameters (``chunks``, ``delay_ms``, ``ttft_ms``,
``status``, ``hang``, ``drop_after``, ``malformed``); the chunk count also from the body
(``options.num_predict``, ``max_tokens``, ``max_completion_tokens``; not on ``/v1/messages``);
then the server-wide defaults in ``FakeOllama.state``.

- chunks/delay/ttft: a stream writes ``chunks`` content pieces and then the final piece; piece
  ``i`` is written at ``ttft + i * delay`` after the request arrived (absolute, no drift). A
  non-streamed generation answers after ``ttft + chunks * delay``, anything else after ``ttft``.
- status: answer that status with the route's error shape (the server-wide ``state.status``
  spares the health routes ``/``, ``/api/version`` and ``/health``).
- hang: never answer (until the client goes away).
- drop_after K: a stream writes K pieces, then the TCP connection is aborted (K=0: before any
  byte); a JSON answer sends its headers and half its body, then aborts.
- malformed: 200 with a body that is not JSON.

Server-wide: ``state.health`` (``ok``/``fail``/``hang``) for the health routes, the model list and
the loaded set, default chunks/delay/ttft, a forced status, the version. Over HTTP:
``GET /_fake/requests``, ``POST /_fake/reset``, ``GET|POST /_fake/state`` (``/_fake/*`` calls are
not recorded).

Cost model, off unless set (``--capacity N --max-queue Q --load-ms MS --max-loaded K
--token-ms MS``, or the same state keys with underscores): a generation request (``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/messages``) that names a known model takes one of
``capacity`` slots or waits in a FIFO queue (a client that leaves, leaves it); with ``max_queue``
already queued the next one gets Ollama's 503 ``server busy, please try again.  maximum pending
requests exceeded``. With a slot, a model that is not loaded is loaded first (``load_ms``, once
however many wait for it; the final line's ``load_duration`` is what this request waited), evicting
the least recently used idle model when ``max_loaded`` are loaded (none idle: wait for one). Each
chunk then takes ``token_ms`` more. The state counts ``loads``, ``evictions``,
``busy_rejections``, ``peak_running``, ``peak_queued`` (``POST /_fake/reset`` zeroes them) and
shows ``running`` and ``queued``. Lowering ``max_loaded`` evicts nothing until the next load.

Newer Ollama, by version (``FakeOllama(clock, version="0.14.0")``, ``--version 0.14.0`` or the
state key ``version``): from 0.14.0 on, ``POST /v1/messages`` speaks the Anthropic Messages API
(JSON, or SSE ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta``, ``message_stop``; errors in Anthropic's envelope).
Its chunk count is the knob or the server default, cut at ``max_tokens`` (then ``stop_reason`` is
``max_tokens``, otherwise ``end_turn``). ``/v1/messages/count_tokens`` stays gin's 404, as in the
real server; below 0.14.0 so does ``/v1/messages``.

Tool calls: a request with non-empty ``tools`` (and ``tool_choice`` not none) is answered with a
call of its first tool (or the one ``tool_choice`` names) whose arguments hold the tool schema's
required properties (strings ``"x"``, numbers 1, booleans true, an enum's first value), unless
the conversation already carries a tool's answer: a last ``tool`` message on
``/v1/chat/completions`` and ``/api/chat``, a ``tool_result`` block in the last user message on
``/v1/messages``. Streamed, the arguments come in ``max(2, chunks)`` pieces on ``/v1/*``, and in
one line on ``/api/chat``.

Model management (``manage``): ``/api/pull`` with multi-layer progress at ``pull_speed`` bytes
per second, one line per ``pull_tick_ms`` (state keys; ``pull_size`` is the weights' size), and
two failure knobs: ``pull_fail_after`` bytes (an Ollama error line) and ``pull_die_after`` bytes
(the connection is cut); ``/api/push``; ``/api/create`` in the shape of the fake's ``version``
(a Modelfile up to 0.5.4, ``from``/``files`` from 0.5.5); ``/api/copy``; ``DELETE /api/delete``;
``HEAD|POST /api/blobs/<digest>`` (the body's sha256 checked; sizes kept, not bytes). The
models pulled, created or copied are listed from then on; deleted ones no longer.

Deliberate differences from the real server, for the tests' sake: a chat with no messages streams
(the real one answers ``done_reason: "load"``), loaded models never expire, ``/v1/embeddings``
honours ``encoding_format: base64`` (as newer Ollama and OpenAI do), and
``/api/show`` lists ``capabilities`` (as newer Ollama does: a model's ``capabilities`` field, else
``completion`` or ``embedding``) and ``<arch>.context_length`` unless ``state.show_info`` is
``bare`` (``--show-info bare``: neither, as an older Ollama). On ``/v1/messages`` the fake sends
what Anthropic's own API does where Ollama trims it: ``stop_sequence: null``, ``stop_reason: null``
in ``message_start``, a ``ping`` event, and tool arguments in several ``input_json_delta`` pieces;
its errors carry no ``request_id``. On ``/v1/chat/completions`` tool arguments stream in pieces
(Ollama sends them whole).

Layout (one class's state, split by API into mixins; ``FakeOllama`` in ``server`` composes them):
``wire`` (constants, ``FakeModel``/``FakeState``/``Knobs``/``RecordedRequest``, Go-JSON helpers,
``_Exchange``/``_Call``/``_Route``, and ``WireMixin``: recording, knobs, JSON/error/stream
writers), ``cost`` (``_Scheduler`` and ``CostMixin._admit``), ``native`` (``/``, ``/health``,
``/api/*``), ``manage`` (model management), ``openai`` (``/v1/*`` but messages), ``anthropic``
(``/v1/messages``), ``lmstudio`` (``/api/v0/models``), ``llamacpp`` (llama.cpp's ``/props``,
``/slots`` and ``/v1/models`` meta, with ``FakeOllama(clock, llamacpp=LlamaCpp())`` or
``--llamacpp [--llamacpp-slots]``), ``control`` (the Python API and ``/_fake/*``), ``bulk``
(``/upload``, ``/big``), ``server`` (``FakeOllama``, dispatch, ``FakeSite``, ``main``);
``__main__`` runs ``main()``. Every name of the former single module is re-exported here.
"""

from __future__ import annotations

from .anthropic import _anthropic_text
from .bulk import BIG_WRITE, BigBody
from .cost import Admission, _Job, _Scheduler
from .llamacpp import SLOTS_DISABLED, LlamaCpp
from .native import _EMBED_TEMPLATE, _LLAMA_TEMPLATE
from .server import FakeOllama, FakeSite, main
from .wire import (
    _GO_TYPES,
    ANTHROPIC_MIN_VERSION,
    BIG_BODY_RECORD,
    BUSY_MESSAGE,
    COST_KEYS,
    DEFAULT_MODELS,
    DEFAULT_VERSION,
    EPSILON,
    GET,
    GET_HEAD,
    HEALTH_MODES,
    HEALTH_PATHS,
    JSON_PLAIN,
    JSON_UTF8,
    MESSAGES_PATH,
    MODIFIED_AT,
    NDJSON,
    POST,
    SSE,
    TEXT_PLAIN,
    TEXT_UTF8,
    WARM_LOAD_NS,
    FakeModel,
    FakeState,
    Handler,
    KnobError,
    Knobs,
    Recorded,
    RecordedRequest,
    _Call,
    _Exchange,
    _field_type_error,
    _hex_id,
    _pick_tool,
    _Route,
    _sample,
    _split,
    _tokens,
    anthropic_error,
    embedding_vector,
    float32,
    floats_base64,
    go_json,
    is_embedding_name,
    parse_go_json,
    rfc3339,
    tool_arguments,
    version_tuple,
)

__all__ = [
    "SLOTS_DISABLED",
    "LlamaCpp",
    "ANTHROPIC_MIN_VERSION",
    "Admission",
    "BIG_BODY_RECORD",
    "BIG_WRITE",
    "BUSY_MESSAGE",
    "BigBody",
    "COST_KEYS",
    "DEFAULT_MODELS",
    "DEFAULT_VERSION",
    "EPSILON",
    "FakeModel",
    "FakeOllama",
    "FakeSite",
    "FakeState",
    "GET",
    "GET_HEAD",
    "HEALTH_MODES",
    "HEALTH_PATHS",
    "Handler",
    "JSON_PLAIN",
    "JSON_UTF8",
    "KnobError",
    "Knobs",
    "MESSAGES_PATH",
    "MODIFIED_AT",
    "NDJSON",
    "POST",
    "Recorded",
    "RecordedRequest",
    "SSE",
    "TEXT_PLAIN",
    "TEXT_UTF8",
    "WARM_LOAD_NS",
    "_Call",
    "_EMBED_TEMPLATE",
    "_Exchange",
    "_GO_TYPES",
    "_Job",
    "_LLAMA_TEMPLATE",
    "_Route",
    "_Scheduler",
    "_anthropic_text",
    "_field_type_error",
    "_hex_id",
    "_pick_tool",
    "_sample",
    "_split",
    "_tokens",
    "anthropic_error",
    "embedding_vector",
    "float32",
    "floats_base64",
    "go_json",
    "is_embedding_name",
    "main",
    "parse_go_json",
    "rfc3339",
    "tool_arguments",
    "version_tuple",
]
