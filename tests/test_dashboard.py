"""The dashboard's routes (``/internal/ui``), its files, and what the page may and may not do."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from importlib import resources

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from olla.config import AccessPolicyConfig, DashboardConfig
from olla.util.access import AccessPolicy, bare_host
from olla.web.dashboard import CONTENT_SECURITY_POLICY, CONTENT_TYPES, Asset, load_assets
from tests.proxyharness import Harness, Response, http_request, parse_response

UI = resources.files("olla.web").joinpath("ui")


def _get(h: Harness, path: str, headers: dict[str, str] | None = None) -> Response:
    response = h.send(http_request("GET", path, headers=headers)).response()
    assert response is not None, response
    assert response.complete or response.status == 304, response  # a 304 has no body to end
    return response


#: the harness's clients say ``Host: olla.test:40114`` from 127.0.0.1
LET_IN = DashboardConfig(access_policy=AccessPolicyConfig(allowed_hosts=("olla.test",)))


@pytest.fixture
def h() -> Harness:
    return Harness({"a:1": "refuse"}, dashboard=LET_IN)


# ---------------------------------------------------------------------------------- routes


def test_bare_path_redirects_to_the_page(h: Harness) -> None:
    """If ``/internal/ui`` is asked for, then the answer is a 307 to ``/internal/ui/``."""
    response = _get(h, "/internal/ui")
    assert response.status == 307
    assert response.header(b"location") == b"/internal/ui/"
    assert response.header(b"cache-control") == b"no-store"


def test_redirect_keeps_the_query(h: Harness) -> None:
    """If ``/internal/ui`` carries a query string, then the redirect keeps it."""
    response = _get(h, "/internal/ui?refresh=5")
    assert response.status == 307
    assert response.header(b"location") == b"/internal/ui/?refresh=5"


def test_page_is_served(h: Harness) -> None:
    """If ``/internal/ui/`` is asked for, then the answer is ``index.html`` as HTML, with a
    strong ETag over its bytes, ``no-cache`` and the security headers."""
    response = _get(h, "/internal/ui/")
    page = UI.joinpath("index.html").read_bytes()
    assert response.status == 200
    assert response.body == page
    assert response.header(b"content-type") == b"text/html; charset=utf-8"
    assert response.header(b"etag") == f'"{hashlib.sha256(page).hexdigest()}"'.encode()
    assert response.header(b"cache-control") == b"no-cache"
    assert response.header(b"x-content-type-options") == b"nosniff"
    assert response.header(b"x-frame-options") == b"DENY"
    assert response.header(b"content-security-policy") == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("index.html", b"text/html; charset=utf-8"),
        ("dashboard.js", b"text/javascript; charset=utf-8"),
        ("dashboard.css", b"text/css; charset=utf-8"),
    ],
)
def test_assets_have_their_content_type(h: Harness, name: str, content_type: bytes) -> None:
    """If a file of the dashboard is asked for, then it is served byte for byte with its own
    ``Content-Type``."""
    response = _get(h, f"/internal/ui/{name}")
    assert response.status == 200
    assert response.body == UI.joinpath(name).read_bytes()
    assert response.header(b"content-type") == content_type


def test_matching_etag_is_a_304(h: Harness) -> None:
    """If the browser revalidates with the ETag it has, then the answer is a bodiless 304
    (and a stale ETag gets the file again)."""
    etag = _get(h, "/internal/ui/dashboard.js").header(b"etag")
    assert etag is not None
    again = _get(h, "/internal/ui/dashboard.js", {"If-None-Match": etag.decode()})
    assert (again.status, again.body) == (304, b"")
    stale = _get(h, "/internal/ui/dashboard.js", {"If-None-Match": '"old"'})
    assert stale.status == 200 and stale.body


@pytest.mark.parametrize(
    "path",
    [
        "/internal/ui/nope.js",
        "/internal/ui/..",
        "/internal/ui/%2e%2e/internal.py",
        "/internal/ui/dashboard.py",
        "/internal/ui/ui/index.html",
        "/internal/uix",
    ],
)
def test_other_paths_are_json_404(h: Harness, path: str) -> None:
    """If a path under ``/internal/ui/`` is not one of the dashboard's files, then the answer
    is olla's JSON 404, never a file from elsewhere in the package."""
    response = _get(h, path)
    assert response.status == 404
    assert response.header(b"content-type") == b"application/json; charset=utf-8"
    assert "error" in json.loads(response.body)


@pytest.mark.parametrize(
    "path", ["/internal/ui", "/internal/ui/", "/internal/ui/dashboard.js", "/internal/ui/x"]
)
def test_disabled_dashboard_is_404(path: str) -> None:
    """If ``dashboard.enabled`` is false, then every dashboard path is a JSON 404 (and the
    status routes the page reads still answer)."""
    h = Harness({"a:1": "refuse"}, dashboard=replace(LET_IN, enabled=False))
    response = _get(h, path)
    assert response.status == 404
    assert json.loads(response.body) == {"error": "404 page not found"}
    assert _get(h, "/internal/status").status == 200


def test_head_answers_headers_only(h: Harness) -> None:
    """If the page is asked for with HEAD, then the headers come without the body."""
    raw = h.send(http_request("HEAD", "/internal/ui/")).transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/html" in head
    assert body == b""


# ---------------------------------------------------------------------------------- the files


def test_assets_load_from_package_data() -> None:
    """If the assets are loaded, then every file of ``CONTENT_TYPES`` is there, each with a
    strong SHA-256 ETag of its bytes."""
    assets = load_assets()
    assert set(assets) == set(CONTENT_TYPES)
    for name, asset in assets.items():
        body = UI.joinpath(name).read_bytes()
        assert asset == Asset(body, CONTENT_TYPES[name], f'"{hashlib.sha256(body).hexdigest()}"')


def test_missing_asset_stops_startup() -> None:
    """If a file is missing from the package data (a broken install), then loading fails at
    startup instead of serving a broken page."""
    with pytest.raises(FileNotFoundError):
        load_assets(directory="no-such-dir")


def _text(name: str) -> str:
    return UI.joinpath(name).read_text(encoding="utf-8")


def test_nothing_is_fetched_from_elsewhere() -> None:
    """If the files are read, then none names another origin (no CDN, no web font, no
    analytics): the page only ever talks to the olla that served it."""
    for name in CONTENT_TYPES:
        assert not re.search(r"(https?:)?//[a-z0-9]", _text(name), re.IGNORECASE), name


def test_script_never_parses_strings_as_html() -> None:
    """If the script is read, then it never hands a string to the HTML parser: endpoint and
    model names reach the page as text only."""
    script = _text("dashboard.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_page_has_every_element_the_script_fills() -> None:
    """If the script looks an element up by id, then the page has an element with that id."""
    ids = set(re.findall(r'id="([^"]+)"', _text("index.html")))
    wanted = set(re.findall(r'(?:byId|text)\("([^"]+)"', _text("dashboard.js")))
    assert wanted and wanted <= ids, wanted - ids


def test_script_reads_the_status_and_stats_routes() -> None:
    """If the script is read, then it polls the status routes, the model stats and the
    failovers, and treats only the model stats as optional."""
    script = _text("dashboard.js")
    for route in (
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/status/models",
        "/internal/stats/models",
        "/internal/stats/failovers",
    ):
        assert f'"{route}"' in script, route
    assert "[ROUTES.modelStats, true," in script
    assert script.count(", true,") == 1


# ---------------------------------------------------------------------------------- who may see it


@pytest.mark.parametrize(
    ("host", "bare"),
    [
        ("localhost", "localhost"),
        ("LocalHost:40114", "localhost"),
        ("127.0.0.1:40114", "127.0.0.1"),
        ("[::1]:40114", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("olla.lan.", "olla.lan."),
        ("", ""),
    ],
)
def test_bare_host(host: str, bare: str) -> None:
    """If a Host carries a port, brackets or capitals, then the policy compares without them."""
    assert bare_host(host) == bare


DEFAULT_POLICY = AccessPolicy.from_config(AccessPolicyConfig())


@pytest.mark.parametrize(
    ("peer", "host", "reason"),
    [
        ("127.0.0.1", "localhost:40114", None),
        ("127.0.0.1", "LOCALHOST", None),
        ("127.0.0.1", "127.0.0.1:40114", None),
        ("127.8.9.10", "10.0.0.1", None),  # any IP literal Host: it cannot be DNS-rebound
        ("::1", "[::1]:40114", None),
        ("::ffff:127.0.0.1", "localhost", None),  # IPv4 seen through a dual-stack socket
        ("10.0.0.5", "localhost", "ip not in allowed range"),
        ("::2", "localhost", "ip not in allowed range"),
        ("", "localhost", "ip not in allowed range"),  # not an IP (a UNIX socket): refused
        ("127.0.0.1", "evil.example", "host not accepted"),
        ("127.0.0.1", "localhost.evil.example", "host not accepted"),
        ("127.0.0.1", "", "host not accepted"),
    ],
)
def test_default_policy(peer: str, host: str, reason: str | None) -> None:
    """If the default policy (loopback peers, Host ``localhost`` or an IP) is asked about a
    peer and a Host, then it lets in exactly those and says which check failed otherwise."""
    refusal = DEFAULT_POLICY.refusal(peer, host)
    if reason is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.startswith(f"403 forbidden: {reason} (ip={peer}, host={host}).")
        assert "dashboard.access_policy.allowed_hosts (or allowed_cidrs)" in refusal


def test_policy_from_config() -> None:
    """If the policy lists a LAN range and a name, then a LAN peer using that name gets in,
    and loopback (no longer listed) does not."""
    policy = AccessPolicy(["192.168.1.0/24", "fd00::/8"], ["OLLA.lan"])
    assert policy.refusal("192.168.1.20", "olla.lan:40114") is None
    assert policy.refusal("fd00::7", "olla.lan") is None
    assert policy.refusal("127.0.0.1", "olla.lan") is not None


def _from(h: Harness, peer: IPv4Address | IPv6Address, raw: bytes) -> Response:
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 40114), peerAddress=peer
    )
    channel = h.site.buildProtocol(None)
    assert channel is not None
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    h.pump()
    response = parse_response(transport.value())
    assert response is not None
    return response


@pytest.mark.parametrize("path", ["/internal/ui", "/internal/ui/", "/internal/ui/nope.js"])
def test_host_not_allowed_is_403(path: str) -> None:
    """If the Host is a name the policy does not list, then every dashboard path (the redirect
    and unknown files too) is a JSON 403 that says why, and the status routes still answer."""
    h = Harness({"a:1": "refuse"})  # the default policy: Host olla.test is not listed
    response = _get(h, path)
    assert response.status == 403
    assert response.header(b"content-type") == b"application/json; charset=utf-8"
    error = json.loads(response.body)["error"]
    assert error.startswith("403 forbidden: host not accepted (ip=127.0.0.1, host=olla.test:40114)")
    assert response.header(b"x-frame-options") == b"DENY"
    assert response.header(b"location") is None
    assert _get(h, "/internal/status").status == 200


def test_peer_outside_the_cidrs_is_403(h: Harness) -> None:
    """If the TCP peer is outside ``allowed_cidrs``, then the page is a 403, whatever
    ``X-Forwarded-For`` claims; a loopback peer gets the page."""
    raw = http_request("GET", "/internal/ui/", headers={"X-Forwarded-For": "127.0.0.1"})
    away = _from(h, IPv4Address("TCP", "10.1.2.3", 50000), raw)
    assert away.status == 403
    assert "ip not in allowed range (ip=10.1.2.3," in json.loads(away.body)["error"]
    near = _from(h, IPv6Address("TCP", "::1", 50000), raw)
    assert near.status == 200
