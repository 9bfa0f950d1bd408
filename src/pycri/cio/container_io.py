"""Stdio of containers and exec processes: FIFOs in, CRI log file or bytes out.

``ContainerIO`` (one per container task):

- ``create()`` makes ``<fifo_dir>/<id>-stdout`` (+ ``-stderr`` unless tty, + ``-stdin`` if
  asked), opens the CRI log file and starts one reader task per output FIFO. Call it *before*
  ``Tasks.Create`` and pass ``paths`` into the request: the shim blocks opening the FIFOs until
  a reader exists (see ``fifo``). Each reader copies into the shared ``CriLogWriter`` (or
  discards when the container has no log path) until EOF, i.e. until every writer of the FIFO
  closed: the shim's copy of the process's stdout, and any process that inherited it.
- ``drain(timeout)`` is for exit handling: after the task's exit, wait (bounded) for both
  streams' EOF and for the log to be written, so the log is complete in the normal case.
  A grandchild that inherited stdout and outlives the container keeps the FIFO open: then
  ``drain`` returns False after ``timeout`` and the readers keep copying in the background
  (the exit is recorded anyway) until ``close()``.
- ``close()`` (task deleted, container removed or start failed) stops the readers, writes an
  unfinished line as ``P``, closes the log (bounded flush) and removes the FIFOs and their
  directory. ``detach()`` (daemon shutdown) does the same but keeps the FIFOs for the next
  start's ``reattach()``.
- ``reattach()`` (recovery of a task still known to containerd, paths from ``Tasks.Get``)
  opens the existing FIFOs again and appends to the log. While pycri was down the shim kept
  the pipe alive, so output waited in the pipe (the process blocked once it was full) and is
  read now. If the process already exited, the streams reach EOF at once, and what it wrote
  after pycri went down is lost: the shim closed its ends and the pipe's buffer went with them
  (containerd loses it the same way).
- ``reopen_log()`` is ReopenContainerLog: a new file at the same path after kubelet rotated.
- ``open_stdin()`` / ``close_stdin()``: pycri's write end of the container's stdin, for attach;
  it stays open across attaches. The shim holds a write end of its own until
  ``Tasks.CloseIO(stdin=True)``, so EOF for the process (``stdin_once``) takes both
  ``close_stdin()`` and CloseIO; for the same reason a restart of pycri (``detach()`` closes
  our end) does not end the container's stdin.

``ExecIO`` (one per ExecSync): FIFOs named after the exec ID; stdout and stderr are collected in
memory, both together capped at ``MAX_EXEC_OUTPUT_BYTES`` (just under kubelet's 16 MiB
message limit): beyond that the output is still read (the process must not block) but
dropped, and counted, so ExecSync can say so. Optional stdin bytes are
written once the shim opened the FIFO (``start_stdin()`` after ``Tasks.Start``), then pycri's
end is closed and ``Tasks.CloseIO`` called through a callback (EOF for the process).

Races:

- Readers exist before the shim opens the FIFOs, and survive the window until it does; data
  the shim wrote before the process exited is read before EOF (``fifo`` explains why).
- A reader that fails (I/O error) ends its stream as if at EOF, after logging: the rest of the
  container's handling must not depend on it.
- ``drain`` never cancels readers, so timing out loses nothing; a later ``drain`` or ``close``
  picks up where it left.
- All methods run on the event loop thread; nothing here blocks it except creating FIFOs and
  unlinking them, which are metadata operations on a local tmpfs (the state dir).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from pycri.cio.crilog import (
    DEFAULT_CLOSE_FLUSH_TIMEOUT,
    DEFAULT_MAX_LINE_SIZE,
    CriLogWriter,
)
from pycri.cio.fifo import (
    FifoReader,
    FifoWriter,
    StdioPaths,
    create_fifos,
    remove_fifos,
    stdio_paths,
)

logger = logging.getLogger(__name__)

# What ExecSync keeps of an exec's stdout and stderr together: below kubelet's 16 MiB message
# limit with room for the rest of the answer (exit code, framing, the truncation note).
MAX_EXEC_OUTPUT_BYTES: Final = 16 * 1024 * 1024 - 64 * 1024
DEFAULT_STDIN_OPEN_TIMEOUT: Final = 10.0


class ContainerIOClosedError(RuntimeError):
    """The IO was closed: its log can no longer be reopened nor its stdin opened."""


class _OutputSink(Protocol):
    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    async def wait_writable(self) -> None: ...


class _DiscardSink:
    """Output of a container without a log path: read (so it never blocks) and dropped."""

    def feed(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    async def wait_writable(self) -> None:
        pass


class OutputBudget:
    """Bytes an exec's collected output may still hold, shared by its stdout and stderr."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit

    def take(self, wanted: int) -> int:
        granted = min(wanted, max(self.remaining, 0))
        self.remaining -= granted
        return granted


class _CappedBuffer:
    """Collects a stream within its budget; the rest is dropped but counted."""

    def __init__(self, *, budget: OutputBudget) -> None:
        self._budget = budget
        self.data = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> None:
        kept = self._budget.take(len(data))
        if kept:
            self.data += data[:kept]
        self.dropped_bytes += len(data) - kept

    def finish(self) -> None:
        pass

    async def wait_writable(self) -> None:
        pass


class _OutputReaders:
    """One task per output FIFO, copying it into its sink until EOF."""

    def __init__(self, *, log_extra: dict[str, str]) -> None:
        self._log_extra = log_extra
        self._tasks: list[asyncio.Task[None]] = []

    async def start(
        self, *, stream: str, path: str, sink: _OutputSink, reattach: bool = False
    ) -> None:
        extra = {**self._log_extra, "stream": stream, "fifo": path}
        try:
            fifo = await FifoReader.open(path, reattach=reattach)
        except FileNotFoundError:
            if not reattach:
                raise
            # The shim may still write into the unlinked FIFO, but nobody can reach it again.
            logger.warning("FIFO missing on re-attach, treating stream as ended", extra=extra)
            sink.finish()
            return
        task = asyncio.get_running_loop().create_task(
            _copy_until_eof(fifo=fifo, sink=sink, log_extra=extra), name=f"cio:{stream}:{path}"
        )
        self._tasks.append(task)

    @property
    def at_eof(self) -> bool:
        return all(task.done() for task in self._tasks)

    async def wait_eof(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every stream's EOF; never cancels a reader."""
        running = [task for task in self._tasks if not task.done()]
        if not running:
            return True
        _, still_running = await asyncio.wait(running, timeout=max(timeout, 0))
        return not still_running

    async def stop(self) -> None:
        """Cancel the readers and wait for them to have finished their sinks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _copy_until_eof(
    *, fifo: FifoReader, sink: _OutputSink, log_extra: dict[str, str]
) -> None:
    try:
        while data := await fifo.read():
            sink.feed(data)
            await sink.wait_writable()
        logger.debug("output stream reached EOF", extra=log_extra)
    except OSError as err:
        logger.warning(
            "reading output FIFO failed, treating stream as ended: %s", err, extra=log_extra
        )
    finally:
        # Also when cancelled by close(): an unfinished line still reaches the log, as P.
        sink.finish()
        fifo.close()


ATTACH_BUFFER_BYTES: Final = 1024 * 1024
ATTACH_STALL_TIMEOUT: Final = 10.0


class Attachment:
    """One attacher's view of a container's output from now on: ``(stream, bytes)`` items
    until the container's output ends (or this attacher is dropped for stalling)."""

    def __init__(self, fanout: OutputFanout) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.buffered = 0
        self.dropped = False
        self._room = asyncio.Event()
        self._room.set()

    def _push(self, item: tuple[str, bytes] | None) -> None:
        if item is not None:
            self.buffered += len(item[1])
            if self.buffered > self._fanout.limit:
                self._room.clear()
        self._queue.put_nowait(item)

    async def _wait_room(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._room.wait()
            return True
        except TimeoutError:
            return False

    def __aiter__(self) -> Attachment:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay at the end for later calls
            raise StopAsyncIteration
        self.buffered -= len(item[1])
        if self.buffered <= self._fanout.limit // 2:
            self._room.set()
        return item

    def close(self) -> None:
        self._fanout.unsubscribe(self)


class _TeeSink:
    """A stream's sink (the CRI log) that also hands every chunk to the attachers."""

    def __init__(self, fanout: OutputFanout, stream: str, inner: _OutputSink) -> None:
        self._fanout = fanout
        self._stream = stream
        self._inner = inner

    def feed(self, data: bytes) -> None:
        self._inner.feed(data)
        self._fanout.push(self._stream, data)

    def finish(self) -> None:
        self._inner.finish()
        self._fanout.stream_ended()

    async def wait_writable(self) -> None:
        await self._inner.wait_writable()
        await self._fanout.wait_room()


class OutputFanout:
    """Attach: every attacher gets the container's output from the moment it attached, while
    the CRI log keeps being written unchanged.

    Backpressure, as containerd's attach has, but bounded: an attacher that has more than
    ``limit`` bytes unread holds the FIFO reader (so the container's writes wait, like a slow
    terminal) for at most ``stall_timeout`` seconds; then it is dropped (its iteration ends)
    so one stuck client can never stall a container for long. With no attacher the readers
    run at the log's pace, as before.
    """

    def __init__(
        self,
        *,
        log_extra: dict[str, str],
        limit: int = ATTACH_BUFFER_BYTES,
        stall_timeout: float = ATTACH_STALL_TIMEOUT,
    ) -> None:
        self.limit = limit
        self.stall_timeout = stall_timeout
        self._log_extra = log_extra
        self._attachers: set[Attachment] = set()
        self._streams = 0
        self._ended = 0

    def sink(self, stream: str, inner: _OutputSink) -> _OutputSink:
        self._streams += 1
        return _TeeSink(self, stream, inner)

    @property
    def ended(self) -> bool:
        return self._streams > 0 and self._ended >= self._streams

    def subscribe(self) -> Attachment:
        attachment = Attachment(self)
        if self.ended:
            attachment._push(None)
        else:
            self._attachers.add(attachment)
        return attachment

    def unsubscribe(self, attachment: Attachment) -> None:
        self._attachers.discard(attachment)

    def push(self, stream: str, data: bytes) -> None:
        for attachment in self._attachers:
            attachment._push((stream, data))

    def stream_ended(self) -> None:
        self._ended += 1
        if self.ended:
            for attachment in list(self._attachers):
                attachment._push(None)
            self._attachers.clear()

    async def wait_room(self) -> None:
        for attachment in list(self._attachers):
            if attachment.buffered > self.limit and not await attachment._wait_room(
                self.stall_timeout
            ):
                logger.warning(
                    "attached client too slow; detached it",
                    extra={**self._log_extra, "buffered_bytes": attachment.buffered},
                )
                attachment.dropped = True
                self.unsubscribe(attachment)
                attachment._push(None)


class ContainerIO:
    """The stdio of one container task; see the module docstring for the life cycle."""

    def __init__(
        self, *, container_id: str, paths: StdioPaths, log_writer: CriLogWriter | None
    ) -> None:
        self.container_id = container_id
        self.paths = paths
        self.log_writer = log_writer
        self._log_extra = {"container_id": container_id}
        self._readers = _OutputReaders(log_extra=self._log_extra)
        self.fanout = OutputFanout(log_extra=self._log_extra)
        self._stdin_writer: FifoWriter | None = None
        self._stdin_lock = asyncio.Lock()
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    async def create(
        cls,
        *,
        container_id: str,
        fifo_dir: str,
        stdin: bool,
        tty: bool,
        log_path: str,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        log_dir: str = "",
    ) -> ContainerIO:
        """Make the FIFOs, open the log (``log_path=""``: discard output; beneath ``log_dir``
        without following links, see ``crilog``), start reading.

        Raises ``OSError`` (FIFOs or log file cannot be created); nothing is left behind then.
        """
        paths = stdio_paths(fifo_dir=fifo_dir, process_id=container_id, stdin=stdin, tty=tty)
        create_fifos(paths)
        return await cls._start(
            container_id=container_id,
            paths=paths,
            log_path=log_path,
            log_dir=log_dir,
            max_line_size=max_line_size,
            reattach=False,
        )

    @classmethod
    async def reattach(
        cls,
        *,
        container_id: str,
        paths: StdioPaths,
        log_path: str,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        log_dir: str = "",
    ) -> ContainerIO:
        """Recovery: read the FIFOs of a task that outlived the previous pycri process.

        ``paths`` come from containerd (``Tasks.Get``: the process's stdin/stdout/stderr/
        terminal). A missing output FIFO is logged and treated as ended.
        """
        return await cls._start(
            container_id=container_id,
            paths=paths,
            log_path=log_path,
            log_dir=log_dir,
            max_line_size=max_line_size,
            reattach=True,
        )

    @classmethod
    async def _start(
        cls,
        *,
        container_id: str,
        paths: StdioPaths,
        log_path: str,
        log_dir: str,
        max_line_size: int,
        reattach: bool,
    ) -> ContainerIO:
        log_writer: CriLogWriter | None = None
        container_io: ContainerIO | None = None
        try:
            if log_path:
                log_writer = await CriLogWriter.open(
                    path=log_path,
                    max_line_size=max_line_size,
                    log_extra={"container_id": container_id},
                    log_dir=log_dir,
                )
            container_io = cls(container_id=container_id, paths=paths, log_writer=log_writer)
            await container_io._start_readers(reattach=reattach)
        except BaseException:
            if container_io is not None:
                await container_io._shutdown(remove=not reattach, flush_timeout=0)
            else:
                if log_writer is not None:
                    await log_writer.close(flush_timeout=0)
                if not reattach:
                    remove_fifos(paths)
            raise
        logger.debug(
            "container IO %s",
            "re-attached" if reattach else "created",
            extra={**container_io._log_extra, "stdout": paths.stdout, "log_path": log_path},
        )
        return container_io

    async def _start_readers(self, *, reattach: bool) -> None:
        outputs = (("stdout", self.paths.stdout), ("stderr", self.paths.stderr))
        for stream, path in outputs:
            if not path:
                continue
            sink: _OutputSink = (
                self.log_writer.stream("stdout" if stream == "stdout" else "stderr")
                if self.log_writer is not None
                else _DiscardSink()
            )
            await self._readers.start(
                stream=stream, path=path, sink=self.fanout.sink(stream, sink), reattach=reattach
            )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def output_ended(self) -> bool:
        """True once every output stream reached EOF (or failed)."""
        return self._readers.at_eof

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for EOF on every stream and the log being written.

        Returns False when that did not happen in time (readers keep going until ``close``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self._readers.wait_eof(timeout):
            logger.info(
                "container output not drained in time (a process still holds stdout/stderr?)",
                extra={**self._log_extra, "timeout_s": timeout},
            )
            return False
        if self.log_writer is None:
            return True
        try:
            async with asyncio.timeout_at(deadline):
                await self.log_writer.flush()  # flush() shields the flusher itself
        except TimeoutError:
            logger.info(
                "container log not written in time",
                extra={**self._log_extra, "timeout_s": timeout},
            )
            return False
        return True

    async def reopen_log(self) -> None:
        """ReopenContainerLog: continue in a new file at the log path.

        Raises ``ContainerIOClosedError`` once closed (no file is created) and ``OSError`` when
        the file cannot be opened (the old one stays in use). No-op without a log path.
        """
        if self._closed or (self.log_writer is not None and self.log_writer.closed):
            raise ContainerIOClosedError(f"IO of container {self.container_id} is closed")
        if self.log_writer is not None:
            await self.log_writer.reopen()

    async def open_stdin(self, *, timeout: float = DEFAULT_STDIN_OPEN_TIMEOUT) -> FifoWriter:
        """The write end of the container's stdin, opened on first use and then shared.

        Raises ``ValueError`` if the container has no stdin, ``ContainerIOClosedError`` once
        closed, ``TimeoutError`` if the shim did not open its end within ``timeout`` seconds.
        """
        if not self.paths.stdin:
            raise ValueError(f"container {self.container_id} has no stdin")
        async with self._stdin_lock:
            if self._closed:
                raise ContainerIOClosedError(f"IO of container {self.container_id} is closed")
            if self._stdin_writer is None or self._stdin_writer.closed:
                self._stdin_writer = await FifoWriter.open(self.paths.stdin, timeout=timeout)
            return self._stdin_writer

    def attach(self) -> Attachment:
        """The container's output from now on, for one attacher (``close()`` it when done)."""
        return self.fanout.subscribe()

    def close_stdin(self) -> None:
        """Close pycri's end of the container's stdin. Idempotent.

        The process sees EOF only once the shim closed its own write end too: call
        ``Tasks.CloseIO(stdin=True)`` after this (``stdin_once``).
        """
        if self._stdin_writer is not None:
            self._stdin_writer.close()

    async def close(self, *, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> None:
        """Stop reading, close the log (bounded flush), remove the FIFOs. Idempotent.

        For when the task is gone (deleted, or never started) or the container is removed.
        """
        await self._shutdown(remove=True, flush_timeout=flush_timeout)

    async def detach(self, *, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> None:
        """Like ``close`` but keep the FIFOs, for ``reattach`` after pycri restarts."""
        await self._shutdown(remove=False, flush_timeout=flush_timeout)

    async def _shutdown(self, *, remove: bool, flush_timeout: float) -> None:
        self._closed = True
        if remove:
            # First and synchronous, so that no cancellation can skip it; the readers keep
            # their open descriptors until stopped.
            self._remove_fifos()
        if self._closing is None:
            # Run as its own task, shielded: a caller cancelled half-way must not leave the log
            # file open or the FIFOs behind.
            self._closing = asyncio.get_running_loop().create_task(
                self._close_all(flush_timeout=flush_timeout),
                name=f"cio-close:{self.container_id}",
            )
        await asyncio.shield(self._closing)

    async def _close_all(self, *, flush_timeout: float) -> None:
        self.close_stdin()
        await self._readers.stop()
        if self.log_writer is not None:
            await self.log_writer.close(flush_timeout=flush_timeout)

    def _remove_fifos(self) -> None:
        try:
            remove_fifos(self.paths)
        except OSError as err:
            logger.warning("removing FIFOs failed: %s", err, extra=self._log_extra)


@dataclass(frozen=True, kw_only=True)
class ExecOutput:
    """What an exec process wrote; ``complete`` is False when EOF was not reached in time."""

    stdout: bytes
    stderr: bytes
    complete: bool
    stdout_dropped_bytes: int = 0
    stderr_dropped_bytes: int = 0


class AsyncWriter(Protocol):
    """Where streamed output goes (an Exec/Attach client's stdout or stderr)."""

    async def write(self, data: bytes) -> None: ...


class ForwardingSink:
    """Forwards a stream to an ``AsyncWriter`` with its backpressure: the FIFO is read no
    faster than the client takes it. A client that went away (``ConnectionError``) turns the
    sink into a discard, so the process never blocks on output nobody reads."""

    def __init__(self, writer: AsyncWriter | None, *, log_extra: dict[str, str]) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._log_extra = log_extra

    def feed(self, data: bytes) -> None:
        if self._writer is not None:
            self._pending.append(data)

    def finish(self) -> None:
        self._pending.clear()

    async def wait_writable(self) -> None:
        if self._writer is None or not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            await self._writer.write(data)
        except ConnectionError:
            logger.debug("stream client gone; discarding the rest", extra=self._log_extra)
            self._writer = None


class ExecIO:
    """The stdio of one exec process: collected in memory (ExecSync) or streamed (Exec).

    Use::

        exec_io = await ExecIO.create(exec_id=..., fifo_dir=..., stdin=None)  # or create_streamed
        try:
            # Tasks.Exec(stdin=exec_io.paths.stdin, stdout=..., stderr=..., terminal=...)
            # Tasks.Wait issued, Tasks.Start
            exec_io.start_stdin(close_io=lambda: client.tasks.close_io(container_id, exec_id))
            # wait for the exit (kill on timeout)
            output = await exec_io.wait_output(timeout=...)
        finally:
            await exec_io.close()
    """

    def __init__(
        self,
        *,
        exec_id: str,
        paths: StdioPaths,
        stdout: _OutputSink,
        stderr: _OutputSink,
        log_extra: dict[str, str],
    ) -> None:
        self.exec_id = exec_id
        self.paths = paths
        self._log_extra = log_extra
        self._stdout = stdout
        self._stderr = stderr
        self._readers = _OutputReaders(log_extra=log_extra)
        self._stdin_data: bytes | None = None
        self._stdin_feeder: asyncio.Task[None] | None = None
        self._stdin_writer: FifoWriter | None = None
        self._closed = False

    @classmethod
    async def create(
        cls,
        *,
        exec_id: str,
        fifo_dir: str,
        stdin: bytes | None = None,
        tty: bool = False,
        max_output_bytes: int = MAX_EXEC_OUTPUT_BYTES,
        container_id: str = "",
    ) -> ExecIO:
        """Make the FIFOs and start collecting, at most ``max_output_bytes`` of stdout and
        stderr together (first come, first kept). ``stdin=None``: the process gets no stdin."""
        budget = OutputBudget(max_output_bytes)
        exec_io = await cls._open(
            exec_id=exec_id,
            fifo_dir=fifo_dir,
            stdin=stdin is not None,
            tty=tty,
            stdout=_CappedBuffer(budget=budget),
            stderr=_CappedBuffer(budget=budget),
            container_id=container_id,
        )
        exec_io._stdin_data = stdin
        return exec_io

    @classmethod
    async def create_streamed(
        cls,
        *,
        exec_id: str,
        fifo_dir: str,
        stdin: bool,
        tty: bool,
        stdout: AsyncWriter | None,
        stderr: AsyncWriter | None,
        container_id: str = "",
    ) -> ExecIO:
        """Make the FIFOs and forward the output to ``stdout``/``stderr`` as it comes (with a
        TTY there is no stderr FIFO: the terminal merges both into stdout)."""
        log_extra = {"exec_id": exec_id, "container_id": container_id}
        return await cls._open(
            exec_id=exec_id,
            fifo_dir=fifo_dir,
            stdin=stdin,
            tty=tty,
            stdout=ForwardingSink(stdout, log_extra=log_extra),
            stderr=ForwardingSink(stderr, log_extra=log_extra),
            container_id=container_id,
        )

    @classmethod
    async def _open(
        cls,
        *,
        exec_id: str,
        fifo_dir: str,
        stdin: bool,
        tty: bool,
        stdout: _OutputSink,
        stderr: _OutputSink,
        container_id: str,
    ) -> ExecIO:
        paths = stdio_paths(fifo_dir=fifo_dir, process_id=exec_id, stdin=stdin, tty=tty)
        log_extra = {"exec_id": exec_id, "container_id": container_id}
        create_fifos(paths)
        exec_io = cls(
            exec_id=exec_id, paths=paths, stdout=stdout, stderr=stderr, log_extra=log_extra
        )
        try:
            await exec_io._readers.start(stream="stdout", path=paths.stdout, sink=stdout)
            if paths.stderr:
                await exec_io._readers.start(stream="stderr", path=paths.stderr, sink=stderr)
        except BaseException:
            await exec_io.close()
            raise
        return exec_io

    def start_stdin(
        self,
        *,
        close_io: Callable[[], Awaitable[object]],
        chunks: AsyncIterator[bytes] | None = None,
        open_timeout: float = DEFAULT_STDIN_OPEN_TIMEOUT,
    ) -> None:
        """After ``Tasks.Start`` of the exec: write the stdin (the bytes given to ``create``,
        or ``chunks`` as a client sends them), close our end, then ``await close_io()``.

        ``close_io`` must call ``Tasks.CloseIO(stdin=True)`` for this exec: the shim keeps its
        own write end of the stdin FIFO open until then, so closing ours alone is no EOF for
        the process. Runs in the background; failures (the process exited without reading,
        the shim never opened its end within ``open_timeout``, CloseIO failing) are logged,
        not raised. No-op without stdin.
        """
        if not self.paths.stdin or self._stdin_feeder is not None or self._closed:
            return
        if chunks is None:
            if self._stdin_data is None:
                return
            chunks = _once(self._stdin_data)
        self._stdin_feeder = asyncio.get_running_loop().create_task(
            self._feed_stdin(chunks, close_io=close_io, open_timeout=open_timeout),
            name=f"exec-stdin:{self.exec_id}",
        )

    async def _feed_stdin(
        self,
        chunks: AsyncIterator[bytes],
        *,
        close_io: Callable[[], Awaitable[object]],
        open_timeout: float,
    ) -> None:
        try:
            self._stdin_writer = await FifoWriter.open(self.paths.stdin, timeout=open_timeout)
            async for data in chunks:
                await self._stdin_writer.write(data)
        except BrokenPipeError:
            logger.debug("exec process closed stdin before reading it all", extra=self._log_extra)
        except (OSError, TimeoutError, ValueError) as err:
            logger.warning("feeding exec stdin failed: %s", err, extra=self._log_extra)
        finally:
            if self._stdin_writer is not None:
                self._stdin_writer.close()
        # Not in the finally: when close() cancelled the feeder the exec is over anyway.
        try:
            await close_io()
        except Exception as err:
            logger.warning("closing exec stdin (CloseIO) failed: %s", err, extra=self._log_extra)

    async def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for EOF on stdout and stderr (and, when streamed,
        for the client to have taken it); False when a process still holds the output."""
        complete = await self._readers.wait_eof(timeout)
        if not complete:
            logger.info(
                "exec output not drained in time", extra={**self._log_extra, "timeout_s": timeout}
            )
        return complete

    async def wait_output(self, timeout: float) -> ExecOutput:
        """``wait_drained``, then what was collected (for ``create``'s in-memory output).

        The result is marked incomplete when a process still holds the output open at the
        deadline; collection goes on until ``close`` (a later call may return more).
        """
        complete = await self.wait_drained(timeout)
        stdout, stderr = self._stdout, self._stderr
        assert isinstance(stdout, _CappedBuffer) and isinstance(stderr, _CappedBuffer)
        return ExecOutput(
            stdout=bytes(stdout.data),
            stderr=bytes(stderr.data),
            complete=complete,
            stdout_dropped_bytes=stdout.dropped_bytes,
            stderr_dropped_bytes=stderr.dropped_bytes,
        )

    async def close(self) -> None:
        """Stop reading and feeding stdin, remove the FIFOs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stdin_feeder is not None:
            self._stdin_feeder.cancel()
            await asyncio.gather(self._stdin_feeder, return_exceptions=True)
        if self._stdin_writer is not None:
            self._stdin_writer.close()
        await self._readers.stop()
        try:
            remove_fifos(self.paths)
        except OSError as err:
            logger.warning("removing exec FIFOs failed: %s", err, extra=self._log_extra)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
