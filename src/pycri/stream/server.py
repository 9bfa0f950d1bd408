"""``StreamServer``: the runtime's streaming endpoint behind Exec, Attach and PortForward.

The RPC layer validates and registers each request: ``register_exec(request)`` (and
``register_attach``, ``register_portforward``) stores it under a fresh random token and
returns the URL the RPC answers with (``http://127.0.0.1:PORT/exec/TOKEN``). The client
(crictl, or kubelet proxying the API server's connection) then connects there:

1. The request head is read (size and time limits, ``http``), routed, and checked against
   the concurrency bound (``max_concurrent_streams``: beyond it, 429 with ``Retry-After``,
   and the token stays valid for a retry).
2. The token is consumed: tokens are single-use and expire after ``token_ttl_s`` (60 s);
   an unknown, expired, reused or wrong-kind token is a 404, as kubelet answers. The cache
   is bounded (``max_pending_tokens``): registering beyond it raises
   ``TooManyPendingRequests`` (gRPC RESOURCE_EXHAUSTED).
3. The upgrade is negotiated (SPDY/3.1 or WebSocket, protocol versions; 400/403 answers)
   and the session runs ``remotecommand`` or ``portforward`` with the backend.

Every upgraded connection has an idle timeout (``idle_timeout_s``, 4 h as kubelet): no
frame in either direction for that long closes it (which cancels the backend). Each
session ends with one structured log line: who (peer address), what (kind, container or
sandbox, transport, protocol), how long, bytes in and out, and the outcome. ``stats()``
returns the counters for metrics: sessions open, totals per kind and outcome, bytes,
rejected requests per HTTP status.

TLS: with ``tls=True`` and no ``tls_cert_file``, a self-signed certificate (EC P-256, one
year, SAN = the URL host and localhost) is generated at ``start()`` with the
``cryptography`` package; crictl and kubelet do not verify the streaming server's
certificate unless configured to. The key never touches the disk unencrypted for longer
than loading it takes (a private temporary directory, removed at once).

Races and lifetimes: registration and consumption run on the loop thread, so a token can be
consumed exactly once. ``stop()`` closes the listener, then cancels every connection's task
(each cancels its backend and closes its socket) and waits for them. The bound on
concurrent sessions is checked and incremented in one synchronous step after the head is
read, so it cannot be overshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import ssl
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cri_api.v1 import api_pb2

from pycri.errors import CRIError, InvalidArgument
from pycri.stream import portforward, remotecommand
from pycri.stream.backend import StreamBackend, StreamIO
from pycri.stream.channels import Session, close_writer, watch_idle
from pycri.stream.http import (
    HttpError,
    RequestHead,
    RouteKind,
    Transport,
    choose_transport,
    format_response,
    negotiate_spdy_protocol,
    negotiate_websocket_subprotocol,
    read_request_head,
    route,
    spdy_upgrade_response,
)
from pycri.stream.spdy import SpdyOptions, SpdySession
from pycri.stream.websocket import WebSocketSession, accept_websocket

log = logging.getLogger(__name__)

StreamRequest = api_pb2.ExecRequest | api_pb2.AttachRequest | api_pb2.PortForwardRequest


class TooManyPendingRequests(CRIError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True, kw_only=True)
class StreamServerConfig:
    address: str = "127.0.0.1"
    #: 0: pick a free port at start.
    port: int = 0
    #: Host written into URLs; default: the bound address (127.0.0.1 for an unspecified one).
    url_host: str | None = None
    tls: bool = False
    #: PEM files; with ``tls`` and none given, a self-signed certificate is generated.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    token_ttl_s: float = 60.0
    max_pending_tokens: int = 1000
    max_concurrent_streams: int = 128
    idle_timeout_s: float = 4 * 3600.0
    stream_creation_timeout_s: float = 30.0
    request_head_timeout_s: float = 10.0
    max_request_head_bytes: int = 16 * 1024
    #: Wait for the backend after cancelling it (its cleanup: kill and delete the process).
    cancel_grace_s: float = 30.0
    #: After the last status, how long the client gets to hang up before we close.
    close_linger_s: float = 2.0
    portforward_half_close_grace_s: float = 1.0
    portforward_connect_timeout_s: float = 30.0
    max_websocket_message: int = 1024 * 1024
    spdy: SpdyOptions = field(default_factory=SpdyOptions)


@dataclass(frozen=True, kw_only=True)
class StreamStats:
    """A snapshot of the server's counters, for metrics."""

    sessions_open: int
    #: Upgraded sessions started, by kind (exec, attach, portforward).
    sessions_total: dict[str, int]
    #: Finished sessions by "kind:outcome" (exec:exited, attach:client_gone, ...).
    outcomes: dict[str, int]
    #: Data payload bytes from clients and to clients, over all finished sessions.
    bytes_in: int
    bytes_out: int
    #: Requests answered with an HTTP error, by status.
    rejected: dict[int, int]
    #: Forwarded port-forward connections by outcome (done, refused, ...).
    portforward_connections: dict[str, int]
    tokens_pending: int

    @property
    def errors(self) -> int:
        """Requests refused over HTTP plus sessions that failed (not the command's own exit)."""
        failed = sum(
            n for key, n in self.outcomes.items() if key.split(":", 1)[-1] in _FAILED_OUTCOMES
        )
        return sum(self.rejected.values()) + failed


# Session outcomes that count as errors in the metrics (an exit code is not one).
_FAILED_OUTCOMES = frozenset({"error", "stream_creation_timeout", "handshake_refused"})


@dataclass(frozen=True, kw_only=True)
class _Pending:
    kind: RouteKind
    request: StreamRequest
    expires_at: float


class TokenCache:
    """Single-use tokens for registered requests, expiring after ``ttl``; bounded."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        self._sweep()
        return len(self._entries)

    def _sweep(self) -> None:
        # Same TTL for all: insertion order is expiry order, so the oldest go first.
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[token]

    def insert(self, kind: RouteKind, request: StreamRequest) -> str:
        self._sweep()
        if len(self._entries) >= self._max:
            raise TooManyPendingRequests(
                f"too many streaming requests in flight ({self._max}); try again later"
            )
        token = secrets.token_urlsafe(16)
        self._entries[token] = _Pending(
            kind=kind, request=request, expires_at=self._clock() + self._ttl
        )
        return token

    def consume(self, token: str, kind: RouteKind) -> StreamRequest | None:
        entry = self._entries.pop(token, None)
        if entry is None or entry.kind is not kind or entry.expires_at <= self._clock():
            return None
        return entry.request


def _validate_stdio(request: api_pb2.ExecRequest | api_pb2.AttachRequest, noun: str) -> None:
    if not request.container_id:
        raise InvalidArgument("missing required container_id")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument(f"one of stdin, stdout, {noun} stderr must be set")


class StreamServer:
    """The streaming HTTP server; see the module docstring."""

    def __init__(
        self,
        *,
        backend: StreamBackend,
        config: StreamServerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self.config = config or StreamServerConfig()
        self._tokens = TokenCache(
            ttl=self.config.token_ttl_s, max_entries=self.config.max_pending_tokens, clock=clock
        )
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._open = 0
        self._sessions_total: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._rejected: Counter[int] = Counter()
        self._pf_connections: Counter[str] = Counter()
        self._bytes_in = 0
        self._bytes_out = 0
        self.base_url = ""

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        config = self.config
        tls = self._tls_context() if config.tls else None
        self._server = await asyncio.start_server(
            self._serve_connection,
            host=config.address,
            port=config.port,
            ssl=tls,
            # The reader's limit also sizes its buffer for SPDY/WebSocket reads later; the
            # head's own limit is checked by read_request_head.
            limit=max(config.max_request_head_bytes, config.spdy.read_size),
            ssl_handshake_timeout=config.request_head_timeout_s if tls else None,
        )
        port = self._server.sockets[0].getsockname()[1]
        host = config.url_host or _url_host(config.address)
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"{'https' if tls else 'http'}://{host}:{port}"
        log.info("streaming server listening", extra={"url": self.base_url})

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # ---------------------------------------------------------------- registration

    def register_exec(self, request: api_pb2.ExecRequest) -> str:
        """Validate ``request`` (InvalidArgument) and return the URL for it."""
        _validate_stdio(request, "or")
        if not request.cmd:
            raise InvalidArgument("cmd must not be empty")
        return self._register(RouteKind.EXEC, request)

    def register_attach(self, request: api_pb2.AttachRequest) -> str:
        _validate_stdio(request, "and")
        return self._register(RouteKind.ATTACH, request)

    def register_portforward(self, request: api_pb2.PortForwardRequest) -> str:
        if not request.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        if any(not 0 < port < 65536 for port in request.port):
            raise InvalidArgument(f"invalid port in {list(request.port)}")
        return self._register(RouteKind.PORTFORWARD, request)

    def _register(self, kind: RouteKind, request: StreamRequest) -> str:
        if not self.base_url:
            raise RuntimeError("streaming server not started")
        token = self._tokens.insert(kind, request)
        return f"{self.base_url}/{kind.value}/{token}"

    def stats(self) -> StreamStats:
        return StreamStats(
            sessions_open=self._open,
            sessions_total=dict(self._sessions_total),
            outcomes=dict(self._outcomes),
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            rejected=dict(self._rejected),
            portforward_connections=dict(self._pf_connections),
            tokens_pending=len(self._tokens),
        )

    # ---------------------------------------------------------------- connections

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = _peer(writer)
        try:
            await self._serve_request(reader, writer, peer)
        except HttpError as exc:
            self._rejected[exc.status] += 1
            log.info(
                "streaming request refused",
                extra={"peer": peer, "status": exc.status, "reason": exc.message},
            )
            with contextlib.suppress(Exception):
                writer.write(
                    format_response(exc.status, headers=exc.headers, body=exc.message + "\n")
                )
                async with asyncio.timeout(2.0):
                    await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("streaming connection failed", extra={"peer": peer})
        finally:
            self._connections.discard(task)
            # Flushes what is buffered (an error answer); drops a peer that does not read.
            await close_writer(writer, timeout=2.0)

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        config = self.config
        head = await read_request_head(
            reader, timeout=config.request_head_timeout_s, max_bytes=config.max_request_head_bytes
        )
        kind, token = route(head)
        if self._open >= config.max_concurrent_streams:
            raise HttpError(
                429,
                f"too many concurrent streams ({config.max_concurrent_streams})",
                headers=[("Retry-After", "1")],
            )
        request = self._tokens.consume(token, kind)
        if request is None:
            raise HttpError(404, "404 page not found")
        # Everything that can refuse the request is decided before the session counts.
        transport = choose_transport(head)
        supported: Sequence[str]
        if transport is Transport.SPDY:
            supported = (
                portforward.SPDY_PROTOCOLS
                if kind is RouteKind.PORTFORWARD
                else remotecommand.SPDY_PROTOCOLS
            )
            protocol: str | None = negotiate_spdy_protocol(head, supported)
            ports: list[int] = []
        else:
            if isinstance(request, api_pb2.PortForwardRequest):
                ports = list(request.port) or _query_ports(head)
                supported = portforward.WEBSOCKET_PROTOCOLS
            else:
                ports = []
                supported = remotecommand.WEBSOCKET_PROTOCOLS
            protocol = negotiate_websocket_subprotocol(head, supported)
        self._open += 1
        self._sessions_total[kind.value] += 1
        started = time.monotonic()
        fields: dict[str, Any] = {
            "peer": peer,
            "kind": kind.value,
            "transport": transport.value,
            "protocol": protocol or "",
        }
        fields |= _describe(request)
        session: SpdySession | WebSocketSession | None = None
        outcome = "error"
        try:
            if transport is Transport.SPDY:
                assert protocol is not None
                session = self._spdy_session(reader, writer, protocol, kind)
                handler = self._handler_spdy(session, protocol, kind, request, fields)
            else:
                session = self._websocket_session(
                    reader=reader,
                    writer=writer,
                    head=head,
                    subprotocol=protocol,
                    kind=kind,
                    ports=ports,
                )
                if session is None:
                    outcome = "handshake_refused"
                    await writer.drain()
                    return
                if isinstance(request, api_pb2.PortForwardRequest):
                    handler = self._portforward_websocket(session, request, ports, fields)
                else:
                    handler = self._remotecommand_websocket(
                        session, protocol, kind, request, fields
                    )
            outcome = await self._run_session(session, handler)
        except asyncio.CancelledError:
            outcome = "server_stopped"
            raise
        finally:
            self._open -= 1
            self._outcomes[f"{kind.value}:{outcome}"] += 1
            if session is not None:
                session.abort()
                self._bytes_in += session.bytes_in
                self._bytes_out += session.bytes_out
                fields |= {"bytes_in": session.bytes_in, "bytes_out": session.bytes_out}
            fields |= {
                "duration_ms": round((time.monotonic() - started) * 1000),
                "outcome": outcome,
            }
            log.info("stream finished", extra=fields)

    def _spdy_session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str,
        kind: RouteKind,
    ) -> SpdySession:
        writer.write(spdy_upgrade_response(protocol))
        return SpdySession(
            reader=reader,
            writer=writer,
            is_server=True,
            options=self.config.spdy,
            name=f"{kind.value}:{_peer(writer)}",
        )

    def _websocket_session(
        self,
        *,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        subprotocol: str | None,
        kind: RouteKind,
        ports: list[int],
    ) -> WebSocketSession | None:
        protocol, answer, accepted = accept_websocket(
            raw_head=head.raw,
            subprotocol=subprotocol,
            max_message_size=self.config.max_websocket_message,
        )
        writer.write(answer)
        if not accepted:
            return None
        dialect = remotecommand.websocket_dialect(subprotocol)
        portforwarding = kind is RouteKind.PORTFORWARD
        return WebSocketSession(
            reader=reader,
            writer=writer,
            protocol=protocol,
            channel_count=2 * len(ports) if portforwarding else 5,
            base64_codec=dialect.base64,
            close_signals=dialect.close_signals and not portforwarding,
            buffer_limit=self.config.spdy.receive_buffer_limit,
            max_send_message=self.config.spdy.max_send_frame,
            read_size=self.config.spdy.read_size,
            name=f"{kind.value}:{_peer(writer)}",
        )

    async def _run_session(
        self, session: SpdySession | WebSocketSession, handling: Coroutine[Any, Any, str]
    ) -> str:
        """Run a session's read loop, its idle watchdog and its handler; the handler's result."""
        loop_task = asyncio.create_task(session.run(), name="stream-read")
        idle = asyncio.create_task(
            watch_idle(session, timeout=self.config.idle_timeout_s, on_idle=self._on_idle(session)),
            name="stream-idle",
        )
        try:
            outcome: str = await handling
            return outcome
        finally:
            idle.cancel()
            session.abort()
            loop_task.cancel()
            await asyncio.gather(loop_task, idle, return_exceptions=True)

    def _on_idle(self, session: Session) -> Callable[[], None]:
        def expired() -> None:
            log.info(
                "streaming connection idle; closing",
                extra={"idle_timeout_s": self.config.idle_timeout_s},
            )
            session.abort()

        return expired

    # ---------------------------------------------------------------- handlers

    async def _handler_spdy(
        self,
        session: SpdySession,
        protocol: str,
        kind: RouteKind,
        request: StreamRequest,
        fields: dict[str, Any],
    ) -> str:
        config = self.config
        if isinstance(request, api_pb2.PortForwardRequest):
            result = await portforward.serve_spdy(
                session=session,
                sandbox_id=request.pod_sandbox_id,
                connect=self._connector(request.pod_sandbox_id),
                options=self._forward_options(),
                creation_timeout=config.stream_creation_timeout_s,
            )
            return self._portforward_outcome(result, fields)
        options, runner, command = self._command(request)
        outcome = await remotecommand.serve_spdy(
            session=session,
            protocol=protocol,
            options=options,
            runner=runner,
            what=kind.value,
            command=command,
            creation_timeout=config.stream_creation_timeout_s,
            cancel_grace=config.cancel_grace_s,
            linger=config.close_linger_s,
        )
        return _command_outcome(outcome, fields)

    async def _remotecommand_websocket(
        self,
        session: WebSocketSession,
        subprotocol: str | None,
        kind: RouteKind,
        request: StreamRequest,
        fields: dict[str, Any],
    ) -> str:
        options, runner, command = self._command(request)
        outcome = await remotecommand.serve_websocket(
            session=session,
            subprotocol=subprotocol,
            options=options,
            runner=runner,
            what=kind.value,
            command=command,
            cancel_grace=self.config.cancel_grace_s,
            linger=self.config.close_linger_s,
        )
        return _command_outcome(outcome, fields)

    async def _portforward_websocket(
        self,
        session: WebSocketSession,
        request: api_pb2.PortForwardRequest,
        ports: list[int],
        fields: dict[str, Any],
    ) -> str:
        try:
            result = await portforward.serve_websocket(
                session=session,
                ports=ports,
                sandbox_id=request.pod_sandbox_id,
                connect=self._connector(request.pod_sandbox_id),
                options=self._forward_options(),
            )
        finally:
            await session.close(linger=self.config.close_linger_s)
        return self._portforward_outcome(result, fields)

    def _command(
        self, request: StreamRequest
    ) -> tuple[remotecommand.StreamOptions, remotecommand.Runner, list[str]]:
        assert not isinstance(request, api_pb2.PortForwardRequest)
        options = remotecommand.StreamOptions.of(
            stdin=request.stdin, stdout=request.stdout, stderr=request.stderr, tty=request.tty
        )
        backend = self._backend
        if isinstance(request, api_pb2.ExecRequest):
            exec_request = request

            async def run_exec(io: StreamIO) -> int | None:
                return await backend.exec(exec_request, io)

            return options, run_exec, list(request.cmd)
        attach_request = request

        async def run_attach(io: StreamIO) -> int | None:
            await backend.attach(attach_request, io)
            return None

        return options, run_attach, []

    def _connector(self, sandbox_id: str) -> portforward.Connector:
        backend = self._backend

        async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await backend.connect(sandbox_id, port)

        return connect

    def _forward_options(self) -> portforward.ForwardOptions:
        return portforward.ForwardOptions(
            half_close_grace=self.config.portforward_half_close_grace_s,
            connect_timeout=self.config.portforward_connect_timeout_s,
            chunk_size=self.config.spdy.max_send_frame,
        )

    def _portforward_outcome(
        self, result: portforward.PortForwardResult, fields: dict[str, Any]
    ) -> str:
        for outcome, count in result.outcomes.items():
            self._pf_connections[outcome.value] += count
        fields["connections"] = {outcome.value: n for outcome, n in result.outcomes.items()}
        return "done"

    # ---------------------------------------------------------------- TLS

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if self.config.tls_cert_file and self.config.tls_key_file:
            context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
            return context
        host = self.config.url_host or _url_host(self.config.address)
        cert_pem, key_pem = self_signed_certificate(host)
        private = tempfile.mkdtemp(prefix="pycri-stream-tls-")
        try:
            cert_path = os.path.join(private, "cert.pem")
            key_path = os.path.join(private, "key.pem")
            for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
            context.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return context


def self_signed_certificate(host: str) -> tuple[bytes, bytes]:
    """A one-year self-signed certificate for ``host`` (and localhost): (cert PEM, key PEM)."""
    import datetime

    # cryptography is only needed when TLS is on without a configured certificate.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycri streaming server")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _url_host(address: str) -> str:
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _describe(request: StreamRequest) -> dict[str, Any]:
    if isinstance(request, api_pb2.PortForwardRequest):
        return {"sandbox_id": request.pod_sandbox_id, "ports": list(request.port)}
    fields: dict[str, Any] = {"container_id": request.container_id, "tty": request.tty}
    if isinstance(request, api_pb2.ExecRequest) and request.cmd:
        # The program only: arguments may carry secrets (sh -c "... --password=...").
        fields["command"] = request.cmd[0]
    return fields


def _query_ports(head: RequestHead) -> list[int]:
    ports: list[int] = []
    for value in head.query.get("port", []):
        for part in value.split(","):
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise HttpError(400, f"unable to parse {value!r} as a port")
            ports.append(int(part))
    if not ports:
        raise HttpError(400, 'query parameter "port" is required')
    return ports


def _command_outcome(result: remotecommand.CommandResult, fields: dict[str, Any]) -> str:
    if result.exit_code is not None:
        fields["exit_code"] = result.exit_code
    if result.error is not None:
        fields["error"] = result.error
    return result.outcome.value
