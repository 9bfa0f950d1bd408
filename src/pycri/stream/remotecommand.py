"""Exec and attach over SPDY or WebSocket: channels in, a final status out.

The transports differ only in how the client's channels come to exist:

* **SPDY** (``channel.k8s.io`` v1 to v4): the client opens one stream per channel, named by
  its ``streamType`` header (``error``, ``stdin``, ``stdout``, ``stderr``, ``resize``), and
  waits for our SYN_REPLY to each before opening the next. We expect exactly the channels
  the CRI request asked for (``error`` always; ``stderr`` never with a TTY; ``resize`` with a
  TTY from v3 on) and give the client ``stream_creation_timeout`` (30 s, as kubelet) to open
  them. Streams we did not expect (unknown type, duplicates) are accepted like kubelet does,
  then ignored: their incoming data is dropped, so they can never stall the session.
* **WebSocket** (``channel.k8s.io``, ``base64.channel.k8s.io``, their ``v4.`` versions and
  ``v5.channel.k8s.io``): channels are numbered (0 stdin, 1 stdout, 2 stderr, 3 error,
  4 resize) and exist from the start. As kubelet does, an empty message is sent first on the
  lowest channel we write (stdout, else stderr, else error), telling the client the
  connection is up.

Then one shared path (``run_command``): the channels become a ``StreamIO`` for the backend
(stdin as an async iterator, stdout/stderr writers, coalesced resize events), the backend
runs, and its result is written on the error channel:

* v4 and v5: a ``metav1.Status`` JSON document: ``{"metadata":{},"status":"Success"}``, or
  ``Failure`` with ``reason: "NonZeroExitCode"`` and the code as a ``details.causes`` entry
  ``{"reason":"ExitCode","message":"3"}`` (client-go turns that into the exit code crictl and
  kubectl exit with), or ``InternalError`` (code 500) when the backend raised.
* older versions: nothing on success, else the status message as plain text.

Then every channel is closed for writing (SPDY FIN; v5 close signal) and the session closed
gracefully (GOAWAY / close frame, then a short linger for the client to hang up).

Disconnects: if the session ends (the client vanished, or the idle timeout fired) while the
backend runs, the backend's coroutine is cancelled and awaited for up to ``cancel_grace``
seconds, so its ``finally`` can kill and delete the exec process. A ``StreamClosedError`` out
of the backend (it wrote to a stream the client had reset) counts as a disconnect too.

Races: the backend task and the session's end are awaited together; whichever comes first
decides, and the other is cancelled. The resize feeder only ever keeps the latest size, so
neither a slow backend nor a flood of resizes can block the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pycri.stream.backend import StreamClosedError, StreamIO, TerminalSize
from pycri.stream.channels import Channel, Session, Signal
from pycri.stream.spdy import SpdySession, SpdyStream
from pycri.stream.websocket import WebSocketSession

log = logging.getLogger(__name__)

#: SPDY remote command protocols, ours in order of preference (the client's order wins).
SPDY_PROTOCOLS: Final = (
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
WEBSOCKET_PROTOCOLS: Final = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
_MAX_RESIZE_PENDING = 4096


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """What a negotiated protocol version implies."""

    protocol: str
    #: The error channel carries a metav1.Status JSON (v4, v5) rather than plain text.
    json_status: bool
    #: SPDY: the client opens a resize stream for a TTY (v3 on). WebSocket: always.
    resize: bool
    base64: bool = False
    #: WebSocket v5 close signals.
    close_signals: bool = False


def spdy_dialect(protocol: str) -> Dialect:
    version = 1 if protocol == "channel.k8s.io" else int(protocol[1])
    return Dialect(protocol=protocol, json_status=version >= 4, resize=version >= 3)


def websocket_dialect(subprotocol: str | None) -> Dialect:
    name = subprotocol or ""
    return Dialect(
        protocol=name,
        json_status=name.startswith(("v4.", "v5.")),
        resize=True,
        base64="base64" in name,
        close_signals=name.startswith("v5."),
    )


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """Which channels the CRI request asked for."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def of(cls, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StreamOptions:
        # A terminal merges stderr into stdout: there is never a separate stderr channel.
        return cls(stdin=stdin, stdout=stdout, stderr=stderr and not tty, tty=tty)


@dataclass(kw_only=True)
class CommandChannels:
    error: Channel
    stdin: Channel | None = None
    stdout: Channel | None = None
    stderr: Channel | None = None
    resize: Channel | None = None
    #: Accepted but unused streams, closed with the others at the end.
    extra: list[Channel] = field(default_factory=list)

    def all(self) -> list[Channel]:
        named = [self.error, self.stdin, self.stdout, self.stderr, self.resize]
        return [c for c in named if c is not None] + self.extra


class Outcome(enum.StrEnum):
    EXITED = "exited"
    ERROR = "error"
    CLIENT_GONE = "client_gone"
    NO_STREAMS = "stream_creation_timeout"


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None


# ---------------------------------------------------------------- statuses


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int, command: Sequence[str] = ()) -> dict[str, Any]:
    what = f"error executing command [{' '.join(command)}], exit code {code}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode_status(status: dict[str, Any], *, json_status: bool) -> bytes:
    """What goes on the error channel: the JSON (v4+), else the message, or nothing on success."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status["status"] == "Success":
        return b""
    return str(status.get("message", "")).encode()


# ---------------------------------------------------------------- channel acquisition


async def accept_spdy_channels(
    session: SpdySession, *, options: StreamOptions, dialect: Dialect, timeout: float
) -> CommandChannels:
    """Wait for the client's streams; raises ``TimeoutError`` or ``StreamClosedError``."""
    expected = {"error"}
    expected |= {name for name, on in (("stdin", options.stdin), ("stdout", options.stdout)) if on}
    if options.stderr:
        expected.add("stderr")
    if options.tty and dialect.resize:
        expected.add("resize")
    got: dict[str, SpdyStream] = {}
    extra: list[Channel] = []
    async with asyncio.timeout(timeout):
        while expected - got.keys():
            stream = await session.accept()
            if stream is None:
                raise StreamClosedError("client went away before opening its streams")
            kind = stream.header("streamtype") or ""
            stream.reply()
            if kind in expected and kind not in got:
                got[kind] = stream
            else:
                log.debug("ignoring unexpected stream", extra={"stream_type": kind})
                stream.discard_incoming()
                extra.append(stream)
    return CommandChannels(
        error=got["error"],
        stdin=got.get("stdin"),
        stdout=got.get("stdout"),
        stderr=got.get("stderr"),
        resize=got.get("resize"),
        extra=extra,
    )


async def websocket_channels(
    session: WebSocketSession, *, options: StreamOptions
) -> CommandChannels:
    # Data on channels we never read is dropped on arrival, so it cannot fill a buffer.
    session.readable = ({STDIN} if options.stdin else set()) | ({RESIZE} if options.tty else set())
    channels = CommandChannels(
        error=session.channel(ERROR),
        stdin=session.channel(STDIN) if options.stdin else None,
        stdout=session.channel(STDOUT) if options.stdout else None,
        stderr=session.channel(STDERR) if options.stderr else None,
        resize=session.channel(RESIZE) if options.tty else None,
    )
    first = channels.stdout or channels.stderr or channels.error
    await first.write(b"")  # "connection established", as kubelet sends it
    return channels


# ---------------------------------------------------------------- the shared path


class _Output:
    """stdout/stderr for the backend: skips empty writes (which mean something on WebSocket)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def write(self, data: bytes) -> None:
        if data:
            await self._channel.write(data)


async def _chunks(channel: Channel) -> AsyncIterator[bytes]:
    while chunk := await channel.read():
        yield chunk


class TerminalSizes:
    """Resize events from a channel of concatenated JSON objects, coalesced to the latest."""

    def __init__(self) -> None:
        self._latest: TerminalSize | None = None
        self._version = 0
        self._ended = False
        self._signal = Signal()

    def publish(self, size: TerminalSize) -> None:
        self._latest = size
        self._version += 1
        self._signal.fire()

    def end(self) -> None:
        self._ended = True
        self._signal.fire()

    async def feed_from(self, channel: Channel) -> None:
        decoder = json.JSONDecoder()
        pending = ""
        try:
            while chunk := await channel.read():
                pending = (pending + chunk.decode("utf-8", "replace")).lstrip()
                while pending:
                    try:
                        document, end = decoder.raw_decode(pending)
                    except json.JSONDecodeError:
                        break  # incomplete (or garbage, bounded below)
                    pending = pending[end:].lstrip()
                    if (size := _terminal_size(document)) is not None:
                        self.publish(size)
                if len(pending) > _MAX_RESIZE_PENDING:
                    log.info("undecodable resize events; ignoring further ones")
                    return
        finally:
            self.end()

    async def sizes(self) -> AsyncIterator[TerminalSize]:
        seen = 0
        while True:
            if self._version != seen and self._latest is not None:
                seen = self._version
                yield self._latest
            elif self._ended:
                return
            else:
                await self._signal.wait()


def _terminal_size(document: object) -> TerminalSize | None:
    if not isinstance(document, dict):
        return None
    width, height = document.get("Width"), document.get("Height")
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        return None
    return TerminalSize(width=width, height=height)


Runner = Callable[[StreamIO], Coroutine[Any, Any, int | None]]


async def cancel_and_wait(task: asyncio.Task[Any], *, grace: float, what: str) -> None:
    """Cancel ``task`` and wait up to ``grace`` s for it to finish its cleanup."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning("backend still running %.0f s after cancellation", grace, extra={"what": what})
    elif not task.cancelled() and (error := task.exception()) is not None:
        log.debug("backend raised while cancelled", exc_info=error, extra={"what": what})


async def run_command(
    *,
    session: Session,
    channels: CommandChannels,
    options: StreamOptions,
    dialect: Dialect,
    runner: Runner,
    what: str,
    command: Sequence[str] = (),
    cancel_grace: float = 30.0,
) -> CommandResult:
    """Run the backend against ``channels`` and report its result on the error channel."""
    sizes: TerminalSizes | None = None
    feeder: asyncio.Task[None] | None = None
    if options.tty and channels.resize is not None:
        sizes = TerminalSizes()
        feeder = asyncio.create_task(sizes.feed_from(channels.resize), name=f"{what}-resize")
    io = StreamIO(
        stdin=_chunks(channels.stdin) if channels.stdin is not None else None,
        stdout=_Output(channels.stdout) if channels.stdout is not None else None,
        stderr=_Output(channels.stderr) if channels.stderr is not None else None,
        resize=sizes.sizes() if sizes is not None else None,
        tty=options.tty,
    )
    backend = asyncio.create_task(runner(io), name=f"{what}-backend")
    gone = asyncio.create_task(session.wait_closed(), name=f"{what}-disconnect")
    try:
        await asyncio.wait({backend, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not backend.done():
            await cancel_and_wait(backend, grace=cancel_grace, what=what)
            return CommandResult(outcome=Outcome.CLIENT_GONE)
        try:
            if backend.cancelled():  # cancelled from inside (it awaited something cancelled)
                raise RuntimeError("the backend was cancelled")
            code = backend.result()
        except StreamClosedError as exc:
            return CommandResult(outcome=Outcome.CLIENT_GONE, error=str(exc))
        except Exception as exc:
            verb = "executing command in" if what == "exec" else "attaching to"
            message = f"error {verb} container: {exc}"
            log.warning("%s backend failed", what, exc_info=exc)
            result = CommandResult(outcome=Outcome.ERROR, error=message)
            status = internal_error_status(message)
        else:
            exit_code = code or 0
            result = CommandResult(outcome=Outcome.EXITED, exit_code=exit_code)
            status = exit_code_status(exit_code, command) if exit_code else success_status()
        with contextlib.suppress(StreamClosedError):
            if payload := encode_status(status, json_status=dialect.json_status):
                await channels.error.write(payload)
            for channel in channels.all():
                await channel.close_write()
        return result
    finally:
        gone.cancel()
        if feeder is not None:
            feeder.cancel()
        for channel in channels.all():
            # Stdin nobody will read (the process exited first) must not stall the session
            # while it waits for the client to hang up.
            channel.discard_incoming()
        if not backend.done():  # we were cancelled ourselves (server shutdown)
            await cancel_and_wait(backend, grace=cancel_grace, what=what)


async def serve_spdy(
    *,
    session: SpdySession,
    protocol: str,
    options: StreamOptions,
    runner: Runner,
    what: str,
    command: Sequence[str] = (),
    creation_timeout: float = 30.0,
    cancel_grace: float = 30.0,
    linger: float = 2.0,
) -> CommandResult:
    """One exec/attach on an upgraded SPDY session; closes the session at the end."""
    dialect = spdy_dialect(protocol)
    try:
        channels = await accept_spdy_channels(
            session, options=options, dialect=dialect, timeout=creation_timeout
        )
    except TimeoutError:
        log.info("timed out waiting for client to create streams", extra={"what": what})
        await session.close(linger=0)
        return CommandResult(outcome=Outcome.NO_STREAMS)
    except StreamClosedError:
        return CommandResult(outcome=Outcome.CLIENT_GONE)
    try:
        return await run_command(
            session=session,
            channels=channels,
            options=options,
            dialect=dialect,
            runner=runner,
            what=what,
            command=command,
            cancel_grace=cancel_grace,
        )
    finally:
        await session.close(linger=linger)


async def serve_websocket(
    *,
    session: WebSocketSession,
    subprotocol: str | None,
    options: StreamOptions,
    runner: Runner,
    what: str,
    command: Sequence[str] = (),
    cancel_grace: float = 30.0,
    linger: float = 2.0,
) -> CommandResult:
    """One exec/attach on an accepted WebSocket; closes it at the end."""
    dialect = websocket_dialect(subprotocol)
    try:
        channels = await websocket_channels(session, options=options)
        return await run_command(
            session=session,
            channels=channels,
            options=options,
            dialect=dialect,
            runner=runner,
            what=what,
            command=command,
            cancel_grace=cancel_grace,
        )
    except StreamClosedError:
        return CommandResult(outcome=Outcome.CLIENT_GONE)
    finally:
        await session.close(linger=linger)
