"""The containerd side of streaming: what the streaming server (``pycri.stream``) runs when a
client connects to an Exec, Attach or PortForward URL (``StreamBackend``).

* **exec**: a containerd exec process (``exec_process``: the container's process spec with the
  requested argv, ``terminal`` for a TTY) whose FIFOs are forwarded to the client's streams
  with backpressure; stdin is pumped from the client and closed (CloseIO) at its EOF; TTY
  size changes go to ResizePty. Returns the exit code once the process exited and its output
  was delivered (bounded: a grandchild holding stdout cannot keep the session open).
* **attach**: the running container's own stdio. Output comes from the container's
  ``OutputFanout`` (from now on; several attachers at once; the CRI log is written as
  before); stdin only if the container was created with ``stdin`` (otherwise the client's is
  ignored, as containerd does), through the container's shared stdin writer; with
  ``stdin_once``, the container's stdin is closed when this attach's stdin ends. Returns when
  the container's output ends (it exited).
* **connect**: a TCP connection to ``localhost:PORT`` in the pod's network namespace (the
  host's for host-network pods), made by ``net.netns.connect_in_netns``.

Client gone: the server cancels the coroutine; ``exec_process`` then kills and deletes the
exec process, an attach just unsubscribes (the container goes on), a forwarded connection is
closed by the server. Errors (a container that stopped, a pod that is gone) propagate: the
server reports them to the client on the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ExecIO
from pycri.containerd.client import ContainerdClient
from pycri.errors import FailedPrecondition
from pycri.net.netns import connect_in_netns
from pycri.paths import Paths
from pycri.service.exec_process import exec_process, new_exec_id
from pycri.store.container import ContainerStore
from pycri.store.sandbox import SandboxState, SandboxStore
from pycri.stream.backend import StreamIO, TerminalSize

log = logging.getLogger(__name__)

DRAIN_AFTER_EXIT = 2.0
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0


class StreamingBackend:
    """``pycri.stream.backend.StreamBackend`` over containerd."""

    def __init__(
        self,
        *,
        containers: ContainerStore,
        sandboxes: SandboxStore,
        containerd: ContainerdClient,
        paths: Paths,
    ) -> None:
        self._containers = containers
        self._sandboxes = sandboxes
        self._containerd = containerd
        self._paths = paths

    async def exec(self, request: api_pb2.ExecRequest, io: StreamIO) -> int:
        container = self._containers.get(request.container_id)
        exec_id = new_exec_id()
        fifo_dir = self._paths.exec_io_dir(container.id, exec_id)
        exec_io = await ExecIO.create_streamed(
            exec_id=exec_id,
            fifo_dir=str(fifo_dir),
            stdin=io.stdin is not None,
            tty=request.tty,
            stdout=io.stdout,
            stderr=io.stderr,
            container_id=container.id,
        )
        try:
            async with exec_process(
                self._containerd,
                container,
                exec_id=exec_id,
                cmd=request.cmd,
                tty=request.tty,
                stdio=exec_io.paths,
            ) as process:
                if io.stdin is not None:
                    exec_io.start_stdin(close_io=process.close_stdin, chunks=io.stdin)
                async with _resizing(io.resize, process.resize):
                    result = await asyncio.shield(process.exited)
                    await exec_io.wait_drained(DRAIN_AFTER_EXIT)
        finally:
            await exec_io.close()
            await asyncio.to_thread(shutil.rmtree, fifo_dir, True)
        log.info(
            "exec ended",
            extra={
                "container_id": container.id,
                "exec_id": exec_id,
                "exit_code": result.exit_status,
            },
        )
        return result.exit_status

    async def attach(self, request: api_pb2.AttachRequest, io: StreamIO) -> None:
        container = self._containers.get(request.container_id)
        container_io = container.io
        if container.status.state != api_pb2.CONTAINER_RUNNING or container_io is None:
            raise FailedPrecondition(f"container {container.id} is not running")
        config = container.metadata.config
        attachment = container_io.attach()
        stdin_task: asyncio.Task[None] | None = None
        if io.stdin is not None and config.stdin:
            stdin_task = asyncio.create_task(
                self._pump_stdin(container.id, io.stdin, stdin_once=config.stdin_once),
                name=f"attach-stdin-{container.id[:12]}",
            )

        async def resize(*, width: int, height: int) -> None:
            await self._containerd.tasks.resize_pty(
                container.id, "", width=width, height=height, timeout=CALL_TIMEOUT
            )

        try:
            async with _resizing(io.resize if config.tty else None, resize):
                async for stream, data in attachment:
                    target = io.stdout if stream == "stdout" or config.tty else io.stderr
                    if target is None:
                        continue
                    try:
                        await target.write(data)
                    except ConnectionError:
                        return  # the client went away
        finally:
            attachment.close()
            if stdin_task is not None:
                stdin_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stdin_task
                if config.stdin_once:
                    await self._close_container_stdin(container.id)

    async def _pump_stdin(
        self, container_id: str, chunks: AsyncIterator[bytes], *, stdin_once: bool
    ) -> None:
        container = self._containers.get(container_id)
        if container.io is None:
            return
        try:
            writer = await container.io.open_stdin()
            async for data in chunks:
                await writer.write(data)
        except (OSError, TimeoutError, ValueError) as err:
            log.info("attach stdin ended", extra={"container_id": container_id, "error": str(err)})
        if stdin_once:
            await self._close_container_stdin(container_id)

    async def _close_container_stdin(self, container_id: str) -> None:
        """stdin_once: EOF for the container's process (our end and the shim's)."""
        container = self._containers.find(container_id)
        if container is None or container.io is None:
            return
        container.io.close_stdin()
        try:
            await self._containerd.tasks.close_io(container_id, timeout=CALL_TIMEOUT)
        except Exception as err:  # it exited meanwhile: nothing left to close
            log.debug("CloseIO failed", extra={"container_id": container_id, "error": str(err)})

    async def connect(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox.status.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sandbox.id} is not ready")
        netns = None if sandbox.metadata.host_network else Path(sandbox.metadata.netns_path)
        return await connect_in_netns(netns, port, timeout=CONNECT_TIMEOUT)


@contextlib.asynccontextmanager
async def _resizing(
    sizes: AsyncIterator[TerminalSize] | None,
    resize: Callable[..., Awaitable[None]],
) -> AsyncIterator[None]:
    """Apply the client's terminal sizes while the block runs (TTY only)."""
    if sizes is None:
        yield
        return

    async def pump() -> None:
        async for size in sizes:
            try:
                await resize(width=size.width, height=size.height)
            except Exception as err:  # the process may be gone already
                log.debug("resize failed", extra={"error": str(err)})

    task = asyncio.create_task(pump(), name="tty-resize")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
