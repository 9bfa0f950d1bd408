"""SPDY/3.1: frame codec, header compression, sessions, flow control, bad peers.

Sessions run over a socketpair, one ``SpdySession`` per end (server and client role); edge
cases crictl cannot produce are written as raw frames with a ``FrameEncoder`` whose header
compression the test owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.stream.backend import StreamClosedError
from pycri.stream.spdy import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    HEADER_DICTIONARY,
    SETTINGS_INITIAL_WINDOW_SIZE,
    DataFrame,
    FlowControlPolicy,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
    HeadersFrame,
    PeerFlowControl,
    PingFrame,
    ProtocolError,
    RstStatus,
    RstStreamFrame,
    SettingsFrame,
    SpdyOptions,
    SpdySession,
    SynReplyFrame,
    SynStreamFrame,
    UnknownControlFrame,
    WindowUpdateFrame,
    data_frame_header,
)

# ---------------------------------------------------------------------------- codec

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
values = st.lists(
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=30),
    min_size=1,
    max_size=3,
)
headers = st.dictionaries(names, values, max_size=6)
stream_ids = st.integers(min_value=1, max_value=2**31 - 1)
words = st.integers(min_value=0, max_value=2**32 - 1)
flags = st.integers(min_value=0, max_value=255)

frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(DataFrame, stream_id=stream_ids, data=st.binary(max_size=3000), flags=flags),
    st.builds(
        SynStreamFrame,
        stream_id=stream_ids,
        headers=headers,
        associated_id=st.integers(min_value=0, max_value=2**31 - 1),
        priority=st.integers(min_value=0, max_value=7),
        flags=flags,
    ),
    st.builds(SynReplyFrame, stream_id=stream_ids, headers=headers, flags=flags),
    st.builds(HeadersFrame, stream_id=stream_ids, headers=headers, flags=flags),
    st.builds(RstStreamFrame, stream_id=stream_ids, status=words),
    st.builds(
        SettingsFrame,
        entries=st.lists(
            st.tuples(flags, st.integers(min_value=0, max_value=2**24 - 1), words), max_size=5
        ).map(tuple),
        flags=flags,
    ),
    st.builds(PingFrame, ping_id=words),
    st.builds(
        GoAwayFrame, last_good_stream_id=st.integers(min_value=0, max_value=2**31 - 1), status=words
    ),
    st.builds(
        WindowUpdateFrame,
        stream_id=st.integers(min_value=0, max_value=2**31 - 1),
        delta=st.integers(min_value=1, max_value=2**31 - 1),
    ),
    st.builds(
        UnknownControlFrame,
        frame_type=st.integers(min_value=10, max_value=0xFFFF),
        flags=flags,
        payload=st.binary(max_size=100),
    ),
)


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(frames, min_size=1, max_size=25), cuts=st.lists(st.integers(0, 10**6)))
def test_frames_round_trip_through_one_compression_context(
    batch: list[Frame], cuts: list[int]
) -> None:
    # One encoder and one decoder for the whole batch: header blocks after the first rely
    # on the zlib state of the earlier ones, and the stream is fed in arbitrary slices.
    encoder, decoder = FrameEncoder(), FrameDecoder(max_data_length=2**24 - 1)
    wire = b"".join(encoder.encode(frame) for frame in batch)
    points = sorted({cut % (len(wire) + 1) for cut in cuts} | {0, len(wire)})
    decoded: list[Frame] = []
    for start, end in itertools.pairwise(points):
        decoded += decoder.feed(wire[start:end])
    assert decoded == batch
    assert decoder.buffered == 0


def test_header_compression_shares_one_context_per_direction() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    sizes = []
    for stream_id in range(1, 200, 2):
        frame = SynStreamFrame(
            stream_id=stream_id,
            headers={"streamtype": ["data"], "port": ["8080"], "requestid": [str(stream_id)]},
        )
        wire = encoder.encode(frame)
        sizes.append(len(wire))
        assert decoder.feed(wire) == [frame]
    # The dictionary and the shared history make repeated blocks much smaller than the first.
    assert sizes[-1] < sizes[0] / 2
    # A fresh decoder cannot read a block from the middle of the stream.
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(wire)


def test_header_block_uses_the_spdy3_dictionary() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    wire = FrameEncoder().encode(SynReplyFrame(stream_id=1, headers={}))
    zlib_header = wire[12:18]
    assert zlib_header[1] & 0x20  # FDICT
    assert struct.unpack(">I", zlib_header[2:6])[0] == zlib.adler32(HEADER_DICTIONARY)


def test_multiple_values_are_nul_joined_and_names_lowercased() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    wire = encoder.encode(SynReplyFrame(stream_id=3, headers={"X-Many": ["a", "b"]}))
    (frame,) = decoder.feed(wire)
    assert isinstance(frame, SynReplyFrame)
    assert frame.headers == {"x-many": ["a", "b"]}


def _control(frame_type: int, payload: bytes, *, version: int = 3, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, frame_type, flags << 24 | len(payload)) + payload


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (_control(6, b"\0\0\0\1", version=2), "version"),
        (_control(3, b"\0\0\0\1"), "RST_STREAM"),
        (_control(6, b"\0\0\0\1\0\0\0\0"), "PING"),
        (_control(7, b"\0\0\0\1"), "GOAWAY"),
        (_control(9, b"\0\0\0\1\0\0\0"), "WINDOW_UPDATE"),
        (_control(4, b"\0\0\0\2\0\0\0\7\0\0\0\1"), "SETTINGS"),
        (_control(1, b"\0\0\0\1\0\0"), "SYN_STREAM"),
        (_control(1, b"\0\0\0\1\0\0\0\0\0\0garbage"), "header block"),
        (_control(3, b"\0\0\0\0\0\0\0\1"), "stream 0"),
        (data_frame_header(0, 1) + b"x", "stream 0"),
        (data_frame_header(1, 2 * 1024 * 1024), "limit"),
        (_control(99, b"\0" * (100 * 1024)), "limit"),
    ],
)
def test_bad_frames_are_protocol_errors(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(wire)


def test_oversize_frame_is_refused_from_its_header_alone() -> None:
    # Only the 8-byte header arrived: the limit applies before the payload is buffered.
    with pytest.raises(ProtocolError):
        FrameDecoder(max_data_length=1000).feed(data_frame_header(1, 1001))


def test_header_bomb_is_refused() -> None:
    block = (
        struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 10**6) + b"b" * 10**6
    )
    compressor = zlib.compressobj(zdict=HEADER_DICTIONARY)
    payload = (
        struct.pack(">I", 1) + compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
    )
    with pytest.raises(ProtocolError, match="larger than"):
        FrameDecoder(max_header_bytes=64 * 1024).feed(_control(2, payload))


# ---------------------------------------------------------------------------- sessions


@dataclass
class Pair:
    server: SpdySession
    client: SpdySession
    tasks: list[asyncio.Task[None]]


@contextlib.asynccontextmanager
async def session_pair(
    server_options: SpdyOptions | None = None, client_options: SpdyOptions | None = None
) -> AsyncIterator[Pair]:
    left, right = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=left)
    client_reader, client_writer = await asyncio.open_connection(sock=right)
    server = SpdySession(
        reader=server_reader, writer=server_writer, is_server=True, options=server_options
    )
    client = SpdySession(
        reader=client_reader, writer=client_writer, is_server=False, options=client_options
    )
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    try:
        yield Pair(server=server, client=client, tasks=tasks)
    finally:
        server.abort()
        client.abort()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def raw_peer(
    server_options: SpdyOptions | None = None,
) -> AsyncIterator[tuple[SpdySession, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A server session and the raw socket of its client, for hand-made frames."""
    left, right = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=left)
    reader, writer = await asyncio.open_connection(sock=right)
    server = SpdySession(
        reader=server_reader, writer=server_writer, is_server=True, options=server_options
    )
    task = asyncio.create_task(server.run())
    try:
        yield server, reader, writer
    finally:
        server.abort()
        writer.close()
        await asyncio.gather(task, return_exceptions=True)


def significant(frames: list[Frame]) -> list[Frame]:
    """Frames minus the window announcement every session starts with."""
    return [f for f in frames if not isinstance(f, SettingsFrame | WindowUpdateFrame)]


async def read_frames_until_eof(reader: asyncio.StreamReader) -> list[Frame]:
    decoder = FrameDecoder(max_data_length=2**24 - 1)
    frames: list[Frame] = []
    async with asyncio.timeout(5):
        while data := await reader.read(65536):
            frames += decoder.feed(data)
    return frames


async def test_streams_carry_data_both_ways_with_half_close() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream({"streamType": "stdin"})
        accepted = await pair.server.accept()
        assert accepted is not None and accepted.header("streamtype") == "stdin"
        accepted.reply({"x": "y"})
        assert await stream.wait_reply() == {"x": ["y"]}
        await stream.write(b"ping")
        await stream.close_write()
        assert await accepted.read() == b"ping"
        assert await accepted.read() == b""
        await accepted.write(b"pong" * 50_000)
        await accepted.close_write()
        received = bytearray()
        while chunk := await stream.read():
            received += chunk
        assert received == b"pong" * 50_000
        assert pair.server.open_streams == 0 and pair.client.open_streams == 0


async def test_a_larger_receive_window_is_announced_first() -> None:
    async with raw_peer(SpdyOptions(receive_window=1024 * 1024)) as (_server, reader, _writer):
        decoder = FrameDecoder()
        got: list[Frame] = []
        async with asyncio.timeout(2):
            while len(got) < 2:
                got += decoder.feed(await reader.read(65536))
        assert got == [
            SettingsFrame(entries=((0, SETTINGS_INITIAL_WINDOW_SIZE, 1024 * 1024),)),
            WindowUpdateFrame(stream_id=0, delta=1024 * 1024 - DEFAULT_WINDOW),
        ]


async def test_ping_is_answered_by_both_roles() -> None:
    async with session_pair() as pair:
        assert await pair.client.ping(timeout=2) >= 0
        assert await pair.server.ping(timeout=2) >= 0


async def test_reset_ends_reads_and_fails_writes() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream({"streamType": "data"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        await stream.wait_reply()
        stream.reset()
        assert await accepted.read() == b""
        assert accepted.was_reset
        with pytest.raises(StreamClosedError):
            await accepted.write(b"late")


async def _read_exactly(stream_read: Callable[[], object], count: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < count:
        chunk = await stream_read()  # type: ignore[misc]
        assert chunk, "stream ended early"
        buffer += chunk
    return bytes(buffer)


async def test_peer_that_never_sends_window_update_stalls_us_only_briefly() -> None:
    # The client behaves like spdystream: no SETTINGS, never a WINDOW_UPDATE.
    client_options = SpdyOptions(receive_window=DEFAULT_WINDOW, send_window_updates=False)
    server_options = SpdyOptions(flow_control_grace_s=0.2)
    async with session_pair(server_options, client_options) as pair:
        stream = pair.client.open_stream({"streamType": "stdout"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        payload = bytes(range(256)) * 8192  # 2 MiB, 32 initial windows
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            writing = asyncio.create_task(accepted.write(payload))
            received = await _read_exactly(stream.read, len(payload))
            await writing
        assert received == payload
        assert pair.server.peer_flow_control is PeerFlowControl.IGNORED
        assert loop.time() - started < 2


async def test_windows_are_honoured_once_the_peer_updates_them() -> None:
    # The client does flow control but its consumer stops: we must stop at its window.
    client_options = SpdyOptions(receive_window=DEFAULT_WINDOW)  # no SETTINGS: updates tell
    async with session_pair(SpdyOptions(flow_control_grace_s=0.05), client_options) as pair:
        stream = pair.client.open_stream({"streamType": "stdout"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        payload = b"x" * (1024 * 1024)
        writing = asyncio.create_task(accepted.write(payload))
        # Consume 40 KiB: the client returns 32 KiB of window, proving it does flow control.
        first = await _read_exactly(lambda: stream.read(40 * 1024), 40 * 1024)
        await asyncio.sleep(0.5)  # far beyond the grace period
        assert pair.server.peer_flow_control is PeerFlowControl.ENFORCED
        assert not writing.done()
        # What it may hold: the initial window plus what the client gave back for 40 KiB read.
        assert pair.server.bytes_out <= DEFAULT_WINDOW + 40 * 1024
        assert pair.client.bytes_in == pair.server.bytes_out
        # Resumption: reading the rest releases the writer.
        rest = await _read_exactly(stream.read, len(payload) - len(first))
        await asyncio.wait_for(writing, 5)
        assert first + rest == payload


async def test_settings_initial_window_is_applied_to_streams() -> None:
    async with raw_peer() as (server, reader, writer):
        encoder = FrameEncoder()
        writer.write(
            encoder.encode(SettingsFrame(entries=((0, SETTINGS_INITIAL_WINDOW_SIZE, 1000),)))
        )
        writer.write(
            encoder.encode(SynStreamFrame(stream_id=1, headers={"streamtype": ["stdout"]}))
        )
        stream = await server.accept()
        assert stream is not None
        stream.reply()
        writing = asyncio.create_task(stream.write(b"y" * 5000))
        decoder = FrameDecoder()
        data = bytearray()
        async with asyncio.timeout(2):
            while len(data) < 1000:
                for frame in decoder.feed(await reader.read(65536)):
                    if isinstance(frame, DataFrame):
                        assert len(frame.data) <= 1000
                        data += frame.data
        await asyncio.sleep(0.3)
        assert len(data) == 1000 and not writing.done()
        assert server.peer_flow_control is PeerFlowControl.ENFORCED
        writer.write(encoder.encode(WindowUpdateFrame(stream_id=1, delta=4000)))
        writer.write(encoder.encode(WindowUpdateFrame(stream_id=0, delta=4000)))
        await asyncio.wait_for(writing, 2)
        writing.result()


async def test_enforce_policy_waits_for_windows_forever() -> None:
    client_options = SpdyOptions(receive_window=DEFAULT_WINDOW, send_window_updates=False)
    server_options = SpdyOptions(peer_flow_control=FlowControlPolicy.ENFORCE)
    async with session_pair(server_options, client_options) as pair:
        pair.client.open_stream({"streamType": "stdout"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        writing = asyncio.create_task(accepted.write(b"z" * (DEFAULT_WINDOW + 1)))
        await asyncio.sleep(0.5)
        assert not writing.done()
        assert pair.server.bytes_out == DEFAULT_WINDOW
        pair.client.abort()  # the peer vanishes: the blocked writer is woken with an error
        with pytest.raises(StreamClosedError):
            await asyncio.wait_for(writing, 2)


async def test_peer_ignoring_our_window_meets_backpressure_not_memory_growth() -> None:
    server_options = SpdyOptions(
        receive_window=DEFAULT_WINDOW, receive_buffer_limit=128 * 1024, read_size=64 * 1024
    )
    client_options = SpdyOptions(peer_flow_control=FlowControlPolicy.IGNORE)
    async with session_pair(server_options, client_options) as pair:
        stream = pair.client.open_stream({"streamType": "stdin"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        await stream.wait_reply()
        payload = bytes(range(251)) * 40_000  # ~10 MB, far more than socket buffers hold
        writing = asyncio.create_task(stream.write(payload))
        await asyncio.sleep(0.5)
        assert not writing.done()  # TCP backpressure reached the writer
        assert accepted.inbound.size <= 128 * 1024 + 64 * 1024
        assert pair.server.peer_overran_window
        received = await _read_exactly(accepted.read, len(payload))
        await asyncio.wait_for(writing, 5)
        assert received == payload


@pytest.mark.parametrize(
    "wire",
    [
        _control(6, b"\0\0\0\1", version=2),
        _control(3, b"\0\0\0\1"),
        data_frame_header(0, 1) + b"x",
        data_frame_header(1, 2 * 1024 * 1024),
        _control(1, b"\0\0\0\1\0\0\0\0\0\0not zlib at all"),
    ],
    ids=["bad-version", "bad-length", "stream-zero", "oversize", "bad-header-block"],
)
async def test_bad_frame_gets_goaway_and_a_clean_close(wire: bytes) -> None:
    async with raw_peer() as (server, reader, writer):
        stream_task = asyncio.create_task(server.accept())
        writer.write(wire)
        frames = await read_frames_until_eof(reader)
        assert frames and isinstance(frames[-1], GoAwayFrame)
        assert frames[-1].status == GoAwayStatus.PROTOCOL_ERROR
        await asyncio.wait_for(server.wait_closed(), 2)
        assert await asyncio.wait_for(stream_task, 2) is None


async def test_invalid_stream_ids_are_protocol_errors() -> None:
    async with raw_peer() as (server, reader, writer):
        encoder = FrameEncoder()
        writer.write(encoder.encode(SynStreamFrame(stream_id=2, headers={})))  # server parity
        frames = await read_frames_until_eof(reader)
        assert isinstance(frames[-1], GoAwayFrame)
        assert server.closed


async def test_unknown_control_frames_are_ignored_and_data_for_unknown_streams_reset() -> None:
    async with raw_peer() as (server, reader, writer):
        encoder = FrameEncoder()
        writer.write(_control(0x1234, b"anything"))
        writer.write(data_frame_header(7, 3) + b"abc")
        writer.write(encoder.encode(PingFrame(ping_id=1)))
        decoder = FrameDecoder()
        got: list[Frame] = []
        async with asyncio.timeout(2):
            while not any(isinstance(f, PingFrame) for f in got):
                got += decoder.feed(await reader.read(65536))
        assert RstStreamFrame(stream_id=7, status=RstStatus.INVALID_STREAM) in got
        assert PingFrame(ping_id=1) in got
        assert not server.closed


async def test_too_many_streams_are_refused() -> None:
    async with raw_peer(SpdyOptions(max_streams=2)) as (server, reader, writer):
        encoder = FrameEncoder()
        for stream_id in (1, 3, 5):
            writer.write(encoder.encode(SynStreamFrame(stream_id=stream_id, headers={})))
        decoder = FrameDecoder()
        got: list[Frame] = []
        async with asyncio.timeout(2):
            while not significant(got):
                got += decoder.feed(await reader.read(65536))
        assert significant(got) == [RstStreamFrame(stream_id=5, status=RstStatus.REFUSED_STREAM)]
        assert server.open_streams == 2


async def test_peer_vanishing_mid_stream_wakes_every_waiter() -> None:
    async with session_pair(SpdyOptions(peer_flow_control=FlowControlPolicy.ENFORCE)) as pair:
        tasks_before = len(asyncio.all_tasks())
        out = pair.client.open_stream({"streamType": "stdout"})
        inbound = pair.client.open_stream({"streamType": "stdin"})
        first = await pair.server.accept()
        second = await pair.server.accept()
        assert first is not None and second is not None
        first.reply()
        second.reply()
        await out.wait_reply()
        blocked_write = asyncio.create_task(first.write(b"w" * (4 * 1024 * 1024)))
        blocked_read = asyncio.create_task(second.read())
        blocked_accept = asyncio.create_task(pair.server.accept())
        await asyncio.sleep(0.2)
        del inbound
        pair.client.abort()
        async with asyncio.timeout(2):
            with pytest.raises(StreamClosedError):
                await blocked_write
            assert await blocked_read == b""
            assert await blocked_accept is None
            await pair.server.wait_closed()
        await asyncio.sleep(0)
        assert pair.server.open_streams == 0
        assert len(asyncio.all_tasks()) <= tasks_before


async def test_goaway_from_peer_keeps_existing_streams() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream({"streamType": "data"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        await stream.wait_reply()
        pair.client.goaway()
        await asyncio.sleep(0.1)
        assert pair.server.peer_going_away
        await accepted.write(b"still here")
        await accepted.close_write()
        assert await stream.read() == b"still here"


async def test_data_after_fin_resets_the_stream() -> None:
    async with raw_peer() as (server, reader, writer):
        encoder = FrameEncoder()
        writer.write(encoder.encode(SynStreamFrame(stream_id=1, headers={}, flags=FLAG_FIN)))
        stream = await server.accept()
        assert stream is not None
        writer.write(data_frame_header(1, 1) + b"x")
        decoder = FrameDecoder()
        got: list[Frame] = []
        async with asyncio.timeout(2):
            while not significant(got):
                got += decoder.feed(await reader.read(65536))
        assert significant(got) == [
            RstStreamFrame(stream_id=1, status=RstStatus.STREAM_ALREADY_CLOSED)
        ]


async def test_pending_ping_fails_when_the_peer_hangs_up() -> None:
    async with raw_peer() as (server, _reader, writer):
        ping = asyncio.create_task(server.ping(timeout=30))
        await asyncio.sleep(0.1)
        writer.close()
        with pytest.raises(StreamClosedError):
            await asyncio.wait_for(ping, 2)


async def test_discarded_data_still_returns_the_session_window() -> None:
    # The client honours windows strictly; the server drops a stream nobody reads. The
    # session window must come back, or the next stream would stall forever.
    server_options = SpdyOptions(receive_window=DEFAULT_WINDOW)
    client_options = SpdyOptions(peer_flow_control=FlowControlPolicy.ENFORCE)
    async with session_pair(server_options, client_options) as pair:
        ignored = pair.client.open_stream({"streamType": "data"})
        dropped = await pair.server.accept()
        assert dropped is not None
        dropped.reply()
        await ignored.wait_reply()
        await ignored.write(b"i" * (60 * 1024))
        await asyncio.sleep(0.1)
        dropped.discard_incoming()
        await ignored.write(b"late" * 1000)  # arrives after the discard: dropped too
        used = pair.client.open_stream({"streamType": "data"})
        accepted = await pair.server.accept()
        assert accepted is not None
        accepted.reply()
        await used.wait_reply()
        payload = b"u" * (300 * 1024)
        writing = asyncio.create_task(used.write(payload))
        assert await asyncio.wait_for(_read_exactly(accepted.read, len(payload)), 5) == payload
        await asyncio.wait_for(writing, 2)
