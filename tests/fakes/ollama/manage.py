"""Ollama's model management (``ManageMixin``): ``/api/pull``, ``/api/push``, ``/api/create``,
``/api/copy``, ``DELETE /api/delete`` and ``HEAD|POST /api/blobs/<digest>``, as Ollama 0.5.4
answers them (and, from ``version`` 0.5.5 on, the new create request).

- pull: ``pulling manifest``, then each layer (the model's weights, template, params, config)
  as ``pulling <12 hex>`` lines with ``digest``, ``total`` and ``completed``, one every
  ``pull_tick_ms`` at ``pull_speed`` bytes per second (0: each layer at once, as a layer the
  machine has), then ``verifying sha256 digest``, ``writing manifest``, ``success``; the model
  is listed from then on, with the same digest on every fake that pulled it. Failure knobs on
  the weights layer: ``pull_fail_after`` bytes (an Ollama error line, the stream ends cleanly)
  and ``pull_die_after`` bytes (the connection is cut). ``stream: false``: the last line alone,
  when the pull is over.
- push: ``retrieving manifest``, ``pushing <12 hex>`` per layer, ``pushing manifest``,
  ``success`` (an unknown model: the error line Ollama sends).
- create (< 0.5.5): a Modelfile (``modelfile``) ``FROM`` a listed model or an uploaded blob
  (``@sha256:...``); (>= 0.5.5): ``from`` or ``files``, errors in the stream carrying a
  ``status`` as Ollama's do. Lines: ``using existing layer``, ``creating new layer``,
  ``writing manifest``, ``success``.
- copy: 200 and no body; delete: 200 and no body, or 404 ``model '<name>' not found``.
- blobs: ``HEAD`` 200/404; ``POST`` checks the body's sha256 (400 ``digest mismatch``), 201
  (200 when the blob was there already). The fake keeps each blob's size, not its bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.web.server import NOT_DONE_YET

from .wire import EPSILON, JSON_UTF8, NDJSON, FakeModel, _Call, go_json, version_tuple

#: the first Ollama whose /api/create takes ``from``/``files`` (and no Modelfile)
NEW_CREATE_API = (0, 5, 5)
BLOB_PREFIX = "/api/blobs/"
_DIGEST = re.compile(r"\Asha256[:-]([0-9a-fA-F]{64})\Z")
#: the layers a pulled model has besides its weights: (media kind, size in bytes)
_SMALL_LAYERS = (("template", 1_428), ("params", 96), ("config", 487))
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?\Z")


def _sha(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME.match(name))


class _Events:
    """What a progress stream writes, each at its time after the start: a line, or a cut."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any] | None]] = []
        self.at = 0.0

    def line(self, document: dict[str, Any]) -> None:
        self.items.append((self.at, document))

    def cut(self) -> None:
        self.items.append((self.at, None))


class ManageMixin:
    """The management handlers."""

    # ------------------------------------------------------------------ progress streams

    def _progress(
        self, call: _Call, events: _Events, on_success: Callable[[], None] | None = None
    ) -> bytes | int:
        """Write ``events`` as Ollama streams progress (or, with ``stream: false``, the last
        line alone once they are over); ``on_success`` runs when the success line is due."""
        request = call.request
        exchange = call.exchange
        streamed = call.body.get("stream") is not False
        start = self.clock.seconds()
        position = [0]

        def pump() -> None:
            while not exchange.gone and position[0] < len(events.items):
                at, document = events.items[position[0]]
                now = self.clock.seconds()
                if start + at > now + EPSILON:
                    exchange.later(start + at - now - EPSILON, pump)
                    return
                position[0] += 1
                if document is None:
                    exchange.abort()
                    return
                if document.get("status") == "success" and on_success is not None:
                    on_success()
                if streamed:
                    request.write(go_json(document) + b"\n")
                elif "error" in document or document.get("status") == "success":
                    self._whole(call, document)
                    return
            if not exchange.gone and streamed:
                request.finish()

        if streamed:
            request.setResponseCode(200)
            request.setHeader(b"content-type", NDJSON)
        pump()
        return NOT_DONE_YET

    def _whole(self, call: _Call, document: dict[str, Any]) -> None:
        """``waitForStream``: the success line, or the error with its status (else 500)."""
        status = 200 if "error" not in document else int(document.get("status") or 500)
        body = go_json({"error": document["error"]} if "error" in document else document)
        request = call.request
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON_UTF8)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _layer(
        self,
        events: _Events,
        verb: str,
        digest: str,
        size: int,
        *,
        instant: bool,
        fail_after: int | None = None,
        die_after: int | None = None,
    ) -> bool:
        """One layer's progress lines; False when a failure knob ended the stream."""
        state = self.state
        short = digest[7:19]
        speed = state.pull_speed
        if instant or speed <= 0:
            events.line(
                {"status": f"{verb} {short}", "digest": digest, "total": size, "completed": size}
            )
            return True
        tick = max(state.pull_tick_ms, 1.0) / 1000
        step = max(1, int(speed * tick))
        done = 0
        events.line({"status": f"{verb} {short}", "digest": digest, "total": size})
        while done < size:
            events.at += tick
            done = min(size, done + step)
            if die_after is not None and done >= die_after:
                events.cut()
                return False
            if fail_after is not None and done >= fail_after:
                events.line({"error": "max retries exceeded: fake: the registry went away"})
                return False
            events.line(
                {"status": f"{verb} {short}", "digest": digest, "total": size, "completed": done}
            )
        return True

    def _empty(self, call: _Call, status: int) -> bytes | int:
        """gin's ``c.Status``: the status, no body, no content type."""
        call.request.setResponseCode(status)
        call.request.setHeader(b"content-length", b"0")
        return b""

    # ------------------------------------------------------------------ pull and push

    def _pull(self, call: _Call) -> bytes | int:
        name = call.body.get("model") or call.body.get("name")
        if not _valid_name(name):
            return self._json(call, {"error": "invalid model name"}, 400)
        had = self.model(name)
        wanted = FakeModel(name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest")
        size = self.state.pull_size or wanted.size
        events = _Events()
        events.line({"status": "pulling manifest"})
        weights = _sha(wanted.name, "weights")
        finished = self._layer(
            events,
            "pulling",
            weights,
            size,
            instant=had is not None,
            fail_after=self.state.pull_fail_after,
            die_after=self.state.pull_die_after,
        )
        if finished:
            for kind, layer_size in _SMALL_LAYERS:
                self._layer(events, "pulling", _sha(wanted.name, kind), layer_size, instant=True)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                events.line({"status": status})

        def listed() -> None:
            model = replace(wanted, size=size, digest=_sha(wanted.name, "manifest")[7:])
            self.models = [m for m in self.models if m.name != model.name] + [model]

        return self._progress(call, events, listed)

    def _push(self, call: _Call) -> bytes | int:
        name = call.body.get("model") or call.body.get("name")
        if not _valid_name(name):
            return self._json(call, {"error": "invalid model name"}, 400)
        events = _Events()
        events.line({"status": "retrieving manifest"})
        model = self.model(name)
        if model is None:
            events.line({"error": f"open /root/.ollama/models/manifests/{name}: no such file"})
            return self._progress(call, events)
        self._layer(events, "pushing", "sha256:" + model.digest, model.size, instant=False)
        for kind, size in _SMALL_LAYERS:
            self._layer(events, "pushing", _sha(model.name, kind), size, instant=True)
        events.line({"status": "pushing manifest"})
        events.line({"status": "success"})
        return self._progress(call, events)

    # ------------------------------------------------------------------ create

    def _create(self, call: _Call) -> bytes | int:
        body = call.body
        name = body.get("model") or body.get("name")
        if not _valid_name(name):
            return self._json(call, {"error": "invalid model name"}, 400)
        events = _Events()
        if version_tuple(self.version) >= NEW_CREATE_API:
            base, blob, error = self._new_style_source(body)
            if error is not None:
                events.line(error)
                return self._progress(call, events)
        else:
            if not body.get("modelfile") and not body.get("path"):
                return self._json(call, {"error": "path or Modelfile are required"}, 400)
            base, blob, message = self._modelfile_source(str(body.get("modelfile") or ""))
            if message is not None:
                return self._json(call, {"error": message}, 400)
        source = self.model(base) if base else None
        if base and source is None:
            events.line({"error": "pull model manifest: file does not exist"})
            return self._progress(call, events)
        if blob and blob not in self.blobs:
            path = f"/root/.ollama/models/blobs/{blob.replace(':', '-')}"
            events.line({"error": f"open {path}: no such file or directory"})
            return self._progress(call, events)
        if source is not None:
            events.line({"status": f"using existing layer sha256:{source.digest}"})
        else:
            events.line({"status": "parsing GGUF"})
            events.line({"status": f"using existing layer {blob}"})
        created = FakeModel(
            name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest",
            size=source.size if source else self.blobs.get(blob or "", 0) or 0,
            family=source.family if source else "",
        )
        created.digest = _sha(created.name, str(sorted(body.items())))[7:]
        events.line({"status": f"creating new layer {_sha(created.name, 'params')}"})
        events.line({"status": "writing manifest"})
        events.line({"status": "success"})

        def listed() -> None:
            self.models = [m for m in self.models if m.name != created.name] + [created]

        return self._progress(call, events, listed)

    @staticmethod
    def _new_style_source(
        body: dict[str, Any],
    ) -> tuple[str | None, str | None, dict[str, Any] | None]:
        """(base model, blob digest, error line) of a create request of Ollama >= 0.5.5."""
        if body.get("from"):
            return str(body["from"]), None, None
        files = body.get("files")
        if isinstance(files, dict) and files:
            return None, str(next(iter(files.values()))), None
        return None, None, {"error": "neither 'from' or 'files' was specified", "status": 400}

    @staticmethod
    def _modelfile_source(modelfile: str) -> tuple[str | None, str | None, str | None]:
        """(base model, blob digest, error) of a Modelfile's FROM line (Ollama 0.5.4)."""
        for line in modelfile.splitlines():
            command, _, argument = line.strip().partition(" ")
            if command.upper() == "FROM":
                argument = argument.strip()
                if argument.startswith("@"):
                    return None, argument[1:], None
                return argument, None, None
        return None, None, "no FROM line for the model was specified"

    # ------------------------------------------------------------------ copy and delete

    def _copy(self, call: _Call) -> bytes | int:
        source, destination = call.body.get("source"), call.body.get("destination")
        if not _valid_name(source):
            return self._json(call, {"error": f"source {source!r} is invalid"}, 400)
        if not _valid_name(destination):
            return self._json(call, {"error": f"destination {destination!r} is invalid"}, 400)
        model = self.model(source)
        if model is None:
            return self._json(call, {"error": f'model "{source}" not found'}, 404)
        full = destination if ":" in destination.rsplit("/", 1)[-1] else f"{destination}:latest"
        copied = replace(model, name=full)
        self.models = [m for m in self.models if m.name != full] + [copied]
        return self._empty(call, 200)

    def _delete(self, call: _Call) -> bytes | int:
        name = call.body.get("model") or call.body.get("name")
        if not _valid_name(name):
            return self._json(call, {"error": f"name {name!r} is invalid"}, 400)
        model = self.model(name)
        if model is None:
            return self._json(call, {"error": f"model '{name}' not found"}, 404)
        self.models = [m for m in self.models if m is not model]
        self.unload(model.name)
        return self._empty(call, 200)

    # ------------------------------------------------------------------ blobs

    def _blob(self, call: _Call) -> bytes | int:
        found = _DIGEST.match(call.path[len(BLOB_PREFIX) :])
        if found is None:
            return self._json(call, {"error": "invalid digest format"}, 400)
        digest = "sha256:" + found.group(1).lower()
        if call.request.method == b"HEAD":
            if digest in self.blobs:
                return self._empty(call, 200)
            return self._json(call, {"error": f'blob "{digest}" not found'}, 404)
        if digest in self.blobs:
            return self._empty(call, 200)
        received = self.requests[-1]
        got = "sha256:" + received.body_sha256
        if got != digest:
            message = f'digest mismatch, expected "{digest}", got "{got}"'
            return self._json(call, {"error": message}, 400)
        self.blobs[digest] = received.body_size
        return self._empty(call, 201)
