"""The HTTP side of streaming: request head parsing, routing, upgrade and version negotiation."""

from __future__ import annotations

import pytest

from pycri.stream.http import (
    HttpError,
    RouteKind,
    Transport,
    choose_transport,
    format_response,
    negotiate_spdy_protocol,
    negotiate_websocket_subprotocol,
    parse_request_head,
    route,
    spdy_upgrade_response,
)


def head(*header_lines: str, request_line: str = "POST /exec/tok HTTP/1.1") -> bytes:
    return ("\r\n".join([request_line, *header_lines]) + "\r\n\r\n").encode()


def test_parse_request_head() -> None:
    parsed = parse_request_head(
        head(
            "Host: 127.0.0.1:1234",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
            "x-stream-protocol-version: v3.channel.k8s.io, v2.channel.k8s.io",
            request_line="GET /portforward/tok?port=80&port=81,82 HTTP/1.1",
        )
    )
    assert (parsed.method, parsed.path) == ("GET", "/portforward/tok")
    assert parsed.query == {"port": ["80", "81,82"]}
    assert parsed.header("HOST") == "127.0.0.1:1234"
    assert parsed.header_tokens("X-Stream-Protocol-Version") == [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        head(request_line="POST /exec/tok HTTP/1.0"),
        head(request_line="POST /exec/tok"),
        head("no colon here"),
        head(" Folded: header"),
        head(request_line="OPTIONS * HTTP/1.1"),
        b"POST /exec/tok HTTP/1.1\r\nHost: x\r\n",
    ],
)
def test_malformed_heads_are_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as error:
        parse_request_head(raw)
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        ("POST /exec/abc HTTP/1.1", (RouteKind.EXEC, "abc")),
        ("GET /attach/abc HTTP/1.1", (RouteKind.ATTACH, "abc")),
        ("GET /portforward/abc?port=1 HTTP/1.1", (RouteKind.PORTFORWARD, "abc")),
        ("POST /exec/ HTTP/1.1", 404),
        ("POST /exec/a/b HTTP/1.1", 404),
        ("POST /run/abc HTTP/1.1", 404),
        ("DELETE /exec/abc HTTP/1.1", 405),
        ("POST /exec/abc HTTP/1.1|Content-Length: 3", 400),
        ("POST /exec/abc HTTP/1.1|Transfer-Encoding: chunked", 400),
        ("POST /exec/abc HTTP/1.1|Content-Length: 0", (RouteKind.EXEC, "abc")),
    ],
)
def test_routes(request_line: str, expected: object) -> None:
    line, *headers = request_line.split("|")
    parsed = parse_request_head(head(*headers, request_line=line))
    if isinstance(expected, int):
        with pytest.raises(HttpError) as error:
            route(parsed)
        assert error.value.status == expected
    else:
        assert route(parsed) == expected


def test_transport_choice_is_case_insensitive_and_token_based() -> None:
    spdy = parse_request_head(head("Connection: keep-alive, Upgrade", "Upgrade: spdy/3.1"))
    assert choose_transport(spdy) is Transport.SPDY
    ws = parse_request_head(head("Connection: upgrade", "Upgrade: WebSocket"))
    assert choose_transport(ws) is Transport.WEBSOCKET
    with pytest.raises(HttpError) as error:
        choose_transport(parse_request_head(head("Upgrade: SPDY/3.1")))
    assert error.value.status == 400


def test_spdy_negotiation_prefers_the_clients_order() -> None:
    supported = ("v4.channel.k8s.io", "v3.channel.k8s.io")
    offered = parse_request_head(
        head(
            "X-Stream-Protocol-Version: v3.channel.k8s.io",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
        )
    )
    assert negotiate_spdy_protocol(offered, supported) == "v3.channel.k8s.io"
    with pytest.raises(HttpError) as missing:
        negotiate_spdy_protocol(parse_request_head(head()), supported)
    assert missing.value.status == 400
    with pytest.raises(HttpError) as mismatch:
        negotiate_spdy_protocol(
            parse_request_head(head("X-Stream-Protocol-Version: v9")), supported
        )
    assert mismatch.value.status == 403
    assert mismatch.value.headers == (
        ("X-Accepted-Stream-Protocol-Versions", "v4.channel.k8s.io"),
        ("X-Accepted-Stream-Protocol-Versions", "v3.channel.k8s.io"),
    )


def test_websocket_negotiation() -> None:
    supported = ("v5.channel.k8s.io", "v4.channel.k8s.io")
    assert negotiate_websocket_subprotocol(parse_request_head(head()), supported) is None
    offered = parse_request_head(
        head("Sec-WebSocket-Protocol: v4.channel.k8s.io, v5.channel.k8s.io")
    )
    assert negotiate_websocket_subprotocol(offered, supported) == "v4.channel.k8s.io"
    with pytest.raises(HttpError) as error:
        negotiate_websocket_subprotocol(
            parse_request_head(head("Sec-WebSocket-Protocol: x")), supported
        )
    assert error.value.status == 403


def test_responses() -> None:
    assert spdy_upgrade_response("v4.channel.k8s.io") == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
    error = format_response(404, body="404 page not found\n")
    assert error.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Length: 19\r\n" in error and b"Connection: close\r\n" in error
    assert error.endswith(b"\r\n\r\n404 page not found\n")
