# -*- test-case-name: tests.test_dashboard -*-
"""The dashboard at ``/internal/ui/``: one page, its script and its stylesheet, from package data.

The files ship inside the package (``olla/web/ui``) and are read once, with
:mod:`importlib.resources`, when olla starts: no build step, nothing fetched from elsewhere. The
page itself polls the read-only ``/internal/status*`` and ``/internal/stats/*`` routes. Every
answer carries a strong ETag (SHA-256 of the file) with ``Cache-Control: no-cache``, so a
browser revalidates and gets ``304`` until olla is upgraded, and a strict Content-Security-Policy
that lets the page talk to its own origin only. Who may see it at all is
``dashboard.access_policy`` (:mod:`olla.util.access`), checked on every dashboard path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound
from zope.interface import implementer

from olla.config import OllaConfig
from olla.front.context import context_of
from olla.interfaces import IReconfigurable
from olla.util.access import AccessPolicy
from olla.util.responses import json_response
from olla.web.status import etag_matches

#: where the page lives; ``/internal/ui`` redirects here
UI_PATH = b"/internal/ui/"
#: the package data directory holding the files (``olla/web/ui``)
UI_PACKAGE = "olla.web"
UI_DIRECTORY = "ui"
#: the page
INDEX = "index.html"
#: every file the dashboard serves, and its type; anything else under ``/internal/ui/`` is 404
CONTENT_TYPES: Mapping[str, bytes] = {
    INDEX: b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}
#: same origin only: no inline script, no third-party anything, no framing
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    """One served file: its bytes, its ``Content-Type`` and its strong ETag."""

    body: bytes
    content_type: bytes
    etag: str


def load_assets(package: str = UI_PACKAGE, directory: str = UI_DIRECTORY) -> dict[str, Asset]:
    """Every file of :data:`CONTENT_TYPES`, read from ``directory`` in ``package``'s data.

    Raises:
        FileNotFoundError: a file is missing (a broken install): olla does not start.
    """
    files = resources.files(package).joinpath(directory)
    assets = {}
    for name, content_type in CONTENT_TYPES.items():
        body = files.joinpath(name).read_bytes()
        assets[name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()}"')
    return assets


@implementer(IReconfigurable)
class Dashboard:
    """The dashboard's answers; :class:`olla.web.internal.InternalApp` routes to them."""

    _log = Logger()
    reconfigures = ("dashboard.access_policy.",)

    def __init__(self, policy: AccessPolicy, assets: Mapping[str, Asset] | None = None) -> None:
        """Serve the dashboard's files to whom ``policy`` lets in.

        Args:
            policy: who may see the dashboard (``dashboard.access_policy``).
            assets: the files to serve; read from the package data when not given.
        """
        #: who may see the page; a reload puts the new ``dashboard.access_policy`` here
        self.policy = policy
        self._assets = dict(assets) if assets is not None else load_assets()

    def reconfigure(self, config: OllaConfig) -> None:
        self.policy = AccessPolicy.from_config(config.dashboard.access_policy)

    def redirect(self, request: IRequest) -> bytes:
        """``/internal/ui`` -> ``307`` to ``/internal/ui/`` (the page's links are relative to
        it), keeping the query string."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        _, sep, query = request.uri.partition(b"?")
        _security_headers(request)
        request.setResponseCode(307)
        request.setHeader(b"Location", UI_PATH + sep + query)
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, {"location": UI_PATH.decode()}, 307, compact=True)

    def page(self, request: IRequest) -> bytes:
        """``/internal/ui/``: the page."""
        return self.asset(request, INDEX)

    def asset(self, request: IRequest, name: str) -> bytes:
        """``/internal/ui/<name>``: a file of the dashboard, or ``304`` when the browser has it.

        Raises:
            NotFound: ``name`` is not one of the dashboard's files.
        """
        refused = self._refused(request)
        if refused is not None:
            return refused
        found = self._assets.get(name)
        if found is None:
            raise NotFound()
        _security_headers(request)
        request.setHeader(b"Content-Type", found.content_type)
        request.setHeader(b"ETag", found.etag.encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        values = request.requestHeaders.getRawHeaders(b"if-none-match")
        if values and etag_matches(", ".join(v.decode("latin-1") for v in values), found.etag):
            request.setResponseCode(304)
            return b""
        return found.body

    def _refused(self, request: IRequest) -> bytes | None:
        """The ``403`` for a request the access policy turns away, or ``None``."""
        peer = context_of(request).peer
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        reason = self.policy.refusal(peer, host)
        if reason is None:
            return None
        self._log.warn(
            "dashboard access denied: {reason}", reason=reason, client_ip=peer, host=host
        )
        _security_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, {"error": reason}, 403, compact=True)


def _security_headers(request: IRequest) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
