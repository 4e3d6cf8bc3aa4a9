"""Token figures read from the last bytes of an answer (``olla.proxy.tokens``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from olla.proxy.forward import TAIL_SIZE
from olla.proxy.tokens import TokenUsage, read_usage


def _tail(body: bytes) -> bytes:
    return body[-TAIL_SIZE:]


def test_ollama_final_chunk() -> None:
    """If an Ollama stream ends with its final NDJSON chunk, then the prompt and completion
    counts, the generation time and the load time come from it."""
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "x" * 300}, "done": False}
    ] * 20
    final = {
        "model": "m",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": 5_000_000_000,
        "load_duration": 1_200_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130_000_000,
        "eval_count": 298,
        "eval_duration": 4_000_000_000,
    }
    body = b"".join(json.dumps(x).encode() + b"\n" for x in [*lines, final])
    usage = read_usage(_tail(body))
    assert usage == TokenUsage(26, 298, 4.0, 1.2)
    assert usage.tokens_per_second(99.0) == 298 / 4.0


def test_openai_whole_answer() -> None:
    """If an OpenAI answer ends with ``usage``, then its prompt and completion tokens are read
    (``prompt_tokens_details`` does not confuse it)."""
    body = json.dumps(
        {
            "choices": [{"message": {"content": "hello"}}],
            "usage": {
                "prompt_tokens": 11,
                "completion_tokens": 7,
                "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        }
    ).encode()
    usage = read_usage(body)
    assert usage is not None
    assert (usage.prompt, usage.completion) == (11, 7)
    assert usage.tokens_per_second(2.0) == 3.5


def test_openai_stream_with_include_usage() -> None:
    """If an OpenAI stream's last chunk carries ``usage`` (``stream_options.include_usage``)
    before ``[DONE]``, then it is read, and the earlier chunks' ``"usage": null`` are not."""
    chunks = [{"choices": [{"delta": {"content": "tok"}}], "usage": None}] * 50
    chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 50}})
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    body += b"data: [DONE]\n\n"
    usage = read_usage(_tail(body))
    assert usage is not None
    assert (usage.prompt, usage.completion) == (5, 50)


def test_anthropic_answer_and_stream() -> None:
    """If an Anthropic answer or stream (``message_delta``) ends with ``usage``, then its
    input and output tokens are the prompt and completion."""
    whole = json.dumps({"content": [], "usage": {"input_tokens": 9, "output_tokens": 4}})
    usage = read_usage(whole.encode())
    assert usage is not None and (usage.prompt, usage.completion) == (9, 4)
    stream = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":12}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    usage = read_usage(stream)
    assert usage is not None and (usage.prompt, usage.completion) == (None, 12)


def test_no_figures() -> None:
    """If an answer has no token figures (an embedding, an error, a model list), then there is
    no usage, and no rate either."""
    assert read_usage(b'{"error":"model not found"}') is None
    assert read_usage(b'{"data":[{"id":"m"}]}') is None
    assert read_usage(b"") is None
    assert TokenUsage(3, None).tokens_per_second(1.0) is None
    assert TokenUsage(3, 5).tokens_per_second(0.0) is None


def test_generated_text_never_counts() -> None:
    """If the generated text itself spells a figure (JSON-escaped in the answer), then it is
    not read as one."""
    text = 'he wrote "eval_count": 999 and "prompt_tokens": 5'
    body = json.dumps({"message": {"content": text}, "done": False}).encode()
    assert read_usage(body) is None


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.text(max_size=3000))
def test_any_text_before_the_final_chunk(prompt: int, completion: int, text: str) -> None:
    """If any generated text precedes the final chunk, then the figures read are the final
    chunk's."""
    body = json.dumps({"message": {"content": text}}).encode() + b"\n"
    final = {"done": True, "prompt_eval_count": prompt, "eval_count": completion}
    body += json.dumps(final).encode()
    body += b"\n"
    usage = read_usage(_tail(body))
    assert usage is not None
    assert (usage.prompt, usage.completion) == (prompt, completion)


def test_profile_extraction() -> None:
    """If the endpoint's profile names where its figures are, then they are read from there
    and its calculations (Ollama: tokens per second, TTFT, load time) are worked out; the
    figures are kept for the log line."""
    from olla.profiles import builtin_profiles

    ollama = builtin_profiles().get("ollama")
    assert ollama is not None
    final = {
        "model": "m",
        "done": True,
        "total_duration": 5_000_000_000,
        "load_duration": 1_200_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130_000_000,
        "eval_count": 300,
        "eval_duration": 2_000_000_000,
    }
    usage = read_usage(json.dumps(final).encode(), ollama.metrics)
    assert usage is not None
    assert (usage.prompt, usage.completion, usage.load_seconds) == (26, 300, 1.2)
    assert usage.tokens_per_second(99.0) == 150.0
    assert usage.figures["ttft_ms"] == 130.0
    assert usage.figures["model_load_ms"] == 1200.0
    assert usage.figures["is_complete"] is True
    assert usage.figures["model"] == "m"


def test_profile_calculation_over_openai_figures() -> None:
    """If a vLLM answer carries its own generation time, then the vLLM profile's
    tokens_per_second calculation gives the rate, and is_complete comes from finish_reason."""
    from olla.profiles import builtin_profiles

    vllm = builtin_profiles().get("vllm")
    assert vllm is not None
    body = json.dumps(
        {
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45},
            "metrics": {"generation_time_ms": 800},
        }
    ).encode()
    usage = read_usage(body, vllm.metrics)
    assert usage is not None
    assert (usage.prompt, usage.completion) == (5, 40)
    assert usage.tokens_per_second(10.0) == 50.0
    assert usage.figures["is_complete"] == 1.0


def test_extraction_off() -> None:
    """If a profile turns metrics extraction off, then an answer yields no figures."""
    from olla.profiles.spec import MetricsExtraction

    body = b'{"done":true,"prompt_eval_count":3,"eval_count":4}'
    assert read_usage(body, MetricsExtraction(enabled=False)) is None
    assert read_usage(body, MetricsExtraction()) == TokenUsage(3, 4)


@given(
    st.one_of(
        st.text(max_size=40),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    )
)
def test_scalars_read_as_json_reads_them(value: object) -> None:
    """If a figure is any JSON scalar (escaped or not), then it is read as ``json.loads``
    reads it: numbers as floats, strings and booleans as they are, null as absent."""
    from olla.profiles.spec import FrozenMap, MetricsExtraction
    from olla.proxy.tokens import read_figures

    extraction = MetricsExtraction(paths=FrozenMap([("figure", "$.figure"), ("x", "$.x")]))
    expected: object = value
    if isinstance(value, int | float) and not isinstance(value, bool):
        expected = float(json.loads(json.dumps(value)))
    for ascii_only in (True, False):
        text = json.dumps(value, ensure_ascii=ascii_only)
        tail = b'{"x": 1, "figure": ' + text.encode("utf-8", "surrogatepass") + b"}"
        figures = read_figures(tail, extraction)
        assert figures.get("figure") == expected
        assert ("figure" in figures) is (expected is not None)  # a null is no figure


def test_profile_keys_are_read_in_one_pass_last_one_winning() -> None:
    """If a key comes several times, then its last scalar wins (a null drops the figure, an
    object is skipped); a key that ends another key, or sits escaped inside generated text,
    is not confused with it; a key two paths name fills both figures."""
    from olla.profiles.spec import FrozenMap, MetricsExtraction
    from olla.proxy.tokens import read_figures

    extraction = MetricsExtraction(
        paths=FrozenMap(
            [
                ("out", "$.eval_count"),
                ("also_out", "$.choices[0].eval_count"),
                ("prompt", "$.prompt_eval_count"),
                ("gone", "$.gone"),
                ("usage", "$.usage"),
            ]
        )
    )
    tail = (
        b'{"gone": 3, "text": "say \\"eval_count\\": 99", "eval_count": 1, '
        b'"usage": {"x": 1}, "prompt_eval_count": 7, "eval_count": 2, "gone": null}'
    )
    assert read_figures(tail, extraction) == {"out": 2.0, "also_out": 2.0, "prompt": 7.0}


def test_what_json_cannot_read_is_no_figure() -> None:
    """If a figure is a string JSON cannot read (an escape JSON has not, bytes that are not
    UTF-8) or a number too big for a float, or a calculation overflows, then that figure is
    absent and the others are read: nothing raises."""
    from olla.profiles.spec import FrozenMap, MetricsExtraction
    from olla.proxy.tokens import read_figures

    extraction = MetricsExtraction(
        paths=FrozenMap([("a", "$.a"), ("b", "$.b"), ("c", "$.c"), ("big", "$.big"), ("n", "$.n")]),
        calculations=FrozenMap([("over", "n * n"), ("half", "n / 2")]),
    )
    tail = b'{"a": "x\\q", "b": "\xff\xfe", "c": "fine", "big": 1e999, "n": 1e300}'
    assert read_figures(tail, extraction) == {"c": "fine", "n": 1e300, "half": 5e299}
