"""Interop with the real client: crictl v1.26.1 (client-go over moby/spdystream) against
``StreamServer`` behind a fake CRI RuntimeService, with the pure-Python ``FakeBackend``.

No containerd and no containers: the RuntimeService answers Exec/Attach/PortForward with
URLs of the streaming server, and the backend interprets a tiny command language
(``tests/stream_support.py``). ``-t`` runs crictl on a pseudo-terminal from ``pty``.
Skipped when ``/work/shared/bin/crictl`` is absent (a clone without the shared tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pty
import re
import shutil
import signal
import struct
import tempfile
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycri.stream.server import StreamServer, StreamServerConfig
from pycri.testing.stream_client import free_port
from tests.integration.helpers import CRICTL
from tests.stream_support import (
    FakeBackend,
    FakeRuntime,
    echo_server,
    pattern,
    start_fake_runtime,
)

pytestmark = pytest.mark.skipif(
    not os.access(CRICTL, os.X_OK), reason=f"{CRICTL} (crictl v1.26.1) is not available"
)


@dataclass
class Cri:
    server: StreamServer
    backend: FakeBackend
    runtime: FakeRuntime
    socket: str
    config: str

    def argv(self, *args: str) -> list[str]:
        endpoint = f"unix://{self.socket}"
        return [
            str(CRICTL),
            "--config",
            self.config,
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "30s",
            *args,
        ]

    async def run(
        self, *args: str, stdin: bytes | None = None, timeout: float = 60
    ) -> tuple[int, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, out, err


@contextlib.asynccontextmanager
async def fake_cri(config: StreamServerConfig | None = None) -> AsyncIterator[Cri]:
    base = tempfile.mkdtemp(prefix="pycri-crictl-", dir="/tmp")  # short: unix socket path limit
    crictl_config = os.path.join(base, "crictl.yaml")
    Path(crictl_config).write_text("")
    backend = FakeBackend()
    server = StreamServer(backend=backend, config=config)
    await server.start()
    socket_path = os.path.join(base, "cri.sock")
    grpc_server, runtime = await start_fake_runtime(server, socket_path)
    try:
        yield Cri(
            server=server,
            backend=backend,
            runtime=runtime,
            socket=socket_path,
            config=crictl_config,
        )
    finally:
        await grpc_server.stop(0)
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[Cri]:
    """The fake runtime for this module (not conftest's ``cri``, which runs a real daemon)."""
    async with fake_cri() as running:
        yield running


def _mib_per_s(size: int, seconds: float) -> float:
    return size / (1024 * 1024) / seconds


async def test_exec_prints_output_and_succeeds(fake: Cri) -> None:
    code, out, err = await fake.run("exec", "c1", "echo", "hello", "from", "pycri")
    assert (code, out) == (0, b"hello from pycri\n"), err
    assert "Exec" in fake.runtime.calls


async def test_exec_over_tls_with_the_generated_certificate() -> None:
    async with fake_cri(StreamServerConfig(tls=True)) as tls:
        assert tls.server.base_url.startswith("https://")
        # crictl does not verify the streaming certificate unless given a CA.
        code, out, err = await tls.run("exec", "c1", "echo", "over", "tls")
        assert (code, out) == (0, b"over tls\n"), err


async def test_exec_non_zero_exit_code_reaches_crictl(fake: Cri) -> None:
    code, _, err = await fake.run("exec", "c1", "exit", "3")
    # crictl 1.26 turns the NonZeroExitCode status into this message and exits 1.
    assert code != 0
    assert b"command terminated with exit code 3" in err


async def test_exec_internal_error_is_reported(fake: Cri) -> None:
    code, _, err = await fake.run("exec", "c1", "fail")
    assert code != 0
    assert b"the fake backend failed" in err


async def test_exec_large_output_is_intact(fake: Cri) -> None:
    size = 24 * 1024 * 1024
    started = time.perf_counter()
    code, out, err = await fake.run("exec", "c1", "generate", str(size), "11")
    elapsed = time.perf_counter() - started
    assert code == 0, err
    assert len(out) == size
    assert hashlib.sha256(out).digest() == hashlib.sha256(pattern(size, 11)).digest()
    print(
        f"crictl exec output: {size >> 20} MiB in {elapsed:.2f} s, {_mib_per_s(size, elapsed):.0f} MiB/s"
    )


async def test_exec_interactive_stdin_and_its_eof(fake: Cri) -> None:
    payload = pattern(6 * 1024 * 1024, 12)
    code, out, err = await fake.run("exec", "-i", "c1", "cat", stdin=payload)
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()


def _set_size(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


async def _read_until(master: int, pattern_: bytes, timeout: float = 10) -> bytes:
    loop = asyncio.get_running_loop()
    seen = bytearray()
    async with asyncio.timeout(timeout):
        while pattern_ not in seen:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(master, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(master)
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return bytes(seen)


async def test_exec_tty_resize_and_input(fake: Cri) -> None:
    master, slave = pty.openpty()
    _set_size(slave, 100, 30)
    process = await asyncio.create_subprocess_exec(
        *fake.argv("exec", "-it", "c1", "sizes", "2"), stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    try:
        # crictl sends the terminal's size when it starts, and again on SIGWINCH.
        assert b"100x30" in await _read_until(master, b"100x30")
        _set_size(master, 120, 40)
        process.send_signal(signal.SIGWINCH)
        assert b"120x40" in await _read_until(master, b"120x40")
        assert await asyncio.wait_for(process.wait(), 10) == 0
        request = fake.backend.exec_requests[-1]
        assert request.tty and request.stdin and not request.stderr

        # Keystrokes travel through the raw terminal to the backend and back.
        master2, slave2 = pty.openpty()
        echo = await asyncio.create_subprocess_exec(
            *fake.argv("exec", "-it", "c1", "head", "5"), stdin=slave2, stdout=slave2, stderr=slave2
        )
        os.close(slave2)
        await asyncio.sleep(0.5)
        os.write(master2, b"hello")
        assert b"hello" in await _read_until(master2, b"hello")
        assert await asyncio.wait_for(echo.wait(), 10) == 0
        os.close(master2)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)


async def test_attach_with_and_without_stdin(fake: Cri) -> None:
    code, out, err = await fake.run("attach", "-i", "c1", stdin=b"to the container\n")
    assert (code, out) == (0, b"to the container\n"), err
    code, out, err = await fake.run("attach", "c1")
    assert (code, out) == (0, b"attached\n"), err


async def _forwarded(fake: Cri, remote_port: int) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        *fake.argv("port-forward", "pod1", f"0:{remote_port}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 15)
    match = re.search(rb"Forwarding from 127\.0\.0\.1:(\d+)", line)
    assert match, line
    return process, int(match.group(1))


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(view), 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    digest = hashlib.sha256()
    while chunk := await reader.read(1 << 20):
        digest.update(chunk)
    await sending
    writer.close()
    return digest.digest()


async def test_port_forward_carries_data_both_ways_over_several_connections(fake: Cri) -> None:
    echo, echo_port = await echo_server()
    process, local_port = await _forwarded(fake, echo_port)
    try:
        payloads = [pattern(32 * 1024 * 1024, seed) for seed in range(4)]
        started = time.perf_counter()
        digests = await asyncio.wait_for(
            asyncio.gather(*(_round_trip(local_port, payload) for payload in payloads)), 120
        )
        elapsed = time.perf_counter() - started
        assert digests == [hashlib.sha256(payload).digest() for payload in payloads]
        total = sum(map(len, payloads))
        print(
            f"crictl port-forward: {len(payloads)} connections, {total >> 20} MiB each way "
            f"in {elapsed:.2f} s, {_mib_per_s(total, elapsed):.0f} MiB/s each way"
        )
        # One more, sequentially, on the same session.
        assert await _round_trip(local_port, b"again") == hashlib.sha256(b"again").digest()
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        echo.close()


async def test_port_forward_to_a_closed_port_reports_the_error(fake: Cri) -> None:
    closed_port = free_port()
    process, local_port = await _forwarded(fake, closed_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
        assert process.stderr is not None
        # client-go logs the message from the error stream, then (its choice) ends the
        # whole port-forward: crictl 1.26.1 exits.
        err = await asyncio.wait_for(process.stderr.read(), 15)
        assert f"error forwarding port {closed_port} to pod pod1".encode() in err
        assert await asyncio.wait_for(process.wait(), 15) is not None
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
