"""The progress merger and the NDJSON splitter of model management: pure, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from olla.manage.progress import (
    BadStream,
    HostResult,
    LineSplitter,
    Outcomes,
    ProgressMerger,
    parse_line,
)

MODEL = "sha256:" + "a" * 64
CONFIG = "sha256:" + "b" * 64


def layer(digest: str, total: int, completed: int = 0) -> dict[str, Any]:
    line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
    if completed:
        line["completed"] = completed
    return line


def test_layers_are_summed_across_hosts() -> None:
    """If two hosts pull the same layer, then completed is the sum of both hosts' progress and
    total counts the layer once per host from the first report on."""
    merger = ProgressMerger("pull", ["a", "b"])
    assert merger.line("a", layer(MODEL, 100)) == [
        {"status": "pulling aaaaaaaaaaaa", "digest": MODEL, "total": 200}
    ]
    assert merger.line("a", layer(MODEL, 100, 40)) == [
        {"status": "pulling aaaaaaaaaaaa", "digest": MODEL, "total": 200, "completed": 40}
    ]
    (merged,) = merger.line("b", layer(MODEL, 100, 10))
    assert (merged["total"], merged["completed"]) == (200, 50)
    (merged,) = merger.line("b", layer(MODEL, 100, 100))
    (merged,) = merger.line("a", layer(MODEL, 100, 100))
    assert (merged["total"], merged["completed"]) == (200, 200)


def test_status_lines_are_named_and_success_needs_every_host() -> None:
    """If hosts send plain status lines, then each is passed on with the host's name; the
    final line is success only once every host said success and ended."""
    merger = ProgressMerger("pull", ["a", "b"])
    assert merger.line("a", {"status": "pulling manifest"}) == [{"status": "a: pulling manifest"}]
    assert merger.line("a", {"status": "success"}) == [{"status": "a: success"}]
    assert merger.ended("a") == []
    assert not merger.done
    merger.line("b", {"status": "success"})
    merger.ended("b")
    assert merger.done
    assert merger.final() == {"status": "success"}
    assert merger.status() == 200


def test_a_failed_host_is_named_with_its_reason() -> None:
    """If one host sends an error line and another dies mid-stream, then each is reported as
    it happens and the final line is an error naming both and why, and the one that worked."""
    merger = ProgressMerger("pull", ["a", "b", "c"])
    assert merger.line("a", {"error": "pull model manifest: file does not exist"}) == [
        {"status": "a: failed: pull model manifest: file does not exist"}
    ]
    merger.line("b", layer(MODEL, 100, 30))
    assert merger.failed("b", "connection lost mid-stream") == [
        {"status": "b: failed: connection lost mid-stream"}
    ]
    merger.line("c", {"status": "success"})
    merger.ended("c")
    assert merger.done
    assert merger.final() == {
        "error": "pull failed on 2 of 3 endpoint(s): a: pull model manifest: file does not "
        "exist; b: connection lost mid-stream (succeeded on c)"
    }
    assert merger.status() == 500


def test_a_stream_that_ends_without_success_is_a_failure() -> None:
    """If a host's stream ends cleanly but it never said success, then it failed."""
    merger = ProgressMerger("create", ["a"])
    merger.line("a", {"status": "writing manifest"})
    assert merger.ended("a") == [
        {"status": "a: failed: its stream ended before it reported success"}
    ]
    assert "error" in merger.final()


def test_lines_after_a_host_ended_change_nothing() -> None:
    """If a host failed, then its later lines and ends are ignored (its first end counts)."""
    merger = ProgressMerger("pull", ["a"])
    merger.failed("a", "timed out")
    assert merger.line("a", {"status": "success"}) == []
    assert merger.ended("a") == []
    assert merger.failed("a", "again") == []
    assert merger.final() == {"error": "pull failed on 1 of 1 endpoint(s): a: timed out"}


@pytest.mark.parametrize(
    ("results", "status"),
    [
        ([HostResult("a", True), HostResult("b", True)], 200),
        ([HostResult("a", False, "bad", 400), HostResult("b", False, "bad", 400)], 400),
        ([HostResult("a", False, "gone", 404), HostResult("b", False, "x", None)], 500),
        ([HostResult("a", True), HostResult("b", False, "not found", 404)], 500),
        ([HostResult("a", False, "cut", None), HostResult("b", False, "cut", None)], 500),
    ],
)
def test_status_of_the_one_answer(results: list[HostResult], status: int) -> None:
    """If every host failed the same way, then the answer carries their status; a partial
    failure or mixed causes are a 500, as Ollama answers a call that failed midway."""
    outcomes = Outcomes("delete", [r.host for r in results])
    for result in results:
        outcomes.ended(result)
    assert outcomes.status() == status


def test_in_stream_status_of_newer_ollama_counts() -> None:
    """If a host's error line carries Ollama's ``status`` (0.5.5 and later), then a call where
    every host failed that way answers with it."""
    merger = ProgressMerger("create", ["a"])
    merger.line("a", {"error": "neither 'from' or 'files' was specified", "status": 400})
    assert merger.status() == 400


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 1000)),
        min_size=1,
        max_size=60,
    )
)
def test_merged_progress_never_goes_backwards(events: list[tuple[str, int]]) -> None:
    """If hosts report a layer in any interleaving, each host's own progress only growing,
    then the merged completed and total never shrink and completed never passes total."""
    merger = ProgressMerger("pull", ["a", "b", "c"])
    highest: dict[str, int] = {}
    last = (0, 0)
    for host, step in events:
        completed = min(1000, highest.get(host, 0) + step)
        highest[host] = completed
        (merged,) = merger.line(host, layer(MODEL, 1000, completed))
        now = (merged["total"], merged.get("completed", 0))
        assert now[0] >= last[0] and now[1] >= last[1]
        assert now[1] <= now[0]
        last = now


@given(st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_lines_split_anywhere(cuts: list[int]) -> None:
    """If a stream arrives cut at any points, then the same lines come out."""
    lines = [json.dumps(layer(MODEL, 9, i)).encode() for i in range(5)]
    stream = b"\n".join(lines) + b"\n"
    splitter = LineSplitter()
    out: list[bytes] = []
    position = 0
    for cut in cuts * 200:
        if position >= len(stream):
            break
        out += splitter.feed(stream[position : position + cut])
        position += cut
    out += splitter.feed(stream[position:]) + splitter.rest()
    assert out == lines


def test_splitter_bounds_a_line_and_keeps_a_last_unterminated_one() -> None:
    """If a line never ends, then the splitter gives up past its limit; a last line without
    a newline is still handed over at the end."""
    splitter = LineSplitter(limit=10)
    with pytest.raises(BadStream):
        splitter.feed(b"x" * 11)
    splitter = LineSplitter()
    assert splitter.feed(b'{"status":"success"}') == []
    assert splitter.rest() == [b'{"status":"success"}']


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_bad_lines(line: bytes) -> None:
    """If a host sends a line that is not a JSON object, then it is a bad stream."""
    with pytest.raises(BadStream):
        parse_line(line)


def test_second_layer_is_kept_apart() -> None:
    """If hosts pull two layers, then each digest has its own sums."""
    merger = ProgressMerger("pull", ["a", "b"])
    merger.line("a", layer(MODEL, 100, 100))
    (config,) = merger.line("a", layer(CONFIG, 5, 5))
    assert (config["digest"], config["total"], config["completed"]) == (CONFIG, 10, 5)
