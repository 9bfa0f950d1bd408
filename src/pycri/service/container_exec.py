"""ExecSync: run a command in a running container and return its output and exit code.

The exec process is made from the container's own process spec (user, env, cwd,
capabilities) with the command's args; its output is collected in memory, capped at
16 MiB per stream (the excess is dropped silently, as kubelet's probes expect). A non-zero
exit is a normal answer, not an error. On timeout the exec process is killed, its output
drained briefly, and DEADLINE_EXCEEDED returned. The exec process is always deleted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ExecIO
from pycri.containerd.errors import NotFoundError
from pycri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from pycri.service import records
from pycri.service.context import RuntimeContext

log = logging.getLogger(__name__)

DRAIN_AFTER_EXIT = 2.0


async def exec_sync(
    rt: RuntimeContext, request: api_pb2.ExecSyncRequest
) -> api_pb2.ExecSyncResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    if not request.cmd:
        raise InvalidArgument("cmd must not be empty")
    client = rt.containerd
    record = await client.containers.get(container.id, timeout=30)
    process = dict(records.record_spec(record).get("process", {}))
    process["args"] = list(request.cmd)
    process["terminal"] = False
    exec_id = f"exec-{secrets.token_hex(8)}"
    fifo_dir = rt.paths.exec_io_dir(container.id, exec_id)
    exec_io = await ExecIO.create(
        exec_id=exec_id, fifo_dir=str(fifo_dir), stdin=None, container_id=container.id
    )
    try:
        await client.tasks.exec(
            container_id=container.id,
            exec_id=exec_id,
            process=process,
            stdin=exec_io.paths.stdin,
            stdout=exec_io.paths.stdout,
            stderr=exec_io.paths.stderr,
            terminal=False,
            timeout=30,
        )
        try:
            wait = asyncio.create_task(client.tasks.wait(container.id, exec_id))
            await asyncio.sleep(0)  # Wait is sent before Start
            await client.tasks.start(container.id, exec_id, timeout=30)
            timeout = request.timeout if request.timeout > 0 else None
            try:
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(wait)
            except TimeoutError:
                await _kill_exec(rt, container.id, exec_id)
                await exec_io.wait_output(DRAIN_AFTER_EXIT)
                raise DeadlineExceeded(
                    f"command {list(request.cmd)!r} timed out after {request.timeout}s"
                ) from None
            output = await exec_io.wait_output(DRAIN_AFTER_EXIT)
        finally:
            try:
                await client.tasks.delete_process(container.id, exec_id, timeout=30)
            except NotFoundError:
                pass
    finally:
        await exec_io.close()
        await asyncio.to_thread(shutil.rmtree, Path(fifo_dir), True)
    return api_pb2.ExecSyncResponse(
        stdout=output.stdout, stderr=output.stderr, exit_code=int(result.exit_status)
    )


async def _kill_exec(rt: RuntimeContext, container_id: str, exec_id: str) -> None:
    try:
        await rt.containerd.tasks.kill(container_id, 9, exec_id=exec_id, timeout=10)
        await rt.containerd.tasks.wait(container_id, exec_id, timeout=10)
    except Exception as err:  # the process may have exited meanwhile
        log.debug("killing exec failed", extra={"exec_id": exec_id, "error": str(err)})
