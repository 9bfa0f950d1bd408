"""ExecSync (run a command, answer with its output and exit code) and Exec (the streaming
variant: answer with a URL on the streaming server, which runs the command for the client).

ExecSync collects the output in memory: stdout and stderr together at most just under 16 MiB
(``MAX_EXEC_OUTPUT_BYTES``), so the answer always fits kubelet's 16 MiB message limit. The
excess is still read (the process never blocks) but dropped, and a last line on stderr says
how much was dropped (kubelet's probes look at the exit code only). A non-zero exit is a
normal answer, not an error. On its timeout the process is killed and DEADLINE_EXCEEDED
returned; a caller that gives up first (its gRPC deadline) cancels the call, which kills the
process too: either way the exec process is deleted (``exec_process``).

At most ``max_concurrent_exec_sync`` run at once (config; 32 by default): the worst case of
memory held by collected output is that many times 16 MiB. Further calls wait for a slot,
within their own deadline (kubelet's probes are periodic; queueing them is kinder than
failing them).

Exec validates the request as kubelet does (a command; at least one of stdin, stdout,
stderr; no stderr with a TTY: the streaming server's ``register_exec``), checks that the
container runs, and registers the request under its full container ID. The command itself
runs when the client connects (``service/streaming.py``).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence

from cri_api.v1 import api_pb2

from pycri.cio.container_io import MAX_EXEC_OUTPUT_BYTES, ExecIO, ExecOutput
from pycri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from pycri.service.context import RuntimeContext
from pycri.service.exec_process import exec_process, new_exec_id
from pycri.store.container import Container

DRAIN_AFTER_EXIT = 2.0


def validate_cmd(cmd: Sequence[str]) -> None:
    """A command runc can start: a non-empty program name, no NUL bytes."""
    if not cmd:
        raise InvalidArgument("cmd must not be empty")
    if not cmd[0]:
        raise InvalidArgument("cmd[0] (the program to run) must not be empty")
    if any("\0" in arg for arg in cmd):
        raise InvalidArgument("cmd must not contain NUL bytes")


def truncation_note(output: ExecOutput) -> bytes:
    """The line appended to stderr when output was dropped (empty when nothing was)."""
    if not (output.stdout_dropped_bytes or output.stderr_dropped_bytes):
        return b""
    return (
        f"\n[pycri: output over {MAX_EXEC_OUTPUT_BYTES} bytes; dropped "
        f"{output.stdout_dropped_bytes} bytes of stdout and "
        f"{output.stderr_dropped_bytes} bytes of stderr]\n"
    ).encode()


async def exec_sync(
    rt: RuntimeContext, request: api_pb2.ExecSyncRequest
) -> api_pb2.ExecSyncResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    validate_cmd(request.cmd)
    async with rt.exec_sync_slots:
        return await _exec_sync(rt, container, request)


async def _exec_sync(
    rt: RuntimeContext, container: Container, request: api_pb2.ExecSyncRequest
) -> api_pb2.ExecSyncResponse:
    exec_id = new_exec_id()
    fifo_dir = rt.paths.exec_io_dir(container.id, exec_id)
    exec_io = await ExecIO.create(
        exec_id=exec_id, fifo_dir=str(fifo_dir), container_id=container.id
    )
    try:
        async with exec_process(
            rt.containerd,
            container,
            exec_id=exec_id,
            cmd=request.cmd,
            tty=False,
            stdio=exec_io.paths,
        ) as process:
            timeout = request.timeout if request.timeout > 0 else None
            try:
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(process.exited)
            except TimeoutError:
                await process.kill()
                await exec_io.wait_output(DRAIN_AFTER_EXIT)
                raise DeadlineExceeded(
                    f"command {list(request.cmd)!r} timed out after {request.timeout}s"
                ) from None
            output = await exec_io.wait_output(DRAIN_AFTER_EXIT)
    finally:
        await exec_io.close()
        await asyncio.to_thread(shutil.rmtree, fifo_dir, True)
    return api_pb2.ExecSyncResponse(
        stdout=output.stdout,
        stderr=output.stderr + truncation_note(output),
        exit_code=result.exit_status,
    )


async def exec_rpc(rt: RuntimeContext, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    validate_cmd(request.cmd)
    resolved = api_pb2.ExecRequest()
    resolved.CopyFrom(request)
    resolved.container_id = container.id
    return api_pb2.ExecResponse(url=rt.streams.register_exec(resolved))
