"""ExecSync (run a command, answer with its output and exit code) and Exec (the streaming
variant: answer with a URL on the streaming server, which runs the command for the client).

ExecSync collects the output in memory, capped at 16 MiB per stream (the excess is still
read, so the process never blocks, but dropped, as kubelet's probes expect). A non-zero exit
is a normal answer, not an error. On its timeout the process is killed and DEADLINE_EXCEEDED
returned; a caller that gives up first (its gRPC deadline) cancels the call, which kills the
process too: either way the exec process is deleted (``exec_process``).

Exec validates the request as kubelet does (a command; at least one of stdin, stdout,
stderr; no stderr with a TTY: the streaming server's ``register_exec``), checks that the
container runs, and registers the request under its full container ID. The command itself
runs when the client connects (``service/streaming.py``).
"""

from __future__ import annotations

import asyncio
import shutil

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ExecIO
from pycri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from pycri.service.context import RuntimeContext
from pycri.service.exec_process import exec_process, new_exec_id

DRAIN_AFTER_EXIT = 2.0


async def exec_sync(
    rt: RuntimeContext, request: api_pb2.ExecSyncRequest
) -> api_pb2.ExecSyncResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    if not request.cmd:
        raise InvalidArgument("cmd must not be empty")
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
        stdout=output.stdout, stderr=output.stderr, exit_code=result.exit_status
    )


async def exec_rpc(rt: RuntimeContext, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    resolved = api_pb2.ExecRequest()
    resolved.CopyFrom(request)
    resolved.container_id = container.id
    return api_pb2.ExecResponse(url=rt.streams.register_exec(resolved))
