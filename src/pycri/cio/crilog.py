"""CRI container log format: the line encoder and the file writer behind it.

kubelet reads container logs from the file named by the container's ``log_path``; the runtime
writes it. Every record is one line::

    <timestamp> <stream> <tag> <content>\\n

- ``timestamp``: Go's RFC3339Nano in this process's local zone, taken when the bytes were read
  from the container: fraction of up to nine digits with trailing zeros trimmed (the dot is
  dropped when the fraction is zero), ``Z`` for UTC, else ``+hh:mm`` / ``-hh:mm``.
- ``stream``: ``stdout`` or ``stderr``.
- ``tag``: ``F`` for a full line or the last chunk of a long one, ``P`` for a partial chunk.

Splitting (``LineSplitter``, one per stream):

- a trailing ``\\n`` or ``\\r\\n`` ends a line and is not written; the line is tagged ``F``;
- content longer than ``max_line_size`` bytes is cut into chunks of exactly that size tagged
  ``P``; the remainder (which may be exactly ``max_line_size`` bytes) is tagged ``F``;
  ``max_line_size <= 0`` disables cutting;
- bytes left without a newline at EOF are written tagged ``P``;
- a ``\\r`` at the very end of the data read so far is held back, never cut into a ``P``
  chunk, because the ``\\n`` that would make it part of a CRLF may be in the next read.

Writing (``CriLogWriter``, one per log file, shared by stdout and stderr):

- The readers run on the event loop; writing to a file may block (slow or full disk, a hung
  network file system), so it never happens on the loop. Each read is encoded at once into
  complete records and appended to an in-memory queue; one flusher task per writer takes
  *everything* queued, joins it and writes it with a single ``os.write`` loop in a thread of a
  small pool dedicated to log files (not the loop's default executor, so a hung log disk never
  starves checkpoint writes or DNS lookups of threads). Batching keeps throughput high: a burst
  of 10k lines costs a handful of thread hops, not 10k.
- Records are enqueued whole and the flusher writes batches one at a time, in order, so lines of
  stdout and stderr never interleave inside a line, and each stream's lines keep their order.
- Each batch is written through an ``os.dup`` of the file descriptor that the thread owns and
  closes. ``reopen()`` and ``close()`` may therefore close the writer's descriptor at any time,
  even while a write hangs in a thread, without a descriptor number being reused under that
  write (which would send log lines into an unrelated file).
- Write errors (ENOSPC, EIO, ...) drop that batch, are logged (at most once per
  ``ERROR_LOG_INTERVAL`` seconds, with a count of what was dropped since) and writing goes on:
  the container's output keeps being drained.
- Back-pressure: when more than ``max_buffered_bytes`` wait to be written, ``wait_writable()``
  blocks until the queue is below half of it. The FIFO readers await it, so a disk that is
  slower than the container throttles the container through the pipe (as containerd's
  synchronous copy does), and memory stays bounded. A hung disk therefore eventually blocks a
  chatty container's writes, like in containerd; a failing disk does not.
- The file is opened beneath the pod's log directory without following links
  (``fsutil.open_beneath``): a symlink put in the log directory (by a container writing to
  it through a volume, or anyone else) makes the open fail instead of sending pycri's output
  to the file it points at. Without a log directory only the last component is not followed.
- ``reopen()`` (ReopenContainerLog, after kubelet renamed the file to rotate it) opens the path
  again in the pool and swaps descriptors; batches written after the swap go to the new file.
  If the open fails the old file is kept and the error raised. A closed writer refuses to
  reopen and creates no file.
- ``close()`` stops accepting records, waits (bounded) for what is queued, then closes the
  file; what could not be written in time is dropped and logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import time
from collections.abc import Iterable
from typing import Final, Literal

from pycri.fsutil import open_beneath

logger = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
Tag = Literal["P", "F"]
Record = tuple[Tag, bytes]

TAG_PARTIAL: Final = "P"
TAG_FULL: Final = "F"
DEFAULT_MAX_LINE_SIZE: Final = 16 * 1024
DEFAULT_MAX_BUFFERED_BYTES: Final = 4 * 1024 * 1024
DEFAULT_CLOSE_FLUSH_TIMEOUT: Final = 5.0
ERROR_LOG_INTERVAL: Final = 30.0
LOG_FILE_MODE: Final = 0o640
LOG_IO_THREADS: Final = 8

_NANOS_PER_SECOND: Final = 1_000_000_000
_CR: Final = 0x0D


class LogWriterClosedError(RuntimeError):
    """The log writer was closed; it can no longer be reopened or written."""


# --------------------------------------------------------------------------------------------
# Timestamps


def format_rfc3339nano(unix_ns: int, *, utc_offset: int) -> str:
    """Go's ``time.RFC3339Nano`` for ``unix_ns`` shown at ``utc_offset`` seconds east of UTC."""
    seconds, fraction_ns = divmod(unix_ns, _NANOS_PER_SECOND)
    wall = time.gmtime(seconds + utc_offset)
    return _date_time(wall) + _fraction(fraction_ns) + _zone(utc_offset)


def local_timestamp(unix_ns: int) -> str:
    """``format_rfc3339nano`` in this process's local zone (as Go's ``time.Now()`` prints)."""
    seconds, fraction_ns = divmod(unix_ns, _NANOS_PER_SECOND)
    cache = _local_second_cache
    if cache.second != seconds:
        # Resolving the local zone costs a few microseconds; lines arrive in bursts within one
        # second, so remembering the last second makes a timestamp nearly free.
        local = time.localtime(seconds)
        cache.prefix = _date_time(local)
        cache.zone = _zone(local.tm_gmtoff)
        cache.second = seconds
    return cache.prefix + _fraction(fraction_ns) + cache.zone


class _SecondCache:
    __slots__ = ("prefix", "second", "zone")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.zone = ""


_local_second_cache = _SecondCache()


def _date_time(wall: time.struct_time) -> str:
    return (
        f"{wall.tm_year:04d}-{wall.tm_mon:02d}-{wall.tm_mday:02d}"
        f"T{wall.tm_hour:02d}:{wall.tm_min:02d}:{wall.tm_sec:02d}"
    )


def _fraction(fraction_ns: int) -> str:
    if fraction_ns == 0:
        return ""
    return "." + f"{fraction_ns:09d}".rstrip("0")


def _zone(utc_offset: int) -> str:
    if utc_offset == 0:
        return "Z"
    # Go truncates the offset to whole minutes toward zero and prints the sign of the result.
    minutes = int(utc_offset / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


# --------------------------------------------------------------------------------------------
# Encoding


def encode_record(*, timestamp: str, stream: Stream, tag: Tag, content: bytes) -> bytes:
    """One log line: ``<timestamp> <stream> <tag> <content>\\n``."""
    return f"{timestamp} {stream} {tag} ".encode() + content + b"\n"


def encode_records(*, timestamp: str, stream: Stream, records: Iterable[Record]) -> bytes:
    """Several log lines sharing one timestamp, as one contiguous block."""
    prefix = f"{timestamp} {stream} ".encode()
    parts: list[bytes] = []
    for tag, content in records:
        parts.append(prefix + (b"F " if tag == TAG_FULL else b"P ") + content + b"\n")
    return b"".join(parts)


class LineSplitter:
    """Cuts one stream's bytes into CRI records ``(tag, content)``; see the module docstring.

    Holds at most ``max_line_size`` bytes (+1 for a held-back ``\\r``) of an unfinished line
    between calls, so memory stays bounded however long a line gets (unbounded when cutting is
    disabled, like containerd).
    """

    def __init__(self, *, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self.max_line_size = max_line_size
        self._unfinished = bytearray()

    @property
    def unfinished_bytes(self) -> int:
        return len(self._unfinished)

    def feed(self, data: bytes) -> list[Record]:
        """Records completed by ``data``; an unfinished line is kept for the next call."""
        if self._unfinished:
            self._unfinished += data
            data = bytes(self._unfinished)
            self._unfinished.clear()
        records: list[Record] = []
        limit = self.max_line_size
        start = 0
        find = data.find
        while (newline := find(b"\n", start)) >= 0:
            end = newline - 1 if newline > start and data[newline - 1] == _CR else newline
            if limit > 0:
                while end - start > limit:
                    records.append((TAG_PARTIAL, data[start : start + limit]))
                    start += limit
            records.append((TAG_FULL, data[start:end]))
            start = newline + 1
        if limit > 0:
            # The unfinished tail is cut only once it is known to exceed the limit; a trailing
            # CR does not count yet since a following LF would strip it.
            held_back = 1 if len(data) > start and data[-1] == _CR else 0
            while len(data) - start - held_back > limit:
                records.append((TAG_PARTIAL, data[start : start + limit]))
                start += limit
        if start < len(data):
            self._unfinished += memoryview(data)[start:]
        return records

    def finish(self) -> list[Record]:
        """At EOF: what is left without a newline, tagged ``P``."""
        if not self._unfinished:
            return []
        data = bytes(self._unfinished)
        self._unfinished.clear()
        records: list[Record] = []
        limit = self.max_line_size
        start = 0
        if limit > 0:
            while len(data) - start > limit:
                records.append((TAG_PARTIAL, data[start : start + limit]))
                start += limit
        records.append((TAG_PARTIAL, data[start:]))
        return records


# --------------------------------------------------------------------------------------------
# Writing

_log_io_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _log_io_executor() -> concurrent.futures.ThreadPoolExecutor:
    # Created on first use from the event loop thread only, so no lock is needed.
    global _log_io_pool  # noqa: PLW0603 - one pool per process, created lazily
    if _log_io_pool is None:
        _log_io_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=LOG_IO_THREADS, thread_name_prefix="pycri-log-io"
        )
    return _log_io_pool


_LOG_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


def _open_log_file(path: str, log_dir: str) -> int:
    if not log_dir:
        return os.open(path, _LOG_OPEN_FLAGS, LOG_FILE_MODE)
    try:
        return open_beneath(log_dir, os.path.relpath(path, log_dir), _LOG_OPEN_FLAGS, LOG_FILE_MODE)
    except ValueError as err:  # not beneath the log directory at all
        raise OSError(errno.EINVAL, str(err)) from None


def _write_and_close(owned_fd: int, data: bytes) -> None:
    """Runs in the pool: writes all of ``data`` and closes ``owned_fd`` (a dup) in any case."""
    try:
        view = memoryview(data)
        while view:
            written = os.write(owned_fd, view)
            view = view[written:]
    finally:
        os.close(owned_fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        logger.debug("closing a log file descriptor failed", exc_info=True)


async def _open_log_file_in_pool(path: str, log_dir: str) -> int:
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(_log_io_executor(), _open_log_file, path, log_dir)
    try:
        # Shielded so that a cancelled caller cannot leak the descriptor the thread opens.
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened_fd)
        raise


def _close_opened_fd(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _close_quietly(opening.result())


class CriLogWriter:
    """The CRI log file of one container, shared by its stdout and stderr.

    Create with ``await CriLogWriter.open(path=...)``; get one feeder per stream with
    ``stream("stdout")``. All methods must be called from the event loop thread.
    """

    def __init__(
        self,
        *,
        path: str,
        fd: int,
        max_line_size: int,
        max_buffered_bytes: int,
        log_extra: dict[str, str] | None = None,
        log_dir: str = "",
    ) -> None:
        self.path = path
        self.log_dir = log_dir  # the path is opened beneath it (no links followed)
        self.max_line_size = max_line_size
        self.max_buffered_bytes = max_buffered_bytes
        self._fd: int | None = fd
        self._loop = asyncio.get_running_loop()
        self._log_extra = {**(log_extra or {}), "log_path": path}
        self._queued: list[bytes] = []
        # Bytes queued plus bytes being written: what back-pressure is measured against.
        self._buffered_bytes = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._last_error_logged_at = float("-inf")
        self._errors_not_logged = 0
        self._bytes_dropped_not_logged = 0

    @classmethod
    async def open(
        cls,
        *,
        path: str,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        log_extra: dict[str, str] | None = None,
        log_dir: str = "",
    ) -> CriLogWriter:
        """Open (create, append to) the log file, beneath ``log_dir`` if given, following no
        links. Raises ``OSError`` if it cannot be opened."""
        fd = await _open_log_file_in_pool(path, log_dir)
        return cls(
            path=path,
            fd=fd,
            max_line_size=max_line_size,
            max_buffered_bytes=max_buffered_bytes,
            log_extra=log_extra,
            log_dir=log_dir,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def stream(self, stream: Stream) -> CriLogStream:
        """A feeder for one stream, with its own line splitter."""
        return CriLogStream(writer=self, stream=stream)

    def write_records(
        self, *, stream: Stream, records: Iterable[Record], unix_ns: int | None = None
    ) -> None:
        """Queue records of one stream, stamped with ``unix_ns`` (now by default)."""
        if self._closed:
            return
        timestamp = local_timestamp(time.time_ns() if unix_ns is None else unix_ns)
        block = encode_records(timestamp=timestamp, stream=stream, records=records)
        if block:
            self._enqueue(block)

    async def wait_writable(self) -> None:
        """Return once fewer than ``max_buffered_bytes`` wait to be written (or closed)."""
        await self._writable.wait()

    async def flush(self) -> None:
        """Wait until everything queued so far was written (or dropped on error)."""
        while self._flusher is not None and not self._flusher.done():
            # Shielded: a caller's timeout must not cancel the flusher in the middle of a batch.
            await asyncio.shield(self._flusher)

    async def reopen(self) -> None:
        """Open the path again and write there from now on; close the old file.

        Raises ``LogWriterClosedError`` when closed (no file is created) and ``OSError`` if the
        new file cannot be opened (the old one stays in use).
        """
        if self._closed:
            raise LogWriterClosedError(f"log writer for {self.path} is closed")
        new_fd = await _open_log_file_in_pool(self.path, self.log_dir)
        if self._closed:  # closed while the open was in the pool
            _close_quietly(new_fd)
            raise LogWriterClosedError(f"log writer for {self.path} is closed")
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            # Safe even with a write in flight: that write owns a dup of the descriptor.
            _close_quietly(old_fd)
        logger.info("container log reopened", extra=self._log_extra)

    async def close(self, *, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> bool:
        """Stop accepting records, write what is queued (bounded), close the file.

        Returns False when queued records had to be dropped because writing them did not finish
        within ``flush_timeout`` seconds. Idempotent.
        """
        if self._closed:
            return True
        self._closed = True
        flushed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            done, _ = await asyncio.wait({flusher}, timeout=flush_timeout)
            flushed = bool(done)
        if not flushed:
            dropped = sum(len(block) for block in self._queued)
            self._queued.clear()
            logger.warning(
                "container log not flushed in time at close, dropping queued output",
                extra={**self._log_extra, "dropped_bytes": dropped, "timeout_s": flush_timeout},
            )
        fd, self._fd = self._fd, None
        if fd is not None:
            _close_quietly(fd)
        self._writable.set()  # never leave a reader waiting on a closed writer
        return flushed

    # -- internals ---------------------------------------------------------------------------

    def _enqueue(self, block: bytes) -> None:
        self._queued.append(block)
        self._buffered_bytes += len(block)
        if self._buffered_bytes >= self.max_buffered_bytes:
            self._writable.clear()
        if self._flusher is None or self._flusher.done():
            self._flusher = self._loop.create_task(
                self._flush_queued(), name=f"crilog-flush:{self.path}"
            )

    async def _flush_queued(self) -> None:
        while self._queued:
            batch = b"".join(self._queued)
            self._queued.clear()
            try:
                await self._write_batch(batch)
            finally:
                self._buffered_bytes -= len(batch)
                if self._buffered_bytes < self.max_buffered_bytes // 2:
                    self._writable.set()

    async def _write_batch(self, batch: bytes) -> None:
        fd = self._fd
        if fd is None:  # closed meanwhile; close() already reported what it dropped
            return
        try:
            owned_fd = os.dup(fd)
        except OSError as err:
            self._note_write_error(err, len(batch))
            return
        writing = self._loop.run_in_executor(_log_io_executor(), _write_and_close, owned_fd, batch)
        try:
            # Shielded: the thread owns owned_fd and closes it whatever happens to this task.
            await asyncio.shield(writing)
        except OSError as err:
            self._note_write_error(err, len(batch))

    def _note_write_error(self, err: OSError, dropped: int) -> None:
        self._errors_not_logged += 1
        self._bytes_dropped_not_logged += dropped
        now = self._loop.time()
        if now - self._last_error_logged_at < ERROR_LOG_INTERVAL:
            return
        logger.error(
            "writing container log failed, dropping output and continuing: %s",
            err,
            extra={
                **self._log_extra,
                "errno": err.errno,
                "errors": self._errors_not_logged,
                "dropped_bytes": self._bytes_dropped_not_logged,
            },
        )
        self._last_error_logged_at = now
        self._errors_not_logged = 0
        self._bytes_dropped_not_logged = 0


class CriLogStream:
    """Feeds one stream (stdout or stderr) of a container into its ``CriLogWriter``."""

    def __init__(self, *, writer: CriLogWriter, stream: Stream) -> None:
        self.writer = writer
        self.stream: Stream = stream
        self._splitter = LineSplitter(max_line_size=writer.max_line_size)

    def feed(self, data: bytes, *, unix_ns: int | None = None) -> None:
        """Encode the lines ``data`` completes; all share the time they were read (now)."""
        records = self._splitter.feed(data)
        if records:
            self.writer.write_records(stream=self.stream, records=records, unix_ns=unix_ns)

    def finish(self, *, unix_ns: int | None = None) -> None:
        """End of the stream: write an unfinished line as ``P``."""
        records = self._splitter.finish()
        if records:
            self.writer.write_records(stream=self.stream, records=records, unix_ns=unix_ns)

    async def wait_writable(self) -> None:
        await self.writer.wait_writable()
