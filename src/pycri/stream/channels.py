"""What SPDY streams and WebSocket channels have in common, so that exec, attach and
port-forward are written once for both transports.

* ``Channel`` is one byte stream of a session (a SPDY stream; a numbered WebSocket channel):
  ``read()`` returns the next chunk, ``b""`` at the peer's end of data; ``write()`` waits for
  room (flow control, transport buffer) before returning; ``close_write()`` ends our
  direction (SPDY FIN; the WebSocket v5 close signal; nothing for older WebSocket
  protocols, which cannot express it); ``reset()`` abandons the channel.
* ``Session`` is the connection carrying the channels: its byte counters, its last activity
  (for the idle timeout), a graceful ``close(linger=)`` and ``abort()``, and
  ``wait_closed()``, which returns once the peer is gone or the session was closed: the
  signal to cancel whatever serves the client.
* ``InboundBuffer`` is the receive side of a channel: a bounded queue of chunks. The
  transport's read loop feeds it and, when a channel holds more than ``limit`` bytes, stops
  reading the socket until the consumer made room (``wait_room``), so a client that
  ignores flow control (spdystream does) meets TCP backpressure instead of growing our
  memory. Every byte taken out is reported through ``on_consumed``, which SPDY turns into
  WINDOW_UPDATE frames.
* ``linger_for_peer`` and ``close_writer`` are the graceful end shared by both transports
  and the server: flush, give the peer a moment to hang up, close, abort if it will not.
* ``watch_idle`` closes a session that saw no frame for the idle timeout.
* ``Signal`` wakes every coroutine waiting for "something changed" (data arrived, room
  made, window opened); waiters re-check their condition, so a spurious wake-up is harmless
  and a lost one impossible (the state change and ``fire`` happen in the same step).

Races: everything runs on one event loop. ``feed``/``feed_eof`` and ``read`` never
interleave inside a call, so a chunk is either queued before EOF or dropped (fed after EOF,
which only happens when a reset discarded the channel). A cancelled ``read`` loses nothing:
the chunk is only removed from the queue once the waiting is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol


class Signal:
    """Wake all current waiters; each waiter re-checks its own condition."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class InboundBuffer:
    """Chunks received for one channel, waiting for its consumer; bounded by ``limit`` bytes."""

    __slots__ = ("_chunks", "_eof", "_on_consumed", "_readable", "_room", "limit", "size")

    def __init__(self, *, limit: int, on_consumed: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._on_consumed = on_consumed
        self._readable = Signal()
        self._room = Signal()

    @property
    def at_eof(self) -> bool:
        """No more data will be fed (what is queued can still be read)."""
        return self._eof

    @property
    def has_room(self) -> bool:
        """Not over the limit: a sender honouring a window of ``limit`` never exceeds it."""
        return self.size <= self.limit or self._eof

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        self._chunks.append(data)
        self.size += len(data)
        self._readable.fire()

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.fire()
        self._room.fire()

    def discard(self) -> None:
        """Drop what is queued and end the data (the channel was abandoned)."""
        self._chunks.clear()
        self.size = 0
        self.feed_eof()

    async def wait_room(self) -> None:
        while not self.has_room:
            await self._room.wait()

    async def read(self, max_bytes: int = -1) -> bytes:
        """The next chunk (at most ``max_bytes`` if positive); ``b""`` once drained at EOF."""
        while not self._chunks:
            if self._eof:
                return b""
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if 0 < max_bytes < len(chunk):
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.size -= len(chunk)
        if self.size <= self.limit:
            self._room.fire()
        if self._on_consumed is not None:
            self._on_consumed(len(chunk))
        return chunk


class SessionBookkeeping:
    """What both transports' sessions keep for the server: closed or not (and why), data
    bytes each way, and when a frame last moved (the idle watchdog reads it)."""

    def _init_bookkeeping(self, loop: asyncio.AbstractEventLoop) -> None:
        self._closed = False
        self._closed_event = asyncio.Event()
        self._eof_event = asyncio.Event()
        self.close_reason = ""
        self._bytes_in = 0
        self._bytes_out = 0
        self._last_activity = loop.time()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def bytes_in(self) -> int:
        """Data payload bytes received."""
        return self._bytes_in

    @property
    def bytes_out(self) -> int:
        """Data payload bytes sent."""
        return self._bytes_out

    @property
    def last_activity(self) -> float:
        return self._last_activity

    async def wait_closed(self) -> None:
        await self._closed_event.wait()


class Channel(Protocol):
    """One byte stream of a session, in both directions."""

    @property
    def was_reset(self) -> bool:
        """The channel was abandoned (by either side, or with its session), not ended."""
        ...

    async def read(self, max_bytes: int = -1) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close_write(self) -> None: ...

    def reset(self) -> None: ...

    def discard_incoming(self) -> None:
        """Drop what the peer sent and will send: nobody reads this channel any more, and
        its full buffer must not hold up the session's other channels."""
        ...


class Session(Protocol):
    """An upgraded connection carrying channels (SPDY session, WebSocket connection)."""

    @property
    def closed(self) -> bool: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    @property
    def last_activity(self) -> float: ...

    async def wait_closed(self) -> None: ...

    async def close(self, *, linger: float = 0.0) -> None: ...

    def abort(self) -> None: ...


async def linger_for_peer(
    writer: asyncio.StreamWriter, *, peer_done: asyncio.Event, linger: float
) -> None:
    """Flush what is written, then give the peer ``linger`` s to hang up (``peer_done``).

    The flush is bounded too (by ``linger``, at least a second): a peer that stopped reading
    must not keep a finished session alive.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(max(linger, 1.0)):
            await writer.drain()
        if linger > 0:
            async with asyncio.timeout(linger):
                await peer_done.wait()


async def close_writer(writer: asyncio.StreamWriter, *, timeout: float = 1.0) -> None:
    """Close a connection (flushing its buffer); abort it if that takes longer than ``timeout``."""
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except Exception:
        writer.transport.abort()


async def watch_idle(session: Session, *, timeout: float, on_idle: Callable[[], None]) -> None:
    """Call ``on_idle`` once ``session`` saw no frame for ``timeout`` seconds, then return.

    Sleeps until the earliest possible expiry and re-checks, so a busy session costs one
    wake-up per ``timeout``, not one timer per frame. ``last_activity`` uses the loop clock.
    """
    loop = asyncio.get_running_loop()
    while not session.closed:
        remaining = session.last_activity + timeout - loop.time()
        if remaining <= 0:
            on_idle()
            return
        await asyncio.sleep(remaining)
