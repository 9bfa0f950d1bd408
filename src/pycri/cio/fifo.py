"""Named FIFOs for a task's stdio: paths, creation, asyncio reading, non-blocking writing.

containerd's task API takes the *paths* of a process's stdio (``stdin``, ``stdout``, ``stderr``,
``terminal`` in ``CreateTaskRequest`` / ``ExecProcessRequest``); the shim opens them and copies
between them and the process. pycri creates the FIFOs, reads the output ends and may write the
input end. Layout: ``<fifo_dir>/<process id>-stdin|-stdout|-stderr``; no ``-stdin`` unless stdin
is wanted, no ``-stderr`` with a terminal (the tty merges both streams into stdout).

Races and how they are handled (Linux FIFO semantics):

- **The shim blocks opening an output FIFO until a reader exists** (it opens stdout/stderr for
  writing without ``O_NONBLOCK``, bounded by the Create/Start request). So the reader is opened
  *before* ``Tasks.Create`` / ``Tasks.Start`` of an exec: ``FifoReader.open`` is immediate.
- **The window before the writer opens.** An ``O_RDONLY | O_NONBLOCK`` open succeeds with no
  writer. ``read()`` would then return 0 (looks like EOF), but the kernel does not report the
  FIFO readable or hung up to epoll until a writer has come and gone: a reader opened with no
  writer suppresses ``EPOLLHUP`` until it has seen one. asyncio reads only when epoll says so,
  so the reader simply waits through the window and sees EOF only after every writer (the
  shim's copy, a grandchild holding the fd) closed. Buffered data is read before that EOF.
- **Re-attaching after a pycri restart** (``FifoReader.open(..., reattach=True)``): the shim
  still holds its write end (it also keeps a read end open itself so that writes do not fail
  with EPIPE while nobody reads; they just fill the pipe and wait). Opening the read end again
  is all it takes. But if the shim already closed its end (the process exited while pycri was
  down), the suppression above would hide that forever. So on re-attach, right after opening
  the reader, a write end is opened and closed at once: that counts as "a writer was seen", so
  EOF is reported as soon as no writer is left (immediately if there is none). Never do this
  on a fresh FIFO: it would end the stream before the shim even opened it.
- **Input**: the shim opens a stdin FIFO for reading in the background, when the process is
  set up. ``FifoWriter.open`` opens the write end with ``O_NONBLOCK``, which fails with ENXIO
  while no reader is there (a reader blocked in ``open`` counts), and retries until one is:
  once it succeeded the shim holds a read end, so data written and then closed is never lost
  (a pipe's buffer dies with its last descriptor). The shim also opens a write end of its own
  on the stdin FIFO and closes it only on ``Tasks.CloseIO(stdin=True)``: the process sees EOF
  once both pycri's writer is closed and CloseIO was called.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

FIFO_MODE: Final = 0o700
FIFO_DIR_MODE: Final = 0o700
READ_CHUNK_BYTES: Final = 256 * 1024
# StreamReader pauses the pipe transport beyond twice this much unread data.
READ_BUFFER_LIMIT: Final = 256 * 1024
WRITER_OPEN_RETRY_INITIAL: Final = 0.005
WRITER_OPEN_RETRY_MAX: Final = 0.1


@dataclass(frozen=True, kw_only=True)
class StdioPaths:
    """The stdio fields of a containerd task/exec request; empty string = not connected."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    def fifos(self) -> tuple[str, ...]:
        return tuple(path for path in (self.stdin, self.stdout, self.stderr) if path)


def stdio_paths(*, fifo_dir: str, process_id: str, stdin: bool, tty: bool) -> StdioPaths:
    """``<fifo_dir>/<process_id>-stdin|-stdout|-stderr`` as wanted for the process."""
    base = os.path.join(fifo_dir, process_id)
    return StdioPaths(
        stdin=f"{base}-stdin" if stdin else "",
        stdout=f"{base}-stdout",
        stderr="" if tty else f"{base}-stderr",
        terminal=tty,
    )


def create_fifos(paths: StdioPaths) -> None:
    """Create the FIFOs (and their directories, mode 0700). An existing FIFO is reused.

    On failure the FIFOs made by this call are removed again and the error raised.
    """
    created: list[str] = []
    try:
        for path in paths.fifos():
            os.makedirs(os.path.dirname(path), mode=FIFO_DIR_MODE, exist_ok=True)
            try:
                os.mkfifo(path, FIFO_MODE)
            except FileExistsError:
                if not stat.S_ISFIFO(os.stat(path).st_mode):
                    raise
            else:
                created.append(path)
    except OSError:
        with contextlib.suppress(OSError):
            _remove_files_and_empty_dirs(created)
        raise


def remove_fifos(paths: StdioPaths) -> None:
    """Remove the FIFOs, then their directories if now empty. Missing files are fine."""
    _remove_files_and_empty_dirs(paths.fifos())


def _remove_files_and_empty_dirs(files: Iterable[str]) -> None:
    directories: set[str] = set()
    for path in files:
        directories.add(os.path.dirname(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for directory in directories:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as err:
            # Something else lives there (not ours): leave the directory alone.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


class FifoReader:
    """The read end of a FIFO, read asynchronously; ``read()`` returns ``b""`` at EOF."""

    def __init__(
        self, *, path: str, reader: asyncio.StreamReader, transport: asyncio.ReadTransport
    ) -> None:
        self.path = path
        self._reader = reader
        self._transport = transport

    @classmethod
    async def open(cls, path: str, *, reattach: bool = False) -> FifoReader:
        """Open the read end now, without waiting for a writer.

        ``reattach=True`` when the writer may have opened (and maybe closed) before us, i.e.
        after a restart: see the module docstring. Raises ``OSError`` (e.g. the FIFO is gone).
        """
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a FIFO", path)
            if reattach:
                # Cannot fail with ENXIO: we are a reader.
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            pipe = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_BUFFER_LIMIT, loop=loop)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
        except BaseException:
            pipe.close()
            raise
        return cls(path=path, reader=reader, transport=transport)

    async def read(self, max_bytes: int = READ_CHUNK_BYTES) -> bytes:
        """What is available (at least one byte), or ``b""`` once every writer closed."""
        return await self._reader.read(max_bytes)

    def close(self) -> None:
        """Close the read end. Idempotent."""
        self._transport.close()


class FifoWriter:
    """The write end of a FIFO (a process's stdin), written without blocking the loop."""

    def __init__(self, *, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._loop = asyncio.get_running_loop()
        self._waiting_writable: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str, *, timeout: float) -> FifoWriter:
        """Open once a reader (the shim) has the FIFO open; retry until ``timeout`` seconds.

        Raises ``TimeoutError`` when no reader appeared, ``OSError`` on other failures.
        """
        delay = WRITER_OPEN_RETRY_INITIAL
        async with asyncio.timeout(timeout):
            while True:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as err:
                    if err.errno != errno.ENXIO:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, WRITER_OPEN_RETRY_MAX)
                    continue
                return cls(path=path, fd=fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    async def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the pipe is full.

        Raises ``BrokenPipeError`` when the reader is gone, ``ValueError`` when closed.
        """
        view = memoryview(data)
        while view:
            fd = self._fd
            if fd is None:
                raise ValueError(f"FIFO writer {self.path} is closed")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await self._wait_writable(fd)

    async def _wait_writable(self, fd: int) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def on_writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(fd, on_writable)
        self._waiting_writable = ready
        try:
            await ready
        finally:
            self._waiting_writable = None
            # close() may have closed fd meanwhile and already dropped the watch.
            if self._fd == fd:
                self._loop.remove_writer(fd)

    def close(self) -> None:
        """Close the write end: the reader sees EOF once no other writer is left. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._loop.remove_writer(fd)
        os.close(fd)
        waiting = self._waiting_writable
        if waiting is not None and not waiting.done():
            # A write() waiting for room must not hang forever on a descriptor that is gone.
            waiting.set_exception(ValueError(f"FIFO writer {self.path} was closed"))
