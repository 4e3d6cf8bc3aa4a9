"""Fleet model management end to end in memory: olla's real site over fake Ollamas, one Clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from olla.config import (
    AccessPolicyConfig,
    ClientAuthConfig,
    ClientKey,
    ModelManagementConfig,
    OllaConfig,
)
from olla.fleet.endpoints import EndpointStatus
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import Harness, Response, http_request

BASE = "m:1"


def managed(
    *, targets: tuple[str, ...] | None = None, keys: Sequence[ClientKey] = ()
) -> Callable[[OllaConfig], OllaConfig]:
    def adjust(config: OllaConfig) -> OllaConfig:
        config = replace(config, model_management=ModelManagementConfig(True, targets))
        # the harness's requests say "Host: olla.test:40114"
        policy = AccessPolicyConfig(allowed_hosts=("localhost", "olla.test"))
        config = replace(config, dashboard=replace(config.dashboard, access_policy=policy))
        if keys:
            auth = ClientAuthConfig(tuple(keys))
            config = replace(config, server=replace(config.server, auth=auth))
        return config

    return adjust


MANAGED = managed()


def body(raw: Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.body.splitlines() if line.strip()]


def management_lines(observer: EventLoggingObserver) -> list[dict[str, Any]]:
    """The request log lines of model-management calls (one per call)."""
    return [e for e in observer if e.get("request_line") and e.get("operation")]


class Fleet(SynchronousTestCase):
    """Two fake Ollamas, ``a`` and ``b``, each with ``m:1``, behind olla on one Clock."""

    def make(
        self,
        adjust: Callable[[OllaConfig], OllaConfig] | None = MANAGED,
        *,
        b_models: Sequence[str] = (BASE,),
    ) -> Harness:
        self.clock = Clock()
        self.a = FakeOllama(self.clock, [FakeModel(BASE)], name="a")
        self.b = FakeOllama(self.clock, [FakeModel(n) for n in b_models], name="b")
        h = Harness(
            {"a:1": self.a, "b:1": self.b},
            clock=self.clock,
            models={"a:1": [BASE], "b:1": list(b_models)},
            adjust=adjust,
        )
        for endpoint in h.endpoints:
            h.registry.version_read(endpoint, "0.5.4")
        return h

    def go(self, h: Harness, raw: bytes, seconds: float = 5.0, peer: str = "127.0.0.1") -> Any:
        client = h.send(raw, peer)
        for _ in range(int(seconds / 0.05)):
            h.advance(0.05)
        return client

    def answer(
        self, h: Harness, method: str, path: str, document: object = None, **kw: Any
    ) -> Response:
        headers = kw.pop("headers", None)
        raw = None if document is None else json.dumps(document).encode()
        client = self.go(h, http_request(method, path, raw, headers), **kw)
        response = client.response()
        assert response is not None and response.complete, client.transport.value()[:500]
        return response

    def tags(self, h: Harness) -> list[str]:
        listed = json.loads(self.answer(h, "GET", "/olla/ollama/api/tags").body)["models"]
        return sorted(m["name"] for m in listed)


class DisabledTests(Fleet):
    def test_each_route_answers_501(self) -> None:
        """If model_management is off (the default), then each management route answers 501
        as the Go original does, and nothing reaches a backend."""
        h = self.make(adjust=None)
        for method, path in [
            ("POST", "/api/pull"),
            ("POST", "/api/push"),
            ("POST", "/api/create"),
            ("POST", "/api/copy"),
            ("DELETE", "/api/delete"),
        ]:
            for prefix in ("/olla/ollama", "/olla/proxy"):
                response = self.answer(h, method, prefix + path, {"model": BASE}, seconds=0.1)
                assert response.status == 501, (prefix, path)
                assert json.loads(response.body) == {
                    "error": "model management operations not supported by proxy"
                }
        assert self.a.requests == [] and self.b.requests == []


class PullTests(Fleet):
    def pull(self, h: Harness, document: dict[str, Any], **kw: Any) -> Response:
        return self.answer(h, "POST", "/olla/ollama/api/pull", document, **kw)

    def test_streamed_pull_merges_progress_and_lists_the_model(self) -> None:
        """If a model is pulled on two machines, then one NDJSON stream comes back: each
        layer's completed and total summed over both and never shrinking, each host's status
        lines named, and success last; /api/tags lists the model at once, on both."""
        h = self.make()
        for fake in (self.a, self.b):
            fake.apply_state({"pull_speed": 1000, "pull_size": 1000})
        response = self.pull(h, {"model": "new:1"})
        assert response.status == 200
        assert response.header(b"content-type") == b"application/x-ndjson"
        assert response.header(b"x-olla-endpoints") == b"a,b"
        lines = body(response)
        statuses = [line["status"] for line in lines if "digest" not in line]
        assert "a: pulling manifest" in statuses and "b: pulling manifest" in statuses
        assert "a: success" in statuses and "b: success" in statuses
        assert lines[-1] == {"status": "success"}
        weights = [line for line in lines if line.get("total") == 2000]
        completed = [line.get("completed", 0) for line in weights]
        assert completed == sorted(completed) and completed[-1] == 2000
        assert len(weights) > 10
        assert self.a.model("new:1") and self.b.model("new:1")
        assert "new:1" in self.tags(h)
        hosts = {e.name for e in h.catalogue.hosts("new:1")}
        assert hosts == {"a", "b"}

    def test_a_host_failing_mid_pull_is_named(self) -> None:
        """If one machine's pull fails with an error line and the other's connection is cut,
        then the stream reports both as they happen and ends with an error line naming each
        and why."""
        h = self.make()
        self.a.apply_state({"pull_speed": 1000, "pull_size": 1000, "pull_fail_after": 400})
        self.b.apply_state({"pull_speed": 1000, "pull_size": 1000, "pull_die_after": 600})
        response = self.pull(h, {"model": "new:1"})
        lines = body(response)
        assert {"status": "a: failed: max retries exceeded: fake: the registry went away"} in lines
        final = lines[-1]
        assert set(final) == {"error"}
        assert final["error"].startswith("pull failed on 2 of 2 endpoint(s): a: max retries")
        assert "b: its stream was cut after" in final["error"]
        assert not self.a.model("new:1")

    def test_partial_failure_names_the_host_that_worked(self) -> None:
        """If one machine succeeds and one fails, then the error says where it succeeded."""
        h = self.make()
        self.b.apply_state({"pull_speed": 1000, "pull_size": 1000, "pull_fail_after": 100})
        lines = body(self.pull(h, {"model": "new:1"}))
        assert lines[-1]["error"].endswith("(succeeded on a)")
        assert {e.name for e in h.catalogue.hosts("new:1")} == {"a"}

    def test_silent_machines_are_named(self) -> None:
        """If a machine stops sending progress for proxy.read_timeout, or never answers at
        all, then its pull fails with that reason instead of hanging the call."""
        h = self.make()
        self.b.apply_state({"pull_speed": 10, "pull_size": 1000, "pull_tick_ms": 60_000})
        lines = body(self.pull(h, {"model": "slow:1"}, seconds=40.0))
        assert "b: sent nothing for 30s" in lines[-1]["error"]
        response = self.pull(h, {"model": "hang:1"}, headers={"X-Fake-Hang": "1"}, seconds=40.0)
        assert response.status == 500
        assert json.loads(response.body) == {
            "error": "pull failed on 2 of 2 endpoint(s): a: timed out; b: timed out"
        }

    def test_not_streamed(self) -> None:
        """If stream is false, then one JSON object: success, or the error with status 500
        when a machine failed; the machines were asked to stream either way."""
        h = self.make()
        response = self.pull(h, {"model": "new:1", "stream": False})
        assert (response.status, json.loads(response.body)) == (200, {"status": "success"})
        assert response.header(b"content-type") == b"application/json; charset=utf-8"
        assert json.loads(self.a.requests_to("/api/pull")[-1].body)["stream"] is True
        self.a.apply_state({"pull_speed": 1000, "pull_size": 1000, "pull_fail_after": 100})
        response = self.pull(h, {"model": "other:1", "stream": False})
        assert response.status == 500
        assert json.loads(response.body)["error"].startswith("pull failed on 1 of 2 endpoint(s)")

    def test_header_narrows_the_targets(self) -> None:
        """If X-Olla-Endpoints names one machine, then only it pulls."""
        h = self.make()
        response = self.pull(h, {"model": "new:1"}, headers={"X-Olla-Endpoints": "b"})
        assert response.header(b"x-olla-endpoints") == b"b"
        assert body(response)[-1] == {"status": "success"}
        assert self.a.requests_to("/api/pull") == [] and self.b.model("new:1")

    def test_every_host_refusing_is_one_error_with_their_status(self) -> None:
        """If every machine refuses the pull before streaming (a bad name), then the answer
        is one JSON error with their status, even for a streamed call."""
        h = self.make()
        response = self.pull(h, {"model": "bad name!"})
        assert response.status == 400
        assert json.loads(response.body) == {
            "error": "pull failed on 2 of 2 endpoint(s): a: invalid model name; "
            "b: invalid model name"
        }

    def test_an_unhealthy_machine_is_skipped_and_said_so(self) -> None:
        """If a machine is down, then the pull runs on the others and the stream says which
        was skipped."""
        h = self.make()
        h.registry.set_status(h.registry.by_name("b"), EndpointStatus.OFFLINE)  # type: ignore[arg-type]
        lines = body(self.pull(h, {"model": "new:1"}))
        assert lines[0] == {"status": "b: skipped (offline)"}
        assert lines[-1] == {"status": "success"}
        assert self.b.requests_to("/api/pull") == []

    def test_client_leaving_cancels_the_pulls(self) -> None:
        """If the client goes away mid-pull, then every machine's pull is cancelled (as
        Ollama cancels a pull whose client left) and the call's one log line says so (499,
        client_gone, as every request whose client left)."""
        h = self.make()
        for fake in (self.a, self.b):
            fake.apply_state({"pull_speed": 100, "pull_size": 1000})
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client = h.send(http_request("POST", "/olla/ollama/api/pull", b'{"model": "x:1"}'))
        h.advance(0.5)
        client.disconnect()
        for _ in range(10):
            h.advance(0.1)
        assert self.a.cancelled == 1 and self.b.cancelled == 1
        (logged,) = management_lines(observer)
        assert (logged["operation"], logged["status"], logged["outcome"]) == (
            "pull",
            499,
            "client_gone",
        )


class CreateTests(Fleet):
    def test_sdk_create_reaches_old_ollama_as_a_modelfile(self) -> None:
        """If the ollama SDK's create (from, system) goes to 0.5.4 machines, then each gets
        the Modelfile that says the same, and the model is listed on both."""
        h = self.make()
        document = {"model": "terse:1", "from": BASE, "system": "Be terse.", "stream": False}
        response = self.answer(h, "POST", "/olla/ollama/api/create", document)
        assert (response.status, json.loads(response.body)) == (200, {"status": "success"})
        sent = json.loads(self.a.requests_to("/api/create")[-1].body)
        assert sent == {
            "model": "terse:1",
            "stream": True,
            "modelfile": f'FROM {BASE}\nSYSTEM """Be terse."""\n',
        }
        assert self.tags(h).count("terse:1") == 1
        assert {e.name for e in h.catalogue.hosts("terse:1")} == {"a", "b"}

    def test_mixed_versions_each_get_their_shape(self) -> None:
        """If one machine runs a newer Ollama, then it gets the new shape and the old one the
        Modelfile; a request neither can take is a 400 from olla."""
        h = self.make()
        self.b.apply_state({"version": "0.6.0"})
        h.registry.version_read(h.registry.by_name("b"), "0.6.0")  # type: ignore[arg-type]
        document = {"model": "mf:1", "modelfile": f"FROM {BASE}\nPARAMETER temperature 0.1\n"}
        lines = body(self.answer(h, "POST", "/olla/ollama/api/create", document))
        assert lines[-1] == {"status": "success"}
        sent_b = json.loads(self.b.requests_to("/api/create")[-1].body)
        assert sent_b["from"] == BASE and sent_b["parameters"] == {"temperature": 0.1}
        response = self.answer(h, "POST", "/olla/ollama/api/create", {"model": "x"})
        assert response.status == 400

    def test_a_shape_a_machine_cannot_take_fails_there(self) -> None:
        """If a create names two files, then the 0.5.4 machines cannot take it: each fails
        with the reason and the answer is their 400."""
        h = self.make()
        files = {"a.safetensors": "sha256:" + "1" * 64, "b.safetensors": "sha256:" + "2" * 64}
        document = {"model": "st:1", "files": files, "stream": False}
        response = self.answer(h, "POST", "/olla/ollama/api/create", document)
        assert response.status == 400
        assert "creates a model from one GGUF file, not 2 files" in response.body.decode()
        assert self.a.requests_to("/api/create") == []


class CopyDeleteTests(Fleet):
    def test_copy_goes_where_the_model_is(self) -> None:
        """If the source is on one machine only, then the copy is made there, 200 with no
        body, and the catalogue lists the copy at once."""
        h = self.make(b_models=("other:1",))
        document = {"source": BASE, "destination": "copy:1"}
        response = self.answer(h, "POST", "/olla/ollama/api/copy", document)
        assert (response.status, response.body) == (200, b"")
        assert response.header(b"x-olla-endpoints") == b"a"
        assert self.b.requests_to("/api/copy") == []
        assert {e.name for e in h.catalogue.hosts("copy:1")} == {"a"}

    def test_delete_everywhere_drops_routing_state(self) -> None:
        """If a model is deleted, then it goes from both machines and the catalogue, its
        loaded state and learnt load time are forgotten, and sticky pins to it are dropped;
        deleting it again is a 404 in Ollama's words."""
        h = self.make()
        a = h.registry.by_name("a")
        assert a is not None
        h.catalogue.mark_loaded(a, BASE)
        h.catalogue.observe_load(BASE, 3.0)
        response = self.answer(h, "DELETE", "/olla/ollama/api/delete", {"model": BASE})
        assert (response.status, response.body) == (200, b"")
        assert h.catalogue.hosts(BASE) == [] and BASE not in self.tags(h)
        assert h.catalogue.loaded_on(a) == set()
        assert h.catalogue.learned_load_time(BASE) is None
        response = self.answer(h, "DELETE", "/olla/ollama/api/delete", {"model": BASE})
        assert (response.status, json.loads(response.body)) == (
            404,
            {"error": f"model '{BASE}' not found"},
        )

    def test_delete_drops_sticky_pins(self) -> None:
        """If sticky sessions are on and a session was served the model, then deleting the
        model drops that session's pin (the same session's pin for another model stays)."""

        def sticky(config: OllaConfig) -> OllaConfig:
            sessions = replace(config.proxy.sticky_sessions, enabled=True)
            return MANAGED(replace(config, proxy=replace(config.proxy, sticky_sessions=sessions)))

        h = self.make(sticky, b_models=(BASE, "other:1"))
        for model in (BASE, "other:1"):
            chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            session = {"X-Olla-Session-ID": "s1"}
            answer = self.answer(h, "POST", "/olla/ollama/api/chat", chat, headers=session)
            assert answer.status == 200
        assert h.app.sticky is not None
        assert h.app.sticky.store.stats()["active_sessions"] == 2
        response = self.answer(h, "DELETE", "/olla/ollama/api/delete", {"model": BASE})
        assert response.status == 200
        assert h.app.sticky.store.stats()["active_sessions"] == 1

    def test_delete_failing_on_one_machine(self) -> None:
        """If one machine answers the delete with an error, then the answer names it."""
        h = self.make()
        self.b.apply_state({"status": 500})
        response = self.answer(h, "DELETE", "/olla/ollama/api/delete", {"name": BASE})
        assert response.status == 500
        error = json.loads(response.body)["error"]
        assert error == "delete failed on 1 of 2 endpoint(s): b: fake error 500 (succeeded on a)"


class BlobTests(Fleet):
    def test_upload_to_every_machine_that_lacks_it(self) -> None:
        """If a blob is uploaded, then each machine is asked first and only those without it
        are sent it (a form-encoded upload too); 201; HEAD is 200 only once all have it."""
        h = self.make()
        data = bytes(range(256)) * 4096  # 1 MiB: streamed from twisted.web's file
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.a.blobs[digest] = len(data)
        path = f"/olla/ollama/api/blobs/{digest}"
        response = self.answer(h, "HEAD", path)
        assert response.status == 404
        client = self.go(
            h,
            http_request("POST", path, data, {"Content-Type": "application/x-www-form-urlencoded"}),
        )
        response = client.response()
        assert response is not None and response.status == 201
        assert [r.method for r in self.a.requests if r.path.startswith("/api/blobs")] == [
            "HEAD",
            "HEAD",
        ]
        uploaded = self.b.requests[-1]
        assert (uploaded.body_size, uploaded.body_sha256) == (len(data), digest[7:])
        assert self.answer(h, "HEAD", path).status == 200

    def test_bad_digest_and_mismatch(self) -> None:
        """If the digest is malformed, then 400 from olla; if the body does not match it,
        then every machine's 400 comes back naming them."""
        h = self.make()
        response = self.answer(h, "POST", "/olla/ollama/api/blobs/sha256:xyz", {"a": 1})
        assert (response.status, json.loads(response.body)) == (
            400,
            {"error": "invalid digest format"},
        )
        response = self.answer(h, "POST", "/olla/ollama/api/blobs/sha256:" + "0" * 64, {"a": 1})
        assert response.status == 400
        assert "a: digest mismatch" in json.loads(response.body)["error"]


class AccessTests(Fleet):
    def test_only_the_access_policy_without_keys(self) -> None:
        """If no client keys are configured, then a loopback client may manage models and
        any other address gets a 403 in Ollama's words, on both routes."""
        h = self.make()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for prefix in ("/olla/ollama", "/olla/proxy"):
            response = self.answer(
                h, "POST", prefix + "/api/pull", {"model": "x:1"}, peer="10.1.2.3"
            )
            assert response.status == 403
            assert "model management is not allowed from here" in json.loads(response.body)["error"]
        assert self.a.requests_to("/api/pull") == []
        refused = management_lines(observer)
        assert [(e["operation"], e["client_ip"], e["status"], e["outcome"]) for e in refused] == [
            ("pull", "10.1.2.3", 403, "rejected"),
            ("pull", "10.1.2.3", 403, "rejected"),
        ]
        assert all("not allowed from here" in e["error"] for e in refused)

    def test_keys_need_manage_models(self) -> None:
        """If client keys are configured, then a key without manage_models gets a 403 on
        every route (also from loopback), one with it is served, and none is the guard's
        401."""
        keys = (
            ClientKey("sk-user-000001", "user"),
            ClientKey("sk-admin-00001", "admin", manage_models=True),
        )
        h = self.make(managed(keys=keys))
        user = {"Authorization": "Bearer sk-user-000001"}
        for method, path in [
            ("POST", "/api/pull"),
            ("POST", "/api/push"),
            ("POST", "/api/create"),
            ("POST", "/api/copy"),
            ("DELETE", "/api/delete"),
            ("POST", "/api/blobs/sha256:" + "0" * 64),
        ]:
            response = self.answer(h, method, "/olla/ollama" + path, {"model": BASE}, headers=user)
            assert response.status == 403, path
            assert json.loads(response.body) == {
                "error": "API key 'user' may not manage models (it needs manage_models: true)"
            }
        admin = {"Authorization": "Bearer sk-admin-00001"}
        response = self.answer(h, "POST", "/olla/ollama/api/pull", {"model": "k:1"}, headers=admin)
        assert body(response)[-1] == {"status": "success"}
        response = self.answer(h, "POST", "/olla/ollama/api/pull", {"model": "k:1"})
        assert response.status == 401

    def test_every_call_is_logged(self) -> None:
        """If a management call ends, then it leaves one record and one log line, as every
        answer olla makes itself: the operation, the client, the targets and the result."""
        h = self.make()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.answer(h, "POST", "/olla/ollama/api/copy", {"source": BASE, "destination": "c:1"})
        (event,) = [e for e in observer if e.get("request_line")]
        assert (event["operation"], event["model"], event["client_ip"]) == (
            "copy",
            f"{BASE} -> c:1",
            "127.0.0.1",
        )
        assert (event["endpoint"], event["outcome"], event["status"]) == ("a,b", "ok", 200)
        assert (event["attempts"], event["error"], event["route"]) == (2, None, "ollama")
        (record,) = h.outcomes.requests
        assert (record.operation, record.endpoints, record.status) == ("copy", ("a", "b"), 200)
        assert record.endpoint is None  # olla answered it, no endpoint did

    def test_failed_call_is_logged_with_why(self) -> None:
        """If a management call fails on a machine, then its one record is an error naming
        the machine and why, and the key that asked."""
        keys = (ClientKey("sk-admin-00001", "admin", manage_models=True),)
        h = self.make(managed(keys=keys))
        self.b.apply_state({"status": 500})
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        admin = {"Authorization": "Bearer sk-admin-00001"}
        self.answer(h, "DELETE", "/olla/ollama/api/delete", {"model": BASE}, headers=admin)
        (event,) = management_lines(observer)
        assert (event["operation"], event["client_key"], event["outcome"]) == (
            "delete",
            "admin",
            "error",
        )
        assert "b:" in event["error"] and "key=admin" in formatEvent(event)


class RequestTests(Fleet):
    def test_bad_requests_in_ollama_words(self) -> None:
        """If a management body is missing, not JSON, names no model or uses the wrong
        method, then olla answers 400 or 405 itself and no machine is asked."""
        h = self.make()
        cases: list[tuple[str, str, bytes | None, int, str]] = [
            ("POST", "/api/pull", None, 400, "missing request body"),
            ("POST", "/api/pull", b"{nope", 400, "invalid JSON body"),
            ("POST", "/api/pull", b"[1]", 400, "must be a JSON object"),
            ("POST", "/api/pull", b"{}", 400, "invalid model name"),
            ("POST", "/api/pull", b'{"model": "x", "stream": "yes"}', 400, "stream must be"),
            ("POST", "/api/copy", b'{"source": "x"}', 400, "source and destination"),
            ("GET", "/api/pull", None, 405, "takes POST"),
            ("POST", "/api/delete", b'{"model": "x"}', 405, "takes DELETE"),
            ("GET", "/api/blobs/sha256:" + "0" * 64, None, 405, "takes HEAD or POST"),
        ]
        for method, path, raw, status, fragment in cases:
            client = self.go(h, http_request(method, "/olla/ollama" + path, raw), seconds=0.1)
            response = client.response()
            assert response is not None and response.status == status, (path, raw)
            assert fragment in json.loads(response.body)["error"], (path, raw)
            if status == 405:
                allowed = fragment.removeprefix("takes ").replace(" or ", ", ")
                assert response.header(b"allow") == allowed.encode()
        assert self.a.requests == [] and self.b.requests == []

    def test_configured_targets(self) -> None:
        """If model_management.targets names one machine, then only it is changed."""
        h = self.make(managed(targets=("a",)))
        lines = body(self.answer(h, "POST", "/olla/ollama/api/pull", {"model": "n:1"}))
        assert lines[-1] == {"status": "success"}
        assert self.b.requests_to("/api/pull") == []
        response = self.answer(
            h, "POST", "/olla/ollama/api/pull", {"model": "n:1"}, headers={"X-Olla-Endpoints": "b"}
        )
        assert response.status == 400
