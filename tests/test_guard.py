"""The guards in front of the whole site, in memory on a Clock: rate limit headers and 429s,
trusted proxies, CORS preflights, client keys and the internal-routes policy, each refusal in
the route's dialect and counted."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from olla.config import ClientAuthConfig, ClientKey, CorsConfig, OllaConfig, RateLimits
from olla.config.dashboard import AccessPolicyConfig
from tests.proxyharness import Harness, Response, http_request
from tests.test_proxy import Backend

CHAT = b'{"model": "llama3.2:latest", "messages": []}'
OPENAI = b'{"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}'
ANTHROPIC = (
    b'{"model": "llama3.2:latest", "max_tokens": 5, '
    b'"messages": [{"role": "user", "content": "hi"}]}'
)


def server(**changes: object) -> Callable[[OllaConfig], OllaConfig]:
    def adjust(config: OllaConfig) -> OllaConfig:
        return replace(config, server=replace(config.server, **changes))  # type: ignore[arg-type]

    return adjust


def limits(per_ip: int, burst: int, **more: object) -> Callable[[OllaConfig], OllaConfig]:
    return server(
        rate_limits=replace(
            RateLimits(), per_ip_requests_per_minute=per_ip, burst_size=burst, **more
        )
    )


def answer(h: Harness, raw: bytes, peer: str = "127.0.0.1") -> Response:
    response = h.send(raw, peer).response()
    assert response is not None and response.complete
    return response


class RateLimitTests(SynchronousTestCase):
    def test_n_successes_then_429_with_headers(self) -> None:
        """If the per-IP limit allows 3 at once, then 3 requests pass with X-RateLimit-*
        headers counting down, and the 4th is a 429 in Ollama's dialect with Retry-After,
        never reaches the backend and is counted."""
        backend = Backend(Clock(), name="a")
        h = Harness({"a:1": backend}, adjust=limits(60, 3))
        seen = [answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT)) for _ in range(4)]
        assert [r.status for r in seen] == [200, 200, 200, 429]
        assert [r.header(b"x-ratelimit-remaining") for r in seen] == [b"2", b"1", b"0", b"0"]
        assert {r.header(b"x-ratelimit-limit") for r in seen} == {b"60"}
        assert seen[3].header(b"retry-after") == b"1"
        assert json.loads(seen[3].body) == {"error": "rate limit exceeded, retry in 1s"}
        assert len(backend.received) == 3
        snap = h.app.security.snapshot()
        assert (snap.rate_limits, snap.blocked_ips) == (1, 1)
        h.advance(1.0)
        assert answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT)).status == 200

    def test_429_in_each_dialect(self) -> None:
        """If an OpenAI or Anthropic route is over the limit, then the 429 is that API's
        error shape (rate_limit_error)."""
        h = Harness({"a:1": Backend(Clock())}, adjust=limits(60, 1))
        answer(h, http_request("GET", "/version"))  # open: costs nothing
        answer(h, http_request("POST", "/olla/openai/v1/chat/completions", OPENAI))
        openai = answer(h, http_request("POST", "/olla/openai/v1/chat/completions", OPENAI))
        assert openai.status == 429
        assert json.loads(openai.body)["error"]["type"] == "rate_limit_error"
        anthropic = answer(h, http_request("POST", "/olla/anthropic/v1/messages", ANTHROPIC))
        assert anthropic.status == 429
        body = json.loads(anthropic.body)
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"

    def test_olla_owns_the_rate_limit_headers(self) -> None:
        """If a backend sends X-RateLimit-* headers of its own, then the client sees olla's."""
        backend = Backend(Clock(), extra_headers={b"X-RateLimit-Limit": b"999999"})
        h = Harness({"a:1": backend}, adjust=limits(60, 5))
        response = answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT))
        assert response.headers[b"x-ratelimit-limit"] == [b"60"]

    def test_health_and_internal_are_not_on_the_proxy_budget(self) -> None:
        """If a client spent its proxy budget, then /internal/health and /internal/status
        still answer, /internal/health carrying its own budget's headers."""
        h = Harness({"a:1": Backend(Clock())}, adjust=limits(60, 1))
        answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT))
        assert answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT)).status == 429
        health = answer(h, http_request("GET", "/internal/health"))
        assert health.status == 200
        assert health.header(b"x-ratelimit-limit") == b"1000"
        assert answer(h, http_request("GET", "/internal/status")).status == 200

    def test_limits_off(self) -> None:
        """If per_ip_requests_per_minute is 0, then nothing is limited and no X-RateLimit-*
        header is sent."""
        h = Harness({"a:1": Backend(Clock())}, adjust=limits(0, 1))
        seen = [answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT)) for _ in range(5)]
        assert {r.status for r in seen} == {200}
        assert all(r.header(b"x-ratelimit-limit") is None for r in seen)

    def test_off_unless_configured(self) -> None:
        """If nothing is configured, then nothing is limited (200 requests at once from one
        address all pass, with no X-RateLimit-* headers); the Go original's numbers (100/min per
        IP, burst 50) limit as it does once a config sets them."""
        h = Harness({"a:1": Backend(Clock())})
        for _ in range(200):
            response = answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT))
            assert response.status == 200
            assert response.header(b"x-ratelimit-limit") is None
        h = Harness({"a:1": Backend(Clock())}, adjust=limits(100, 50))
        statuses = [
            answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT)).status for _ in range(51)
        ]
        assert statuses == [200] * 50 + [429]


class TrustedProxyTests(SynchronousTestCase):
    def trusting(self) -> Callable[[OllaConfig], OllaConfig]:
        return limits(
            60,
            2,
            global_requests_per_minute=0,  # its bucket (burst 2) would refuse the second client
            trust_proxy_headers=True,
            trusted_proxy_cidrs=("10.0.0.0/8",),
        )

    def test_forwarded_clients_limited_apart(self) -> None:
        """If a trusted proxy forwards two clients, then each has its own budget, and the
        backend sees the client as X-Real-IP and the proxy appended to X-Forwarded-For."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, adjust=self.trusting())

        def send(client: str) -> int:
            raw = http_request("POST", "/olla/ollama/api/chat", CHAT, {"X-Forwarded-For": client})
            return answer(h, raw, peer="10.0.0.2").status

        assert [send("198.51.100.7") for _ in range(3)] == [200, 200, 429]
        assert [send("198.51.100.8") for _ in range(2)] == [200, 200]
        headers = backend.received[0]["headers"]
        assert headers[b"x-forwarded-for"] == [b"198.51.100.7, 10.0.0.2"]
        assert headers[b"x-real-ip"] == [b"198.51.100.7"]

    def test_untrusted_peer_cannot_spoof(self) -> None:
        """If an untrusted peer sends X-Forwarded-For, then it is limited as itself whatever
        address it claims, and the log line names the peer."""
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness({"a:1": Backend(Clock())}, adjust=self.trusting())
        statuses = [
            answer(
                h,
                http_request(
                    "POST", "/olla/ollama/api/chat", CHAT, {"X-Forwarded-For": f"1.1.1.{i}"}
                ),
                peer="203.0.113.9",
            ).status
            for i in range(3)
        ]
        assert statuses == [200, 200, 429]
        lines = [e for e in events if e.get("request_line")]
        assert {e["client_ip"] for e in lines} == {"203.0.113.9"}


class CorsTests(SynchronousTestCase):
    def cors(self) -> Callable[[OllaConfig], OllaConfig]:
        return server(
            cors=CorsConfig(
                enabled=True,
                allowed_origins=("https://chat.example",),
                allowed_headers=("Authorization", "Content-Type"),
            )
        )

    def preflight(self, origin: str) -> bytes:
        return http_request(
            "OPTIONS",
            "/olla/openai/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )

    def test_preflight_answered_by_olla(self) -> None:
        """If a browser preflights from an allowed origin, then olla answers 204 with the
        CORS headers, and the backend never sees it."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, adjust=self.cors())
        response = answer(h, self.preflight("https://chat.example"))
        assert response.status == 204
        assert response.header(b"access-control-allow-origin") == b"https://chat.example"
        assert b"POST" in (response.header(b"access-control-allow-methods") or b"")
        assert response.header(b"access-control-allow-headers") == b"content-type"
        assert response.header(b"access-control-max-age") == b"300"
        assert backend.received == []

    def test_disallowed_origin_gets_no_cors_answer(self) -> None:
        """If the origin is not allowed, then the preflight is a 403 without any
        Access-Control-* header, and the backend never sees it."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, adjust=self.cors())
        response = answer(h, self.preflight("https://evil.example"))
        assert response.status == 403
        assert not [n for n in response.headers if n.startswith(b"access-control-")]
        assert json.loads(response.body)["error"]["type"] == "permission_error"
        assert backend.received == []

    def test_actual_request_gets_olla_cors_headers(self) -> None:
        """If an allowed origin posts, then the answer carries olla's Allow-Origin and
        Expose-Headers over whatever the backend sent."""
        backend = Backend(
            Clock(), extra_headers={b"Access-Control-Allow-Origin": b"https://other.example"}
        )
        h = Harness({"a:1": backend}, adjust=self.cors())
        response = answer(
            h,
            http_request(
                "POST",
                "/olla/openai/v1/chat/completions",
                OPENAI,
                {"Origin": "https://chat.example"},
            ),
        )
        assert response.status == 200
        assert response.headers[b"access-control-allow-origin"] == [b"https://chat.example"]
        assert b"X-Olla-Endpoint" in (response.header(b"access-control-expose-headers") or b"")

    def test_cors_off_leaves_options_to_the_backend(self) -> None:
        """If CORS is off (the default), then an OPTIONS request is proxied as before."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend})
        answer(h, self.preflight("https://chat.example"))
        assert [r["method"] for r in backend.received] == [b"OPTIONS"]


class ClientKeyTests(SynchronousTestCase):
    def keyed(self) -> Callable[[OllaConfig], OllaConfig]:
        return server(
            auth=ClientAuthConfig(
                (
                    ClientKey("sk-team-000001", "team"),
                    ClientKey(
                        "sk-intern-00001", "intern", requests_per_minute=60, models=("qwen*",)
                    ),
                )
            )
        )

    def test_missing_or_wrong_key_is_401_in_each_dialect(self) -> None:
        """If no key or a wrong key is sent, then the answer is 401 in the route's dialect,
        counted as an auth failure, and nothing reaches the backend."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, adjust=self.keyed())
        ollama = answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT))
        assert ollama.status == 401
        assert json.loads(ollama.body) == {"error": "missing or invalid API key"}
        openai = answer(
            h,
            http_request(
                "POST",
                "/olla/openai/v1/chat/completions",
                OPENAI,
                {"Authorization": "Bearer sk-wrong-000000"},
            ),
        )
        assert openai.status == 401
        assert json.loads(openai.body)["error"]["type"] == "authentication_error"
        anthropic = answer(
            h,
            http_request(
                "POST", "/olla/anthropic/v1/messages", ANTHROPIC, {"x-api-key": "sk-wrong"}
            ),
        )
        assert anthropic.status == 401
        assert json.loads(anthropic.body)["error"]["type"] == "authentication_error"
        assert backend.received == []
        assert h.app.security.snapshot().auth_failures == 3

    def test_right_key_passes_and_is_not_forwarded(self) -> None:
        """If the right key is sent, then the request is proxied and the backend never sees
        the key."""
        backend = Backend(Clock())
        h = Harness({"a:1": backend}, adjust=self.keyed())
        response = answer(
            h,
            http_request(
                "POST", "/olla/ollama/api/chat", CHAT, {"Authorization": "Bearer sk-team-000001"}
            ),
        )
        assert response.status == 200
        assert b"authorization" not in backend.received[0]["headers"]

    def test_model_allow_list_and_key_limit(self) -> None:
        """If a key may use only qwen models, then another model is a 403 and a qwen model
        passes; past its own limit the key gets 429."""
        backend = Backend(Clock())
        h = Harness(
            {"a:1": backend}, models={"a:1": ("llama3.2:latest", "qwen:7b")}, adjust=self.keyed()
        )
        intern = {"api-key": "sk-intern-00001"}
        denied = answer(h, http_request("POST", "/olla/ollama/api/chat", CHAT, intern))
        assert denied.status == 403
        assert "may not use model" in json.loads(denied.body)["error"]
        qwen = b'{"model": "qwen:7b", "messages": []}'
        assert answer(h, http_request("POST", "/olla/ollama/api/chat", qwen, intern)).status == 200
        assert len(backend.received) == 1


class InternalPolicyTests(SynchronousTestCase):
    def gated(self) -> Callable[[OllaConfig], OllaConfig]:
        def adjust(config: OllaConfig) -> OllaConfig:
            dashboard = replace(
                config.dashboard,
                gate_internal_api=True,
                access_policy=AccessPolicyConfig(
                    allowed_cidrs=("127.0.0.0/8",), allowed_hosts=("olla.test",)
                ),
            )
            return replace(config, dashboard=dashboard)

        return adjust

    def test_gate_refuses_other_peers_but_health(self) -> None:
        """If internal routes are loopback-only, then a LAN peer gets 403 for /internal/status
        and 200 for /internal/health; a loopback peer gets both."""
        h = Harness({"a:1": Backend(Clock())}, adjust=self.gated())
        raw_status = http_request("GET", "/internal/status")
        raw_health = http_request("GET", "/internal/health")
        assert answer(h, raw_status, peer="192.168.1.5").status == 403
        assert answer(h, raw_health, peer="192.168.1.5").status == 200
        assert answer(h, raw_status).status == 200
        encoded = raw_status.replace(b"/internal/", b"/%69nternal/")
        assert answer(h, encoded, peer="192.168.1.5").status == 403  # routed as decoded
        rebound = raw_status.replace(b"olla.test", b"evil.example")
        assert answer(h, rebound).status == 403  # a name not allowed: DNS rebinding
