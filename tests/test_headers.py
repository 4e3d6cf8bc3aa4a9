"""Header hygiene on the proxy path (pure functions, table-tested)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from olla.proxy.headers import (
    SERVED_BY,
    VIA_VALUE,
    canonical_name,
    connection_listed,
    headers_of,
    relay_response_headers,
    request_headers_for_upstream,
    response_headers_for_client,
    sanitised,
    valid_request_id,
)


def _upstream(headers: list[tuple[bytes, list[bytes]]], **kw: object) -> dict[bytes, list[bytes]]:
    args: dict[str, object] = {
        "client_ip": b"10.1.2.3",
        "scheme": b"http",
        "host": b"olla:40114",
        "model": None,
    }
    args.update(kw)
    out = request_headers_for_upstream(headers, **args)  # type: ignore[arg-type]
    return {name.lower(): values for name, values in out}


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Authorization",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Authorization",
        b"Cookie",
        b"X-Api-Key",
        b"X-Auth-Token",
        b"Host",
        b"Content-Length",
        b"X-Olla-Endpoint",
    ],
)
def test_request_drops(name: bytes) -> None:
    """If a client sends a hop-by-hop, credential, framing or X-Olla header, then it is not
    forwarded upstream."""
    out = _upstream([(name, [b"v"]), (b"Accept", [b"*/*"])])
    assert name.lower() not in out
    assert out[b"accept"] == [b"*/*"]


def test_connection_listed_headers_dropped() -> None:
    """If the Connection header lists a header, then that header is not forwarded."""
    out = _upstream([(b"Connection", [b"close, X-Secret"]), (b"X-Secret", [b"s"])])
    assert b"x-secret" not in out


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"close"], {b"close"}),
        ([b"Keep-Alive, X-Foo"], {b"keep-alive", b"x-foo"}),
        ([b" a ,, b", b"C"], {b"a", b"b", b"c"}),
        (None, set()),
    ],
)
def test_connection_listed(values: list[bytes] | None, expected: set[bytes]) -> None:
    """If a Connection header lists names, then they are parsed lower-cased, blanks skipped."""
    assert connection_listed(values) == expected


def test_forwarding_headers_added() -> None:
    """If a request has no forwarding headers, then olla adds them."""
    out = _upstream([], model="llama3")
    assert out[b"x-forwarded-for"] == [b"10.1.2.3"]
    assert out[b"x-forwarded-proto"] == [b"http"]
    assert out[b"x-forwarded-host"] == [b"olla:40114"]
    assert out[b"x-real-ip"] == [b"10.1.2.3"]
    assert out[b"via"] == [VIA_VALUE]
    assert out[b"x-proxied-by"] == [SERVED_BY]
    assert out[b"x-model"] == [b"llama3"]


def test_forwarding_chains_appended() -> None:
    """If X-Forwarded-For and Via exist, then olla appends to them and keeps X-Real-IP."""
    out = _upstream(
        [
            (b"X-Forwarded-For", [b"1.1.1.1"]),
            (b"Via", [b"1.1 edge"]),
            (b"X-Real-IP", [b"1.1.1.1"]),
        ]
    )
    assert out[b"x-forwarded-for"] == [b"1.1.1.1, 10.1.2.3"]
    assert out[b"via"] == [b"1.1 edge, " + VIA_VALUE]
    assert out[b"x-real-ip"] == [b"1.1.1.1"]


def test_endpoint_headers_override_client() -> None:
    """If the endpoint configures a header the client also sent, then the endpoint's wins."""
    out = _upstream(
        [(b"X-Tenant", [b"client"])],
        extra=[(b"X-Tenant", b"configured"), (b"Authorization", b"Bearer backend")],
    )
    assert out[b"x-tenant"] == [b"configured"]
    assert out[b"authorization"] == [b"Bearer backend"]


@pytest.mark.parametrize(
    "name",
    [b"Set-Cookie", b"X-Olla-Endpoint", b"Connection", b"Transfer-Encoding", b"Authorization"],
)
def test_response_drops(name: bytes) -> None:
    """If a backend sends Set-Cookie, X-Olla-*, credentials or hop-by-hop headers, then the
    client never sees them."""
    out = response_headers_for_client([(name, [b"v"]), (b"Content-Type", [b"x"])], keep_length=True)
    assert [n for n, _ in out] == [b"Content-Type"]


def test_response_length_only_when_untouched() -> None:
    """If the body is relayed untouched, then Content-Length is kept; otherwise dropped."""
    headers = [(b"Content-Length", [b"5"])]
    assert response_headers_for_client(headers, keep_length=True) == [(b"Content-Length", [b"5"])]
    assert response_headers_for_client(headers, keep_length=False) == []


def test_response_hides_endpoint_credentials() -> None:
    """If a backend reflects the endpoint's credential header, then it is dropped."""
    out = response_headers_for_client(
        [(b"X-Backend-Key", [b"s3cret"])], keep_length=True, hidden=frozenset({b"x-backend-key"})
    )
    assert out == []


_NAMES = st.sampled_from(
    [b"Content-Type", b"content-length", b"Connection", b"X-Olla-Endpoint", b"set-cookie",
     b"X-Backend-Key", b"x-custom", b"ETag", b"Keep-Alive", b"Date", b"te", b"WWW-Authenticate"]
)  # fmt: skip
_VALUES = st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(
    st.lists(st.tuples(_NAMES, st.lists(_VALUES, min_size=1, max_size=2)), max_size=8),
    st.lists(_VALUES, max_size=2),
)
def test_relay_matches_the_filter(
    headers: list[tuple[bytes, list[bytes]]], already: list[bytes]
) -> None:
    """If a backend's response headers are relayed into the client's (which may already hold
    some), then the client's end up exactly as ``response_headers_for_client`` (no length)
    and ``setRawHeaders`` would have left them."""
    source = Headers()
    for name, values in headers:
        for value in values:
            source.addRawHeader(name, value)
    hidden = frozenset({b"x-backend-key"})
    expected, relayed = Headers(), Headers()
    for target in (expected, relayed):
        if already:
            target.setRawHeaders(b"X-Existing", already)
    kept = response_headers_for_client(
        list(source.getAllRawHeaders()), keep_length=False, hidden=hidden
    )
    for name, values in kept:
        expected.setRawHeaders(name, values)
    relay_response_headers(source, relayed, hidden)
    assert list(relayed.getAllRawHeaders()) == list(expected.getAllRawHeaders())


@given(
    st.lists(
        st.tuples(
            st.one_of(_NAMES, st.sampled_from([b"x-model", b"X-Forwarded-For", b"x-real-ip"])),
            st.lists(st.binary(max_size=12), max_size=2),
        ),
        max_size=8,
    )
)
def test_headers_of_is_headers_of_a_dict(pairs: list[tuple[bytes, list[bytes]]]) -> None:
    """If olla builds an upstream request's headers from its list (line breaks in values
    included), then they are exactly what ``Headers(dict(pairs))`` would hold."""
    expected = Headers(dict(pairs))  # type: ignore[arg-type]
    assert list(headers_of(pairs).getAllRawHeaders()) == list(expected.getAllRawHeaders())


def test_canonical_names_and_sanitised_values() -> None:
    """If olla sets a header straight into a table, then its name and value are the ones
    ``setRawHeaders`` would have stored."""
    assert canonical_name(b"x-olla-endpoint") == b"X-Olla-Endpoint"
    assert canonical_name(b"te") == b"TE"
    assert sanitised("gpu\r\nbox") == b"gpu box"
    assert sanitised("naïve") == "naïve".encode()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"abc-123", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"tab\t", False),
        (None, False),
    ],
)
def test_valid_request_id(value: bytes | None, ok: bool) -> None:
    """If X-Request-ID is 1-128 printable ASCII characters, then it may be echoed."""
    assert valid_request_id(value) is ok


def test_forwarded_client_behind_a_trusted_proxy() -> None:
    """If a trusted proxy named the client (client_ip differs from the peer), then the chain
    gains the peer (the hop olla saw) and X-Real-IP is the client."""
    out = _upstream(
        [(b"X-Forwarded-For", [b"198.51.100.7"])], client_ip=b"198.51.100.7", peer_ip=b"10.0.0.2"
    )
    assert out[b"x-forwarded-for"] == [b"198.51.100.7, 10.0.0.2"]
    assert out[b"x-real-ip"] == [b"198.51.100.7"]
    alone = _upstream([], client_ip=b"198.51.100.7", peer_ip=b"10.0.0.2")
    assert alone[b"x-forwarded-for"] == [b"10.0.0.2"]
