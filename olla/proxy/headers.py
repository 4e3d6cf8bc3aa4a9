# -*- test-case-name: tests.test_headers -*-
"""Header rules for the proxy path: pure functions over header lists, no I/O.

Header names arrive as raw bytes in whatever case the peer used; every comparison here is on
the lower-cased name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from twisted.web.http_headers import Headers

from olla import __version__

RawHeaders = Sequence[tuple[bytes, Sequence[bytes]]]

#: RFC 9110 §7.6.1 hop-by-hop headers, plus the legacy ``Proxy-Connection``.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Client credentials meant for olla (or nobody): a backend gets only its configured auth.
CLIENT_CREDENTIALS: frozenset[bytes] = frozenset(
    {
        b"authorization",
        b"cookie",
        b"x-api-key",
        b"api-key",
        b"x-auth-token",
        b"proxy-authorization",
    }
)

#: Request headers the upstream connection sets itself (Agent writes Host and the framing).
_UPSTREAM_OWNED: frozenset[bytes] = frozenset({b"host", b"content-length", b"expect"})

#: Response headers a backend must never hand to a client through olla.
_RESPONSE_DROPPED: frozenset[bytes] = frozenset(
    {b"set-cookie", b"authorization", b"proxy-authorization", b"x-api-key", b"x-auth-token"}
)

VIA_VALUE = f"1.1 olla/{__version__}".encode()
SERVED_BY = f"Olla/{__version__}".encode()

_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")


def connection_listed(values: Iterable[bytes] | None) -> frozenset[bytes]:
    """The header names a ``Connection`` header lists, lower-cased.

    Args:
        values: every raw value of the ``Connection`` header, or None.
    """
    names: set[bytes] = set()
    for value in values or ():
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                names.add(token)
    return frozenset(names)


def _connection_values(headers: RawHeaders) -> list[bytes]:
    return [v for name, values in headers if name.lower() == b"connection" for v in values]


#: what a client's request never passes on (lower-cased), worked out once
_REQUEST_NEVER: frozenset[bytes] = HOP_BY_HOP | CLIENT_CREDENTIALS | _UPSTREAM_OWNED


def request_headers_for_upstream(
    headers: RawHeaders,
    *,
    client_ip: bytes,
    scheme: bytes,
    host: bytes | None,
    model: str | None,
    extra: Sequence[tuple[bytes, bytes]] = (),
    peer_ip: bytes | None = None,
) -> list[tuple[bytes, list[bytes]]]:
    """The headers olla sends upstream for a client request.

    Hop-by-hop and ``Connection``-listed headers, client credentials and framing are dropped;
    the forwarding headers are added (appended where a chain exists, else set if absent);
    ``extra`` (endpoint headers, then its auth header) replaces any client header of that name.

    Args:
        headers: the client's raw headers.
        client_ip: the client's address (the TCP peer, or the client a trusted proxy named).
        scheme: ``http`` or ``https`` as the client reached olla.
        host: the client's ``Host`` header, if any.
        model: the model the request names, if known.
        extra: endpoint-configured headers, applied last.
        peer_ip: the TCP peer's address, the hop ``X-Forwarded-For`` gains (default
            ``client_ip``; they differ when a trusted proxy named the client).
    """
    dropped = _REQUEST_NEVER
    listed = _connection_values(headers)
    if listed:
        dropped = dropped | connection_listed(listed)
    if extra:
        dropped = dropped | {name.lower() for name, _ in extra}
    out: list[tuple[bytes, list[bytes]]] = []
    present: dict[bytes, list[bytes]] = {}
    for name, values in headers:
        lower = name.lower()
        if lower in dropped or lower.startswith(b"x-olla-"):
            continue
        kept = list(values)
        out.append((name, kept))
        present[lower] = kept

    hop = client_ip if peer_ip is None else peer_ip
    forwarded_for = present.get(b"x-forwarded-for")
    if forwarded_for:
        forwarded_for[-1] = forwarded_for[-1] + b", " + hop
    else:
        out.append((b"X-Forwarded-For", [hop]))
    if b"x-forwarded-proto" not in present:
        out.append((b"X-Forwarded-Proto", [scheme]))
    if host is not None and b"x-forwarded-host" not in present:
        out.append((b"X-Forwarded-Host", [host]))
    if b"x-real-ip" not in present:
        out.append((b"X-Real-IP", [client_ip]))
    via = present.get(b"via")
    if via:
        via[-1] = via[-1] + b", " + VIA_VALUE
    else:
        out.append((b"Via", [VIA_VALUE]))
    out.append((b"X-Proxied-By", [SERVED_BY]))
    if model:
        out.append((b"X-Model", [model.encode("utf-8", "replace")]))
    out.extend((name, [value]) for name, value in extra)
    return out


def response_headers_for_client(
    headers: RawHeaders, *, keep_length: bool, hidden: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, list[bytes]]]:
    """The upstream response headers that may reach the client.

    Args:
        headers: the backend's raw response headers.
        keep_length: keep ``Content-Length`` (only when the body is relayed untouched).
        hidden: extra lower-cased names to drop (the endpoint's own credential headers).
    """
    dropped = HOP_BY_HOP | _RESPONSE_DROPPED | hidden
    listed = _connection_values(headers)
    if listed:
        dropped |= connection_listed(listed)
    if not keep_length:
        dropped |= {b"content-length"}
    return [
        (name, list(values))
        for name, values in headers
        if name.lower() not in dropped and not name.lower().startswith(b"x-olla-")
    ]


#: what a backend's response never passes on (lower-cased); ``Content-Length`` too: the
#: relay sets it from the response's own length field
_RESPONSE_NEVER: frozenset[bytes] = HOP_BY_HOP | _RESPONSE_DROPPED | {b"content-length"}


def relay_response_headers(
    source: Headers, target: Headers, hidden: frozenset[bytes] = frozenset()
) -> None:
    """Copy the backend's response headers that may reach the client from ``source`` into
    ``target`` (what ``response_headers_for_client`` keeps with ``keep_length=False``).

    Straight into ``target``'s table, not through ``setRawHeaders``: every name and value in
    a ``Headers`` went through its name encoder (canonical case) and its line sanitiser when
    it was added (``_newclient`` adds each parsed line with ``addRawHeader``), and doing both
    again for each of a response's headers costs more than the rest of the relay. Only
    ``Headers``' own table is touched, as its ``setRawHeaders`` would set it.
    """
    raw = source._rawHeaders
    dropped = _RESPONSE_NEVER | hidden if hidden else _RESPONSE_NEVER
    connection = raw.get(b"Connection")
    if connection:  # _newclient keeps it out; a Headers built by hand may carry it
        dropped = dropped | connection_listed(connection)
    into = target._rawHeaders
    for name, values in raw.items():
        lower = name.lower()
        if lower not in dropped and not lower.startswith(b"x-olla-"):
            into[name] = list(values)


def canonical_name(name: bytes) -> bytes:
    """``name`` as ``Headers`` keys it (``x-olla-endpoint`` -> ``X-Olla-Endpoint``): for
    names set straight into a ``Headers``' table (see ``relay_response_headers``)."""
    headers = Headers()
    headers.setRawHeaders(name, [b""])
    return next(iter(headers._rawHeaders))


def headers_of(pairs: Iterable[tuple[bytes, Sequence[bytes]]]) -> Headers:
    """``Headers(dict(pairs))``, without re-encoding what needs none: a name already in the
    canonical case and values without a line break are stored as they are (the client's own
    headers, olla's constants); the rest go through ``setRawHeaders`` (a model name from the
    body, an endpoint's configured header)."""
    headers = Headers()
    raw = headers._rawHeaders
    known = _CANONICAL
    for name, values in pairs:
        key = known.get(name)
        if key is None:
            key = canonical_name(name)
            if len(known) < 1024:  # client header names: cached up to a bound
                known[name] = key
        for value in values:
            if b"\r" in value or b"\n" in value:
                headers.setRawHeaders(name, values)
                break
        else:
            raw[key] = list(values)
    return headers


#: header name as sent -> as ``Headers`` keys it (see ``headers_of``)
_CANONICAL: dict[bytes, bytes] = {}


@lru_cache(maxsize=256)
def sanitised(value: str) -> bytes:
    """``value`` as ``Headers.setRawHeaders`` would store it (UTF-8, line breaks folded):
    for the few values every answer repeats (an endpoint's name and type), worked out once."""
    headers = Headers()
    headers.setRawHeaders(b"x", [value.encode()])
    return headers._rawHeaders[b"X"][0]


def valid_request_id(value: bytes | None) -> bool:
    """Whether a client's ``X-Request-ID`` may be echoed: 1-128 printable ASCII characters."""
    return value is not None and _REQUEST_ID.match(value) is not None
