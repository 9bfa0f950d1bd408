"""Container and exec IO over real FIFOs, with real writer processes standing in for the shim."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pycri.cio.container_io import (
    MAX_EXEC_OUTPUT_BYTES,
    Attachment,
    ContainerIO,
    ContainerIOClosedError,
    ExecIO,
    ForwardingSink,
    OutputFanout,
)
from pycri.cio.fifo import FifoReader, StdioPaths, create_fifos, remove_fifos, stdio_paths

LINE_RE = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d) "
    rb"(?P<stream>stdout|stderr) (?P<tag>[PF]) (?P<content>.*)$"
)


def log_lines(path: Path) -> list[tuple[str, str, bytes]]:
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data
    out = []
    for line in data.split(b"\n")[:-1]:
        match = LINE_RE.match(line)
        assert match, line[:200]
        out.append((match["stream"].decode(), match["tag"].decode(), match["content"]))
    return out


async def spawn_shim_like(paths: StdioPaths, script: str) -> asyncio.subprocess.Process:
    """Run ``sh -c script`` with stdout/stderr on the FIFOs, as the shim connects a process.

    Opening for writing does not block: the reader is already open.
    """
    stdout = write_end(paths.stdout)
    stderr = write_end(paths.stderr) if paths.stderr else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            "sh", "-c", script, stdout=stdout, stderr=stderr
        )
    finally:
        os.close(stdout)
        if paths.stderr:
            os.close(stderr)


def write_end(path: str) -> int:
    """A blocking write end; opening does not block since our reader is already open."""
    return os.open(path, os.O_WRONLY)


def exists(path: str) -> bool:
    return os.path.lexists(path)


async def open_like_shim_stdin(path: str) -> int:
    """The shim opens a stdin FIFO for reading in blocking mode, in the background: the open
    returns once a writer came (a bare non-blocking reader would see EOF at once instead)."""
    return await asyncio.to_thread(os.open, path, os.O_RDONLY)


@contextmanager
def held_write_end(path: str) -> Iterator[int]:
    """A writer that keeps the FIFO open, like a grandchild that inherited stdout."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


async def new_container_io(
    tmp_path: Path, *, tty: bool = False, stdin: bool = False, log: bool = True
) -> tuple[ContainerIO, Path]:
    log_path = tmp_path / "pod" / "c_0.log"
    log_path.parent.mkdir(exist_ok=True)
    container_io = await ContainerIO.create(
        container_id="c1",
        fifo_dir=str(tmp_path / "io" / "abc"),
        stdin=stdin,
        tty=tty,
        log_path=str(log_path) if log else "",
    )
    return container_io, log_path


# --------------------------------------------------------------------------------------------
# Layout


async def test_fifo_layout(tmp_path: Path) -> None:
    container_io, _ = await new_container_io(tmp_path, stdin=True)
    fifo_dir = tmp_path / "io" / "abc"
    assert container_io.paths == StdioPaths(
        stdin=str(fifo_dir / "c1-stdin"),
        stdout=str(fifo_dir / "c1-stdout"),
        stderr=str(fifo_dir / "c1-stderr"),
        terminal=False,
    )
    for path in container_io.paths.fifos():
        assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(fifo_dir).st_mode) == 0o700
    await container_io.close()
    assert not fifo_dir.exists()
    assert (tmp_path / "io").exists()  # only the FIFO directory itself is ours


def test_tty_has_no_stderr_and_stdin_only_when_asked() -> None:
    paths = stdio_paths(fifo_dir="/run/x", process_id="id", stdin=False, tty=True)
    assert paths == StdioPaths(stdout="/run/x/id-stdout", terminal=True)


def test_remove_fifos_leaves_foreign_files(tmp_path: Path) -> None:
    paths = stdio_paths(fifo_dir=str(tmp_path / "d"), process_id="p", stdin=True, tty=False)
    create_fifos(paths)
    create_fifos(paths)  # existing FIFOs are reused
    (tmp_path / "d" / "other").write_text("x")
    remove_fifos(paths)
    assert os.listdir(tmp_path / "d") == ["other"]
    remove_fifos(paths)  # idempotent


# --------------------------------------------------------------------------------------------
# Container output into the CRI log


async def test_stdout_and_stderr_reach_the_log(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    process = await spawn_shim_like(container_io.paths, "echo hello; echo err >&2; printf tail")
    assert await process.wait() == 0
    assert await container_io.drain(5)
    lines = log_lines(log_path)
    assert sorted(lines) == sorted(
        [("stdout", "F", b"hello"), ("stderr", "F", b"err"), ("stdout", "P", b"tail")]
    )
    # Per stream the order is kept.
    assert [c for s, _, c in lines if s == "stdout"] == [b"hello", b"tail"]
    await container_io.close()


async def test_reader_survives_the_window_before_the_writer_opens(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    # No writer yet: a read() would return 0, but the reader must not take it for EOF.
    await asyncio.sleep(0.3)
    assert not container_io.output_ended
    assert not await container_io.drain(0.1)
    process = await spawn_shim_like(container_io.paths, "echo late")
    await process.wait()
    assert await container_io.drain(5)
    assert container_io.output_ended
    assert log_lines(log_path) == [("stdout", "F", b"late")]
    await container_io.close()


async def test_eof_only_after_every_writer_closed(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    with held_write_end(container_io.paths.stdout) as fd:
        process = await spawn_shim_like(container_io.paths, "echo from-child")
        await process.wait()
        assert not await container_io.drain(0.3)  # stdout still held: drain gives up in time
        os.write(fd, b"from-holder\n")
    assert await container_io.drain(5)  # the last writer closed: EOF
    assert [c for _, _, c in log_lines(log_path)] == [b"from-child", b"from-holder"]
    await container_io.close()


async def test_grandchild_holding_stdout_does_not_stall_drain(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    process = await spawn_shim_like(
        container_io.paths, "echo parent; sleep 30 & echo $! > " + str(tmp_path / "pid")
    )
    await process.wait()
    try:
        started = time.monotonic()
        assert not await container_io.drain(0.5)
        assert time.monotonic() - started < 2
        assert log_lines(log_path) == [("stdout", "F", b"parent")]
    finally:
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    assert await container_io.drain(5)
    await container_io.close()


async def test_close_while_writer_holds_the_fifo(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    with held_write_end(container_io.paths.stdout) as fd:
        os.write(fd, b"unfinished")
        await asyncio.sleep(0.1)
        await asyncio.wait_for(container_io.close(), 5)
        assert container_io.closed
    assert log_lines(log_path) == [("stdout", "P", b"unfinished")]
    assert not exists(container_io.paths.stdout)
    await container_io.close()  # idempotent


async def test_tty_output_goes_to_stdout(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path, tty=True)
    assert container_io.paths.stderr == ""
    process = await spawn_shim_like(container_io.paths, r"printf 'tty line\r\n'")
    await process.wait()
    assert await container_io.drain(5)
    assert log_lines(log_path) == [("stdout", "F", b"tty line")]
    await container_io.close()


async def test_without_log_path_output_is_drained_and_dropped(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path, log=False)
    assert container_io.log_writer is None
    # More than a pipe's capacity: the writer would block if nobody read.
    process = await spawn_shim_like(container_io.paths, "head -c 1000000 /dev/zero")
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert await container_io.drain(5)
    assert not log_path.exists()
    await container_io.reopen_log()  # no-op
    await container_io.close()


async def test_ten_thousand_lines_through_the_fifo(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    started = time.monotonic()
    process = await spawn_shim_like(container_io.paths, "seq 1 10000; seq 1 10000 >&2")
    await process.wait()
    assert await container_io.drain(10)
    elapsed = time.monotonic() - started
    lines = log_lines(log_path)
    assert [c for s, _, c in lines if s == "stdout"] == [b"%d" % i for i in range(1, 10001)]
    assert len([1 for s, _, _ in lines if s == "stderr"]) == 10_000
    assert elapsed < 3, elapsed
    await container_io.close()


async def test_long_line_through_the_fifo(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    process = await spawn_shim_like(
        container_io.paths, "head -c 40000 /dev/zero | tr '\\0' a; echo"
    )
    await process.wait()
    assert await container_io.drain(5)
    assert [(t, len(c)) for _, t, c in log_lines(log_path)] == [
        ("P", 16384),
        ("P", 16384),
        ("F", 7232),
    ]
    await container_io.close()


async def test_reopen_log(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path, tty=True)  # stdout only
    with held_write_end(container_io.paths.stdout) as fd:
        os.write(fd, b"one\n")
        await asyncio.sleep(0.1)
        assert container_io.log_writer is not None
        await container_io.log_writer.flush()
        rotated = log_path.with_name("c_0.log.1")
        log_path.rename(rotated)
        await container_io.reopen_log()
        os.write(fd, b"two\n")
    assert await container_io.drain(5)
    assert log_lines(rotated) == [("stdout", "F", b"one")]
    assert log_lines(log_path) == [("stdout", "F", b"two")]
    await container_io.close()
    # Behaviour 61: once closed (container exited and cleaned up) no new file is created.
    log_path.unlink()
    with pytest.raises(ContainerIOClosedError):
        await container_io.reopen_log()
    assert not log_path.exists()


async def test_log_open_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await ContainerIO.create(
            container_id="c1",
            fifo_dir=str(tmp_path / "io"),
            stdin=False,
            tty=False,
            log_path=str(tmp_path / "missing-dir" / "c.log"),
        )
    assert not (tmp_path / "io").exists()


# --------------------------------------------------------------------------------------------
# Re-attach after a restart


async def test_reattach_reads_what_was_written_while_away(tmp_path: Path) -> None:
    paths = stdio_paths(fifo_dir=str(tmp_path / "io"), process_id="c1", stdin=False, tty=False)
    create_fifos(paths)
    # The shim's side: its own read end keeps the pipe alive, its write end stays open.
    shim_read = os.open(paths.stdout, os.O_RDONLY | os.O_NONBLOCK)
    shim_write = os.open(paths.stdout, os.O_WRONLY | os.O_NONBLOCK)
    shim_err_read = os.open(paths.stderr, os.O_RDONLY | os.O_NONBLOCK)
    shim_err_write = os.open(paths.stderr, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(shim_write, b"while pycri was down\n")
        log_path = tmp_path / "c.log"
        container_io = await ContainerIO.reattach(
            container_id="c1", paths=paths, log_path=str(log_path)
        )
        assert not await container_io.drain(0.2)  # the shim still holds the write ends
        os.write(shim_write, b"after\n")
        os.close(shim_write)
        os.close(shim_err_write)
        shim_write = shim_err_write = -1
        assert await container_io.drain(5)
        assert log_lines(log_path) == [
            ("stdout", "F", b"while pycri was down"),
            ("stdout", "F", b"after"),
        ]
    finally:
        for fd in (shim_read, shim_write, shim_err_read, shim_err_write):
            if fd >= 0:
                os.close(fd)
    await container_io.close()


async def test_reattach_when_the_writer_is_already_gone(tmp_path: Path) -> None:
    paths = stdio_paths(fifo_dir=str(tmp_path / "io"), process_id="c1", stdin=False, tty=False)
    create_fifos(paths)
    container_io = await ContainerIO.reattach(
        container_id="c1", paths=paths, log_path=str(tmp_path / "c.log")
    )
    # Without the re-attach probe this would wait for a writer forever.
    assert await container_io.drain(2)
    await container_io.close()


async def test_reattach_with_missing_fifos(tmp_path: Path) -> None:
    paths = stdio_paths(fifo_dir=str(tmp_path / "gone"), process_id="c1", stdin=False, tty=False)
    container_io = await ContainerIO.reattach(container_id="c1", paths=paths, log_path="")
    assert await container_io.drain(1)
    await container_io.close()


async def test_detach_keeps_fifos_for_reattach(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path)
    paths = container_io.paths
    shim_read = os.open(paths.stdout, os.O_RDONLY | os.O_NONBLOCK)
    with held_write_end(paths.stdout) as fd:
        os.write(fd, b"first\n")
        await asyncio.sleep(0.1)
        await container_io.detach()
        assert exists(paths.stdout)
        os.write(fd, b"second\n")  # buffered in the pipe, kept alive by the shim's read end
        again = await ContainerIO.reattach(container_id="c1", paths=paths, log_path=str(log_path))
    os.close(shim_read)
    assert await again.drain(5)
    assert [c for _, _, c in log_lines(log_path)] == [b"first", b"second"]
    await again.close()
    assert not exists(paths.stdout)


# --------------------------------------------------------------------------------------------
# Container stdin


async def test_container_stdin(tmp_path: Path) -> None:
    container_io, log_path = await new_container_io(tmp_path, stdin=True)
    # "cat" as the container process: stdin from the stdin FIFO, stdout into the stdout FIFO.
    opening = asyncio.ensure_future(open_like_shim_stdin(container_io.paths.stdin))
    writer = await container_io.open_stdin(timeout=5)
    stdin_fd = await opening
    stdout = write_end(container_io.paths.stdout)
    stderr = write_end(container_io.paths.stderr)
    process = await asyncio.create_subprocess_exec(
        "cat", stdin=stdin_fd, stdout=stdout, stderr=stderr
    )
    for fd in (stdin_fd, stdout, stderr):
        os.close(fd)
    assert await container_io.open_stdin(timeout=5) is writer  # shared across attaches
    await writer.write(b"typed\n")
    await writer.write(b"x" * 300_000 + b"\n")  # more than the pipe holds: waits for room
    container_io.close_stdin()  # stdin_once: EOF for the process
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert await container_io.drain(5)
    lines = log_lines(log_path)
    assert lines[0] == ("stdout", "F", b"typed")
    assert b"".join(c for _, _, c in lines[1:]) == b"x" * 300_000
    await container_io.close()
    with pytest.raises(ContainerIOClosedError):
        await container_io.open_stdin(timeout=1)


async def test_open_stdin_without_stdin_or_reader(tmp_path: Path) -> None:
    container_io, _ = await new_container_io(tmp_path, stdin=False)
    with pytest.raises(ValueError, match="no stdin"):
        await container_io.open_stdin(timeout=1)
    await container_io.close()
    container_io, _ = await new_container_io(tmp_path, stdin=True)
    with pytest.raises(TimeoutError):
        await container_io.open_stdin(timeout=0.2)  # the shim never opened its end
    await container_io.close()


# --------------------------------------------------------------------------------------------
# Exec


async def new_exec_io(tmp_path: Path, **kwargs: object) -> ExecIO:
    return await ExecIO.create(
        exec_id="e1",
        fifo_dir=str(tmp_path / "exec"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_exec_collects_stdout_and_stderr(tmp_path: Path) -> None:
    exec_io = await new_exec_io(tmp_path)
    assert exec_io.paths.stdin == ""
    process = await spawn_shim_like(exec_io.paths, "echo out; echo err >&2")
    await process.wait()
    output = await exec_io.wait_output(5)
    assert (output.stdout, output.stderr, output.complete) == (b"out\n", b"err\n", True)
    await exec_io.close()
    assert not (tmp_path / "exec").exists()


async def test_exec_output_stays_under_kubelets_16_mib_message(tmp_path: Path) -> None:
    exec_io = await new_exec_io(tmp_path)
    process = await spawn_shim_like(
        exec_io.paths, "head -c 17000000 /dev/zero; head -c 100 /dev/zero >&2"
    )
    assert await asyncio.wait_for(process.wait(), 20) == 0  # never blocked by the cap
    output = await exec_io.wait_output(5)
    assert output.complete
    # stdout and stderr share one budget, just under 16 MiB: the answer fits kubelet's limit
    assert len(output.stdout) + len(output.stderr) == MAX_EXEC_OUTPUT_BYTES < 16 * 1024 * 1024
    assert output.stdout_dropped_bytes + output.stderr_dropped_bytes == (
        17_000_000 + 100 - MAX_EXEC_OUTPUT_BYTES
    )
    await exec_io.close()


async def test_exec_small_cap_shared_by_both_streams(tmp_path: Path) -> None:
    exec_io = await new_exec_io(tmp_path, max_output_bytes=10)
    process = await spawn_shim_like(exec_io.paths, "printf 012345; sleep 0.2; printf abcdef >&2")
    await process.wait()
    output = await exec_io.wait_output(5)
    assert (output.stdout, output.stderr) == (b"012345", b"abcd")
    assert (output.stdout_dropped_bytes, output.stderr_dropped_bytes) == (0, 2)
    await exec_io.close()


async def test_exec_wait_output_times_out(tmp_path: Path) -> None:
    exec_io = await new_exec_io(tmp_path)
    with held_write_end(exec_io.paths.stdout) as fd:
        os.write(fd, b"so far")
        await asyncio.sleep(0.1)
        output = await exec_io.wait_output(0.2)
        assert (output.stdout, output.complete) == (b"so far", False)
        await asyncio.wait_for(exec_io.close(), 5)


async def test_exec_stdin_written_then_closed(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20_000))  # well above a pipe's capacity
    exec_io = await new_exec_io(tmp_path, stdin=data)
    assert exec_io.paths.stdin.endswith("/e1-stdin")
    close_io_called = asyncio.Event()

    async def close_io() -> None:
        close_io_called.set()

    # stdin is fed only once the "shim" opened its end; start it before the reader exists to
    # exercise the retry.
    exec_io.start_stdin(close_io=close_io)
    await asyncio.sleep(0.05)
    stdin_fd = await open_like_shim_stdin(exec_io.paths.stdin)
    stdout = write_end(exec_io.paths.stdout)
    stderr = write_end(exec_io.paths.stderr)
    process = await asyncio.create_subprocess_exec(
        "cat", stdin=stdin_fd, stdout=stdout, stderr=stderr
    )
    for fd in (stdin_fd, stdout, stderr):
        os.close(fd)
    assert await asyncio.wait_for(process.wait(), 10) == 0  # got EOF on stdin
    output = await exec_io.wait_output(5)
    assert output.complete
    assert output.stdout == data
    await asyncio.wait_for(close_io_called.wait(), 5)  # the shim's own write end is closed too
    await exec_io.close()


async def test_exec_stdin_not_read_by_the_process(tmp_path: Path) -> None:
    exec_io = await new_exec_io(tmp_path, stdin=b"y" * 1_000_000)
    stdin_fd = os.open(exec_io.paths.stdin, os.O_RDONLY | os.O_NONBLOCK)
    close_io_calls: list[int] = []

    async def close_io() -> None:
        close_io_calls.append(1)

    exec_io.start_stdin(close_io=close_io)
    await asyncio.sleep(0.1)  # the feeder is now waiting for room in the full pipe
    await asyncio.wait_for(exec_io.close(), 5)
    assert close_io_calls == []  # cancelled by close(): the exec is over, no CloseIO
    os.close(stdin_fd)


# --------------------------------------------------------------------------------------------
# FifoReader directly


async def test_fifo_reader_eof(tmp_path: Path) -> None:
    path = tmp_path / "f"
    os.mkfifo(path)
    reader = await FifoReader.open(str(path))
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"abc")
    os.close(fd)
    assert await asyncio.wait_for(reader.read(), 5) == b"abc"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader.close()
    reader.close()


async def test_fifo_reader_refuses_regular_files(tmp_path: Path) -> None:
    path = tmp_path / "regular"
    path.write_text("x")
    with pytest.raises(OSError, match="not a FIFO"):
        await FifoReader.open(str(path))


def test_create_fifos_failure_removes_only_what_it_made(tmp_path: Path) -> None:
    paths = stdio_paths(fifo_dir=str(tmp_path / "d"), process_id="p", stdin=False, tty=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p-stderr").write_text("not ours")
    with pytest.raises(FileExistsError):
        create_fifos(paths)
    assert os.listdir(tmp_path / "d") == ["p-stderr"]


# --------------------------------------------------------------------------------------------
# Attach fan-out and streamed exec output


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.finished = False

    def feed(self, data: bytes) -> None:
        self.data += data

    def finish(self) -> None:
        self.finished = True

    async def wait_writable(self) -> None:
        pass


async def _take(attachment: Attachment) -> list[tuple[str, bytes]]:
    return [item async for item in attachment]


async def test_every_attacher_gets_the_output_and_the_log_too() -> None:
    fanout = OutputFanout(log_extra={})
    log_out, log_err = _Sink(), _Sink()
    stdout, stderr = fanout.sink("stdout", log_out), fanout.sink("stderr", log_err)
    first, second = fanout.subscribe(), fanout.subscribe()
    stdout.feed(b"a")
    stderr.feed(b"b")
    await stdout.wait_writable()
    stdout.finish()
    stderr.finish()
    assert await _take(first) == [("stdout", b"a"), ("stderr", b"b")]
    assert await _take(second) == [("stdout", b"a"), ("stderr", b"b")]
    assert (bytes(log_out.data), bytes(log_err.data)) == (b"a", b"b")
    assert await _take(fanout.subscribe()) == []  # attaching after the end: nothing more


async def test_a_stalled_attacher_is_dropped_not_the_container() -> None:
    fanout = OutputFanout(log_extra={}, limit=10, stall_timeout=0.1)
    stdout = fanout.sink("stdout", _Sink())
    stuck, reading = fanout.subscribe(), fanout.subscribe()
    got: list[bytes] = []

    async def read() -> None:
        async for _, data in reading:
            got.append(data)

    reader = asyncio.create_task(read())
    for _ in range(3):
        stdout.feed(b"x" * 8)
        await asyncio.wait_for(stdout.wait_writable(), 2)  # never stalls longer than 0.1 s
    stdout.finish()
    await asyncio.wait_for(reader, 2)
    assert b"".join(got) == b"x" * 24
    assert stuck.dropped
    items = await _take(stuck)
    assert sum(len(data) for _, data in items) < 24  # cut off when it stalled


async def test_forwarding_sink_discards_once_the_client_is_gone() -> None:
    class Client:
        def __init__(self) -> None:
            self.data = bytearray()

        async def write(self, data: bytes) -> None:
            if len(self.data) >= 4:
                raise ConnectionResetError("gone")
            self.data += data

    client = Client()
    sink = ForwardingSink(client, log_extra={})
    for chunk in (b"ab", b"cd", b"ef", b"gh"):
        sink.feed(chunk)
        await sink.wait_writable()  # never raises: the process must not block or fail
    assert bytes(client.data) == b"abcd"


def test_stream_stats_count_refusals_and_failed_sessions() -> None:
    from pycri.stream.server import StreamStats

    stats = StreamStats(
        sessions_open=0,
        sessions_total={"exec": 4},
        outcomes={"exec:exited": 2, "exec:error": 1, "attach:stream_creation_timeout": 1},
        bytes_in=0,
        bytes_out=0,
        rejected={404: 2, 429: 1},
        portforward_connections={},
        tokens_pending=0,
    )
    assert stats.errors == 5
