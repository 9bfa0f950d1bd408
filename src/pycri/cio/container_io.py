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
memory, each capped at ``MAX_EXEC_OUTPUT_BYTES`` (16 MiB): beyond that the output is still read
(the process must not block) but dropped silently, like containerd. Optional stdin bytes are
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
from collections.abc import Awaitable, Callable
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

MAX_EXEC_OUTPUT_BYTES: Final = 16 * 1024 * 1024
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


class _CappedBuffer:
    """Collects a stream up to ``limit`` bytes; the rest is dropped but counted."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> None:
        room = self.limit - len(self.data)
        if room >= len(data):
            self.data += data
            return
        if room > 0:
            self.data += data[:room]
        self.dropped_bytes += len(data) - max(room, 0)

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
    ) -> ContainerIO:
        """Make the FIFOs, open the log (``log_path=""``: discard output), start reading.

        Raises ``OSError`` (FIFOs or log file cannot be created); nothing is left behind then.
        """
        paths = stdio_paths(fifo_dir=fifo_dir, process_id=container_id, stdin=stdin, tty=tty)
        create_fifos(paths)
        return await cls._start(
            container_id=container_id,
            paths=paths,
            log_path=log_path,
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
    ) -> ContainerIO:
        """Recovery: read the FIFOs of a task that outlived the previous pycri process.

        ``paths`` come from containerd (``Tasks.Get``: the process's stdin/stdout/stderr/
        terminal). A missing output FIFO is logged and treated as ended.
        """
        return await cls._start(
            container_id=container_id,
            paths=paths,
            log_path=log_path,
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
            await self._readers.start(stream=stream, path=path, sink=sink, reattach=reattach)

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


class ExecIO:
    """The stdio of one exec process for ExecSync, collected in memory.

    Use::

        exec_io = await ExecIO.create(exec_id=..., fifo_dir=..., stdin=None)
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
        stdin_data: bytes | None,
        max_output_bytes: int,
        log_extra: dict[str, str],
    ) -> None:
        self.exec_id = exec_id
        self.paths = paths
        self._stdin_data = stdin_data
        self._log_extra = log_extra
        self._stdout = _CappedBuffer(limit=max_output_bytes)
        self._stderr = _CappedBuffer(limit=max_output_bytes)
        self._readers = _OutputReaders(log_extra=log_extra)
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
        """Make the FIFOs and start collecting. ``stdin=None``: the process gets no stdin."""
        paths = stdio_paths(fifo_dir=fifo_dir, process_id=exec_id, stdin=stdin is not None, tty=tty)
        log_extra = {"exec_id": exec_id, "container_id": container_id}
        create_fifos(paths)
        exec_io = cls(
            exec_id=exec_id,
            paths=paths,
            stdin_data=stdin,
            max_output_bytes=max_output_bytes,
            log_extra=log_extra,
        )
        try:
            await exec_io._readers.start(stream="stdout", path=paths.stdout, sink=exec_io._stdout)
            if paths.stderr:
                await exec_io._readers.start(
                    stream="stderr", path=paths.stderr, sink=exec_io._stderr
                )
        except BaseException:
            await exec_io.close()
            raise
        return exec_io

    def start_stdin(
        self,
        *,
        close_io: Callable[[], Awaitable[object]],
        open_timeout: float = DEFAULT_STDIN_OPEN_TIMEOUT,
    ) -> None:
        """After ``Tasks.Start`` of the exec: write the stdin bytes, close our end, then
        ``await close_io()``.

        ``close_io`` must call ``Tasks.CloseIO(stdin=True)`` for this exec: the shim keeps its
        own write end of the stdin FIFO open until then, so closing ours alone is no EOF for
        the process. Runs in the background; failures (the process exited without reading,
        the shim never opened its end within ``open_timeout``, CloseIO failing) are logged,
        not raised. No-op without stdin.
        """
        if self._stdin_data is None or self._stdin_feeder is not None or self._closed:
            return
        self._stdin_feeder = asyncio.get_running_loop().create_task(
            self._feed_stdin(self._stdin_data, close_io=close_io, open_timeout=open_timeout),
            name=f"exec-stdin:{self.exec_id}",
        )

    async def _feed_stdin(
        self, data: bytes, *, close_io: Callable[[], Awaitable[object]], open_timeout: float
    ) -> None:
        try:
            self._stdin_writer = await FifoWriter.open(self.paths.stdin, timeout=open_timeout)
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

    async def wait_output(self, timeout: float) -> ExecOutput:
        """Wait up to ``timeout`` seconds for EOF on stdout and stderr; return what was read.

        The result is marked incomplete when a process still holds the output open at the
        deadline; collection goes on until ``close`` (a later call may return more).
        """
        complete = await self._readers.wait_eof(timeout)
        if not complete:
            logger.info(
                "exec output not drained in time", extra={**self._log_extra, "timeout_s": timeout}
            )
        return ExecOutput(
            stdout=bytes(self._stdout.data),
            stderr=bytes(self._stderr.data),
            complete=complete,
            stdout_dropped_bytes=self._stdout.dropped_bytes,
            stderr_dropped_bytes=self._stderr.dropped_bytes,
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
