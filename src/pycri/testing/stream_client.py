"""A minimal CRI streaming client (SPDY/3.1, as crictl and kubelet speak it) for tests,
benchmarks and demos: the upgrade request, the command streams in client-go's order, and a
whole exec/attach as one call. It uses ``pycri.stream.spdy`` in its client role. Plus what
port-forward measurements share: ``crictl port-forward`` for a block, and a blocking echo
round trip through a local port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pycri.stream.spdy import SpdyOptions, SpdySession, SpdyStream

__all__ = [
    "CommandStreams",
    "Upgraded",
    "crictl_port_forward",
    "echo_through",
    "free_port",
    "open_command_streams",
    "read_all",
    "spdy_command",
    "spdy_upgrade",
]


@dataclass
class Upgraded:
    """The answer to an upgrade request; ``session`` is running if it was a SPDY 101."""

    status: int
    headers: dict[str, str]
    body: bytes
    session: SpdySession | None
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        if self.session is not None:
            self.session.abort()
        self.writer.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def spdy_upgrade(
    url: str,
    *,
    protocols: Sequence[str] = ("v4.channel.k8s.io",),
    method: str = "POST",
    upgrade: bool = True,
    options: SpdyOptions | None = None,
) -> Upgraded:
    """Send the upgrade request crictl sends; start a client session on 101."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    status = int(status_line.split(" ")[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
    if status != 101:
        body = await reader.read()
        return Upgraded(
            status=status, headers=headers, body=body, session=None, reader=reader, writer=writer
        )
    session = SpdySession(reader=reader, writer=writer, is_server=False, options=options)
    task = asyncio.create_task(session.run())
    return Upgraded(
        status=status,
        headers=headers,
        body=b"",
        session=session,
        reader=reader,
        writer=writer,
        task=task,
    )


async def read_all(stream: SpdyStream | None) -> bytes:
    if stream is None:
        return b""
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
    return bytes(data)


@dataclass
class CommandStreams:
    error: SpdyStream
    stdin: SpdyStream | None
    stdout: SpdyStream | None
    stderr: SpdyStream | None
    resize: SpdyStream | None


async def open_command_streams(
    session: SpdySession,
    *,
    stdin: bool,
    stdout: bool = True,
    stderr: bool = True,
    resize: bool = False,
) -> CommandStreams:
    """Open the streams in client-go's order, waiting for each reply like it does."""
    opened: dict[str, SpdyStream] = {}
    for kind, wanted in (
        ("error", True),
        ("stdin", stdin),
        ("stdout", stdout),
        ("stderr", stderr),
        ("resize", resize),
    ):
        if wanted:
            stream = session.open_stream({"streamType": kind})
            await asyncio.wait_for(stream.wait_reply(), 5)
            opened[kind] = stream
    return CommandStreams(
        error=opened["error"],
        stdin=opened.get("stdin"),
        stdout=opened.get("stdout"),
        stderr=opened.get("stderr"),
        resize=opened.get("resize"),
    )


async def spdy_command(
    url: str,
    *,
    stdin: bytes | None = None,
    stderr: bool = True,
    protocol: str = "v4.channel.k8s.io",
) -> tuple[bytes, bytes, bytes]:
    """Run an exec/attach like crictl: (stdout, stderr, error stream)."""
    upgraded = await spdy_upgrade(url, protocols=[protocol])
    assert upgraded.status == 101, upgraded.body
    assert upgraded.session is not None
    try:
        streams = await open_command_streams(
            upgraded.session, stdin=stdin is not None, stderr=stderr
        )

        async def send() -> None:
            if streams.stdin is not None and stdin is not None:
                await streams.stdin.write(stdin)
                await streams.stdin.close_write()

        _, out, err, status = await asyncio.wait_for(
            asyncio.gather(
                send(), read_all(streams.stdout), read_all(streams.stderr), read_all(streams.error)
            ),
            10,
        )
        return out, err, status
    finally:
        await upgraded.aclose()


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_through(port: int, data: bytes, *, timeout: float = 300.0) -> bytes:
    """Blocking: send ``data`` to 127.0.0.1:``port`` while reading what comes back, half-close,
    and return everything read until the other side closed (an echo server's answer)."""
    chunk = 1 << 20
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        received = bytearray()

        def read_until_closed() -> None:
            while part := sock.recv(chunk):
                received.extend(part)

        reader = threading.Thread(target=read_until_closed)
        reader.start()
        view = memoryview(data)
        for offset in range(0, len(data), chunk):
            sock.sendall(view[offset : offset + chunk])
        sock.shutdown(socket.SHUT_WR)
        reader.join(timeout)
    return bytes(received)


@contextlib.asynccontextmanager
async def crictl_port_forward(
    crictl: Path, *, endpoint: str, pod_id: str, port: int
) -> AsyncIterator[int]:
    """``crictl port-forward`` of ``port`` in the pod to a free local port, for the block;
    yields the local port once crictl listens."""
    local = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(str(crictl), "--runtime-endpoint", endpoint, "port-forward", pod_id, f"{local}:{port}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if b"Forwarding from" not in line:
            raise RuntimeError(f"crictl port-forward did not start: {line!r}")
        yield local
    finally:
        proc.kill()
        await proc.wait()
