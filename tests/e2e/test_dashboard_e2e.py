"""The dashboard in a real browser: headless Chromium loads ``/internal/ui/`` from a real
``twistd -n olla`` in front of fake Ollama processes, and the test reads what the page shows.

Skipped, saying why, where ``/usr/bin/chromium`` is not installed (``make test`` installs it with
apt-get when it can: ``tests/e2e/install-chromium.sh``).
"""

from __future__ import annotations

import json
import threading
import urllib.error
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from olla.web.dashboard import load_assets
from tests.e2e import browser
from tests.e2e.dashboard_fleet import DEAD, MODEL, Fleet, fleet, get_json

_MISSING = browser.chromium_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

#: virtual time the page runs for before its DOM is read: a few refreshes (one every 3 s)
BUDGET_MS = 10_000


@dataclass
class Row:
    """One table row the page drew: its ``data-*`` attributes and the text of each cell that
    has a ``data-field``."""

    attrs: dict[str, str]
    cells: dict[str, str] = field(default_factory=dict)


class PageReader(HTMLParser):
    """The rows under each ``<tbody id=...>``, the ids of ``hidden`` elements, ``<body>``'s
    attributes, and the text of every other element with an ``id`` that holds only text (a
    card's value, a count, a line), from the DOM Chromium dumped. Text comes back unescaped,
    as the user reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[Row]] = {}
        self.hidden: set[str] = set()
        self.body: dict[str, str] = {}
        self.tags: list[str] = []
        self._table: str | None = None
        self._row: Row | None = None
        self._field: str | None = None
        self.texts: dict[str, str] = {}
        self._text: str | None = None  # the id whose text is being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "body":
            self.body = values
        if "hidden" in values:
            self.hidden.add(values.get("id", ""))
        if tag == "tbody":
            self._table = values.get("id", "")
            self.tables[self._table] = []
        elif "id" in values and tag in ("span", "div", "p"):
            self._text = values["id"]
            self.texts[self._text] = ""
        elif tag == "tr" and self._table is not None:
            self._row = Row({k[5:]: v for k, v in values.items() if k.startswith("data-")})
            self.tables[self._table].append(self._row)
        elif tag == "td" and self._row is not None:
            self._field = values.get("data-field")
            if self._field:
                self._row.cells[self._field] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "div", "p"):
            self._text = None
        if tag == "tbody":
            self._table = None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._field = None
        elif tag in ("div", "span") and self._row is not None and self._field:
            self._row.cells[self._field] += " "  # a block or a tag ends a word

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self.texts[self._text] += data
        if self._row is not None and self._field:
            self._row.cells[self._field] += data

    def rows(self, table: str, key: str) -> dict[str, Row]:
        return {row.attrs[key]: row for row in self.tables.get(table, []) if key in row.attrs}


def _read(dom: str) -> PageReader:
    reader = PageReader()
    reader.feed(dom)
    reader.close()
    return reader


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str, PageReader]]:
    """The fleet, and the page as Chromium saw it after ``BUDGET_MS`` of virtual time."""
    with fleet(Path(tmp_path_factory.mktemp("dashboard"))) as f:
        dom = browser.dump_dom(f.page, virtual_time_ms=BUDGET_MS)
        yield f, dom, _read(dom)


def test_endpoints_with_their_health(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If the page has loaded, then it lists all three endpoints: the two serving ones healthy
    with the requests they took, the dead one down with no traffic."""
    _, _, page = loaded
    endpoints = page.rows("endpoints", "endpoint")
    assert set(endpoints) == {"gpu-a", "gpu-b", DEAD}, page.tables
    for name in ("gpu-a", "gpu-b"):
        assert endpoints[name].attrs["status"] == "healthy"
        assert endpoints[name].cells["health"].strip() == "healthy"
        assert endpoints[name].cells["type"] == "ollama"
        assert endpoints[name].cells["models"] == "2"
    assert endpoints[DEAD].attrs["status"] in ("offline", "unhealthy")
    assert endpoints[DEAD].cells["requests"] == "0"
    # gpu-a took the 3 chats and the refused attempt; gpu-b the failed-over one
    assert int(endpoints["gpu-a"].cells["requests"]) == 4
    assert int(endpoints["gpu-b"].cells["requests"]) == 1
    assert endpoints["gpu-a"].cells["in-flight"] == "0"
    assert "ms" in endpoints["gpu-a"].cells["latency"]


def test_queue_panel(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If the page has loaded, then it shows the admission queue: nothing held now, and the
    requests it let through at once (every chat found a free slot)."""
    _, _, page = loaded
    assert "queue-panel" not in page.hidden
    assert page.texts["sum-queued"] == "0"
    assert page.texts["queue-count"] == "0 held (at most 1000)"
    assert page.tables["queue"][0].cells == {}  # the one "nothing waiting" row
    totals = page.texts["queue-totals"]
    assert totals.startswith("5 let through at once, 0 after a wait, 0 refused"), totals


def test_names_are_shown_as_text(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If an endpoint's name looks like markup, then the page shows it as those characters and
    the browser made no element of it."""
    _, dom, page = loaded
    assert page.rows("endpoints", "endpoint")[DEAD].cells["name"].startswith(DEAD + " ")
    assert "<i>" not in dom
    assert "i" not in page.tags


def test_model_catalogue(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If the page has loaded, then the catalogue lists every model with the hosts that
    serve it."""
    _, _, page = loaded
    models = page.rows("models", "model")
    assert set(models) == {MODEL, "qwen2.5:7b", "mistral:7b"}
    assert models[MODEL].cells["endpoints"].split() == ["gpu-a", "gpu-b"]
    assert models["qwen2.5:7b"].cells["endpoints"].split() == ["gpu-a"]
    assert models["mistral:7b"].cells["endpoints"].split() == ["gpu-b"]


def test_recorded_failover(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If a request failed over, then the page shows it: its id, model, from gpu-a (busy, 503)
    to gpu-b."""
    f, _, page = loaded
    failovers = page.rows("failovers", "failover")
    assert list(failovers) == [f.failed_over], page.tables.get("failovers")
    row = failovers[f.failed_over].cells
    assert (row["request"], row["model"], row["from"], row["to"]) == (
        f.failed_over,
        MODEL,
        "gpu-a",
        "gpu-b",
    )
    assert row["cause"].split() == ["busy", "answered", "503"]


def test_page_refreshes_itself(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If the page stays open, then it fetches the routes again every few seconds without
    reloading (its refresh count grows) and shows no error."""
    _, _, page = loaded
    assert int(page.body["data-refreshes"]) >= 3
    assert "error" in page.hidden  # the banner that says which route could not be read


def test_model_stats_panel_follows_the_route(loaded: tuple[Fleet, str, PageReader]) -> None:
    """If ``/internal/stats/models`` answers, then the model traffic panel is shown with the
    chatted model; if it is 404, then the panel is hidden and the rest still works."""
    f, _, page = loaded
    try:
        stats = get_json(f"{f.daemon.url}/internal/stats/models")
    except urllib.error.HTTPError as e:
        assert e.code == 404
        assert "model-stats-panel" in page.hidden
        return
    assert "model-stats-panel" not in page.hidden
    shown = page.rows("model-stats", "model-stats")
    assert set(shown) == {m["name"] for m in stats["models"]}
    assert MODEL in shown


# ---------------------------------------------------------------------------------- canned olla
# The page against a stand-in that answers every route it reads, for what a real daemon cannot
# show on cue: the model stats route answering, and a fleet that changes between two refreshes.

#: ``/internal/stats/models`` as the Go original shapes it (``models[]`` sorted by requests)
MODEL_STATS = {
    "timestamp": "2026-12-03T09:00:00Z",
    "models": [
        {"name": MODEL, "total_requests": 12, "success_rate": "100%", "average_latency": 240,
         "p95_latency": 1800, "last_requested": "2026-12-03T08:59:58Z"},
        {"name": "<b>qwen</b>", "total_requests": 3, "success_rate": "66.7%",
         "average_latency": 90, "p95_latency": 120, "last_requested": "2026-12-03T08:58:00Z"},
    ],
}  # fmt: skip
LATER_FAILOVER = {
    "time": "2026-12-03T09:00:01Z", "request_id": "calm-hums-0001", "model": MODEL,
    "from": "gpu-a", "to": "gpu-b", "kind": "unreachable", "cause": "connection refused",
}  # fmt: skip


def _endpoint(status: str) -> dict[str, object]:
    return {
        "name": "gpu-a",
        "url": "http://127.0.0.1:1",
        "type": "ollama",
        "status": status,
        "priority": 100,
        "model_count": 1,
        "request_count": 0,
        "active_connections": 0,
    }


QUEUE = {
    "enabled": True,
    "max_size": 1000,
    "held": 4,
    "models": {
        MODEL: {"held": {"high": 1, "normal": 2, "low": 0}, "oldest_wait_s": 1.25,
                "service_time_s": 3.0, "service_time_learnt": True},
        "<b>qwen</b>": {"held": {"high": 0, "normal": 0, "low": 1}, "oldest_wait_s": 0.08,
                        "service_time_s": 5.0, "service_time_learnt": False},
    },
    "totals": {"at_once": 40, "after_wait": 12, "queue_full": 3, "wait_timeout": 1,
               "cancelled": 2},
}  # fmt: skip


def _canned(path: str, call: int) -> object | None:
    """What the stand-in answers on its ``call``-th request (0 first) for ``path``: gpu-a
    healthy with no failover at first, offline with one failover from the second call on."""
    later = call > 0
    return {
        "/internal/status": {"system": {"status": "healthy", "version": "0"}, "queue": QUEUE},
        "/internal/status/endpoints": {
            "endpoints": [_endpoint("offline" if later else "healthy")],
            "healthy_count": 0 if later else 1,
            "total_count": 1,
        },
        "/internal/status/models": {"models_by_family": {}, "recent_models": []},
        "/internal/stats/models": MODEL_STATS,
        "/internal/stats/failovers": {
            "failovers": [LATER_FAILOVER] if later else [],
            "total": int(later),
        },
    }.get(path)


class _CannedOlla(BaseHTTPRequestHandler):
    """The dashboard's files, and :func:`_canned` for every route the page reads."""

    calls: Counter[str]

    def do_GET(self) -> None:
        payload = _canned(self.path, self.calls[self.path])
        self.calls[self.path] += 1
        if payload is not None:
            body, kind = json.dumps(payload).encode(), b"application/json"
        else:
            name = self.path.removeprefix("/internal/ui/") or "index.html"
            asset = load_assets().get(name)
            if asset is None:
                self.send_error(404)
                return
            body, kind = asset.body, asset.content_type
        self.send_response(200)
        self.send_header("Content-Type", kind.decode())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[tuple[PageReader, Counter[str]]]:
    """The page, after 8 s of virtual time, against the stand-in; and what it asked for."""
    calls: Counter[str] = Counter()
    handler = type("Handler", (_CannedOlla,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/internal/ui/"
        yield _read(browser.dump_dom(url, virtual_time_ms=8000)), calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_model_stats_panel_shows_the_stats(canned: tuple[PageReader, Counter[str]]) -> None:
    """If ``/internal/stats/models`` answers, then the model traffic panel shows each model
    with its requests and p95 latency, names as text."""
    page, _ = canned
    assert "model-stats-panel" not in page.hidden
    shown = page.rows("model-stats", "model-stats")
    assert list(shown) == [MODEL, "<b>qwen</b>"]
    assert (shown[MODEL].cells["requests"], shown[MODEL].cells["p95"]) == ("12", "1.8s")
    assert shown["<b>qwen</b>"].cells["p95"] == "120ms"
    assert "b" not in page.tags


def test_page_shows_what_changed_since_it_loaded(canned: tuple[PageReader, Counter[str]]) -> None:
    """If the fleet changes after the page loaded (gpu-a goes offline, a request fails over),
    then a later refresh shows it without reloading the page: the page itself was fetched
    once, the routes again and again."""
    page, calls = canned
    assert calls["/internal/ui/"] == 1
    assert calls["/internal/status/endpoints"] >= 2
    assert page.rows("endpoints", "endpoint")["gpu-a"].attrs["status"] == "offline"
    failover = page.rows("failovers", "failover")["calm-hums-0001"].cells
    assert (failover["from"], failover["to"]) == ("gpu-a", "gpu-b")
    assert failover["cause"].split() == ["unreachable", "connection", "refused"]


def test_queue_panel_shows_what_waits(canned: tuple[PageReader, Counter[str]]) -> None:
    """If requests are held, then the queue panel shows them per model and priority with the
    oldest one's wait and the model's service time (a prior until learnt), names as text, and
    what the queue did so far."""
    page, _ = canned
    assert "queue-panel" not in page.hidden
    assert (page.texts["sum-queued"], page.texts["queue-count"]) == ("4", "4 held (at most 1000)")
    rows = page.rows("queue", "queue-model")
    assert list(rows) == ["<b>qwen</b>", MODEL]
    held = rows[MODEL].cells
    assert (held["high"], held["normal"], held["low"], held["oldest"]) == ("1", "2", "0", "1.3s")
    assert rows["<b>qwen</b>"].cells["oldest"] == "80ms"
    assert page.texts["queue-totals"] == (
        "40 let through at once, 12 after a wait, 4 refused (3 queue full, 1 waited too long), "
        "2 gave up while held"
    )
    assert "b" not in page.tags
