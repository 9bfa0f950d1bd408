"""The HTTP/1.1 part of CRI streaming: one request head, routing, the upgrade negotiation.

A streaming connection carries exactly one HTTP request: ``GET`` or ``POST`` on
``/exec/TOKEN``, ``/attach/TOKEN`` or ``/portforward/TOKEN``, asking to upgrade to SPDY/3.1
(``Upgrade: SPDY/3.1`` with ``X-Stream-Protocol-Version`` offers) or to WebSocket
(``Upgrade: websocket`` with ``Sec-WebSocket-Protocol`` offers). Anything else is answered
with a plain HTTP error and the connection is closed; there is no keep-alive and no body.

The head is read with limits: ``max_bytes`` (a longer head fails with 431) and a timeout
(408), so a client that connects and sends nothing, or
trickles a header forever, holds a connection only briefly.

Negotiation follows kubelet (apimachinery ``httpstream.Handshake`` and ``wsstream``): the
*client's* order of preference wins among the versions both sides know; for SPDY a missing
``X-Stream-Protocol-Version`` is a 400 and no common version a 403 listing ours in
``X-Accepted-Stream-Protocol-Versions``; for WebSocket no ``Sec-WebSocket-Protocol`` at all
means the plain binary channel protocol, and no common one is a 403. The SPDY answer is
``101 Switching Protocols`` with ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and the chosen
``X-Stream-Protocol-Version``; the WebSocket answer is built by ``websockets``.

Everything here is pure except ``read_request_head``; the parsing is lenient only where
Go clients differ harmlessly (header name case, comma-joined or repeated offers).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

HEADER_PROTOCOL_VERSION: Final = "X-Stream-Protocol-Version"
HEADER_ACCEPTED_VERSIONS: Final = "X-Accepted-Stream-Protocol-Versions"

REASONS: Final = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class RouteKind(enum.StrEnum):
    EXEC = "exec"
    ATTACH = "attach"
    PORTFORWARD = "portforward"


class Transport(enum.StrEnum):
    SPDY = "spdy"
    WEBSOCKET = "websocket"


class HttpError(Exception):
    """Answer the request with this status and plain-text body, then close."""

    def __init__(
        self, status: int, message: str, *, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


@dataclass(frozen=True, kw_only=True)
class RequestHead:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...] = field(default=())
    #: The head as received (the WebSocket handshake re-parses it).
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_tokens(self, name: str) -> list[str]:
        """Every comma-separated token of every ``name`` header, in order, stripped."""
        lowered = name.lower()
        tokens: list[str] = []
        for key, value in self.headers:
            if key.lower() == lowered:
                tokens += [token.strip() for token in value.split(",") if token.strip()]
        return tokens


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a request line and headers ending with an empty line (400 if malformed)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    if len(lines) < 2 or lines[-1] != "" or lines[-2] != "":
        raise HttpError(400, "request head not terminated by an empty line")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, f"malformed request line {lines[0]!r}")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise HttpError(400, f"unsupported HTTP version {version!r} (upgrades need HTTP/1.1)")
    headers: list[tuple[str, str]] = []
    for line in lines[1:-2]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise HttpError(400, f"malformed header line {line!r}")
        headers.append((name, value.strip(" \t")))
    split = urlsplit(target)
    if not split.path.startswith("/"):
        raise HttpError(400, f"unsupported request target {target!r}")
    return RequestHead(
        method=method,
        target=target,
        path=unquote(split.path),
        query=parse_qs(split.query, keep_blank_values=True),
        headers=tuple(headers),
        raw=raw,
    )


async def read_request_head(
    reader: asyncio.StreamReader, *, timeout: float, max_bytes: int
) -> RequestHead:
    """Read and parse one request head of at most ``max_bytes`` (the reader's ``limit``
    bounds what is buffered while looking for its end)."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise HttpError(408, "timed out reading the request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "connection closed before the request head ended") from None
    if len(raw) > max_bytes:
        raise HttpError(431, "request head too large")
    return parse_request_head(raw)


def route(head: RequestHead) -> tuple[RouteKind, str]:
    """``(kind, token)`` for ``/{exec,attach,portforward}/{token}`` (404, or 405 for the method)."""
    parts = head.path.split("/")
    if len(parts) != 3 or parts[0] or not parts[2]:
        raise HttpError(404, "404 page not found")
    try:
        kind = RouteKind(parts[1])
    except ValueError:
        raise HttpError(404, "404 page not found") from None
    if head.method not in ("GET", "POST"):
        raise HttpError(405, f"method {head.method} not allowed")
    if head.header("Transfer-Encoding") or (head.header("Content-Length") or "0") != "0":
        # Whatever follows the head belongs to the upgraded protocol: a body cannot.
        raise HttpError(400, "a streaming request has no body")
    return kind, parts[2]


def choose_transport(head: RequestHead) -> Transport:
    connection = [token.lower() for token in head.header_tokens("Connection")]
    upgrade = [token.lower() for token in head.header_tokens("Upgrade")]
    if "upgrade" in connection:
        if "websocket" in upgrade:
            return Transport.WEBSOCKET
        if "spdy/3.1" in upgrade:
            return Transport.SPDY
    raise HttpError(400, "unable to upgrade: missing upgrade headers in request")


def negotiate_spdy_protocol(head: RequestHead, supported: Sequence[str]) -> str:
    """The client's most preferred protocol version we support (400 / 403 otherwise)."""
    offered = head.header_tokens(HEADER_PROTOCOL_VERSION)
    if not offered:
        raise HttpError(400, f"unable to upgrade: {HEADER_PROTOCOL_VERSION} is required")
    for protocol in offered:
        if protocol in supported:
            return protocol
    raise HttpError(
        403,
        f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
        f"server accepts {list(supported)}",
        headers=[(HEADER_ACCEPTED_VERSIONS, protocol) for protocol in supported],
    )


def negotiate_websocket_subprotocol(head: RequestHead, supported: Sequence[str]) -> str | None:
    """The client's most preferred subprotocol we support; ``None`` if it offered none."""
    offered = head.header_tokens("Sec-WebSocket-Protocol")
    if not offered:
        return None
    for protocol in offered:
        if protocol in supported:
            return protocol
    raise HttpError(
        403, f"requested protocol(s) are not supported: {offered}; supports {list(supported)}"
    )


def format_response(
    status: int, *, headers: Sequence[tuple[str, str]] = (), body: str = ""
) -> bytes:
    """A complete HTTP/1.1 response; non-101 answers close the connection."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    payload = body.encode()
    if status != 101:
        lines += [
            "Content-Type: text/plain; charset=utf-8",
            "X-Content-Type-Options: nosniff",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def spdy_upgrade_response(protocol: str) -> bytes:
    return format_response(
        101,
        headers=[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            (HEADER_PROTOCOL_VERSION, protocol),
        ],
    )
