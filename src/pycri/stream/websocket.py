"""WebSocket transport: Kubernetes' channel protocols over the ``websockets`` Sans-I/O machine.

The connection is accepted from the same listening socket and HTTP parser as SPDY: the
server parses the request head itself, then ``accept_websocket`` feeds it to
``websockets.server.ServerProtocol`` (which checks the key and version and builds the 101
answer) and wraps the result in a ``WebSocketSession``. websockets does the framing,
masking, PING/PONG and the close handshake; this module only moves bytes between the
socket and the protocol object.

Channels (``channel.k8s.io`` and its versions): every message starts with one byte naming
its channel, the rest is that channel's data. ``base64.channel.k8s.io`` variants send text
messages instead: the channel as an ASCII digit, then the data in base64. ``v5`` adds a
close signal, a binary message ``[255, channel]``: received, it ends that channel's
incoming data (stdin EOF); sent (``close_write``), it tells the client a server channel is
finished. Older versions cannot say that: ``close_write`` does nothing and the end of the
connection is the end of every channel. Messages for unknown channels, or for channels the
client may not write (stdout...), are dropped, as kubelet does.

Backpressure: incoming data per channel is bounded by ``buffer_limit`` (``InboundBuffer``);
above it the read loop stops reading the socket until the consumer catches up. Writes wait
on the transport's ``drain()``. Idle time is tracked in ``last_activity`` (any frame).

Races: a message is decoded and dispatched in the read loop's step that received it, so
channel order is preserved. Teardown (peer EOF, close, error) is synchronous and idempotent
and ends every channel: reads return ``b""``, writes raise ``StreamClosedError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Sequence

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from pycri.stream.backend import StreamClosedError
from pycri.stream.channels import InboundBuffer, SessionBookkeeping, close_writer, linger_for_peer

log = logging.getLogger(__name__)

#: v5 close signal: a message on this "channel" names the channel being closed.
CLOSE_SIGNAL = 255


class WsChannel:
    """One numbered channel of a ``WebSocketSession``."""

    def __init__(self, *, session: WebSocketSession, number: int, buffer_limit: int) -> None:
        self._session = session
        self.number = number
        self.local_closed = False
        self.was_reset = False
        self.inbound = InboundBuffer(limit=buffer_limit)

    def __repr__(self) -> str:
        return f"<WsChannel {self.number}>"

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.inbound.read(max_bytes)

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise StreamClosedError(f"channel {self.number}: write after close")
        await self._session._send_channel_data(self.number, data)

    async def close_write(self) -> None:
        if self.local_closed or self._session.closed:
            self.local_closed = True
            return
        self.local_closed = True
        if self._session.close_signals:
            with contextlib.suppress(StreamClosedError):
                await self._session._send_message(bytes((CLOSE_SIGNAL, self.number)), text=False)

    def discard_incoming(self) -> None:
        self.inbound.discard()

    def reset(self) -> None:
        self.local_closed = True
        self.was_reset = True
        self.inbound.discard()


class WebSocketSession(SessionBookkeeping):
    """An accepted WebSocket connection multiplexing numbered channels."""

    def __init__(
        self,
        *,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ServerProtocol,
        channel_count: int,
        base64_codec: bool,
        close_signals: bool,
        buffer_limit: int = 256 * 1024,
        max_send_message: int = 64 * 1024,
        read_size: int = 256 * 1024,
        name: str = "websocket",
    ) -> None:
        self.name = name
        self.base64_codec = base64_codec
        self.close_signals = close_signals
        self._reader = reader
        self._writer = writer
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._max_send = max_send_message
        self._read_size = read_size
        self.channels = [
            WsChannel(session=self, number=n, buffer_limit=buffer_limit)
            for n in range(channel_count)
        ]
        #: Channels the client may write to; data for the others is dropped.
        self.readable: set[int] = set(range(channel_count))
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._init_bookkeeping(self._loop)

    # ------------------------------------------------------------ Session protocol

    async def close(self, *, linger: float = 0.0) -> None:
        """Close handshake (1000), waiting up to ``linger`` s for the client's answer."""
        if self._closed:
            return
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(1000)
            with contextlib.suppress(OSError):
                self._flush()
        await linger_for_peer(self._writer, peer_done=self._eof_event, linger=linger)
        self._teardown("closed")
        await close_writer(self._writer, timeout=max(linger, 1.0))

    def abort(self) -> None:
        self._teardown("aborted")
        self._writer.transport.abort()

    # ------------------------------------------------------------ read loop

    def channel(self, number: int) -> WsChannel:
        return self.channels[number]

    async def run(self) -> None:
        reason = "peer closed the connection"
        try:
            while not self._closed:
                data = await self._reader.read(self._read_size)
                if not data:
                    self._protocol.receive_eof()
                    break
                self._last_activity = self._loop.time()
                self._protocol.receive_data(data)
                for event in self._protocol.events_received():
                    if isinstance(event, Frame):
                        self._on_frame(event)
                self._flush()
                if self._protocol.state is State.CLOSED or self._protocol.close_expected():
                    reason = "closing handshake"
                    break
                for channel in self.channels:
                    if not channel.inbound.has_room:
                        await channel.inbound.wait_room()
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._eof_event.set()
            self._teardown(reason)

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            for channel in self.channels:
                channel.inbound.feed_eof()
            return
        if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return  # PING/PONG: answered by the protocol object
        if frame.opcode is not Opcode.CONT:
            self._fragment_opcode = frame.opcode
        self._fragments.append(bytes(frame.data))
        if not frame.fin:
            return
        message = b"".join(self._fragments)
        opcode = self._fragment_opcode
        self._fragments.clear()
        self._fragment_opcode = None
        self._on_message(message, text=opcode is Opcode.TEXT)

    def _on_message(self, message: bytes, *, text: bool) -> None:
        if not message:
            return
        number = message[0]
        payload = message[1:]
        if self.base64_codec:
            if not text:
                return
            number -= ord("0")
            try:
                payload = base64.b64decode(payload, validate=True)
            except binascii.Error:
                log.debug("undecodable base64 message", extra={"session": self.name})
                return
        elif number == CLOSE_SIGNAL and self.close_signals:
            if len(payload) == 1 and payload[0] < len(self.channels):
                self.channels[payload[0]].inbound.feed_eof()
            return
        if number not in self.readable or number >= len(self.channels):
            return
        self._bytes_in += len(payload)
        self.channels[number].inbound.feed(payload)

    # ------------------------------------------------------------ writing

    def _flush(self) -> None:
        for chunk in self._protocol.data_to_send():
            if chunk:
                self._writer.write(chunk)
            elif self._writer.can_write_eof():
                # websockets asks for a half-close after the closing handshake.
                with contextlib.suppress(OSError):
                    self._writer.write_eof()
        self._last_activity = self._loop.time()

    async def _send_message(self, message: bytes, *, text: bool) -> None:
        if self._closed or self._protocol.state is not State.OPEN:
            raise StreamClosedError("websocket is closed")
        if text:
            self._protocol.send_text(message)
        else:
            self._protocol.send_binary(message)
        self._flush()
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._teardown(f"write failed: {exc}")
            raise StreamClosedError(str(exc)) from None

    async def _send_channel_data(self, number: int, data: bytes) -> None:
        view = memoryview(data)
        # An empty write still sends a message: kubelet's "connection established" marker.
        while True:
            chunk, view = view[: self._max_send], view[self._max_send :]
            if self.base64_codec:
                message = bytes((ord("0") + number,)) + base64.b64encode(chunk)
            else:
                message = b"".join((bytes((number,)), chunk))
            await self._send_message(message, text=self.base64_codec)
            self._bytes_out += len(chunk)
            if not view:
                return

    def _teardown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        for channel in self.channels:
            channel.local_closed = True
            channel.inbound.feed_eof()
        self._closed_event.set()


def accept_websocket(
    *, raw_head: bytes, subprotocol: str | None, max_message_size: int
) -> tuple[ServerProtocol, bytes, bool]:
    """Run the WebSocket handshake for a request head already read from the socket.

    Returns the protocol object, the bytes of the HTTP answer to write, and whether the
    handshake succeeded (101). ``subprotocol`` is the one already negotiated (``None``: the
    client asked for none, which the channel protocols accept as ``channel.k8s.io``). The
    raw head is fed to the protocol object, which parses it again: that is how its state
    machine moves from the handshake to frames.
    """
    chosen = Subprotocol(subprotocol) if subprotocol is not None else None

    def select(_protocol: ServerProtocol, _offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return chosen

    protocol = ServerProtocol(select_subprotocol=select, max_size=max_message_size)
    protocol.receive_data(raw_head)
    requests = [event for event in protocol.events_received() if isinstance(event, Request)]
    if not requests:
        return protocol, b"".join(protocol.data_to_send()), False
    response = protocol.accept(requests[0])
    protocol.send_response(response)
    return protocol, b"".join(protocol.data_to_send()), response.status_code == 101
