# -*- test-case-name: tests.test_manage_progress -*-
"""Many Ollamas' progress streams as one, in Ollama's own shape (pure: lines in, lines out).

A pull, push or create on several machines gives one stream back:

- a layer's progress line (``digest`` with ``total``) is merged across the hosts: ``completed``
  is the sum of each host's highest ``completed`` for that digest, ``total`` the sum of each
  host's ``total`` (a host that has not reported the layer yet counts with the size the others
  reported: a digest names the same bytes everywhere). Both only grow, so a client's
  percentage never goes backwards;
- every other status line is passed on named: ``{"status": "gpu-1: writing manifest"}``;
- a host that fails (an error line, an error status, a cut or silent stream) is reported at
  once as ``{"status": "gpu-1: failed: <why>"}`` and never dropped: the last line is
  ``{"status": "success"}`` only when every host reported success, otherwise
  ``{"error": "<operation> failed on <each host and why>"}``.

``stream: false`` gets the last line alone, with :meth:`Outcomes.status` as its HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the longest progress line a host may send (Ollama's are a few hundred bytes)
LINE_LIMIT = 64 * 1024

Document = dict[str, Any]


class BadStream(ValueError):
    """A host sent something that is not an NDJSON progress stream."""


class LineSplitter:
    """Bytes at any split point in, complete lines out."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self._limit = limit
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (without their newline; blank lines skipped)."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self._limit:
            raise BadStream(f"a progress line longer than {self._limit} bytes")
        return [line for line in lines if line.strip()]

    def rest(self) -> list[bytes]:
        """What is left at the end of the stream: a last line without its newline."""
        rest, self._buffer = self._buffer, b""
        return [rest] if rest.strip() else []


def parse_line(line: bytes) -> Document:
    """One progress line as a JSON object."""
    try:
        document = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BadStream(f"a progress line that is not JSON: {line[:80]!r}") from None
    if not isinstance(document, dict):
        raise BadStream(f"a progress line that is not a JSON object: {line[:80]!r}")
    return document


@dataclass(frozen=True)
class HostResult:
    """How one host's part of a management call ended."""

    host: str
    ok: bool
    #: why it failed (empty when it succeeded)
    reason: str = ""
    #: the HTTP status its failure carried (an error answer, or Ollama's in-stream ``status``)
    status: int | None = None


class Outcomes:
    """The hosts of one call and how each ended; the call's one answer once all have."""

    def __init__(self, operation: str, hosts: Sequence[str]) -> None:
        self.operation = operation
        self.hosts = tuple(hosts)
        self.results: dict[str, HostResult] = {}

    def ended(self, result: HostResult) -> bool:
        """Record ``result`` (a host's first end counts); whether it was new."""
        if result.host in self.results:
            return False
        self.results[result.host] = result
        return True

    @property
    def done(self) -> bool:
        return all(host in self.results for host in self.hosts)

    @property
    def failed(self) -> list[HostResult]:
        return [r for r in (self.results.get(h) for h in self.hosts) if r and not r.ok]

    @property
    def succeeded(self) -> list[str]:
        return [h for h in self.hosts if (r := self.results.get(h)) is not None and r.ok]

    def final(self) -> Document:
        """``{"status": "success"}`` when every host succeeded, else an error naming each host
        that failed and why (and those that did not)."""
        failed = self.failed
        if not failed:
            return {"status": "success"}
        causes = "; ".join(f"{r.host}: {r.reason}" for r in failed)
        message = f"{self.operation} failed on {len(failed)} of {len(self.hosts)} endpoint(s): "
        message += causes
        if self.succeeded:
            message += f" (succeeded on {', '.join(self.succeeded)})"
        return {"error": message}

    def status(self) -> int:
        """The HTTP status of :meth:`final`: 200; the hosts' own status when every host failed
        with the same one (a bad name is 400 everywhere, a missing model 404); else 500, which
        Ollama gives a call that failed midway."""
        failed = self.failed
        if not failed:
            return 200
        statuses = {r.status for r in failed}
        if not self.succeeded and len(statuses) == 1:
            (only,) = statuses
            if only is not None and 400 <= only < 600:
                return only
        return 500


@dataclass
class _Layer:
    status: str
    total: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)


class ProgressMerger:
    """The merged progress stream of one pull, push or create (see the module docstring)."""

    def __init__(self, operation: str, hosts: Sequence[str]) -> None:
        self.outcomes = Outcomes(operation, hosts)
        self._layers: dict[str, _Layer] = {}
        self._reported_success: set[str] = set()

    @property
    def done(self) -> bool:
        return self.outcomes.done

    def line(self, host: str, document: Mapping[str, Any]) -> list[Document]:
        """One line from ``host``; the lines to pass on."""
        if host in self.outcomes.results:
            return []  # a host's lines after its end change nothing
        error = document.get("error")
        if error is not None:
            status = document.get("status")
            return self.failed(host, str(error), status if isinstance(status, int) else None)
        status_text = document.get("status")
        status_text = status_text if isinstance(status_text, str) else ""
        digest = document.get("digest")
        total = _count(document.get("total"))
        if isinstance(digest, str) and digest and total is not None:
            completed = _count(document.get("completed")) or 0
            return [self._progress(host, digest, status_text, total, completed)]
        if not status_text:
            return []
        if status_text == "success":
            self._reported_success.add(host)
        return [{"status": f"{host}: {status_text}"}]

    def failed(self, host: str, reason: str, status: int | None = None) -> list[Document]:
        """``host`` failed (an error line or answer, a cut or silent stream)."""
        if not self.outcomes.ended(HostResult(host, False, reason, status)):
            return []
        return [{"status": f"{host}: failed: {reason}"}]

    def ended(self, host: str) -> list[Document]:
        """``host``'s stream ended cleanly: it succeeded if it said so."""
        if host in self._reported_success:
            self.outcomes.ended(HostResult(host, True))
            return []
        return self.failed(host, "its stream ended before it reported success")

    def final(self) -> Document:
        return self.outcomes.final()

    def status(self) -> int:
        return self.outcomes.status()

    def _progress(
        self, host: str, digest: str, status: str, total: int, completed: int
    ) -> Document:
        layer = self._layers.setdefault(digest, _Layer(status))
        layer.total[host] = max(layer.total.get(host, 0), total)
        layer.completed[host] = max(layer.completed.get(host, 0), completed)
        size = max(layer.total.values())
        merged_total = sum(layer.total.get(h, size) for h in self.outcomes.hosts)
        merged: Document = {"status": layer.status, "digest": digest, "total": merged_total}
        done = sum(layer.completed.values())
        if done:  # Go's omitempty, as Ollama writes it
            merged["completed"] = done
        return merged


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
