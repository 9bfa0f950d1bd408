"""Port-forward over SPDY or WebSocket: many TCP connections into a pod per session.

Each forwarded connection is a *pair* of channels, data and error, and one TCP connection
opened by the backend (``connect(sandbox_id, port)``). How pairs come to exist differs:

* **SPDY** (``portforward.k8s.io``): for every local connection the client opens an error
  stream, then a data stream, both with headers ``streamType``, ``port`` and ``requestID``;
  pairs are matched by ``requestID`` (clients too old to send one get kubelet's fallback:
  the error stream's id, and the data stream's id minus 2). A stream without a valid
  ``port`` or ``streamType`` is reset; a pair whose second stream does not come within
  ``stream_creation_timeout`` gets "timed out waiting for streams" on its error stream. Any
  number of pairs run concurrently (bounded by the session's stream limit).
* **WebSocket** (no subprotocol, ``v4.channel.k8s.io`` or ``v4.base64.channel.k8s.io``, as
  kubelet): the ports are fixed up front (the CRI request's, else the ``port`` query
  parameters); port *i* uses channel ``2i`` for data and ``2i+1`` for errors, and the first
  message on each carries the port as 2 little-endian bytes. Each port gets one connection,
  opened at once; the WebSocket closes when all of them ended.

One shared path (``forward_connection``) then serves a pair:

* A refused (or failed, or timed-out) connect, or any exception from ``connect``, is
  reported on the pair's error stream as
  ``error forwarding port P to pod S, uid : REASON`` (kubelet's words); both streams are
  then closed. The session stays up: other pairs are unaffected. (Recent clients choose to
  end the whole session when they read such an error: that is their decision.)
* Client to pod: data stream chunks are written to the socket with ``drain()`` between
  them, so a slow pod slows the client down through our bounded buffers and TCP. The
  client's FIN on the data stream half-closes the pod connection (``write_eof``); the
  other direction keeps flowing until the pod ends it.
* Pod to client: socket reads are written to the data stream (flow control, drain). When
  the pod closes its side, we FIN the data stream *and* close the error stream right away,
  because clients wait for the error stream's end before they let their local connection
  go; the client-to-pod direction then gets ``half_close_grace`` (1 s, as containerd) to
  finish before the pair is torn down.
* A reset of the data stream by the client (it gave up) ends both directions at once.

Mid-stream I/O errors are logged, not reported on the error stream: a message there makes
current clients kill the whole port-forward, which a single reset connection should not.

Races: the two directions are tasks; the first to end decides what happens to the other
(see above); every exit path closes the pod connection and both streams. A session ending
cancels every pair's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pycri.stream.backend import StreamClosedError
from pycri.stream.channels import Channel, close_writer
from pycri.stream.spdy import RstStatus, SpdySession, SpdyStream
from pycri.stream.websocket import WebSocketSession

log = logging.getLogger(__name__)

SPDY_PROTOCOLS: Final = ("portforward.k8s.io",)
WEBSOCKET_PROTOCOLS: Final = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")

Connector = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class PairOutcome(enum.StrEnum):
    DONE = "done"
    REFUSED = "refused"
    CLIENT_RESET = "client_reset"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass(kw_only=True)
class PortForwardResult:
    """Per-session totals, for the server's log line and counters."""

    outcomes: dict[PairOutcome, int] = field(default_factory=dict)

    def count(self, outcome: PairOutcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @property
    def connections(self) -> int:
        return sum(self.outcomes.values())


@dataclass(frozen=True, kw_only=True)
class ForwardOptions:
    #: Time the client-to-pod direction gets once the pod closed its side.
    half_close_grace: float = 1.0
    connect_timeout: float = 30.0
    #: Bytes per read from the pod connection (one data frame or message).
    chunk_size: int = 64 * 1024


async def _client_to_pod(data: Channel, writer: asyncio.StreamWriter) -> None:
    while chunk := await data.read():
        writer.write(chunk)
        await writer.drain()
    if not data.was_reset and writer.can_write_eof():
        writer.write_eof()


async def _pod_to_client(reader: asyncio.StreamReader, data: Channel, *, chunk_size: int) -> None:
    while chunk := await reader.read(chunk_size):
        await data.write(chunk)
    await data.close_write()


async def forward_connection(
    *,
    data: Channel,
    error: Channel,
    port: int,
    sandbox_id: str,
    connect: Connector,
    options: ForwardOptions,
) -> PairOutcome:
    """Serve one forwarded connection; always closes both channels and the pod socket."""
    try:
        async with asyncio.timeout(options.connect_timeout):
            reader, writer = await connect(port)
    except Exception as exc:  # ConnectionRefusedError, TimeoutError, a backend's own error
        message = f"error forwarding port {port} to pod {sandbox_id}, uid : {exc}"
        log.info(
            "port-forward connect failed",
            exc_info=None if isinstance(exc, OSError) else exc,
            extra={"port": port, "error": str(exc)},
        )
        with contextlib.suppress(StreamClosedError):
            await error.write(message.encode())
        await _close_channels(data, error)
        return PairOutcome.REFUSED
    up = asyncio.create_task(_client_to_pod(data, writer), name=f"pf-{port}-up")
    down = asyncio.create_task(
        _pod_to_client(reader, data, chunk_size=options.chunk_size), name=f"pf-{port}-down"
    )
    outcome = PairOutcome.DONE
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done():
            # The pod finished sending: end the error stream now (the client waits for it).
            with contextlib.suppress(StreamClosedError):
                await error.close_write()
            if not up.done():
                await asyncio.wait({up}, timeout=options.half_close_grace)
        elif not data.was_reset and up.exception() is None:
            await asyncio.wait({down})  # the client half-closed; the pod's answer still flows
        if data.was_reset:
            outcome = PairOutcome.CLIENT_RESET
        for task in (up, down):
            if task.done() and not task.cancelled() and (failure := task.exception()) is not None:
                if isinstance(failure, StreamClosedError):
                    outcome = PairOutcome.CLIENT_RESET
                else:
                    outcome = PairOutcome.ERROR
                    log.info("port-forward I/O error", extra={"port": port, "error": str(failure)})
    except asyncio.CancelledError:
        outcome = PairOutcome.CANCELLED
        raise
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        await close_writer(writer)
        await _close_channels(data, error)
    return outcome


async def _close_channels(*channels: Channel) -> None:
    for channel in channels:
        # What the client still sends for a finished pair is dropped, so a full buffer
        # cannot hold up the session's other pairs.
        channel.discard_incoming()
        with contextlib.suppress(StreamClosedError):
            await channel.close_write()


# ---------------------------------------------------------------- SPDY


@dataclass(kw_only=True)
class _Pair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    timer: asyncio.Task[None] | None = None


def _valid_port(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


async def serve_spdy(
    *,
    session: SpdySession,
    sandbox_id: str,
    connect: Connector,
    options: ForwardOptions,
    creation_timeout: float = 30.0,
) -> PortForwardResult:
    """Pair the client's streams and forward each pair until the session ends."""
    result = PortForwardResult()
    pending: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def run_pair(pair: _Pair, port: int) -> None:
        assert pair.data is not None and pair.error is not None
        outcome = PairOutcome.CANCELLED
        try:
            outcome = await forward_connection(
                data=pair.data,
                error=pair.error,
                port=port,
                sandbox_id=sandbox_id,
                connect=connect,
                options=options,
            )
        finally:
            result.count(outcome)

    async def expire(pair: _Pair) -> None:
        await asyncio.sleep(creation_timeout)
        if pending.get(pair.request_id) is pair:
            del pending[pair.request_id]
            log.info("timed out waiting for streams", extra={"request_id": pair.request_id})
            if pair.error is not None:
                with contextlib.suppress(StreamClosedError):
                    await pair.error.write(b"timed out waiting for streams")
            await _close_channels(*(s for s in (pair.data, pair.error) if s is not None))

    try:
        while (stream := await session.accept()) is not None:
            kind = stream.header("streamtype")
            port = _valid_port(stream.header("port"))
            if port is None or kind not in ("data", "error"):
                log.info(
                    "refusing port-forward stream",
                    extra={"stream_type": kind, "port": stream.header("port")},
                )
                stream.reset(RstStatus.REFUSED_STREAM)
                continue
            request_id = stream.header("requestid") or str(
                stream.id if kind == "error" else stream.id - 2
            )
            pair = pending.get(request_id)
            if pair is None:
                pair = pending[request_id] = _Pair(request_id=request_id)
                pair.timer = asyncio.create_task(expire(pair), name=f"pf-expire-{request_id}")
            if getattr(pair, kind) is not None:
                stream.reset(RstStatus.PROTOCOL_ERROR)
                continue
            stream.reply()
            setattr(pair, kind, stream)
            if pair.data is not None and pair.error is not None:
                del pending[request_id]
                if pair.timer is not None:
                    pair.timer.cancel()
                task = asyncio.create_task(run_pair(pair, port), name=f"pf-{request_id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for pair in pending.values():
            if pair.timer is not None:
                pair.timer.cancel()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return result


# ---------------------------------------------------------------- WebSocket


async def serve_websocket(
    *,
    session: WebSocketSession,
    ports: Sequence[int],
    sandbox_id: str,
    connect: Connector,
    options: ForwardOptions,
) -> PortForwardResult:
    """Forward one connection per port over a WebSocket's channel pairs."""
    result = PortForwardResult()
    session.readable = {2 * index for index in range(len(ports))}

    async def run_port(index: int, port: int) -> None:
        data, error = session.channel(2 * index), session.channel(2 * index + 1)
        prefix = struct.pack("<H", port)
        outcome = PairOutcome.CANCELLED
        try:
            await data.write(prefix)
            await error.write(prefix)
            outcome = await forward_connection(
                data=data,
                error=error,
                port=port,
                sandbox_id=sandbox_id,
                connect=connect,
                options=options,
            )
        except StreamClosedError:
            outcome = PairOutcome.CLIENT_RESET
        finally:
            result.count(outcome)

    tasks = [asyncio.create_task(run_port(i, p), name=f"pf-ws-{p}") for i, p in enumerate(ports)]
    gone = asyncio.create_task(session.wait_closed())
    try:
        everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
        waiting: set[asyncio.Future[Any]] = {everything, gone}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result
