"""The fake Ollama itself: shapes and knobs the other tests rely on, in memory."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from tests.fakes.ollama import FakeModel, FakeOllama
from tests.proxyharness import ClientConnection, http_request


class FakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeOllama(self.clock, [FakeModel("m:1"), FakeModel("all-minilm:l6")])
        self.site = Site(self.fake, reactor=self.clock)

    def _send(
        self, method: str, path: str, body: object = None, **headers: str
    ) -> ClientConnection:
        raw = None if body is None else json.dumps(body).encode()
        return ClientConnection(self.site, http_request(method, path, raw, headers))

    def test_tags_shape(self) -> None:
        """If /api/tags is asked, then each model has name, model, digest and details."""
        response = self._send("GET", "/api/tags").response()
        assert response is not None
        model = json.loads(response.body)["models"][0]
        self.assertEqual(model["name"], model["model"])
        self.assertEqual(set(model["details"]), {
            "parent_model", "format", "family", "families", "parameter_size", "quantization_level",
        })  # fmt: skip

    def test_stream_timing_on_clock(self) -> None:
        """If 3 chunks 50 ms apart are asked for, then they are written at 0, 50 and 100 ms,
        then the done line."""
        client = self._send(
            "POST", "/api/chat", {"model": "m:1", "messages": []}, **{"X-Fake-Chunks": "3",
            "X-Fake-Delay-Ms": "50"},
        )  # fmt: skip
        counts = []
        for _ in range(4):
            response = client.response()
            assert response is not None
            counts.append(len(response.chunks))
            self.clock.advance(0.05)
        self.assertEqual(counts, [1, 2, 3, 4])
        response = client.response()
        assert response is not None and response.complete
        self.assertTrue(json.loads(response.chunks[-1])["done"])

    def test_errors_and_knobs(self) -> None:
        """If a model is unknown, a status is forced, or the body is malformed, then the real
        error shapes come back."""
        missing = self._send("POST", "/api/chat", {"model": "nope"}).response()
        assert missing is not None
        self.assertEqual(missing.status, 404)
        self.assertIn("not found, try pulling it first", json.loads(missing.body)["error"])
        openai = self._send("POST", "/v1/chat/completions", {"model": "nope"}).response()
        assert openai is not None
        self.assertEqual(json.loads(openai.body)["error"]["type"], "api_error")
        forced = self._send("POST", "/api/chat", {"model": "m:1"}, **{"X-Fake-Status": "503"})
        self.assertEqual(forced.response().status, 503)  # type: ignore[union-attr]
        bad = self._send("POST", "/api/chat", {"model": "m:1"}, **{"X-Fake-Malformed": "1"})
        self.assertRaises(ValueError, json.loads, bad.response().body)  # type: ignore[union-attr]
        chat_on_embed = self._send("POST", "/api/chat", {"model": "all-minilm:l6"}).response()
        self.assertEqual(chat_on_embed.status, 400)  # type: ignore[union-attr]

    def test_drop_and_hang(self) -> None:
        """If drop_after is set, then the connection is cut mid-stream; if hang, nothing comes."""
        dropped = self._send(
            "POST", "/api/chat?drop_after=2&chunks=5", {"model": "m:1", "messages": []}
        )
        for _ in range(3):
            self.clock.advance(0)
        response = dropped.response()
        assert response is not None
        self.assertEqual(len(response.chunks), 2)
        self.assertTrue(dropped.transport.disconnected)
        hung = self._send("POST", "/api/chat?hang=1", {"model": "m:1"})
        self.assertEqual(hung.transport.value(), b"")

    def test_health_and_state(self) -> None:
        """If health is set to fail, then / answers 500; loaded models appear in /api/ps."""
        self.fake.apply_state({"health": "fail", "loaded": ["m:1"]})
        self.assertEqual(self._send("GET", "/").response().status, 500)  # type: ignore[union-attr]
        ps = json.loads(self._send("GET", "/api/ps").response().body)  # type: ignore[union-attr]
        self.assertEqual([m["name"] for m in ps["models"]], ["m:1"])

    def test_recording(self) -> None:
        """If requests arrive, then they are recorded with headers and body, control calls not."""
        self._send("POST", "/api/show", {"name": "m:1"}, **{"X-Thing": "1"})
        self._send("GET", "/_fake/state")
        (recorded,) = self.fake.requests
        self.assertEqual(recorded.path, "/api/show")
        self.assertEqual(recorded.headers["x-thing"], ["1"])
        self.assertEqual(json.loads(recorded.body), {"name": "m:1"})
