"""The backend seam: what the streaming server needs from the runtime, as typed Protocols.

The protocol side (SPDY, WebSocket, channel mapping, status reporting) is independent of
containerd; the daemon implements these Protocols with containerd and hands the object to
``StreamServer``. The shapes:

``exec(request, io) -> int``
    Run ``request.cmd`` in ``request.container_id`` and return its exit code once the process
    exited *and* its output was written to ``io.stdout``/``io.stderr`` (the protocol side
    writes the final status as soon as this returns, then closes the output streams, so
    output written after the return is lost). A non-zero code is a normal return, not an
    exception: it becomes a ``NonZeroExitCode`` status. Raising any other exception reports
    an internal error to the client ("error executing command in container: ...").

``attach(request, io) -> None``
    Connect ``io`` to the running container's stdio until the container's output ends (it
    exited) or the client went away. Same error rule as ``exec``.

``connect(sandbox_id, port) -> (reader, writer)``
    Open a TCP connection to ``port`` inside the sandbox's network namespace. Raise
    ``ConnectionRefusedError`` (or any ``OSError``) when nothing listens there: the message is
    reported on the request's error stream and the session stays up for other connections.
    The protocol side owns the returned pair from then on and closes the writer when the
    forwarded connection ends; it half-closes it with ``write_eof()`` when the client
    half-closes (so the writer's transport should support that, as TCP sockets do).

``StreamIO`` semantics (the same for SPDY and WebSocket clients):

* ``stdin`` is an async iterator of non-empty ``bytes`` chunks, or ``None`` when the client
  did not ask for stdin. The iterator *ends* when the client closes its stdin (``crictl exec
  -i`` at EOF of its input): that is the process's stdin EOF. It also ends when the client
  disconnects. WebSocket clients before ``v5.channel.k8s.io`` cannot signal stdin EOF; their
  iterator only ends with the connection.
* ``stdout`` and ``stderr`` are writers whose ``write`` applies backpressure (it returns once
  the data is accepted by the transport's bounded buffers). ``None`` when not requested. With
  ``tty`` there is no separate stderr (``stderr`` is ``None``): the terminal merges both
  streams and the backend writes everything to ``stdout``.
* ``resize`` is an async iterator of ``TerminalSize`` (TTY only, else ``None``). Sizes are
  coalesced: a backend that reads slowly gets the latest size, never a backlog, and never
  holds up stdin. The iterator ends with the session.
* A write after the client went away raises ``StreamClosedError`` (a ``ConnectionError``).

Cancellation: if the client disconnects while ``exec``/``attach``/a forwarded connection is
running, the backend's coroutine is **cancelled**. Its ``finally`` must then release what it
holds (for exec: kill and delete the exec process; for attach: detach from the FIFOs). The
server waits for the cancelled coroutine to finish (bounded, ``cancel_grace_s``), so cleanup
that awaits is fine, but a backend that swallows ``CancelledError`` keeps its slot until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cri_api.v1 import api_pb2


class StreamClosedError(ConnectionError):
    """The stream can carry no more data: the client closed or reset it, or went away."""


@dataclass(frozen=True, kw_only=True)
class TerminalSize:
    """A TTY size change as the client sent it (columns, rows)."""

    width: int
    height: int


class OutputStream(Protocol):
    """stdout or stderr of a remote command, as the backend sees it."""

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True, kw_only=True)
class StreamIO:
    """The client's side of an exec or attach, independent of the transport."""

    stdin: AsyncIterator[bytes] | None
    stdout: OutputStream | None
    stderr: OutputStream | None
    resize: AsyncIterator[TerminalSize] | None
    tty: bool


class ExecBackend(Protocol):
    async def exec(self, request: api_pb2.ExecRequest, io: StreamIO) -> int: ...


class AttachBackend(Protocol):
    async def attach(self, request: api_pb2.AttachRequest, io: StreamIO) -> None: ...


class PortForwardBackend(Protocol):
    async def connect(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class StreamBackend(ExecBackend, AttachBackend, PortForwardBackend, Protocol):
    """Everything ``StreamServer`` calls: the daemon's containerd-backed implementation."""
