"""SPDY/3.1 as kubelet and crictl speak it: frame codec, header compression, sessions, streams.

No Python SPDY library exists; this one implements what the CRI streaming protocols use,
both roles (the client role serves tests), over asyncio ``StreamReader``/``StreamWriter``.

**Frames.** Every frame has an 8-byte header. Control frames (top bit set) carry the
version (3), a type and 24-bit length with 8 bits of flags; data frames carry a 31-bit
stream id and the same flags/length word. ``FrameEncoder`` and ``FrameDecoder`` are the pure
codec: ``FrameDecoder.feed(bytes)`` returns every complete frame and keeps the rest, so the
session reads the socket in large chunks instead of two awaits per frame. Malformed frames
(bad version, bad length for the type, stream id 0 where one is required, oversize payload,
undecodable header block) raise ``ProtocolError``: the session answers with GOAWAY
(PROTOCOL_ERROR) and closes, because after such an error the two ends can no longer agree
on the header compression state. Unknown control frame types are skipped, as the SPDY/3
spec requires (they still count against the control frame size limit).

**Header blocks.** Name/value blocks (count, then length-prefixed names and NUL-joined
values) are zlib-compressed with the SPDY/3 dictionary. Each direction of a connection uses
*one* zlib stream for its whole life: a block is compressed and sync-flushed, never
finished, and the receiver inflates block after block with one decompressor. Frames must
therefore reach the wire in the order they were encoded, which holds because every frame
goes through one ordered output queue (below). Decompression is bounded
(``max_header_bytes``) against zip bombs.

**Flow control**, as moby/spdystream (the SPDY library of kubelet, kubectl and crictl)
really does it: spdystream never sends WINDOW_UPDATE nor SETTINGS, ignores them when
received (its frame handler drops them as "unhandled frame type"), and never limits what it
sends to our windows. Its only backpressure is TCP: each stream's data is handed over an
unbuffered channel, so a stream whose reader is slow blocks spdystream's frame workers and
then its socket reads. Hence the choices here:

* *Receiving*: we keep a per-stream and a per-session receive window (``receive_window``,
  256 KiB, announced at the start with SETTINGS and a session WINDOW_UPDATE when larger
  than the 64 KiB default) and send WINDOW_UPDATE as the consumer takes data (once half a
  window was consumed), so a peer that honours windows is paced by our consumer. A peer
  that overruns the window (spdystream may) is not treated as an error: its data is queued
  in the stream's ``InboundBuffer`` and, once a stream holds more than its window, the read
  loop stops reading the socket until the consumer catches up, which is exactly
  spdystream's own head-of-line behaviour. A peer honouring windows never gets there.
* *Sending*: we start by honouring the peer's windows (64 KiB per stream and per session).
  Any WINDOW_UPDATE or SETTINGS(INITIAL_WINDOW_SIZE) from the peer proves it does flow
  control: from then on windows are enforced for the rest of the session, waiting as long
  as it takes (the idle timeout bounds a dead peer). If a window runs out before the peer
  ever said anything, we probe once per session: a PING round trip (proving the peer has
  read everything sent before it) plus ``flow_control_grace_s``; if still no WINDOW_UPDATE
  came, the peer does not do flow control and windows are ignored for the session. So a
  peer that never updates a window stalls a session once, for about the grace period, never
  forever; a peer that updates promptly is never overrun. (A strict peer that withholds
  updates longer than the grace *before ever sending one* would be misjudged; no SPDY peer of
  kubelet or crictl is like that.) ``FlowControlPolicy`` can force either behaviour.

**Sessions.** ``SpdySession.run()`` is the read loop (the owner runs it as a task). Data
frames are written by the writing coroutine, then ``drain()`` for backpressure. Control
frames (replies, PING answers, WINDOW_UPDATE, RST) are encoded at once but queued, and go
out together with the next data frame or at the end of the loop turn: returning window for
every 32 KiB frame would otherwise cost a ``send()`` system call each. The read loop only
drains when the transport buffer is unusually full, so a peer flooding PINGs without
reading meets backpressure too. Incoming
streams are queued for ``accept()``; unaccepted streams beyond ``max_streams`` are refused
(RST REFUSED_STREAM). PINGs from the peer are echoed. GOAWAY from the peer stops new streams;
ongoing ones continue.

**Teardown.** When the peer vanishes (EOF, reset, protocol error) or the session is closed,
every stream is ended: readers get ``b""``, writers and window waiters raise
``StreamClosedError``, ``accept()`` returns ``None``, pending PINGs fail, and
``wait_closed()`` returns. Teardown is idempotent and synchronous, so nothing can wait on a
session that is gone.

Races:

* *Frame order vs. compression*: a frame is encoded and appended to the output queue in
  one synchronous step, and a data frame is written behind whatever the queue holds, so
  the wire order is the encoding order (and a SYN_REPLY always precedes its stream's data).
* *Writers of one stream*: a per-stream lock keeps one ``write()``'s frames together and the
  FIN after them.
* *Window update during a wait*: the waiter sleeps on a ``Signal`` fired by every window
  change or decision; it re-checks the windows after each wake-up.
* *Reset while writing*: the writer re-checks the stream state after every wait and raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from pycri.stream.backend import StreamClosedError
from pycri.stream.channels import (
    InboundBuffer,
    SessionBookkeeping,
    Signal,
    close_writer,
    linger_for_peer,
)

log = logging.getLogger(__name__)

VERSION: Final = 3
#: The initial window of every stream and of the session, until SETTINGS says otherwise.
DEFAULT_WINDOW: Final = 64 * 1024
MAX_WINDOW: Final = 2**31 - 1
#: Frame lengths are 24 bits.
MAX_FRAME_LENGTH: Final = 2**24 - 1
MAX_STREAM_ID: Final = 2**31 - 1

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02

SETTINGS_MAX_CONCURRENT_STREAMS: Final = 4
SETTINGS_INITIAL_WINDOW_SIZE: Final = 7


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


_DICTIONARY_NAMES = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
)


def _build_dictionary() -> bytes:
    # The SPDY/3 header compression dictionary (protocol data from the SPDY/3 draft): a run
    # of length-prefixed header names and common values, then a run of bare fragments.
    names = _DICTIONARY_NAMES.split()
    prefixed = (*names, "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie")
    prefixed += ("keep-alive", "origin")
    bare = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    parts = [struct.pack(">I", len(word)) + word.encode() for word in prefixed]
    return b"".join(parts) + bare.encode()


HEADER_DICTIONARY: Final = _build_dictionary()

#: Header names to lists of values (SPDY carries several values joined by NUL).
Headers = dict[str, list[str]]


def as_headers(headers: Mapping[str, str | Sequence[str]]) -> Headers:
    return {k.lower(): [v] if isinstance(v, str) else list(v) for k, v in headers.items()}


class ProtocolError(Exception):
    """A session-level protocol violation: answered with GOAWAY, then the session closes."""

    def __init__(self, message: str, *, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------- frames


@dataclass(frozen=True, kw_only=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class SynStreamFrame:
    stream_id: int
    headers: Headers
    associated_id: int = 0
    priority: int = 0
    flags: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class SynReplyFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SettingsFrame:
    #: (flags, id, value) triples.
    entries: tuple[tuple[int, int, int], ...]
    flags: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, kw_only=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


@dataclass(frozen=True, kw_only=True, slots=True)
class UnknownControlFrame:
    frame_type: int
    flags: int
    payload: bytes


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
    | UnknownControlFrame
)

_WORD = struct.Struct(">I")
_TWO_WORDS = struct.Struct(">II")
_CONTROL_HEADER = struct.Struct(">HHI")
_SYN_STREAM_HEAD = struct.Struct(">IIBB")


def encode_header_block(headers: Mapping[str, str | Sequence[str]]) -> bytes:
    """The uncompressed name/value block; names lowercased, several values NUL-joined."""
    parts = [_WORD.pack(len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode("latin-1")
        value = values if isinstance(values, str) else "\x00".join(values)
        raw_value = value.encode("latin-1")
        parts += (_WORD.pack(len(raw_name)), raw_name, _WORD.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def decode_header_block(raw: bytes, *, max_count: int) -> Headers:
    try:
        (count,) = _WORD.unpack_from(raw, 0)
        if count > max_count:
            raise ProtocolError(f"header block has {count} headers (limit {max_count})")
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (length,) = _WORD.unpack_from(raw, pos)
            name = raw[pos + 4 : pos + 4 + length]
            pos += 4 + length
            (length,) = _WORD.unpack_from(raw, pos)
            value = raw[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if pos > len(raw) or not name:
                raise ProtocolError("truncated or empty header in header block")
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                value.decode("latin-1").split("\x00")
            )
    except struct.error as exc:
        raise ProtocolError(f"truncated header block: {exc}") from None
    if pos != len(raw):
        raise ProtocolError("trailing bytes after header block")
    return headers


class HeaderCompressor:
    """One direction's header compression: one zlib stream for the connection's life."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(level=6, zdict=HEADER_DICTIONARY)

    def compress(self, headers: Mapping[str, str | Sequence[str]]) -> bytes:
        block = encode_header_block(headers)
        return self._zlib.compress(block) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self, *, max_bytes: int, max_count: int) -> None:
        self._zlib = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max_bytes = max_bytes
        self._max_count = max_count

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._zlib.decompress(block, self._max_bytes + 1)
        except zlib.error as exc:
            raise ProtocolError(f"undecodable header block: {exc}") from None
        if len(raw) > self._max_bytes or self._zlib.unconsumed_tail:
            raise ProtocolError(f"header block larger than {self._max_bytes} bytes")
        return decode_header_block(raw, max_count=self._max_count)


def data_frame_header(stream_id: int, length: int, *, fin: bool = False) -> bytes:
    return _TWO_WORDS.pack(stream_id & MAX_STREAM_ID, (FLAG_FIN if fin else 0) << 24 | length)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("control frame payload too large")
    return _CONTROL_HEADER.pack(0x8000 | VERSION, frame_type, flags << 24 | len(payload)) + payload


class FrameEncoder:
    """Frames to bytes; owns the sending direction's header compressor."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(stream_id=sid, data=data, flags=flags):
                if len(data) > MAX_FRAME_LENGTH:
                    raise ValueError("data frame payload too large")
                return _TWO_WORDS.pack(sid & MAX_STREAM_ID, flags << 24 | len(data)) + data
            case SynStreamFrame():
                head = _SYN_STREAM_HEAD.pack(
                    frame.stream_id & MAX_STREAM_ID,
                    frame.associated_id & MAX_STREAM_ID,
                    (frame.priority & 0x7) << 5,
                    0,
                )
                block = self._headers.compress(frame.headers)
                return _control(FrameType.SYN_STREAM, frame.flags, head + block)
            case SynReplyFrame():
                block = self._headers.compress(frame.headers)
                payload = _WORD.pack(frame.stream_id & MAX_STREAM_ID) + block
                return _control(FrameType.SYN_REPLY, frame.flags, payload)
            case HeadersFrame():
                block = self._headers.compress(frame.headers)
                payload = _WORD.pack(frame.stream_id & MAX_STREAM_ID) + block
                return _control(FrameType.HEADERS, frame.flags, payload)
            case RstStreamFrame(stream_id=sid, status=status):
                return _control(FrameType.RST_STREAM, 0, _TWO_WORDS.pack(sid, status))
            case SettingsFrame(entries=entries, flags=flags):
                body = b"".join(_TWO_WORDS.pack(f << 24 | i, v) for f, i, v in entries)
                return _control(FrameType.SETTINGS, flags, _WORD.pack(len(entries)) + body)
            case PingFrame(ping_id=ping_id):
                return _control(FrameType.PING, 0, _WORD.pack(ping_id))
            case GoAwayFrame(last_good_stream_id=last, status=status):
                return _control(FrameType.GOAWAY, 0, _TWO_WORDS.pack(last, status))
            case WindowUpdateFrame(stream_id=sid, delta=delta):
                return _control(FrameType.WINDOW_UPDATE, 0, _TWO_WORDS.pack(sid, delta))
            case UnknownControlFrame(frame_type=frame_type, flags=flags, payload=payload):
                return _control(frame_type, flags, payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


class FrameDecoder:
    """Bytes to frames; owns the receiving direction's header decompressor.

    ``feed`` may be given any slicing of the byte stream; it returns the frames completed by
    it. A frame's length is checked against the limits as soon as its 8-byte header is
    there, so an oversize frame is refused before its payload is buffered.
    """

    def __init__(
        self,
        *,
        max_data_length: int = 1024 * 1024,
        max_control_length: int = 64 * 1024,
        max_header_bytes: int = 64 * 1024,
        max_header_count: int = 256,
    ) -> None:
        self._buffer = bytearray()
        self._max_data = min(max_data_length, MAX_FRAME_LENGTH)
        self._max_control = min(max_control_length, MAX_FRAME_LENGTH)
        self._headers = HeaderDecompressor(max_bytes=max_header_bytes, max_count=max_header_count)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        # Parse straight from ``data`` when nothing is pending (the common case: one socket
        # read holds whole frames), so only the payloads are copied, once each.
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        frames: list[Frame] = []
        pos = 0
        end = len(buffer)
        with memoryview(buffer) as view:
            while end - pos >= 8:
                first, second = _TWO_WORDS.unpack_from(buffer, pos)
                length = second & 0xFFFFFF
                flags = second >> 24
                control = bool(first & 0x80000000)
                limit = self._max_control if control else self._max_data
                if length > limit:
                    kind = "control" if control else "data"
                    raise ProtocolError(f"{kind} frame of {length} bytes (limit {limit})")
                if end - pos - 8 < length:
                    break
                payload = bytes(view[pos + 8 : pos + 8 + length])
                pos += 8 + length
                if control:
                    frames.append(self._control(first, flags, payload))
                else:
                    stream_id = first & MAX_STREAM_ID
                    if stream_id == 0:
                        raise ProtocolError("data frame on stream 0")
                    frames.append(DataFrame(stream_id=stream_id, data=payload, flags=flags))
        if buffer is self._buffer:
            del self._buffer[:pos]
        elif pos < end:
            self._buffer = bytearray(data[pos:])
        return frames

    def _control(self, first: int, flags: int, payload: bytes) -> Frame:
        version = (first >> 16) & 0x7FFF
        frame_type = first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        length = len(payload)
        match frame_type:
            case FrameType.SYN_STREAM:
                if length < 10:
                    raise ProtocolError("short SYN_STREAM")
                sid, assoc, prio, _slot = _SYN_STREAM_HEAD.unpack_from(payload, 0)
                headers = self._headers.decompress(payload[10:])
                if sid & MAX_STREAM_ID == 0:
                    raise ProtocolError("SYN_STREAM for stream 0")
                return SynStreamFrame(
                    stream_id=sid & MAX_STREAM_ID,
                    associated_id=assoc & MAX_STREAM_ID,
                    priority=prio >> 5,
                    flags=flags,
                    headers=headers,
                )
            case FrameType.SYN_REPLY | FrameType.HEADERS:
                if length < 4:
                    raise ProtocolError(f"short {FrameType(frame_type).name}")
                (sid,) = _WORD.unpack_from(payload, 0)
                headers = self._headers.decompress(payload[4:])
                if sid & MAX_STREAM_ID == 0:
                    raise ProtocolError(f"{FrameType(frame_type).name} for stream 0")
                cls = SynReplyFrame if frame_type == FrameType.SYN_REPLY else HeadersFrame
                return cls(stream_id=sid & MAX_STREAM_ID, flags=flags, headers=headers)
            case FrameType.RST_STREAM:
                sid, status = self._two_words("RST_STREAM", payload)
                if sid & MAX_STREAM_ID == 0:
                    raise ProtocolError("RST_STREAM for stream 0")
                return RstStreamFrame(stream_id=sid & MAX_STREAM_ID, status=status)
            case FrameType.SETTINGS:
                if length < 4:
                    raise ProtocolError("short SETTINGS")
                (count,) = _WORD.unpack_from(payload, 0)
                if length != 4 + 8 * count:
                    raise ProtocolError("SETTINGS length does not match its entry count")
                entries = tuple(
                    (word >> 24, word & 0xFFFFFF, value)
                    for word, value in _TWO_WORDS.iter_unpack(payload[4:])
                )
                return SettingsFrame(entries=entries, flags=flags)
            case FrameType.PING:
                if length != 4:
                    raise ProtocolError("PING must be 4 bytes")
                return PingFrame(ping_id=_WORD.unpack(payload)[0])
            case FrameType.GOAWAY:
                last, status = self._two_words("GOAWAY", payload)
                return GoAwayFrame(last_good_stream_id=last & MAX_STREAM_ID, status=status)
            case FrameType.WINDOW_UPDATE:
                sid, delta = self._two_words("WINDOW_UPDATE", payload)
                return WindowUpdateFrame(stream_id=sid & MAX_STREAM_ID, delta=delta & MAX_WINDOW)
        return UnknownControlFrame(frame_type=frame_type, flags=flags, payload=payload)

    @staticmethod
    def _two_words(name: str, payload: bytes) -> tuple[int, int]:
        if len(payload) != 8:
            raise ProtocolError(f"{name} must be 8 bytes")
        first, second = _TWO_WORDS.unpack(payload)
        return first, second


# ---------------------------------------------------------------------------- sessions


class FlowControlPolicy(enum.StrEnum):
    """How to treat the peer's receive windows when sending."""

    #: Honour them once the peer showed it does flow control; probe once if it never says.
    AUTO = "auto"
    #: Always honour them (wait for WINDOW_UPDATE as long as it takes).
    ENFORCE = "enforce"
    #: Never wait for windows (what spdystream itself does).
    IGNORE = "ignore"


class PeerFlowControl(enum.StrEnum):
    """What the session has learned about the peer (AUTO policy)."""

    UNKNOWN = "unknown"
    ENFORCED = "enforced"
    IGNORED = "ignored"


@dataclass(frozen=True, kw_only=True)
class SpdyOptions:
    #: Our receive window per stream and for the session; above the 64 KiB default it is
    #: announced with SETTINGS and a session WINDOW_UPDATE when the session starts.
    receive_window: int = 256 * 1024
    #: Bytes queued for one stream's consumer beyond which the read loop stops reading the
    #: socket. Not below ``receive_window``: a peer honouring windows never triggers it.
    receive_buffer_limit: int = 256 * 1024
    #: Largest data frame we send.
    max_send_frame: int = 64 * 1024
    #: Largest data frame we accept (crictl and kubectl send at most 32 KiB per frame).
    max_data_frame: int = 1024 * 1024
    max_control_frame: int = 64 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 256
    #: Open streams (not yet fully closed) initiated by the peer; beyond: RST REFUSED_STREAM.
    max_streams: int = 1024
    peer_flow_control: FlowControlPolicy = FlowControlPolicy.AUTO
    flow_control_grace_s: float = 0.2
    ping_timeout_s: float = 5.0
    #: Bytes asked from the socket per read.
    read_size: int = 256 * 1024
    #: Transport write buffer high-water mark (``drain()`` waits above it).
    write_buffer_high: int = 512 * 1024
    #: Return consumed bytes to the peer with WINDOW_UPDATE (False behaves like spdystream).
    send_window_updates: bool = True


_DRAIN_CONTROL_ABOVE = 4 * 1024 * 1024


@dataclass(eq=False, kw_only=True)
class _Ping:
    sent_at: float
    reply: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SpdyStream:
    """One SPDY stream: headers, flow-controlled reads and writes, half-close, reset."""

    def __init__(
        self, *, session: SpdySession, stream_id: int, headers: Headers, send_window: int
    ) -> None:
        self._session = session
        self.id = stream_id
        self.headers = headers
        self.reply_headers: Headers | None = None
        self.send_window = send_window
        self.local_closed = False
        self.remote_closed = False
        self.was_reset = False
        self.replied = False
        self._reply_signal = Signal()
        self._write_lock = asyncio.Lock()
        #: Bytes consumed but not yet returned to the peer with WINDOW_UPDATE.
        self._unacked = 0
        self.inbound = InboundBuffer(
            limit=max(session.options.receive_buffer_limit, session.options.receive_window),
            on_consumed=self._consumed,
        )

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {self.headers.get('streamtype', ['?'])[0]}>"

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def done(self) -> bool:
        return self.was_reset or (self.local_closed and self.remote_closed)

    # -- receiving

    async def read(self, max_bytes: int = -1) -> bytes:
        """Next chunk from the peer; ``b""`` after its FIN, a reset or the session's end."""
        return await self.inbound.read(max_bytes)

    def _consumed(self, count: int) -> None:
        self._session._consumed(self, count)

    # -- sending

    def reply(self, headers: Mapping[str, str | Sequence[str]] | None = None) -> None:
        """Accept a peer-initiated stream (SYN_REPLY); spdystream clients wait for it."""
        if self.replied or self.was_reset or self._session.closed:
            return
        self.replied = True
        self._session._send_frame(
            SynReplyFrame(stream_id=self.id, headers=as_headers(headers or {}))
        )

    async def wait_reply(self) -> Headers:
        """Client role: wait for the peer's SYN_REPLY (raises if reset or the session ends)."""
        while self.reply_headers is None:
            if self.was_reset or self._session.closed:
                raise StreamClosedError(f"stream {self.id} was not accepted")
            await self._reply_signal.wait()
        return self.reply_headers

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` in frames, waiting for window room and transport backpressure."""
        async with self._write_lock:
            await self._session._send_data(self, memoryview(data), fin=False)

    async def close_write(self) -> None:
        """Half-close: an empty data frame with FIN. Idempotent; a no-op once reset."""
        async with self._write_lock:
            if self.local_closed or self.was_reset or self._session.closed:
                return
            await self._session._send_data(self, memoryview(b""), fin=True)

    def discard_incoming(self) -> None:
        """Drop queued and future data. The session window gets the bytes back (a peer
        honouring it must not lose it to a stream nobody reads); the stream's does not."""
        dropped = self.inbound.size
        self.inbound.discard()
        self._session._return_session_window(dropped)

    def reset(self, status: RstStatus = RstStatus.CANCEL) -> None:
        """Abandon the stream (RST_STREAM); pending reads end, writes raise."""
        if self.was_reset:
            return
        if not self.done and not self._session.closed:
            self._session._send_frame(RstStreamFrame(stream_id=self.id, status=status))
        self._session._end_stream(self, reset=True)


class SpdySession(SessionBookkeeping):
    """A SPDY/3.1 connection; ``run()`` is its read loop."""

    def __init__(
        self,
        *,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        is_server: bool,
        options: SpdyOptions | None = None,
        name: str = "spdy",
    ) -> None:
        self.options = options or SpdyOptions()
        self.name = name
        self.is_server = is_server
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._encoder = FrameEncoder()
        opts = self.options
        self._decoder = FrameDecoder(
            max_data_length=opts.max_data_frame,
            max_control_length=opts.max_control_frame,
            max_header_bytes=opts.max_header_bytes,
            max_header_count=opts.max_header_count,
        )
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=opts.write_buffer_high)
        self._streams: dict[int, SpdyStream] = {}
        self._accept_queue: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        # Stream ids: a client opens odd ones, a server even ones; the peer's must increase.
        self._next_stream_id = 2 if is_server else 1
        self._last_peer_stream_id = 0
        self._next_ping_id = 2 if is_server else 1
        self._pings: dict[int, _Ping] = {}
        # Flow control of what we send.
        self._peer_initial_window = DEFAULT_WINDOW
        self._session_send_window = DEFAULT_WINDOW
        self._window_signal = Signal()
        policy = opts.peer_flow_control
        self.peer_flow_control = {
            FlowControlPolicy.AUTO: PeerFlowControl.UNKNOWN,
            FlowControlPolicy.ENFORCE: PeerFlowControl.ENFORCED,
            FlowControlPolicy.IGNORE: PeerFlowControl.IGNORED,
        }[policy]
        self._probe: asyncio.Task[None] | None = None
        # Flow control of what we receive.
        self._session_unacked = 0
        self.peer_overran_window = False
        self._queued: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._going_away = False  # we sent GOAWAY: no new peer streams
        self.peer_going_away = False
        self._init_bookkeeping(self._loop)

    # ------------------------------------------------------------ Session protocol

    async def close(self, *, linger: float = 0.0, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        """GOAWAY, then wait up to ``linger`` s for the peer to hang up; then close the socket.

        Data already written is flushed first (bounded by ``linger``, at least a second).
        """
        if self._closed:
            return
        self.goaway(status)
        self._flush()
        await linger_for_peer(self._writer, peer_done=self._eof_event, linger=linger)
        self._teardown("closed")
        await close_writer(self._writer, timeout=max(linger, 1.0))

    def abort(self) -> None:
        """Drop the connection now."""
        self._teardown("aborted")
        self._writer.transport.abort()

    # ------------------------------------------------------------ public API

    async def run(self) -> None:
        """Read and dispatch frames until the peer hangs up or the session is closed."""
        reason = "peer closed the connection"
        self._announce_receive_window()
        try:
            while not self._closed:
                data = await self._reader.read(self.options.read_size)
                if not data:
                    break
                self._last_activity = self._loop.time()
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
                    if self._closed:
                        break
                await self._wait_for_room()
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.info(
                "SPDY protocol error; going away", extra={"session": self.name, "error": str(exc)}
            )
            with contextlib.suppress(Exception):
                self.goaway(exc.status)
                self._flush()
            self._writer.close()
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._eof_event.set()
            self._teardown(reason)

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened; ``None`` once the session ended."""
        stream = await self._accept_queue.get()
        if stream is None:
            self._accept_queue.put_nowait(None)  # wake the next acceptor too
        return stream

    def open_stream(
        self, headers: Mapping[str, str | Sequence[str]], *, fin: bool = False
    ) -> SpdyStream:
        """Open a stream (SYN_STREAM); ``await stream.wait_reply()`` for the peer's answer."""
        if self._closed or self.peer_going_away:
            raise StreamClosedError("session is closed or going away")
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        stream = SpdyStream(
            session=self,
            stream_id=stream_id,
            headers=as_headers(headers),
            send_window=self._peer_initial_window,
        )
        self._streams[stream_id] = stream
        flags = FLAG_FIN if fin else 0
        self._send_frame(SynStreamFrame(stream_id=stream_id, headers=stream.headers, flags=flags))
        if fin:
            stream.local_closed = True
        return stream

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip time of a PING, in seconds."""
        if self._closed:
            raise StreamClosedError("session is closed")
        ping_id = self._next_ping_id
        self._next_ping_id = (self._next_ping_id + 2) & 0xFFFFFFFF or (2 if self.is_server else 1)
        ping = _Ping(sent_at=self._loop.time())
        self._pings[ping_id] = ping
        try:
            self._send_frame(PingFrame(ping_id=ping_id))
            async with asyncio.timeout(
                timeout if timeout is not None else self.options.ping_timeout_s
            ):
                await ping.reply
        finally:
            self._pings.pop(ping_id, None)
        return self._loop.time() - ping.sent_at

    def goaway(self, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        """Tell the peer we accept no new streams (existing ones continue)."""
        if self._going_away or self._closed:
            return
        self._going_away = True
        self._send_frame(GoAwayFrame(last_good_stream_id=self._last_peer_stream_id, status=status))

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests: frames no well-behaved encoder makes)."""
        self._write(data)

    @property
    def encoder(self) -> FrameEncoder:
        """The sending direction's encoder (tests craft frames with the right compression)."""
        return self._encoder

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------ writing

    def _write(self, data: bytes) -> None:
        """Write now, behind any control frames still queued (wire order is encode order)."""
        if self._closed:
            raise StreamClosedError("session is closed")
        if self._queued:
            self._queued.append(data)
            data = b"".join(self._queued)
            self._queued.clear()
        self._writer.write(data)
        self._last_activity = self._loop.time()

    def _send_frame(self, frame: Frame) -> None:
        """Queue a control frame; queued frames go out with the next write or loop turn.

        Encoding happens here, in queue order, which keeps the header compression in wire
        order. Coalescing matters: returning window after every 32 KiB frame would
        otherwise cost a send() system call per WINDOW_UPDATE.
        """
        if self._closed:
            raise StreamClosedError("session is closed")
        self._queued.append(self._encoder.encode(frame))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._queued and not self._closed:
            self._write(b"")

    async def _drain(self) -> None:
        self._flush()
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._teardown(f"write failed: {exc}")
            raise StreamClosedError(str(exc)) from None

    def _check_writable(self, stream: SpdyStream) -> None:
        if self._closed or stream.was_reset:
            raise StreamClosedError(f"stream {stream.id} is closed")
        if stream.local_closed:
            raise StreamClosedError(f"stream {stream.id}: write after close")

    async def _send_data(self, stream: SpdyStream, view: memoryview, *, fin: bool) -> None:
        self._check_writable(stream)
        if not view:
            if fin:
                self._write(data_frame_header(stream.id, 0, fin=True))
                self._end_local(stream)
            return
        while view:
            count = await self._reserve(stream, len(view))
            last = fin and count == len(view)
            self._write(b"".join((data_frame_header(stream.id, count, fin=last), view[:count])))
            view = view[count:]
            stream.send_window -= count
            self._session_send_window -= count
            self._bytes_out += count
            if last:
                self._end_local(stream)
            await self._drain()

    async def _reserve(self, stream: SpdyStream, wanted: int) -> int:
        """How much of ``wanted`` may go in the next frame, waiting for window room if needed."""
        limit = min(wanted, self.options.max_send_frame)
        while True:
            self._check_writable(stream)
            if self.peer_flow_control is PeerFlowControl.IGNORED:
                return limit
            room = min(stream.send_window, self._session_send_window)
            if room > 0:
                return min(limit, room)
            if self.peer_flow_control is PeerFlowControl.UNKNOWN and self._probe is None:
                self._probe = asyncio.create_task(
                    self._probe_flow_control(), name=f"{self.name}-fc-probe"
                )
            await self._window_signal.wait()

    async def _probe_flow_control(self) -> None:
        """A window ran out before the peer ever updated one: does it do flow control at all?"""
        started = self._loop.time()
        with contextlib.suppress(Exception):
            await self.ping()
        remaining = self.options.flow_control_grace_s - (self._loop.time() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if self.peer_flow_control is PeerFlowControl.UNKNOWN:
            self.peer_flow_control = PeerFlowControl.IGNORED
            log.debug(
                "SPDY peer sends no WINDOW_UPDATE; ignoring its windows",
                extra={"session": self.name},
            )
        self._window_signal.fire()

    def _end_local(self, stream: SpdyStream) -> None:
        stream.local_closed = True
        if stream.done:
            self._end_stream(stream, reset=False)

    # ------------------------------------------------------------ receiving

    def _announce_receive_window(self) -> None:
        # A window larger than the default is announced before anything else, so a peer
        # that honours windows sees it before our first SYN_REPLY: SETTINGS for streams,
        # WINDOW_UPDATE for the session (SPDY/3.1). spdystream parses and ignores both.
        extra = self.options.receive_window - DEFAULT_WINDOW
        if extra <= 0 or self._closed:
            return
        window = self.options.receive_window
        self._send_frame(SettingsFrame(entries=((0, SETTINGS_INITIAL_WINDOW_SIZE, window),)))
        self._send_frame(WindowUpdateFrame(stream_id=0, delta=extra))

    def _consumed(self, stream: SpdyStream, count: int) -> None:
        """The consumer took ``count`` bytes: return them to the peer's windows."""
        if self._closed or not self.options.send_window_updates:
            return
        stream._unacked += count
        if (
            stream._unacked >= self.options.receive_window // 2
            and not stream.remote_closed
            and not stream.was_reset
        ):
            self._send_frame(WindowUpdateFrame(stream_id=stream.id, delta=stream._unacked))
            stream._unacked = 0
        self._return_session_window(count)

    def _return_session_window(self, count: int) -> None:
        if self._closed or not self.options.send_window_updates or count <= 0:
            return
        self._session_unacked += count
        if self._session_unacked >= self.options.receive_window // 2:
            self._send_frame(WindowUpdateFrame(stream_id=0, delta=self._session_unacked))
            self._session_unacked = 0

    async def _wait_for_room(self) -> None:
        # Backpressure for peers that ignore our windows: stop reading the socket while a
        # stream holds more than its buffer limit.
        for stream in list(self._streams.values()):
            if not stream.inbound.has_room:
                await stream.inbound.wait_room()
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _DRAIN_CONTROL_ABOVE:
            await self._drain()

    def _dispatch(self, frame: Frame) -> None:
        match frame:
            case DataFrame():
                self._on_data(frame)
            case SynStreamFrame():
                self._on_syn_stream(frame)
            case SynReplyFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None and stream.reply_headers is None:
                    stream.reply_headers = frame.headers
                    stream._reply_signal.fire()
                    if frame.flags & FLAG_FIN:
                        self._end_remote(stream)
            case HeadersFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None and frame.flags & FLAG_FIN:
                    self._end_remote(stream)
            case RstStreamFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None:
                    log.debug(
                        "SPDY stream reset by peer",
                        extra={
                            "session": self.name,
                            "stream": frame.stream_id,
                            "status": frame.status,
                        },
                    )
                    stream._reply_signal.fire()
                    self._end_stream(stream, reset=True)
            case SettingsFrame():
                self._on_settings(frame)
            case PingFrame(ping_id=ping_id):
                ours = (ping_id % 2 == 0) == self.is_server
                if not ours:
                    self._send_frame(frame)
                elif (ping := self._pings.get(ping_id)) is not None and not ping.reply.done():
                    ping.reply.set_result(None)
            case GoAwayFrame():
                self.peer_going_away = True
            case WindowUpdateFrame():
                self._on_window_update(frame)
            case UnknownControlFrame():
                log.debug(
                    "ignoring unknown SPDY control frame",
                    extra={"session": self.name, "frame_type": frame.frame_type},
                )

    def _on_syn_stream(self, frame: SynStreamFrame) -> None:
        sid = frame.stream_id
        peer_parity = 1 if self.is_server else 0
        if sid % 2 != peer_parity or sid <= self._last_peer_stream_id:
            raise ProtocolError(f"invalid stream id {sid} (last {self._last_peer_stream_id})")
        self._last_peer_stream_id = sid
        if self._going_away or len(self._streams) >= self.options.max_streams:
            self._send_frame(RstStreamFrame(stream_id=sid, status=RstStatus.REFUSED_STREAM))
            return
        stream = SpdyStream(
            session=self,
            stream_id=sid,
            headers=frame.headers,
            send_window=self._peer_initial_window,
        )
        self._streams[sid] = stream
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        if frame.flags & FLAG_FIN:
            self._end_remote(stream)
        self._accept_queue.put_nowait(stream)

    def _on_data(self, frame: DataFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        count = len(frame.data)
        self._bytes_in += count
        if stream is None:
            if frame.stream_id > max(self._last_peer_stream_id, self._next_stream_id - 2):
                # Never opened: a stream error, not a session error (spec).
                self._send_frame(
                    RstStreamFrame(stream_id=frame.stream_id, status=RstStatus.INVALID_STREAM)
                )
            # Otherwise data in flight for a stream we finished: dropped, as spdystream does.
            return
        if stream.remote_closed:
            self._send_frame(
                RstStreamFrame(stream_id=stream.id, status=RstStatus.STREAM_ALREADY_CLOSED)
            )
            self._end_stream(stream, reset=True)
            return
        if count and stream.inbound.at_eof:
            self._return_session_window(count)  # a discarded stream: dropped on arrival
        elif count:
            stream.inbound.feed(frame.data)
            if stream.inbound.size > self.options.receive_window:
                self.peer_overran_window = True
        if frame.flags & FLAG_FIN:
            self._end_remote(stream)

    def _on_settings(self, frame: SettingsFrame) -> None:
        for _flags, setting, value in frame.entries:
            if setting != SETTINGS_INITIAL_WINDOW_SIZE:
                continue
            if value > MAX_WINDOW:
                raise ProtocolError(f"initial window {value} too large")
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self._streams.values():
                stream.send_window += delta
            self._learned_flow_control()

    def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        if frame.delta == 0:
            raise ProtocolError("WINDOW_UPDATE with delta 0")
        self._learned_flow_control()
        if frame.stream_id == 0:
            self._session_send_window += frame.delta
            if self._session_send_window > MAX_WINDOW:
                raise ProtocolError("session window overflow", status=GoAwayStatus.PROTOCOL_ERROR)
        else:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return
            stream.send_window += frame.delta
            if stream.send_window > MAX_WINDOW:
                self._send_frame(
                    RstStreamFrame(stream_id=stream.id, status=RstStatus.FLOW_CONTROL_ERROR)
                )
                self._end_stream(stream, reset=True)
        self._window_signal.fire()

    def _learned_flow_control(self) -> None:
        if self.peer_flow_control is PeerFlowControl.UNKNOWN:
            self.peer_flow_control = PeerFlowControl.ENFORCED

    def _end_remote(self, stream: SpdyStream) -> None:
        stream.remote_closed = True
        stream.inbound.feed_eof()
        if stream.done:
            self._end_stream(stream, reset=False)

    def _end_stream(self, stream: SpdyStream, *, reset: bool) -> None:
        if reset:
            stream.was_reset = True
            stream.remote_closed = True
            stream.inbound.feed_eof()
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        self._window_signal.fire()

    # ------------------------------------------------------------ teardown

    def _teardown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        log.debug("SPDY session ended", extra={"session": self.name, "reason": reason})
        for stream in list(self._streams.values()):
            self._end_stream(stream, reset=True)
            stream._reply_signal.fire()
        for ping in self._pings.values():
            if not ping.reply.done():
                ping.reply.set_exception(StreamClosedError("session closed"))
        self._window_signal.fire()
        self._accept_queue.put_nowait(None)
        self._queued.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._probe is not None:
            self._probe.cancel()
        self._closed_event.set()
